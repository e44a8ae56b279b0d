// SQL on FHIR v2 ViewDefinitions as stored resources of each tenant (CRUD, search, validation
// by src/views) and ViewDefinition/$run over the tenant's stored resources or given ones, in
// JSON, NDJSON and CSV, narrowed by patient, group, _since, _limit and the token's scopes.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';

let srv: TestServer;
let system: Record<string, string>;
before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  system = bearer(await token(srv, { scope: 'system/*.cruds' }));
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

type Json = Record<string, any>;

const patientView = (name = 'patient_demographics', status = 'active'): Json => ({
  resourceType: 'ViewDefinition',
  url: `http://example.org/views/${name}`,
  name, status, resource: 'Patient',
  select: [{ column: [
    { name: 'id', path: 'getResourceKey()', type: 'id' },
    { name: 'family', path: "name.where(use = 'official').family", type: 'string' },
    { name: 'birth_date', path: 'birthDate', type: 'date' },
  ] }],
});

const observationView: Json = {
  resourceType: 'ViewDefinition', name: 'vitals', status: 'draft', resource: 'Observation',
  select: [{ column: [
    { name: 'id', path: 'getResourceKey()', type: 'id' },
    { name: 'patient', path: 'subject.getReferenceKey(Patient)', type: 'string' },
    { name: 'code', path: "code.coding.where(system = 'http://loinc.org').code", type: 'code' },
    { name: 'value', path: 'value.ofType(Quantity).value', type: 'decimal' },
  ] }],
};

async function post(path: string, body: unknown, headers: Record<string, string> = system) {
  const r = await fhir(srv.url, 'POST', path, body, headers);
  assert.equal(r.status, 201, `${path}: ${r.text}`);
  return r.json;
}

/** A $run with a Parameters body; the raw answer. */
async function run(path: string, parameter: Json[], headers: Record<string, string> = system) {
  const res = await fetch(`${srv.url}/${path}`, {
    method: 'POST', headers: { 'content-type': 'application/fhir+json', ...headers }, body: JSON.stringify({ resourceType: 'Parameters', parameter }),
  });
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
}

async function get(path: string, headers: Record<string, string> = system) {
  const res = await fetch(`${srv.url}/${path}`, { headers });
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
}

const byId = (rows: Json[]) => [...rows].sort((a, b) => String(a.id).localeCompare(String(b.id)));

