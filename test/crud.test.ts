// The RESTful interactions over real HTTP: status codes, headers, versions,
// conditional forms, negotiation and errors (http.html).
import { RESOURCE_TYPES, isR4Type } from '../mappings/resourceTypes.ts';
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from 'fhir-kit-client';
import { searchParamsFor } from '../mappings/search/definitions.ts';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer({ bodyLimit: '200kb' }); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const SAMPLE: Record<string, string> = { token: 'x', string: 'x', reference: 'Patient/x', date: '2000', number: '1', quantity: '1', uri: 'http://x' };
/** A well-formed value for a search parameter of the given type. */
function sampleValue(type: string, sp: { name: string; type: string }): string {
  if (sp.type !== 'composite') return SAMPLE[sp.type];
  const def = searchParamsFor(type).find((d) => d.code === sp.name)!;
  return def.components!.map((c) => SAMPLE[c.type]).join('$');
}

const patient = (family: string, extra: object = {}) => ({ resourceType: 'Patient', name: [{ family, given: ['Test'] }], gender: 'female', birthDate: '1980-02-03', ...extra });

function assertOutcome(r: { json: any }, code?: string) {
  assert.equal(r.json?.resourceType, 'OperationOutcome', `expected an OperationOutcome, got ${JSON.stringify(r.json)}`);
  assert.ok(r.json.issue.length > 0);
  if (code) assert.equal(r.json.issue[0].code, code);
  assert.doesNotMatch(JSON.stringify(r.json), /at .*\.ts:\d+/, 'no stack trace');
}

