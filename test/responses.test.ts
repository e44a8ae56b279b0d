// Response details a client trips over (issue #23 item 7): $everything starts with the
// Patient and leaves AuditEvents out unless _type asks; OperationOutcomes carry no empty
// arrays; an ETag is only ever a resource version, never on an error or a search Bundle.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer({ audit: 'on' }); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

test('$everything lists the Patient first and AuditEvents only when _type names them', async () => {
  const pid = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Zzz' }] })).json.id;
  // Types that sort before Patient by name (AllergyIntolerance, Condition, Encounter, ...).
  for (const r of [
    { resourceType: 'AllergyIntolerance', patient: { reference: `Patient/${pid}` }, code: { text: 'nuts' },
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical', code: 'active' }] } },
    { resourceType: 'Condition', subject: { reference: `Patient/${pid}` }, code: { text: 'x' } },
    { resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${pid}` }, code: { text: 'y' } },
  ]) {
    const c = await fhir(srv.url, 'POST', r.resourceType, r);
    assert.equal(c.status, 201, c.text);
  }
  // Reads of the patient's record leave AuditEvents naming the patient.
  for (let i = 0; i < 3; i++) assert.equal((await fhir(srv.url, 'GET', `Patient/${pid}`)).status, 200);
  await new Promise((r) => setTimeout(r, 300)); // the audit writer's window
  const all: string[] = [];
  let url: string | undefined = `Patient/${pid}/$everything?_count=2`;
  while (url) {
    const page: any = (await fhir(srv.url, 'GET', url)).json;
    all.push(...page.entry.map((e: any) => e.resource.resourceType));
    const next = page.link.find((l: any) => l.relation === 'next')?.url as string | undefined;
    url = next?.slice(srv.url.length + 1);
  }
  assert.deepEqual(all, ['Patient', 'AllergyIntolerance', 'Condition', 'Observation'], 'Patient first, then by type; no AuditEvent');
  const audited = await fhir(srv.url, 'GET', `Patient/${pid}/$everything?_type=Patient,AuditEvent&_count=100`);
  const types = audited.json.entry.map((e: any) => e.resource.resourceType);
  assert.equal(types[0], 'Patient');
  assert.ok(types.filter((t: string) => t === 'AuditEvent').length >= 3, `AuditEvents when asked for: ${types}`);
  // Going back from the last page gives the first pages again, Patient first.
  const second = await fhir(srv.url, 'GET', `Patient/${pid}/$everything?_count=2`);
  const nextUrl = second.json.link.find((l: any) => l.relation === 'next').url.slice(srv.url.length + 1);
  const page2 = await fhir(srv.url, 'GET', nextUrl);
  const back = await fhir(srv.url, 'GET', page2.json.link.find((l: any) => l.relation === 'previous').url.slice(srv.url.length + 1));
  assert.deepEqual(back.json.entry.map((e: any) => e.resource.resourceType), ['Patient', 'AllergyIntolerance']);
});

test('an OperationOutcome never carries an empty array', async () => {
  const tx = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
    { request: { method: 'POST', url: 'Observation' }, resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/nobody' } } },
  ] });
  assert.equal(tx.status, 422, tx.text);
  assert.ok(!/\[\]/.test(tx.text), `no empty array: ${tx.text}`);
  for (const r of [await fhir(srv.url, 'GET', 'Patient/nobody'), await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', gender: 'nope' })]) {
    assert.equal(r.json.resourceType, 'OperationOutcome');
    for (const issue of r.json.issue) for (const v of Object.values(issue)) assert.ok(!(Array.isArray(v) && v.length === 0), r.text);
  }
});

test('an ETag is a version: on a resource, never on an error or a search Bundle', async () => {
  const created = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient' });
  assert.equal(created.headers.get('etag'), 'W/"1"');
  assert.equal((await fhir(srv.url, 'GET', `Patient/${created.json.id}`)).headers.get('etag'), 'W/"1"');
  for (const path of ['Patient/nobody', 'Nothing/1', 'Patient?_count=1', 'metadata']) {
    const r = await fhir(srv.url, 'GET', path);
    assert.equal(r.headers.get('etag'), null, `${path} (${r.status}) has no ETag`);
  }
});