describe('ViewDefinition resources', () => {
  test('create, read, update, history, search by name, status, resource, url; delete', async () => {
    const a = await post('ViewDefinition', patientView('crud_a'));
    const b = await post('ViewDefinition', { ...observationView, name: 'crud_b' });
    assert.equal(a.resourceType, 'ViewDefinition');
    assert.equal(a.meta.versionId, '1');
    const read = await fhir(srv.url, 'GET', `ViewDefinition/${a.id}`, undefined, system);
    assert.equal(read.status, 200);
    assert.equal(read.json.name, 'crud_a');

    const ids = async (q: string) => {
      const r = await fhir(srv.url, 'GET', `ViewDefinition?${q}`, undefined, { ...system, prefer: 'handling=strict' });
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      return (r.json.entry ?? []).map((e: Json) => e.resource.id).sort();
    };
    assert.deepEqual(await ids('name=crud_a'), [a.id]);
    assert.deepEqual(await ids('name=crud'), [a.id, b.id].sort(), 'name is a string parameter: a prefix matches');
    assert.deepEqual(await ids('resource=Observation&name=crud'), [b.id]);
    assert.deepEqual(await ids('status=draft&name=crud'), [b.id]);
    assert.deepEqual(await ids(`url=${encodeURIComponent('http://example.org/views/crud_a')}`), [a.id]);
    assert.deepEqual(await ids(`_id=${b.id}`), [b.id]);

    const updated = await fhir(srv.url, 'PUT', `ViewDefinition/${a.id}`, { ...patientView('crud_a', 'retired'), id: a.id }, system);
    assert.equal(updated.status, 200, updated.text);
    assert.deepEqual(await ids('status=retired&name=crud'), [a.id]);
    const patched = await fhir(srv.url, 'PATCH', `ViewDefinition/${a.id}`, [{ op: 'replace', path: '/select/0/column/0/path', value: 'name.(' }], { ...system, 'content-type': 'application/json-patch+json' });
    assert.equal(patched.status, 400, 'a patch giving an invalid view is refused');
    const history = await fhir(srv.url, 'GET', `ViewDefinition/${a.id}/_history`, undefined, system);
    assert.equal(history.json.total, 2);

    assert.equal((await fhir(srv.url, 'DELETE', `ViewDefinition/${b.id}`, undefined, system)).status, 204);
    assert.equal((await fhir(srv.url, 'GET', `ViewDefinition/${b.id}`, undefined, system)).status, 410);
    assert.deepEqual(await ids('name=crud'), [a.id]);
  });

  test('an invalid view is refused with each problem and its location, and nothing is stored', async () => {
    const bad = {
      resourceType: 'ViewDefinition', name: 'broken_view', status: 'active', resource: 'Patient',
      select: [{ column: [{ name: 'id', path: 'id' }, { name: 'x', path: 'name.frobnicate()' }, { name: 'id', path: 'gender' }] }],
    };
    const r = await fhir(srv.url, 'POST', 'ViewDefinition', bad, system);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.resourceType, 'OperationOutcome');
    const expressions = r.json.issue.flatMap((i: Json) => i.expression ?? []);
    assert.ok(expressions.includes('ViewDefinition.select[0].column[1].path'), JSON.stringify(r.json.issue));
    assert.ok(r.json.issue.some((i: Json) => /frobnicate/.test(i.diagnostics)), 'the unknown function is named');
    assert.ok(r.json.issue.some((i: Json) => /column id/.test(i.diagnostics)), 'the duplicate column is named');
    const missing = await fhir(srv.url, 'POST', 'ViewDefinition', { resourceType: 'ViewDefinition', name: 'broken_view', status: 'active' }, system);
    assert.equal(missing.status, 400);
    assert.ok(missing.json.issue.some((i: Json) => (i.expression ?? []).includes('ViewDefinition.select')), missing.text);
    const search = await fhir(srv.url, 'GET', 'ViewDefinition?name=broken_view', undefined, system);
    assert.deepEqual(search.json.entry ?? [], [], 'nothing stored');
  });

  test('$validate and Bundle entries check a view as a write does; a system $export includes views', async () => {
    const checked = await fhir(srv.url, 'POST', 'ViewDefinition/$validate', { ...patientView(), select: [{ column: [{ name: 'a', path: 'name.(' }] }] }, system);
    assert.equal(checked.status, 200);
    assert.ok(checked.json.issue.some((i: Json) => i.severity === 'error' && (i.expression ?? []).includes('ViewDefinition.select[0].column[0].path')), checked.text);
    const bundle = (view: Json) => ({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: view, request: { method: 'POST', url: 'ViewDefinition' } }] });
    assert.equal((await fhir(srv.url, 'POST', '', bundle({ ...patientView('in_bundle'), select: [] }), system)).status, 400);
    assert.equal((await fhir(srv.url, 'POST', '', bundle(patientView('in_bundle')), system)).status, 200);

    const kick = await fhir(srv.url, 'GET', '$export?_type=ViewDefinition', undefined, { ...system, prefer: 'respond-async' });
    assert.equal(kick.status, 202, kick.text);
    let manifest: Json | undefined;
    for (let i = 0; i < 600 && !manifest; i++) {
      const poll = await fetch(kick.headers.get('content-location')!, { headers: { accept: 'application/json', ...system } });
      if (poll.status === 200) manifest = await poll.json() as Json;
      else await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(manifest, 'the export finished');
    assert.deepEqual(manifest.output.map((o: Json) => o.type), ['ViewDefinition']);
    const file = await fetch(manifest.output[0].url, { headers: system });
    const names = (await file.text()).trim().split('\n').map((l) => JSON.parse(l).name);
    assert.ok(names.includes('in_bundle'), names.join(','));
  });

  test('metadata lists ViewDefinition with its search parameters and $run', async () => {
    const cs = await fhir(srv.url, 'GET', 'metadata');
    const vd = cs.json.rest[0].resource.find((r: Json) => r.type === 'ViewDefinition');
    assert.ok(vd, 'ViewDefinition is advertised');
    assert.equal(vd.profile, 'https://sql-on-fhir.org/ig/StructureDefinition/ViewDefinition');
    for (const p of ['name', 'status', 'resource', 'url', '_id', '_lastUpdated']) assert.ok(vd.searchParam.some((s: Json) => s.name === p), p);
    assert.ok(vd.operation.some((o: Json) => o.name === 'run' && o.definition === 'urn:kiln:OperationDefinition:ViewDefinition-run'), JSON.stringify(vd.operation));
    assert.match(vd.documentation, /ndjson/);
  });
});

