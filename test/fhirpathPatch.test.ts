// FHIRPath Patch (R4 fhirpatch.html): the pure module over the spec's operation table, then
// PATCH over real HTTP and PostgreSQL, alone and as a transaction Bundle entry.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { Patient } from '@medplum/fhirtypes';
import { applyFhirPathPatch } from '../src/fhir/fhirpathPatch.ts';
import { FhirError } from '../src/fhir/outcome.ts';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

/** One `operation` parameter: its type and parts (name -> the rest of the part). */
const op = (type: string, parts: Record<string, object>) => ({
  name: 'operation',
  part: [{ name: 'type', valueCode: type }, ...Object.entries(parts).map(([name, rest]) => ({ name, ...rest }))],
});
const patchOf = (...ops: object[]) => ({ resourceType: 'Parameters', parameter: ops });
const path = (p: string) => ({ valueString: p });
const int = (n: number) => ({ valueInteger: n });

const patient = (): Patient => ({
  resourceType: 'Patient', id: 'p1', birthDate: '1970-01-01', gender: 'female', deceasedBoolean: false,
  identifier: [{ system: 'urn:a', value: '1' }, { system: 'urn:b', value: '2' }, { system: 'urn:c', value: '3' }],
  name: [{ family: 'Chalmers', given: ['Peter', 'James'], _given: [null, { extension: [{ url: 'urn:x', valueString: 'x' }] }] } as never,
    { use: 'official', family: 'Windsor', given: ['Jim'] }],
});

