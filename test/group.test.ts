// Group (type person, members referencing Patients): stored with CRUD, history and
// search like the other types, advertised in the CapabilityStatement with $export.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

async function patient(family: string): Promise<string> {
  const r = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family }] });
  assert.equal(r.status, 201);
  return r.json.id;
}

const group = (members: string[], extra: object = {}) => ({
  resourceType: 'Group', type: 'person', actual: true, name: 'Cohort',
  member: members.map((id) => ({ entity: { reference: `Patient/${id}` } })), ...extra,
});

test('create, read, update, history, delete', async () => {
  const a = await patient('GroupA');
  const b = await patient('GroupB');
  const c = await fhir(srv.url, 'POST', 'Group', group([a]));
  assert.equal(c.status, 201, c.text);
  assert.equal(c.json.meta.versionId, '1');
  const id = c.json.id;
  const r = await fhir(srv.url, 'GET', `Group/${id}`);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.member, [{ entity: { reference: `Patient/${a}` } }]);
  const u = await fhir(srv.url, 'PUT', `Group/${id}`, { ...group([a, b]), id });
  assert.equal(u.status, 200);
  assert.equal(u.json.meta.versionId, '2');
  assert.equal((await fhir(srv.url, 'GET', `Group/${id}/_history`)).json.total, 2);
  assert.equal((await fhir(srv.url, 'GET', `Group/${id}/_history/1`)).json.member.length, 1);
  assert.equal((await fhir(srv.url, 'DELETE', `Group/${id}`)).status, 204);
  assert.equal((await fhir(srv.url, 'GET', `Group/${id}`)).status, 410);
});

test('members must be stored Patients (422), and the Group must be valid (400)', async () => {
  const missing = await fhir(srv.url, 'POST', 'Group', group(['no-such-patient']));
  assert.equal(missing.status, 422);
  assert.match(missing.json.issue[0].diagnostics, /Patient\/no-such-patient/);
  const noType = await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', actual: true });
  assert.equal(noType.status, 400, 'type and actual are required');
  const badType = await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', type: 'cohort', actual: true });
  assert.ok(badType.status === 400 || badType.status === 422, `bad Group.type refused: ${badType.status}`);
  // Every type is stored: a reference to an Organization must resolve too; one to another server is kept as given.
  const managed = await fhir(srv.url, 'POST', 'Group', group([], { managingEntity: { reference: 'Organization/elsewhere' } }));
  assert.equal(managed.status, 422);
  const org = await fhir(srv.url, 'POST', 'Organization', { resourceType: 'Organization', name: 'Registry' });
  assert.equal((await fhir(srv.url, 'POST', 'Group', group([], { managingEntity: { reference: `Organization/${org.json.id}` } }))).status, 201);
  assert.equal((await fhir(srv.url, 'POST', 'Group', group([], { managingEntity: { reference: 'https://registry.example/fhir/Organization/1' } }))).status, 201);
});

test('search by member, type, name and _include of members', async () => {
  const a = await patient('SearchA');
  const b = await patient('SearchB');
  const g1 = (await fhir(srv.url, 'POST', 'Group', group([a, b], { name: 'Diabetes cohort' }))).json.id;
  const g2 = (await fhir(srv.url, 'POST', 'Group', group([b], { name: 'Other' }))).json.id;
  const byMember = await fhir(srv.url, 'GET', `Group?member=Patient/${a}`);
  assert.deepEqual(byMember.json.entry.map((e: any) => e.resource.id), [g1]);
  const byB = await fhir(srv.url, 'GET', `Group?member=${b}&_count=10`);
  assert.deepEqual(byB.json.entry.map((e: any) => e.resource.id).sort(), [g1, g2].sort());
  const withPatients = await fhir(srv.url, 'GET', `Group?_id=${g1}&_include=Group:member`);
  const included = withPatients.json.entry.filter((e: any) => e.search.mode === 'include').map((e: any) => e.resource.id).sort();
  assert.deepEqual(included, [a, b].sort());
  assert.equal((await fhir(srv.url, 'GET', `Group?type=person&_id=${g2}`)).json.entry.length, 1);
  assert.equal((await fhir(srv.url, 'GET', `Group?type=animal&_id=${g2}`)).json.entry?.length ?? 0, 0);
  // From the Patient side: the Groups it belongs to.
  const rev = await fhir(srv.url, 'GET', `Patient?_id=${a}&_revinclude=Group:member`);
  assert.ok(rev.json.entry.some((e: any) => e.resource.id === g1));
});

test('the CapabilityStatement lists Group and the $export operations', async () => {
  const cs = (await fhir(srv.url, 'GET', 'metadata')).json;
  const g = cs.rest[0].resource.find((r: any) => r.type === 'Group');
  assert.ok(g, 'Group advertised');
  assert.ok(g.searchParam.some((p: any) => p.name === 'member'));
  assert.deepEqual(g.operation.map((o: any) => o.name), ['export', 'validate']);
  const p = cs.rest[0].resource.find((r: any) => r.type === 'Patient');
  assert.ok(p.operation.some((o: any) => o.name === 'export'));
  assert.ok(cs.rest[0].operation.some((o: any) => o.name === 'export' && /bulkdata/.test(o.definition)));
  assert.ok(cs.instantiates.includes('http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'));
});
