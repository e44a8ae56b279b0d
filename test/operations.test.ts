// Operations (src/operations/, one file each) and their OperationDefinitions (conformance/):
// what the CapabilityStatement advertises is defined by a file there, answers at every level
// the file declares, and accepts every parameter the file lists.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { ROUTES, type Route } from '../src/interactions/routes.ts';

const CONFORMANCE = new URL('../conformance/', import.meta.url);
/** Read from disk here, not through src/operations/definitions.ts, so the test does not trust the code it checks. */
const FILES: Record<string, any> = Object.fromEntries(fs.readdirSync(CONFORMANCE)
  .filter((f) => /^OperationDefinition-.*\.json$/.test(f))
  .map((f) => [f, JSON.parse(fs.readFileSync(new URL(f, CONFORMANCE), 'utf8'))]));
const byUrl = (url: string) => Object.values(FILES).find((od) => od.url === url);
/** The types a file is on: `resource`, and for a type that is not R4 (ViewDefinition) Kiln's extension. */
const typesOn = (od: any): string[] => [...od.resource ?? [],
  ...(od.extension ?? []).filter((e: any) => e.url === 'urn:kiln:StructureDefinition:operation-resource').map((e: any) => e.valueCode)];

const KICKOFF = { prefer: 'respond-async' };

/** Waits for the job an accepted kick-off started to complete, then removes it, so none is left running when the server stops. */
async function cancel(r: { status: number; headers: Headers }): Promise<void> {
  const status = r.headers.get('content-location');
  if (r.status !== 202 || !status) return;
  let polled = await fetch(status);
  for (let polls = 0; polled.status === 202; polls++) {
    assert.ok(polls < 600, `${status} did not finish`);
    await new Promise((done) => setTimeout(done, 50));
    polled = await fetch(status);
  }
  assert.equal(polled.status, 200, `${status}: ${await polled.text()}`);
  assert.equal((await fetch(status, { method: 'DELETE' })).status, 202);
}

let srv: TestServer;
let cs: any;
let patientId: string;
let groupId: string;
before(async () => {
  srv = await startTestServer();
  cs = (await fhir(srv.url, 'GET', 'metadata')).json;
  patientId = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', gender: 'female', name: [{ family: 'Ops' }] })).json.id;
  groupId = (await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', type: 'person', actual: true,
    member: [{ entity: { reference: `Patient/${patientId}` } }] })).json.id;
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

/** Every operation the CapabilityStatement advertises: [type or undefined for the system level, entry]. */
function advertised(): [string | undefined, { name: string; definition: string }][] {
  const rest = cs.rest[0];
  return [
    ...(rest.operation ?? []).map((o: any) => [undefined, o] as [undefined, any]),
    ...rest.resource.flatMap((r: any) => (r.operation ?? []).map((o: any) => [r.type, o] as [string, any])),
  ];
}