describe('create / read / vread', () => {
  test('create assigns id, version 1, Location, ETag, Last-Modified', async () => {
    const r = await fhir(srv.url, 'POST', 'Patient', { ...patient('Create'), id: 'client-chosen' });
    assert.equal(r.status, 201);
    assert.notEqual(r.json.id, 'client-chosen', 'server ignores a client id on create');
    assert.equal(r.json.meta.versionId, '1');
    assert.match(r.json.meta.lastUpdated, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.equal(r.headers.get('etag'), 'W/"1"');
    assert.equal(r.headers.get('location'), `${srv.url}/Patient/${r.json.id}/_history/1`);
    assert.equal(new Date(r.headers.get('last-modified')!).getTime(), Math.floor(Date.parse(r.json.meta.lastUpdated) / 1000) * 1000);
    assert.match(r.headers.get('content-type')!, /^application\/fhir\+json/);

    const read = await fhir(srv.url, 'GET', `Patient/${r.json.id}`);
    assert.equal(read.status, 200);
    assert.deepEqual(read.json, r.json);
    assert.equal(read.headers.get('etag'), 'W/"1"');
    const v = await fhir(srv.url, 'GET', `Patient/${r.json.id}/_history/1`);
    assert.deepEqual(v.json, r.json);
  });

  test('read keeps the JSON text as written (key order, numbers)', async () => {
    const body = '{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":70.50,"unit":"kg"}}';
    const c = await fhir(srv.url, 'POST', 'Observation', body);
    assert.equal(c.status, 201);
    const r = await fhir(srv.url, 'GET', `Observation/${c.json.id}`);
    assert.match(r.text, /^\{"resourceType":"Observation","id":"[^"]+","meta":\{[^}]+\},"status":"final","code":\{"text":"weight"\}/);
    assert.ok(r.text.includes('"value":70.50'), 'decimal precision kept');
  });

  test('unknown id is 404, unknown version 404, bad id 400', async () => {
    assertOutcome(await fhir(srv.url, 'GET', 'Patient/does-not-exist'), 'not-found');
    const c = await fhir(srv.url, 'POST', 'Patient', patient('V'));
    const r = await fhir(srv.url, 'GET', `Patient/${c.json.id}/_history/9`);
    assert.equal(r.status, 404);
    assertOutcome(r);
    const bad = await fhir(srv.url, 'GET', `Patient/${'x'.repeat(65)}`);
    assert.equal(bad.status, 400);
    assertOutcome(bad);
  });

  test('If-None-Match and If-Modified-Since give 304', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Cache'));
    const r = await fhir(srv.url, 'GET', `Patient/${c.json.id}`, undefined, { 'if-none-match': 'W/"1"' });
    assert.equal(r.status, 304);
    const r2 = await fhir(srv.url, 'GET', `Patient/${c.json.id}`, undefined, { 'if-none-match': 'W/"7"' });
    assert.equal(r2.status, 200);
    const r3 = await fhir(srv.url, 'GET', `Patient/${c.json.id}`, undefined, { 'if-modified-since': new Date(Date.now() + 60_000).toUTCString() });
    assert.equal(r3.status, 304);
  });
});

describe('update / delete / revive', () => {
  test('update-as-create with a client id, then versions 2 and 3', async () => {
    const id = `upd-${Date.now()}`;
    const c = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Put'), id });
    assert.equal(c.status, 201);
    assert.equal(c.json.meta.versionId, '1');
    const u = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Put2'), id });
    assert.equal(u.status, 200);
    assert.equal(u.json.meta.versionId, '2');
    assert.equal(u.headers.get('etag'), 'W/"2"');
    const v1 = await fhir(srv.url, 'GET', `Patient/${id}/_history/1`);
    assert.equal(v1.json.name[0].family, 'Put');
    const read = await fhir(srv.url, 'GET', `Patient/${id}`);
    assert.equal(read.json.name[0].family, 'Put2');
  });

  test('PUT without id or with a different id is 400 and stores nothing', async () => {
    const id = `noid-${Date.now()}`;
    assertOutcome(await fhir(srv.url, 'PUT', `Patient/${id}`, patient('X')));
    const r = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('X'), id: 'other' });
    assert.equal(r.status, 400);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).status, 404);
  });

  test('If-Match: matching version updates, stale version gets 412', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Lock'));
    const id = c.json.id;
    const ok = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Lock2'), id }, { 'if-match': 'W/"1"' });
    assert.equal(ok.status, 200);
    const stale = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Lock3'), id }, { 'if-match': 'W/"1"' });
    assert.equal(stale.status, 412);
    assertOutcome(stale);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).json.name[0].family, 'Lock2');
    const malformed = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Lock4'), id }, { 'if-match': 'banana' });
    assert.equal(malformed.status, 400);
  });

  test('delete gives 410 on read, history keeps it, a later update revives the id', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Del'));
    const id = c.json.id;
    const d = await fhir(srv.url, 'DELETE', `Patient/${id}`);
    assert.equal(d.status, 204);
    assert.equal(d.headers.get('etag'), 'W/"2"');
    const gone = await fhir(srv.url, 'GET', `Patient/${id}`);
    assert.equal(gone.status, 410);
    assertOutcome(gone, 'deleted');
    assert.equal((await fhir(srv.url, 'DELETE', `Patient/${id}`)).status, 204, 'deleting again is idempotent');
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}/_history/2`)).status, 410);
    const revived = await fhir(srv.url, 'PUT', `Patient/${id}`, { ...patient('Back'), id });
    assert.equal(revived.status, 201);
    assert.equal(revived.json.meta.versionId, '3');
    const h = await fhir(srv.url, 'GET', `Patient/${id}/_history`);
    assert.equal(h.json.type, 'history');
    assert.equal(h.json.total, 3);
    assert.deepEqual(h.json.entry.map((e: any) => e.request.method), ['PUT', 'DELETE', 'POST']);
    assert.equal(h.json.entry[1].resource, undefined);
    assert.equal((await fhir(srv.url, 'DELETE', 'Patient/never-was')).status, 404);
  });

  test('a patient still referenced by clinical data cannot be deleted (409)', async () => {
    const p = await fhir(srv.url, 'POST', 'Patient', patient('Ref'));
    const o = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${p.json.id}` } });
    assert.equal(o.status, 201);
    const d = await fhir(srv.url, 'DELETE', `Patient/${p.json.id}`);
    assert.equal(d.status, 409);
    assertOutcome(d);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${p.json.id}`)).status, 200);
  });
});

describe('patch', () => {
  test('JSON Patch applies, versions, validates', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Patch'));
    const id = c.json.id;
    const ops = [{ op: 'replace', path: '/name/0/family', value: 'Patched' }, { op: 'add', path: '/active', value: true }];
    const r = await fhir(srv.url, 'PATCH', `Patient/${id}`, ops, { 'content-type': 'application/json-patch+json' });
    assert.equal(r.status, 200);
    assert.equal(r.json.name[0].family, 'Patched');
    assert.equal(r.json.active, true);
    assert.equal(r.json.meta.versionId, '2');
    const invalid = await fhir(srv.url, 'PATCH', `Patient/${id}`, [{ op: 'replace', path: '/birthDate', value: 'not-a-date' }], { 'content-type': 'application/json-patch+json' });
    assert.equal(invalid.status, 400);
    assertOutcome(invalid);
    const failedTest = await fhir(srv.url, 'PATCH', `Patient/${id}`, [{ op: 'test', path: '/active', value: false }], { 'content-type': 'application/json-patch+json' });
    assert.equal(failedTest.status, 422);
    const wrongType = await fhir(srv.url, 'PATCH', `Patient/${id}`, ops, { 'content-type': 'application/fhir+json' });
    assert.equal(wrongType.status, 415);
    const changeId = await fhir(srv.url, 'PATCH', `Patient/${id}`, [{ op: 'replace', path: '/id', value: 'zzz' }], { 'content-type': 'application/json-patch+json' });
    assert.equal(changeId.status, 400);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).json.meta.versionId, '2', 'failed patches store nothing');
    assert.equal((await fhir(srv.url, 'PATCH', 'Patient/nope', ops, { 'content-type': 'application/json-patch+json' })).status, 404);
  });
});

describe('conditional interactions', () => {
  test('If-None-Exist: 0 matches creates, 1 returns the existing, 2 gives 412', async () => {
    const ident = { identifier: [{ system: 'urn:test:cond', value: `c-${Date.now()}` }] };
    const crit = `identifier=urn:test:cond|${ident.identifier[0].value}`;
    const a = await fhir(srv.url, 'POST', 'Patient', patient('Cond', ident), { 'if-none-exist': crit });
    assert.equal(a.status, 201);
    const b = await fhir(srv.url, 'POST', 'Patient', patient('Cond', ident), { 'if-none-exist': crit });
    assert.equal(b.status, 200);
    assert.equal(b.json.id, a.json.id);
    await fhir(srv.url, 'POST', 'Patient', patient('Cond', ident));
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Cond', ident), { 'if-none-exist': crit });
    assert.equal(c.status, 412);
    assertOutcome(c);
    const unsupported = await fhir(srv.url, 'POST', 'Patient', patient('Cond'), { 'if-none-exist': 'nonsense-param=1' });
    assert.equal(unsupported.status, 400);
  });

  test('concurrent conditional creates with the same criteria create one resource', async () => {
    const value = `race-${Date.now()}`;
    const results = await Promise.all(Array.from({ length: 10 }, () =>
      fhir(srv.url, 'POST', 'Patient', patient('Race', { identifier: [{ system: 'urn:race', value }] }), { 'if-none-exist': `identifier=urn:race|${value}` })));
    assert.equal(results.filter((r) => r.status === 201).length, 1);
    assert.equal(new Set(results.map((r) => r.json.id)).size, 1);
  });

  test('conditional update: 0 creates, 1 updates, many is 412', async () => {
    const value = `cu-${Date.now()}`;
    const url = `Patient?identifier=urn:cu|${value}`;
    const body = patient('CU', { identifier: [{ system: 'urn:cu', value }] });
    const a = await fhir(srv.url, 'PUT', url, body);
    assert.equal(a.status, 201);
    const b = await fhir(srv.url, 'PUT', url, { ...body, gender: 'male' });
    assert.equal(b.status, 200);
    assert.equal(b.json.id, a.json.id);
    assert.equal(b.json.meta.versionId, '2');
    const wrongId = await fhir(srv.url, 'PUT', url, { ...body, id: 'another' });
    assert.equal(wrongId.status, 400);
    await fhir(srv.url, 'POST', 'Patient', body);
    assert.equal((await fhir(srv.url, 'PUT', url, body)).status, 412);
  });

  test('conditional delete: 1 match deletes, many is 412, none is 204', async () => {
    const value = `cd-${Date.now()}`;
    const body = patient('CD', { identifier: [{ system: 'urn:cd', value }] });
    const a = await fhir(srv.url, 'POST', 'Patient', body);
    assert.equal((await fhir(srv.url, 'DELETE', `Patient?identifier=urn:cd|${value}`)).status, 204);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${a.json.id}`)).status, 410);
    await fhir(srv.url, 'POST', 'Patient', body);
    await fhir(srv.url, 'POST', 'Patient', body);
    assert.equal((await fhir(srv.url, 'DELETE', `Patient?identifier=urn:cd|${value}`)).status, 412);
    assert.equal((await fhir(srv.url, 'DELETE', 'Patient?identifier=urn:cd|nothing-matches')).status, 204);
  });
});