function refused(fn: () => unknown, status: number, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FhirError, `a FhirError, not ${String(e)}`);
    assert.equal(e.status, status, e.message);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('applyFhirPathPatch (the spec operation table)', () => {
  test('add: a single element where none is, appended to a list, and a complex value from parts', () => {
    const p = patient();
    delete p.birthDate;
    applyFhirPathPatch(p, patchOf(
      op('add', { path: path('Patient'), name: path('birthDate'), value: { valueDate: '1974-12-25' } }),
      op('add', { path: path('Patient.name[1]'), name: path('given'), value: { valueString: 'Jimmy' } }),
      op('add', { path: path('Patient'), name: path('telecom'), value: { part: [{ name: 'system', valueCode: 'phone' }, { name: 'value', valueString: '555-1234' }] } }),
      op('add', { path: path('Patient'), name: path('multipleBirth'), value: { valueInteger: 2 } }),
    ));
    assert.equal(p.birthDate, '1974-12-25');
    assert.deepEqual(p.name![1].given, ['Jim', 'Jimmy']);
    assert.deepEqual(p.telecom, [{ system: 'phone', value: '555-1234' }]);
    assert.equal(p.multipleBirthInteger, 2, 'a choice element takes the key of its value type');
  });

  test('add to a single element that already has a value cannot apply (422); use replace', () => {
    refused(() => applyFhirPathPatch(patient(), patchOf(op('add', { path: path('Patient'), name: path('birthDate'), value: { valueDate: '2000-01-01' } }))), 422, /already has a value/);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('add', { path: path('Patient'), name: path('deceased'), value: { valueDateTime: '2000-01-01' } }))), 422, /already has a value/);
  });

  test('insert: at the index given (0 based), at most the list length; primitive extensions stay aligned', () => {
    const p = patient();
    applyFhirPathPatch(p, patchOf(
      op('insert', { path: path('Patient.identifier'), index: int(0), value: { valueIdentifier: { system: 'urn:z', value: '0' } } }),
      op('insert', { path: path('Patient.name[0].given'), index: int(1), value: { valueString: 'Q' } }),
      op('insert', { path: path('Patient.identifier'), index: int(4), value: { part: [{ name: 'system', valueUri: 'urn:end' }, { name: 'value', valueString: '9' }] } }),
    ));
    assert.deepEqual(p.identifier!.map((i) => i.system), ['urn:z', 'urn:a', 'urn:b', 'urn:c', 'urn:end']);
    assert.deepEqual(p.name![0].given, ['Peter', 'Q', 'James']);
    assert.deepEqual((p.name![0] as never as { _given: unknown[] })._given, [null, null, { extension: [{ url: 'urn:x', valueString: 'x' }] }]);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('insert', { path: path('Patient.identifier'), index: int(4), value: { valueIdentifier: { value: 'x' } } }))), 422, /index 4 is past the end/);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('insert', { path: path('Patient.birthDate'), index: int(0), value: { valueDate: '2000' } }))), 400, /not a list/);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('insert', { path: path('Patient.identifier[0]'), index: int(0), value: { valueDate: '2000' } }))), 400, /must name a list/);
  });

  test('delete: one element (with its primitive extensions); nothing found is no change; several cannot apply', () => {
    const p = patient();
    applyFhirPathPatch(p, patchOf(
      op('delete', { path: path("Patient.identifier.where(system = 'urn:b')") }),
      op('delete', { path: path('Patient.name[0].given[1]') }),
      op('delete', { path: path('Patient.telecom') }),
      op('delete', { path: path('Patient.name[1].given') }),
    ));
    assert.deepEqual(p.identifier!.map((i) => i.value), ['1', '3']);
    assert.deepEqual(p.name![0].given, ['Peter']);
    assert.equal((p.name![0] as never as { _given?: unknown })._given, undefined, 'the deleted given took its extension along');
    assert.deepEqual(p.name![1], { use: 'official', family: 'Windsor' }, 'an emptied list goes');
    const q = patient();
    applyFhirPathPatch(q, patchOf(op('delete', { path: path('Patient.name[1].family') }), op('delete', { path: path('Patient.name[1].given') }), op('delete', { path: path('Patient.name[1].use') })));
    assert.equal(q.name!.length, 1, 'an element left empty goes too');
    refused(() => applyFhirPathPatch(patient(), patchOf(op('delete', { path: path('Patient.identifier') }))), 422, /matches 3 elements/);
  });

  test('replace: exactly one element, a primitive in place, a choice under its new type', () => {
    const p = patient();
    applyFhirPathPatch(p, patchOf(
      op('replace', { path: path('Patient.birthDate'), value: { valueDate: '1930-01-01' } }),
      op('replace', { path: path("Patient.name.where(use = 'official').given.first()"), value: { valueString: 'James' } }),
      op('replace', { path: path('Patient.deceased'), value: { valueDateTime: '2020-02-02' } }),
      op('replace', { path: path('Patient.identifier[2]'), value: { part: [{ name: 'system', valueUri: 'urn:d' }, { name: 'value', valueString: '4' }] } }),
    ));
    assert.equal(p.birthDate, '1930-01-01');
    assert.deepEqual(p.name![1].given, ['James']);
    assert.equal(p.deceasedBoolean, undefined);
    assert.equal(p.deceasedDateTime, '2020-02-02');
    assert.deepEqual(p.identifier![2], { system: 'urn:d', value: '4' });
    refused(() => applyFhirPathPatch(patient(), patchOf(op('replace', { path: path('Patient.maritalStatus'), value: { valueCodeableConcept: { text: 'x' } } }))), 422, /matches nothing/);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('replace', { path: path('Patient.name.given'), value: { valueString: 'x' } }))), 422, /matches 3 elements/);
    refused(() => applyFhirPathPatch(patient(), patchOf(op('replace', { path: path('Patient.deceased'), value: { valueString: 'x' } }))), 400, /takes boolean, dateTime, not string/);
  });

  test('move: within one list, source and destination inside it', () => {
    const p = patient();
    applyFhirPathPatch(p, patchOf(op('move', { path: path('Patient.identifier'), source: int(0), destination: int(2) })));
    assert.deepEqual(p.identifier!.map((i) => i.value), ['2', '3', '1']);
    applyFhirPathPatch(p, patchOf(op('move', { path: path('Patient.name[0].given'), source: int(1), destination: int(0) })));
    assert.deepEqual(p.name![0].given, ['James', 'Peter']);
    assert.deepEqual((p.name![0] as never as { _given: unknown[] })._given[0], { extension: [{ url: 'urn:x', valueString: 'x' }] });
    refused(() => applyFhirPathPatch(patient(), patchOf(op('move', { path: path('Patient.identifier'), source: int(3), destination: int(0) }))), 422, /source 3 is outside/);
  });

  test('operations apply in order, each to the result of the one before', () => {
    const p = patient();
    applyFhirPathPatch(p, patchOf(
      op('insert', { path: path('Patient.identifier'), index: int(0), value: { valueIdentifier: { system: 'urn:new', value: 'n' } } }),
      op('replace', { path: path('Patient.identifier[0].value'), value: { valueString: 'm' } }),
    ));
    assert.deepEqual(p.identifier![0], { system: 'urn:new', value: 'm' });
  });

  test('malformed patches are 400 with the operation named', () => {
    const cases: [unknown, RegExp][] = [
      [{ resourceType: 'Patient' }, /Parameters resource/],
      [patchOf({ name: 'op', part: [] }), /only parameters named 'operation'/],
      [patchOf(op('upsert', { path: path('Patient') })), /type must be/],
      [patchOf(op('replace', { path: path('Patient.birthDate') })), /needs a 'value' part/],
      [patchOf(op('delete', { path: path('Patient.birthDate'), value: { valueDate: '2000' } })), /takes no 'value' part/],
      [patchOf(op('delete', { path: path('Patient.name[') })), /is not FHIRPath/],
      [patchOf(op('delete', { path: path('Patient.name.count()') })), /must end in an element name/],
      [patchOf(op('insert', { path: path('Patient.name'), index: { valueInteger: -1 }, value: { valueHumanName: {} } })), /valueInteger of 0 or more/],
      [patchOf(op('add', { path: path('Patient'), name: path('__proto__'), value: { valueString: 'x' } })), /not an element name/],
      [patchOf(op('add', { path: path('Patient'), name: path('constructor'), value: { valueString: 'x' } })), /not an element name/],
      [patchOf(op('replace', { path: path('Patient.birthDate'), value: { valueDate: '2000', valueString: 'x' } })), /several values/],
      [patchOf(op('replace', { path: path('Patient.birthDate'), value: { valueNoSuchType: 'x' } })), /names no FHIR data type/],
      [patchOf(op('replace', { path: path('Observation.status'), value: { valueCode: 'final' } })), /starts at Observation, but the resource is a Patient/],
      [patchOf(op('add', { path: path('Patient'), name: path('nickname'), value: { valueString: 'x' } })), /Patient has no element 'nickname'/],
      [patchOf(op('add', { path: path('Patient'), name: path('telecom'), value: { part: [{ name: 'colour', valueString: 'x' }] } })), /ContactPoint has no element 'colour'/],
      [patchOf(op('delete', { path: path('Patient') })), /names the resource itself/],
      [patchOf(op('delete', { path: path('Patient.name.single()') })), /could not be evaluated/],
    ];
    for (const [body, pattern] of cases) refused(() => applyFhirPathPatch(patient(), body), 400, pattern);
  });

  test('property: any patch of paths, values and indexes gives a result or a 400/422, never another error', () => {
    const paths = fc.constantFrom('Patient', 'Patient.name', 'Patient.name[0]', 'Patient.name[1].given', 'Patient.name.given.first()',
      "Patient.identifier.where(system = 'urn:b')", 'Patient.identifier', 'Patient.birthDate', 'Patient.deceased', 'Patient.extension(\'urn:e\')',
      'Patient.name[0]._given', 'Patient.contact.name', 'name.given[5]', '%resource.gender', 'Patient.name.given.last().extension', 'Patient.id');
    const names = fc.constantFrom('given', 'family', 'telecom', 'birthDate', 'deceased', 'active', 'extension', 'id', 'valueOf', 'x');
    const values = fc.oneof(
      fc.record({ valueString: fc.string() }), fc.record({ valueDate: fc.constantFrom('2000', 'bad') }), fc.record({ valueBoolean: fc.boolean() }),
      fc.record({ valueInteger: fc.integer() }), fc.record({ valueHumanName: fc.anything() }),
      fc.record({ part: fc.array(fc.record({ name: names, valueString: fc.string() }), { maxLength: 3 }) }),
      fc.record({ part: fc.anything() }), fc.anything().map((v) => ({ valueCoding: v })),
    );
    const operation = fc.record({
      type: fc.constantFrom('add', 'insert', 'delete', 'replace', 'move', 'other'),
      path: paths, name: names, value: values, index: fc.integer({ min: -1, max: 4 }), source: fc.integer({ min: 0, max: 4 }), destination: fc.integer({ min: 0, max: 4 }),
    }).chain((o) => fc.subarray(['path', 'name', 'value', 'index', 'source', 'destination']).map((keep) => op(o.type, Object.fromEntries(keep.map((k) => [k,
      k === 'path' || k === 'name' ? path(o[k]) : k === 'value' ? o.value : int(o[k as 'index'])])))));
    fc.assert(fc.property(fc.array(operation, { minLength: 1, maxLength: 4 }), (ops) => {
      try {
        applyFhirPathPatch(patient(), patchOf(...ops));
      } catch (e) {
        if (!(e instanceof FhirError) || (e.status !== 400 && e.status !== 422)) throw e;
      }
    }), { numRuns: 2000 });
  });
});

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const FHIR = { 'content-type': 'application/fhir+json' };