describe('the CapabilityStatement and conformance/', () => {
  test('every advertised operation is defined by a file in conformance/ with its code and url, at its level and type', () => {
    const ops = advertised();
    // validate on every type, everything and export on Patient, export on Group and the system, run and
    // viewdefinition-export on ViewDefinition, viewdefinition-export on the system.
    assert.equal(ops.length, cs.rest[0].resource.length + 7);
    for (const [type, o] of ops) {
      const od = byUrl(o.definition);
      assert.ok(od, `${type ?? 'system'} $${o.name}: no file in conformance/ has url ${o.definition}`);
      assert.equal(od.resourceType, 'OperationDefinition');
      assert.equal(od.code, o.name, o.definition);
      if (type === undefined) assert.equal(od.system, true, `${o.definition} is not system-level`);
      else {
        assert.ok(od.type || od.instance, `${o.definition} has no type or instance level`);
        assert.ok(typesOn(od).includes(type) || typesOn(od).includes('Resource'), `${o.definition} is not on ${type}`);
      }
    }
  });

  test('the system export, Patient everything and export, Group export and every type validate are advertised with their canonical urls', () => {
    const find = (type: string | undefined, name: string) => advertised().filter(([t, o]) => t === type && o.name === name).map(([, o]) => o.definition);
    assert.deepEqual(find(undefined, 'export'), ['http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export']);
    assert.deepEqual(find('Patient', 'export'), ['http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export']);
    assert.deepEqual(find('Group', 'export'), ['http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export']);
    assert.deepEqual(find('Patient', 'everything'), ['http://hl7.org/fhir/OperationDefinition/Patient-everything']);
    assert.deepEqual(find('Observation', 'everything'), []);
    for (const r of cs.rest[0].resource) assert.equal(find(r.type, 'validate').length, 1, r.type);
  });

  test('every file in conformance/ is advertised, and every route that runs it names it', () => {
    const urls = new Set(advertised().map(([, o]) => o.definition));
    for (const [file, od] of Object.entries(FILES)) assert.ok(urls.has(od.url), `${file} (${od.url}) is not in the CapabilityStatement`);
    for (const r of ROUTES as readonly Route[]) {
      // An operation's own route ends in $code ($export-status and $export-file are the async pattern's).
      if (!r.operation || !r.pattern.endsWith(`$${r.operation}`)) continue;
      assert.ok(r.definition && FILES[r.definition], `route ${r.name} names no file in conformance/`);
      assert.equal(FILES[r.definition].code, r.operation, r.name);
    }
  });

  test('each file is a valid OperationDefinition (Kiln\'s own $validate)', async () => {
    for (const [file, od] of Object.entries(FILES)) {
      const r = await fhir(srv.url, 'POST', 'OperationDefinition/$validate', od);
      assert.equal(r.status, 200, r.text);
      const errors = r.json.issue.filter((i: any) => i.severity === 'error' || i.severity === 'fatal');
      assert.deepEqual(errors, [], file);
    }
  });
});

describe('each advertised operation answers at its levels', () => {
  /** The paths of an operation at the levels its definition declares, with a stored id where one exists. */
  function paths(type: string | undefined, od: any): { level: string; path: string; missing?: string }[] {
    if (type === undefined) return [{ level: 'system', path: `$${od.code}` }];
    const id = type === 'Patient' ? patientId : type === 'Group' ? groupId : undefined;
    return [
      ...(od.type ? [{ level: 'type', path: `${type}/$${od.code}` }] : []),
      ...(od.instance ? [{ level: 'instance', path: `${type}/${id ?? 'no-such-id'}/$${od.code}`, ...(id ? {} : { missing: `${type}/no-such-id` }) }] : []),
    ];
  }

  test('GET or POST reaches the operation (not 404 or 405) for every type and level', async () => {
    let checked = 0;
    for (const [type, o] of advertised()) {
      for (const { level, path, missing } of paths(type, byUrl(o.definition))) {
        const answers = [await fhir(srv.url, 'GET', path, undefined, KICKOFF), await fhir(srv.url, 'POST', path, undefined, KICKOFF)];
        for (const a of answers) await cancel(a);
        // A missing instance is the operation's own 404, naming it: the route was found.
        const reached = answers.filter((a) => a.status !== 405 && (a.status !== 404 || (missing !== undefined && a.json?.issue?.[0]?.diagnostics?.includes(missing))));
        assert.ok(reached.length, `${level} $${o.name} on ${type ?? 'the base'}: ${answers.map((a) => `${a.status} ${a.text.slice(0, 200)}`).join(' | ')}`);
        assert.ok(answers.every((a) => a.status < 500), `${path}: ${answers.map((a) => a.status)}`);
        checked++;
      }
    }
    // Every type's validate at two levels, Patient's everything at two, the three exports at one each, ViewDefinition's run at two,
    // viewdefinition-export at the system and type levels.
    assert.equal(checked, 2 * cs.rest[0].resource.length + 9);
  });

  test('on stored resources: $everything 200 at both levels, each $export kick-off 202', async () => {
    assert.equal((await fhir(srv.url, 'GET', `Patient/${patientId}/$everything`)).status, 200);
    assert.equal((await fhir(srv.url, 'GET', 'Patient/$everything')).status, 200);
    for (const path of ['$export', 'Patient/$export', `Group/${groupId}/$export`]) {
      const r = await fhir(srv.url, 'GET', `${path}?_type=Patient`, undefined, KICKOFF);
      assert.equal(r.status, 202, `${path}: ${r.text}`);
      await cancel(r);
    }
  });
});

