// EHR ingest as bundle.html has it: every fullUrl (POST ids, conditional PUT and POST
// targets, conditional references) is settled before any entry runs, so an entry may refer
// to any other whatever the methods and their order; a urn:uuid: reference nothing in the
// Bundle resolves is a 400 naming the entry, and outside a Bundle a urn:uuid: is refused.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const MRN = 'http://hospital.example/mrn';
const uuid = () => `urn:uuid:${crypto.randomUUID()}`;
const resourceCount = async () => (await srv.db.owner.query('SELECT count(*)::int AS n FROM resource_history')).rows[0].n;

/** The "upsert the patient by MRN, then add the visit" transaction, its entries in the given order. */
function ingest(mrn: string, family: string, order: 'patient-first' | 'visit-first', visit: 'POST' | 'PUT' = 'POST') {
  const patientUrl = uuid();
  const encounterUrl = uuid();
  const patientEntry = {
    fullUrl: patientUrl,
    resource: { resourceType: 'Patient', identifier: [{ system: MRN, value: mrn }], name: [{ family }] },
    request: { method: 'PUT', url: `Patient?identifier=${encodeURIComponent(`${MRN}|${mrn}`)}` },
  };
  const visitEntry = {
    fullUrl: encounterUrl,
    resource: {
      resourceType: 'Encounter', status: 'finished', identifier: [{ system: 'http://hospital.example/visit', value: `${mrn}-v` }],
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: patientUrl },
    },
    request: visit === 'POST' ? { method: 'POST', url: 'Encounter' }
      : { method: 'PUT', url: `Encounter?identifier=${encodeURIComponent(`http://hospital.example/visit|${mrn}-v`)}` },
  };
  const condition = {
    fullUrl: uuid(),
    resource: { resourceType: 'Condition', code: { text: 'sprain' }, subject: { reference: patientUrl }, encounter: { reference: encounterUrl } },
    request: { method: 'POST', url: 'Condition' },
  };
  const entry = order === 'patient-first' ? [patientEntry, visitEntry, condition] : [condition, visitEntry, patientEntry];
  return { resourceType: 'Bundle', type: 'transaction', entry };
}

describe('EHR ingest: conditional PUT of the patient by MRN and entries that refer to it', () => {
  for (const order of ['patient-first', 'visit-first'] as const) {
    for (const visit of ['POST', 'PUT'] as const) {
      test(`${order}, visit by ${visit}: a new patient is created, then the same MRN updates it`, async () => {
        const mrn = `${order}-${visit}`;
        const first = await fhir(srv.url, 'POST', '', ingest(mrn, 'Alpha', order, visit));
        assert.equal(first.status, 200, first.text);
        const statuses = first.json.entry.map((e: any) => e.response.status);
        assert.ok(statuses.every((s: string) => s === '201 Created'), statuses.join());
        const patients = await fhir(srv.url, 'GET', `Patient?identifier=${encodeURIComponent(`${MRN}|${mrn}`)}`);
        assert.equal(patients.json.entry.length, 1);
        const patientId = patients.json.entry[0].resource.id;
        const encounters = await fhir(srv.url, 'GET', `Encounter?subject=Patient/${patientId}`);
        assert.equal(encounters.json.entry.length, 1, 'the visit refers to the patient the PUT made');
        const encounterId = encounters.json.entry[0].resource.id;
        const conditions = await fhir(srv.url, 'GET', `Condition?patient=${patientId}&encounter=Encounter/${encounterId}`);
        assert.equal(conditions.json.entry.length, 1);

        // The same message again: the MRN finds the patient, which is updated, not duplicated.
        const again = await fhir(srv.url, 'POST', '', ingest(mrn, 'Beta', order, visit));
        assert.equal(again.status, 200, again.text);
        const after = await fhir(srv.url, 'GET', `Patient?identifier=${encodeURIComponent(`${MRN}|${mrn}`)}`);
        assert.equal(after.json.entry.length, 1);
        assert.equal(after.json.entry[0].resource.id, patientId);
        assert.equal(after.json.entry[0].resource.name[0].family, 'Beta');
        assert.equal(after.json.entry[0].resource.meta.versionId, '2');
        const visits = await fhir(srv.url, 'GET', `Encounter?subject=Patient/${patientId}&_summary=count`);
        assert.equal(visits.json.total, visit === 'PUT' ? 1 : 2, 'a conditional PUT of the visit updates it, a POST adds one');
      });
    }
  }
});

describe('urn:uuid references', () => {
  test('a urn:uuid no entry resolves is a 400 naming the entry, and nothing is stored', async () => {
    const before = await resourceCount();
    const bundle = {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: uuid(), resource: { resourceType: 'Patient', name: [{ family: 'Dangling' }] }, request: { method: 'POST', url: 'Patient' } },
        { fullUrl: uuid(), resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'urn:uuid:deadbeef-0000-4000-8000-000000000000' } }, request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const r = await fhir(srv.url, 'POST', '', bundle);
    assert.equal(r.status, 400, r.text);
    assert.match(r.json.issue[0].diagnostics, /Bundle\.entry\[1\].*urn:uuid:deadbeef/);
    assert.equal(await resourceCount(), before, 'a failed transaction leaves no trace');
  });

  test('a urn:uuid reference outside a Bundle is refused on create, update and PATCH', async () => {
    const dangling = { reference: 'urn:uuid:deadbeef-0000-4000-8000-000000000000' };
    const created = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: dangling });
    assert.equal(created.status, 400, created.text);
    assert.match(created.json.issue[0].diagnostics, /urn:uuid/);
    const condition = await fhir(srv.url, 'PUT', 'Condition/c-urn', { resourceType: 'Condition', id: 'c-urn', code: { text: 'x' }, subject: dangling });
    assert.equal(condition.status, 400);
    const p = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient' });
    const patched = await fhir(srv.url, 'PATCH', `Patient/${p.json.id}`, [{ op: 'add', path: '/generalPractitioner', value: [dangling] }], { 'content-type': 'application/json-patch+json' });
    assert.equal(patched.status, 400);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${p.json.id}`)).json.meta.versionId, '1');
  });

  test('references to any stored type must resolve in the tenant (422), in the generic store as in the first-class tables', async () => {
    const org = await fhir(srv.url, 'POST', 'Organization', { resourceType: 'Organization', name: 'Ward 7' });
    assert.equal(org.status, 201);
    const ok = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: `Organization/${org.json.id}` } });
    assert.equal(ok.status, 201, ok.text);
    const missing = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: 'Organization/no-such-org' } });
    assert.equal(missing.status, 422);
    assert.match(missing.json.issue[0].diagnostics, /Organization\/no-such-org/);
    // Another tenant's Organization does not resolve.
    const other = await fhir(`${srv.url}/ingest-b`, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: `Organization/${org.json.id}` } });
    assert.ok(other.status === 422 || other.status === 404, other.text);
    // A deleted one does not either, and one still referenced cannot be deleted.
    const lonely = await fhir(srv.url, 'POST', 'Organization', { resourceType: 'Organization', name: 'Gone' });
    assert.equal((await fhir(srv.url, 'DELETE', `Organization/${lonely.json.id}`)).status, 204);
    const toDeleted = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: `Organization/${lonely.json.id}` } });
    assert.equal(toDeleted.status, 422);
    // Absolute references to other servers are kept as given.
    const remote = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: 'https://elsewhere.example/fhir/Organization/1' } });
    assert.equal(remote.status, 201);
  });
});