describe('ViewDefinition/$run', () => {
  let alice: string;
  let bob: string;
  let viewId: string;
  let obsView: string;
  before(async () => {
    const patient = (family: string, birthDate: string) => ({ resourceType: 'Patient', name: [{ use: 'official', family }, { use: 'nickname', family: 'X' }], birthDate });
    alice = (await post('Patient', patient('Alice', '1970-01-02'))).id;
    bob = (await post('Patient', patient('Bob, "Jr"', '1980-03-04'))).id;
    const obs = (subject: string, code: string, value: number) => ({
      resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${subject}` },
      code: { coding: [{ system: 'http://loinc.org', code }] }, valueQuantity: { value, unit: 'kg' }, effectiveDateTime: '2024-05-01T10:00:00Z',
    });
    await post('Observation', obs(alice, '29463-7', 70.5));
    await post('Observation', obs(alice, '8302-2', 170));
    await post('Observation', obs(bob, '29463-7', 80));
    viewId = (await post('ViewDefinition', patientView('run_patients'))).id;
    obsView = (await post('ViewDefinition', observationView)).id;
  });

  test('by id: json (default) is an array of row objects in column order', async () => {
    const r = await get(`ViewDefinition/${viewId}/$run`);
    assert.equal(r.status, 200, r.text);
    assert.match(r.type, /^application\/json/);
    const rows = JSON.parse(r.text);
    assert.deepEqual(byId(rows), byId([
      { id: alice, family: 'Alice', birth_date: '1970-01-02' },
      { id: bob, family: 'Bob, "Jr"', birth_date: '1980-03-04' },
    ]));
    assert.deepEqual(Object.keys(rows[0]), ['id', 'family', 'birth_date']);
  });

  test('ndjson and csv (header by default, header=false without; quoting)', async () => {
    const nd = await get(`ViewDefinition/${obsView}/$run?_format=ndjson`);
    assert.equal(nd.status, 200, nd.text);
    assert.match(nd.type, /^application\/x-ndjson/);
    const lines = nd.text.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, 3);
    assert.deepEqual(lines.filter((l) => l.patient === alice).map((l) => l.value).sort(), [170, 70.5]);

    const csv = await get(`ViewDefinition/${viewId}/$run?_format=csv`);
    assert.equal(csv.status, 200, csv.text);
    assert.match(csv.type, /^text\/csv/);
    const csvLines = csv.text.trimEnd().split('\r\n');
    assert.equal(csvLines[0], 'id,family,birth_date');
    assert.ok(csvLines.includes(`${bob},"Bob, ""Jr""",1980-03-04`), csv.text);
    const bare = await get(`ViewDefinition/${viewId}/$run?_format=csv&header=false`);
    assert.equal(bare.text.trimEnd().split('\r\n').length, 2);
    const accept = await get(`ViewDefinition/${viewId}/$run`, { ...system, accept: 'text/csv' });
    assert.match(accept.type, /^text\/csv/);
  });

  test('inline view over stored resources, and over the resource parameter', async () => {
    const stored = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }, { name: '_format', valueCode: 'ndjson' }]);
    assert.equal(stored.status, 200, stored.text);
    assert.equal(stored.text.trim().split('\n').length, 3);
    const given = await run('ViewDefinition/$run', [
      { name: 'viewResource', resource: patientView() },
      { name: 'resource', resource: { resourceType: 'Patient', id: 'pt-1', name: [{ use: 'official', family: 'Cole' }], birthDate: '2012-03-30' } },
      { name: 'resource', resource: { resourceType: 'Observation', id: 'o-1', status: 'final', code: { text: 'x' } } },
    ]);
    assert.equal(given.status, 200, given.text);
    assert.deepEqual(JSON.parse(given.text), [{ id: 'pt-1', family: 'Cole', birth_date: '2012-03-30' }]);
    const byRef = await run('ViewDefinition/$run', [{ name: 'viewReference', valueReference: { reference: `ViewDefinition/${viewId}` } }]);
    assert.equal(JSON.parse(byRef.text).length, 2, byRef.text);
    const byUrl = await get(`ViewDefinition/$run?viewReference=${encodeURIComponent('http://example.org/views/run_patients')}`);
    assert.equal(JSON.parse(byUrl.text).length, 2, byUrl.text);
  });

  test('patient=, group= and _limit narrow the rows', async () => {
    const one = JSON.parse((await get(`ViewDefinition/${obsView}/$run?patient=Patient/${bob}`)).text);
    assert.deepEqual(one.map((r: Json) => r.patient), [bob]);
    const group = await post('Group', { resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${alice}` } }] });
    const members = JSON.parse((await get(`ViewDefinition/${obsView}/$run?group=Group/${group.id}`)).text);
    assert.deepEqual(members.map((r: Json) => r.patient), [alice, alice]);
    const limited = JSON.parse((await get(`ViewDefinition/${obsView}/$run?_limit=2`)).text);
    assert.equal(limited.length, 2);
    const unknown = await get(`ViewDefinition/${obsView}/$run?patient=Patient/nobody`);
    assert.equal(unknown.status, 400);
    assert.match(unknown.text, /not-found/);
  });

  test('_since leaves out resources not changed since', async () => {
    await new Promise((r) => setTimeout(r, 20));
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    await post('Observation', { resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${bob}` }, code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, valueQuantity: { value: 61 } });
    const rows = JSON.parse((await get(`ViewDefinition/${obsView}/$run?_since=${encodeURIComponent(since)}`)).text);
    assert.deepEqual(rows.map((r: Json) => [r.patient, r.code]), [[bob, '8867-4']]);
  });

  test('a patient token runs a view over its own compartment only', async () => {
    const own = bearer(await token(srv, { scope: 'patient/*.rs', patient: alice }));
    const r = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }], own);
    assert.equal(r.status, 200, r.text);
    const rows = JSON.parse(r.text);
    assert.equal(rows.length, 2);
    assert.ok(rows.every((row: Json) => row.patient === alice), r.text);
    const patients = JSON.parse((await run('ViewDefinition/$run', [{ name: 'viewResource', resource: patientView() }], own)).text);
    assert.deepEqual(patients.map((p: Json) => p.id), [alice]);
    const other = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }, { name: 'patient', valueReference: { reference: `Patient/${bob}` } }], own);
    assert.equal(other.status, 404, 'another patient is not found');
    // Stored views are outside the patient compartment: a patient-only token cannot read them.
    assert.equal((await get(`ViewDefinition/${obsView}/$run`, own)).status, 403);
    const noObs = bearer(await token(srv, { scope: 'system/Patient.rs' }));
    assert.equal((await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }], noObs)).status, 403);
  });

  test('stored resources are read in pages: every row once past the first page', async () => {
    const carol = (await post('Patient', { resourceType: 'Patient', name: [{ use: 'official', family: 'Carol' }] })).id;
    const entry = Array.from({ length: 620 }, (_, i) => ({
      resource: { resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${carol}` }, code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, valueQuantity: { value: i } },
      request: { method: 'POST', url: 'Observation' },
    }));
    assert.equal((await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry }, system)).status, 200);
    const values = (text: string) => text.trim().split('\n').map((l) => JSON.parse(l).value as number).sort((a, b) => a - b);
    const all = Array.from({ length: 620 }, (_, i) => i);
    // patient= (the compartment query) and a patient token (a search confined to it).
    assert.deepEqual(values((await get(`ViewDefinition/${obsView}/$run?_format=ndjson&patient=Patient/${carol}`)).text), all);
    const own = bearer(await token(srv, { scope: 'patient/*.rs', patient: carol }));
    const r = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }, { name: '_format', valueCode: 'ndjson' }], own);
    assert.deepEqual(values(r.text), all);
    const limited = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: observationView }, { name: '_limit', valueInteger: 550 }], own);
    assert.equal(JSON.parse(limited.text).length, 550);
  });

  test('refusals: invalid view, unknown format, no view, unknown parameter, unknown id', async () => {
    const invalid = await run('ViewDefinition/$run', [{ name: 'viewResource', resource: { ...observationView, select: [{ column: [{ name: 'a', path: 'code.(' }] }] } }]);
    assert.equal(invalid.status, 400);
    assert.match(invalid.text, /select\[0\]\.column\[0\]\.path/);
    const format = await get(`ViewDefinition/${viewId}/$run?_format=xml`);
    assert.equal(format.status, 400);
    assert.match(format.text, /not-supported/);
    assert.equal((await get(`ViewDefinition/${viewId}/$run`, { ...system, accept: 'application/xml' })).status, 406);
    const none = await run('ViewDefinition/$run', []);
    assert.equal(none.status, 400);
    assert.match(none.text, /viewReference or viewResource/);
    assert.equal((await get(`ViewDefinition/${viewId}/$run?frobnicate=1`)).status, 400);
    assert.equal((await get('ViewDefinition/nope/$run')).status, 404);
    // A column with several values where the view says one is the view's problem: a 400 from
    // the compiled SQL (every Patient: the system token) and from the in-memory runner (a
    // patient token's compartment), which names the resource too.
    const severalValues = [{ name: 'viewResource', resource: { ...patientView(), select: [{ column: [{ name: 'family', path: 'name.family' }] }] } }];
    const several = await run('ViewDefinition/$run', severalValues);
    assert.equal(several.status, 400, several.text);
    assert.match(several.text, /column family has several values/);
    const own = await run('ViewDefinition/$run', severalValues, bearer(await token(srv, { scope: 'patient/*.rs', patient: alice })));
    assert.equal(own.status, 400, own.text);
    assert.match(own.text, new RegExp(`Patient/${alice}: .*column family`));
  });
});