describe('Prefer, formats and errors', () => {
  test('Prefer return=minimal / OperationOutcome / representation', async () => {
    const min = await fhir(srv.url, 'POST', 'Patient', patient('Min'), { prefer: 'return=minimal' });
    assert.equal(min.status, 201);
    assert.equal(min.text, '');
    assert.ok(min.headers.get('location'));
    const oo = await fhir(srv.url, 'POST', 'Patient', patient('OO'), { prefer: 'return=OperationOutcome' });
    assert.equal(oo.status, 201);
    assert.equal(oo.json.resourceType, 'OperationOutcome');
    const rep = await fhir(srv.url, 'POST', 'Patient', patient('Rep'), { prefer: 'return=representation' });
    assert.equal(rep.json.resourceType, 'Patient');
  });

  test('_format, Accept, _pretty, 406 and 415', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', patient('Fmt'));
    const j = await fhir(srv.url, 'GET', `Patient/${c.json.id}?_format=json&_pretty=true`);
    assert.equal(j.status, 200);
    assert.match(j.text, /\n  "resourceType": "Patient"/);
    const appJson = await fhir(srv.url, 'GET', `Patient/${c.json.id}`, undefined, { accept: 'application/json' });
    assert.match(appJson.headers.get('content-type')!, /^application\/json/);
    const xml = await fhir(srv.url, 'GET', `Patient/${c.json.id}`, undefined, { accept: 'application/fhir+xml' });
    assert.equal(xml.status, 406);
    assertOutcome(xml);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${c.json.id}?_format=xml`)).status, 406);
    const wrongCt = await fhir(srv.url, 'POST', 'Patient', JSON.stringify(patient('X')), { 'content-type': 'application/xml' });
    assert.equal(wrongCt.status, 415);
    assertOutcome(wrongCt);
    const plainJson = await fhir(srv.url, 'POST', 'Patient', patient('J'), { 'content-type': 'application/json' });
    assert.equal(plainJson.status, 201);
  });

  test('bad input: malformed JSON, wrong type, invalid values, too large; nothing stored', async () => {
    const before = (await fhir(srv.url, 'GET', '_history?_count=1')).json.entry[0].fullUrl;
    const malformed = await fhir(srv.url, 'POST', 'Patient', '{"resourceType": "Patient",');
    assert.equal(malformed.status, 400);
    assertOutcome(malformed);
    const wrongType = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Observation', status: 'final', code: { text: 'x' } });
    assert.equal(wrongType.status, 400);
    const invalid = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', birthDate: '1980-13-45', gender: 7, unknownField: 1 });
    assert.equal(invalid.status, 400);
    assertOutcome(invalid);
    const expressions = invalid.json.issue.flatMap((i: any) => i.expression ?? []);
    assert.ok(expressions.includes('Patient.birthDate'), JSON.stringify(invalid.json));
    assert.ok(expressions.some((e: string) => e.startsWith('Patient.gender')), JSON.stringify(invalid.json));
    assert.ok(expressions.includes('Patient.unknownField'), JSON.stringify(invalid.json));
    const missingRequired = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', code: { text: 'x' } });
    assert.equal(missingRequired.status, 400);
    assert.ok(missingRequired.json.issue.some((i: any) => (i.expression ?? []).some((e: string) => e.includes('status'))));
    const big = await fhir(srv.url, 'POST', 'Patient', patient('Big', { text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${'x'.repeat(300_000)}</div>` } }));
    assert.equal(big.status, 413);
    assertOutcome(big);
    const danglingRef = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/missing' } });
    assert.equal(danglingRef.status, 422);
    assertOutcome(danglingRef);
    assert.equal((await fhir(srv.url, 'GET', '_history?_count=1')).json.entry[0].fullUrl, before, 'no rejected write left a version');
  });

  test('unknown type 404, unsupported interaction 405, unknown tenant 404', async () => {
    const t = await fhir(srv.url, 'GET', 'Parameters/1');
    assert.equal(t.status, 404);
    assertOutcome(t);
    const m = await fhir(srv.url, 'POST', 'Patient/abc', patient('X'));
    assert.equal(m.status, 405);
    assertOutcome(m);
    assert.equal((await fhir(srv.url, 'PATCH', 'Patient/abc/_history', [])).status, 405);
    const tenant = await fhir(srv.url, 'GET', 'no-such-tenant/Patient/1');
    assert.equal(tenant.status, 404);
    assertOutcome(tenant);
  });

  test('metadata advertises every stored type and every interaction works', async () => {
    const cs = await fhir(srv.url, 'GET', 'metadata');
    assert.equal(cs.status, 200);
    assert.equal(cs.json.fhirVersion, '4.0.1');
    const types = cs.json.rest[0].resource.map((r: any) => r.type).sort();
    assert.deepEqual(types, [...RESOURCE_TYPES]);
    assert.equal(types.filter(isR4Type).length, 145, 'every R4 type with a RESTful endpoint');
    const obs = cs.json.rest[0].resource.find((r: any) => r.type === 'Observation');
    assert.ok(obs.supportedProfile.includes('http://hl7.org/fhir/StructureDefinition/vitalsigns'));
    // Exercise each advertised interaction on every type once.
    const bodies: Record<string, any> = {
      Patient: patient('Cap'),
      Encounter: { resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } },
      Observation: { resourceType: 'Observation', status: 'final', code: { text: 'cap' } },
      MedicationStatement: { resourceType: 'MedicationStatement', status: 'active', medicationCodeableConcept: { text: 'aspirin' }, subject: { reference: `Patient/${(await fhir(srv.url, 'POST', 'Patient', patient('CapSubject'))).json.id}` } },
      Group: { resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${(await fhir(srv.url, 'POST', 'Patient', patient('CapMember'))).json.id}` } }] },
      AuditEvent: { resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: new Date().toISOString(), agent: [{ requestor: true, who: { display: 'tester' } }], source: { observer: { display: 'kiln' } } },
      // Two of the generic store's (test/alltypes.test.ts covers every type).
      Organization: { resourceType: 'Organization', name: 'Cap Clinic' },
      Condition: { resourceType: 'Condition', code: { text: 'cap' }, subject: { reference: `Patient/${(await fhir(srv.url, 'POST', 'Patient', patient('CapCondition'))).json.id}` } },
    };
    for (const r of cs.json.rest[0].resource.filter((x: any) => bodies[x.type])) {
      const codes = r.interaction.map((i: any) => i.code);
      const c = await fhir(srv.url, 'POST', r.type, bodies[r.type]);
      assert.equal(c.status, 201, `${r.type} create: ${c.text}`);
      const id = c.json.id;
      if (codes.includes('read')) assert.equal((await fhir(srv.url, 'GET', `${r.type}/${id}`)).status, 200);
      if (codes.includes('vread')) assert.equal((await fhir(srv.url, 'GET', `${r.type}/${id}/_history/1`)).status, 200);
      // An interaction that is not advertised is refused (405), and leaves no version.
      const update = await fhir(srv.url, 'PUT', `${r.type}/${id}`, { ...bodies[r.type], id });
      assert.equal(update.status, codes.includes('update') ? 200 : 405, `${r.type} update: ${update.text}`);
      const patched = await fhir(srv.url, 'PATCH', `${r.type}/${id}`, [{ op: 'add', path: '/language', value: 'en' }], { 'content-type': 'application/json-patch+json' });
      assert.equal(patched.status, codes.includes('patch') ? 200 : 405, `${r.type} patch: ${patched.text}`);
      const versions = 1 + (codes.includes('update') ? 1 : 0) + (codes.includes('patch') ? 1 : 0);
      if (codes.includes('history-instance')) assert.equal((await fhir(srv.url, 'GET', `${r.type}/${id}/_history`)).json.total, versions);
      if (codes.includes('history-type')) assert.ok((await fhir(srv.url, 'GET', `${r.type}/_history`)).json.entry.length >= versions);
      if (codes.includes('search-type')) {
        for (const sp of r.searchParam) {
          const s = await fhir(srv.url, 'GET', `${r.type}?${sp.name}=${encodeURIComponent(sampleValue(r.type, sp))}`, undefined, { prefer: 'handling=strict' });
          assert.equal(s.status, 200, `${r.type}?${sp.name}: ${s.text}`);
          assert.equal(s.json.type, 'searchset');
        }
        const s = await fhir(srv.url, 'GET', `${r.type}?_id=${id}`);
        assert.equal(s.json.entry.length, 1);
      }
      assert.equal((await fhir(srv.url, 'DELETE', `${r.type}/${id}`)).status, codes.includes('delete') ? 204 : 405, `${r.type} delete`);
      if (!codes.includes('delete')) assert.equal((await fhir(srv.url, 'GET', `${r.type}/${id}`)).status, 200);
    }
  });
});

describe('history paging', () => {
  test('type history pages with _count and _since, every version exactly once', async () => {
    const since = new Date().toISOString();
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await fhir(srv.url, 'POST', 'Encounter', { resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' } })).json.id);
    await fhir(srv.url, 'PUT', `Encounter/${ids[0]}`, { resourceType: 'Encounter', id: ids[0], status: 'finished', class: { code: 'AMB' } });
    let url: string | undefined = `${srv.url}/Encounter/_history?_count=3&_since=${encodeURIComponent(since)}`;
    const seen: string[] = [];
    let pages = 0;
    while (url) {
      const page: any = await (await fetch(url)).json();
      assert.equal(page.type, 'history');
      assert.ok(page.entry.length <= 3);
      seen.push(...page.entry.map((e: any) => `${e.resource.id}/${e.resource.meta.versionId}`));
      // A write between pages must not shift the pages already walked.
      if (pages === 0) await fhir(srv.url, 'POST', 'Encounter', { resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' } });
      url = page.link.find((l: any) => l.relation === 'next')?.url;
      pages++;
    }
    assert.equal(seen.length, 8);
    assert.equal(new Set(seen).size, 8);
    assert.ok(seen.includes(`${ids[0]}/2`) && seen.includes(`${ids[0]}/1`));
    assert.equal((await fhir(srv.url, 'GET', 'Encounter/_history?_since=yesterday')).status, 400);
    assert.equal((await fhir(srv.url, 'GET', 'Encounter/_history?_count=-1')).status, 400);
  });
});

test('fhir-kit-client works against Kiln', async () => {
  const client = new Client({ baseUrl: srv.url });
  const created: any = await client.create({ resourceType: 'Patient', body: patient('Kit') });
  const read: any = await client.read({ resourceType: 'Patient', id: created.id });
  assert.equal(read.name[0].family, 'Kit');
  const updated: any = await client.update({ resourceType: 'Patient', id: created.id, body: { ...read, gender: 'male' } });
  assert.equal(updated.meta.versionId, '2');
  const bundle: any = await client.search({ resourceType: 'Patient', searchParams: { family: 'kit' } });
  assert.ok(bundle.entry.some((e: any) => e.resource.id === created.id));
  const hist: any = await client.history({ resourceType: 'Patient', id: created.id });
  assert.equal(hist.total, 2);
  await client.delete({ resourceType: 'Patient', id: created.id });
  await assert.rejects(() => client.read({ resourceType: 'Patient', id: created.id }), (e: any) => e.response?.status === 410);
});