describe('the parameters a definition lists are the ones Kiln takes', () => {
  /** A value of each listed parameter; a parameter added to a file without one here fails the test. */
  const SAMPLE: Record<string, () => string> = {
    _outputFormat: () => 'application/fhir+ndjson', _since: () => '2020-01-01T00:00:00Z', _type: () => 'Patient',
    _elements: () => 'gender', _typeFilter: () => 'Patient?gender=female', patient: () => `Patient/${patientId}`,
    start: () => '2020-01-01', end: () => '2030-12-31', _count: () => '5',
  };
  const inputs = (file: string) => FILES[file].parameter.filter((p: any) => p.use === 'in').map((p: any) => p.name as string);

  test('$everything takes start, end, _since, _type and _count', async () => {
    const names = inputs('OperationDefinition-Patient-everything.json');
    assert.deepEqual(names, ['start', 'end', '_since', '_type', '_count']);
    for (const name of names) {
      const r = await fhir(srv.url, 'GET', `Patient/${patientId}/$everything?${name}=${encodeURIComponent(SAMPLE[name]())}`);
      assert.equal(r.status, 200, `${name}: ${r.text}`);
      assert.ok(r.json.entry.some((e: any) => e.resource.id === patientId), name);
    }
    // A malformed value is refused, so the parameter is really read.
    assert.equal((await fhir(srv.url, 'GET', `Patient/${patientId}/$everything?start=yesterday`)).status, 400);
  });

  for (const [file, path, hasPatient] of [
    ['OperationDefinition-export.json', () => '$export', false],
    ['OperationDefinition-patient-export.json', () => 'Patient/$export', true],
    ['OperationDefinition-group-export.json', () => `Group/${groupId}/$export`, true],
  ] as const) {
    test(`${file}: every listed parameter is accepted (202), includeAssociatedData and the unlisted are refused (400)`, async () => {
      const names: string[] = inputs(file);
      assert.equal(names.includes('patient'), hasPatient);
      for (const name of names) {
        assert.ok(SAMPLE[name], `no sample value for ${name}`);
        const query = new URLSearchParams([...(name === '_type' ? [] : [['_type', 'Patient']]), [name, SAMPLE[name]()]]);
        const r = await fhir(srv.url, 'GET', `${path()}?${query}`, undefined, KICKOFF);
        assert.equal(r.status, 202, `${name}: ${r.text}`);
        await cancel(r);
      }
      if (hasPatient) {
        // The IG's form: patient in a POST kick-off's Parameters body.
        const r = await fhir(srv.url, 'POST', path(), { resourceType: 'Parameters', parameter: [
          { name: '_type', valueString: 'Patient' }, { name: 'patient', valueReference: { reference: `Patient/${patientId}` } }] }, KICKOFF);
        assert.equal(r.status, 202, r.text);
        await cancel(r);
      }
      for (const name of ['includeAssociatedData', '_until', 'organizeOutputBy', ...hasPatient ? [] : ['patient']]) {
        assert.ok(!names.includes(name), name);
        const value = name === 'includeAssociatedData' ? 'LatestProvenanceResources' : name === '_until' ? '2030-01-01T00:00:00Z' : SAMPLE.patient();
        const r = await fhir(srv.url, 'GET', `${path()}?_type=Patient&${name}=${encodeURIComponent(value)}`, undefined, KICKOFF);
        assert.equal(r.status, 400, `${name}: ${r.status} ${r.text}`);
      }
    });
  }
});