async function newPatient(): Promise<string> {
  const r = await fhir(srv.url, 'POST', 'Patient', {
    resourceType: 'Patient', birthDate: '1970-01-01', name: [{ family: 'Chalmers', given: ['Peter'] }],
    identifier: [{ system: 'urn:mrn', value: 'A' }, { system: 'urn:old', value: 'B' }],
  });
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

async function version(type: string, id: string): Promise<{ versionId: string; json: any }> {
  const r = await fhir(srv.url, 'GET', `${type}/${id}`);
  return { versionId: r.json.meta.versionId, json: r.json };
}

describe('PATCH with a FHIRPath Patch over HTTP', () => {
  test('each operation type, one version each, the response is the patched resource', async () => {
    const id = await newPatient();
    const steps: [object, (p: any) => void][] = [
      [op('replace', { path: path('Patient.birthDate'), value: { valueDate: '1974-12-25' } }), (p) => assert.equal(p.birthDate, '1974-12-25')],
      [op('add', { path: path('Patient'), name: path('telecom'), value: { part: [{ name: 'system', valueCode: 'phone' }, { name: 'value', valueString: '555' }] } }),
        (p) => assert.deepEqual(p.telecom, [{ system: 'phone', value: '555' }])],
      [op('insert', { path: path('Patient.name'), index: int(0), value: { valueHumanName: { use: 'nickname', given: ['Pete'] } } }),
        (p) => assert.deepEqual(p.name.map((n: any) => n.use ?? n.family), ['nickname', 'Chalmers'])],
      [op('delete', { path: path("Patient.identifier.where(system = 'urn:old')") }), (p) => assert.deepEqual(p.identifier, [{ system: 'urn:mrn', value: 'A' }])],
      [op('move', { path: path('Patient.name'), source: int(0), destination: int(1) }), (p) => assert.deepEqual(p.name.map((n: any) => n.use ?? n.family), ['Chalmers', 'nickname'])],
    ];
    for (const [i, [operation, check]] of steps.entries()) {
      const r = await fhir(srv.url, 'PATCH', `Patient/${id}`, patchOf(operation), FHIR);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('etag'), `W/"${i + 2}"`);
      check(r.json);
      const stored = await version('Patient', id);
      assert.equal(stored.versionId, String(i + 2));
      check(stored.json);
    }
  });

  test('application/json with a Parameters body is a FHIRPath Patch too; a JSON Patch array as FHIR JSON is 415', async () => {
    const id = await newPatient();
    const r = await fhir(srv.url, 'PATCH', `Patient/${id}`, patchOf(op('add', { path: path('Patient'), name: path('active'), value: { valueBoolean: true } })), { 'content-type': 'application/json' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.active, true);
    const array = await fhir(srv.url, 'PATCH', `Patient/${id}`, [{ op: 'add', path: '/gender', value: 'male' }], FHIR);
    assert.equal(array.status, 415);
    assert.equal(array.json.resourceType, 'OperationOutcome');
    const wrongWay = await fhir(srv.url, 'PATCH', `Patient/${id}`, patchOf(op('delete', { path: path('Patient.active') })), { 'content-type': 'application/json-patch+json' });
    assert.equal(wrongWay.status, 400);
    assert.equal((await version('Patient', id)).versionId, '2');
    assert.equal((await fhir(srv.url, 'PATCH', 'Patient/nope', patchOf(op('delete', { path: path('Patient.active') })), FHIR)).status, 404);
  });

  test('If-Match: a stale version is 412 and nothing is written; the current one applies', async () => {
    const id = await newPatient();
    const body = patchOf(op('replace', { path: path('Patient.birthDate'), value: { valueDate: '1999-09-09' } }));
    const stale = await fhir(srv.url, 'PATCH', `Patient/${id}`, body, { ...FHIR, 'if-match': 'W/"7"' });
    assert.equal(stale.status, 412, stale.text);
    assert.deepEqual([(await version('Patient', id)).versionId, (await version('Patient', id)).json.birthDate], ['1', '1970-01-01']);
    const current = await fhir(srv.url, 'PATCH', `Patient/${id}`, body, { ...FHIR, 'if-match': 'W/"1"' });
    assert.equal(current.status, 200, current.text);
    assert.equal(current.json.birthDate, '1999-09-09');
  });

  test('bad patches are 400 or 422 OperationOutcomes and leave the resource as it was', async () => {
    const id = await newPatient();
    const before = await version('Patient', id);
    const cases: [object, number, RegExp][] = [
      [{ resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }] }] }, 400, /needs a 'path' part/],
      [patchOf(op('replace', { path: path('Patient.name.given.'), value: { valueString: 'x' } })), 400, /not FHIRPath/],
      [patchOf(op('replace', { path: path('Patient.gender'), value: { valueCode: 'male' } })), 422, /matches nothing/],
      [patchOf(op('replace', { path: path('Patient.identifier'), value: { valueIdentifier: { value: 'x' } } })), 422, /matches 2 elements/],
      [patchOf(op('insert', { path: path('Patient.identifier'), index: int(5), value: { valueIdentifier: { value: 'x' } } })), 422, /past the end/],
      [patchOf(op('add', { path: path('Patient'), name: path('birthDate'), value: { valueDate: '2000-01-01' } })), 422, /already has a value/],
      // The first operation would apply; the second fails, so neither is kept.
      [patchOf(op('replace', { path: path('Patient.birthDate'), value: { valueDate: '2001-01-01' } }), op('move', { path: path('Patient.identifier'), source: int(0), destination: int(9) })), 422, /destination 9/],
    ];
    for (const [body, status, pattern] of cases) {
      const r = await fhir(srv.url, 'PATCH', `Patient/${id}`, body, FHIR);
      assert.equal(r.status, status, r.text);
      assert.equal(r.json?.resourceType, 'OperationOutcome');
      assert.match(r.json.issue[0].diagnostics, pattern);
    }
    const after = await version('Patient', id);
    assert.equal(after.versionId, before.versionId, 'no version was written');
    assert.deepEqual(after.json, before.json);
  });

  test('a patch that leaves the resource invalid is 400 and nothing is stored', async () => {
    const id = await newPatient();
    const notADate = await fhir(srv.url, 'PATCH', `Patient/${id}`, patchOf(op('replace', { path: path('Patient.birthDate'), value: { valueString: 'last spring' } })), FHIR);
    assert.equal(notADate.status, 400, notADate.text);
    const changesId = await fhir(srv.url, 'PATCH', `Patient/${id}`, patchOf(op('replace', { path: path('Patient.id'), value: { valueId: 'other' } })), FHIR);
    assert.equal(changesId.status, 400, changesId.text);
    const obs = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'weight' }, subject: { reference: `Patient/${id}` } });
    assert.equal(obs.status, 201, obs.text);
    const noStatus = await fhir(srv.url, 'PATCH', `Observation/${obs.json.id}`, patchOf(op('delete', { path: path('Observation.status') })), FHIR);
    assert.equal(noStatus.status, 400, 'Observation.status is required');
    assert.equal((await version('Patient', id)).versionId, '1');
    assert.equal((await version('Observation', obs.json.id)).json.status, 'final');
  });

  test('a transaction entry whose resource is a Parameters is a FHIRPath Patch; references to other entries are rewritten', async () => {
    const id = await newPatient();
    const org = 'urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427';
    const r = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: org, resource: { resourceType: 'Organization', name: 'Clinic' }, request: { method: 'POST', url: 'Organization' } },
        {
          resource: patchOf(
            op('replace', { path: path('Patient.birthDate'), value: { valueDate: '1980-05-05' } }),
            op('add', { path: path('Patient'), name: path('managingOrganization'), value: { valueReference: { reference: org } } }),
          ),
          request: { method: 'PATCH', url: `Patient/${id}`, ifMatch: 'W/"1"' },
        },
      ],
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.entry[1].response.etag, 'W/"2"');
    const stored = await version('Patient', id);
    assert.equal(stored.json.birthDate, '1980-05-05');
    const orgId = r.json.entry[0].response.location.split('/')[1];
    assert.equal(stored.json.managingOrganization.reference, `Organization/${orgId}`);
  });

  test('a failing FHIRPath Patch entry fails its transaction (nothing written) and is its own 4xx in a batch', async () => {
    const id = await newPatient();
    const bad = patchOf(op('replace', { path: path('Patient.gender'), value: { valueCode: 'male' } }));
    const tx = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { resourceType: 'Patient', name: [{ family: 'NotKept' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: bad, request: { method: 'PATCH', url: `Patient/${id}` } },
      ],
    });
    assert.equal(tx.status, 422, tx.text);
    assert.match(tx.json.issue[0].diagnostics, /Bundle.entry\[1\].*matches nothing/);
    assert.equal((await fhir(srv.url, 'GET', 'Patient?family=NotKept')).json.entry?.length ?? 0, 0);
    const malformed = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [{ resource: patchOf(op('nope', {})), request: { method: 'PATCH', url: `Patient/${id}` } }],
    });
    assert.equal(malformed.status, 400, malformed.text);
    const batch = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'batch', entry: [
        { resource: bad, request: { method: 'PATCH', url: `Patient/${id}` } },
        { resource: patchOf(op('add', { path: path('Patient'), name: path('gender'), value: { valueCode: 'male' } })), request: { method: 'PATCH', url: `Patient/${id}` } },
      ],
    });
    assert.equal(batch.status, 200, batch.text);
    assert.equal(batch.json.entry[0].response.status, '422');
    assert.match(batch.json.entry[1].response.status, /^200/);
    assert.equal((await version('Patient', id)).json.gender, 'male');
  });

  test('the CapabilityStatement lists application/fhir+json as a patch format', async () => {
    const r = await fhir(srv.url, 'GET', 'metadata');
    assert.deepEqual(r.json.patchFormat, ['application/json-patch+json', 'application/fhir+json']);
  });
});
