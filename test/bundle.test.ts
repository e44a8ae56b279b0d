// Batch and transaction Bundles over HTTP: atomicity, urn:uuid resolution,
// dependency order, conditional entries (Synthea bundles: test/synthea.test.ts).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const historyCount = async () => (await srv.db.owner.query('SELECT count(*)::int AS n FROM resource_history')).rows[0].n;

describe('transaction', () => {
  test('entries run dependencies first, whatever their order in the bundle', async () => {
    const bundle = {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:obs-1', resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'urn:uuid:pat-1' }, encounter: { reference: 'urn:uuid:enc-1' } }, request: { method: 'POST', url: 'Observation' } },
        { fullUrl: 'urn:uuid:enc-1', resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'urn:uuid:pat-1' } }, request: { method: 'POST', url: 'Encounter' } },
        { fullUrl: 'urn:uuid:pat-1', resource: { resourceType: 'Patient', name: [{ family: 'Order' }] }, request: { method: 'POST', url: 'Patient' } },
      ],
    };
    const r = await fhir(srv.url, 'POST', '', bundle, { prefer: 'return=representation' });
    assert.equal(r.status, 200, r.text);
    const [obs, enc, pat] = r.json.entry.map((e: any) => e.resource);
    assert.equal(obs.subject.reference, `Patient/${pat.id}`);
    assert.equal(obs.encounter.reference, `Encounter/${enc.id}`);
    assert.equal(enc.subject.reference, `Patient/${pat.id}`);
  });

  test('a failing entry rolls back the whole transaction and is named in the outcome', async () => {
    const before = await historyCount();
    const good = { resource: { resourceType: 'Patient', name: [{ family: 'Rollback' }] }, request: { method: 'POST', url: 'Patient' } };
    const invalid = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [good, good, { resource: { resourceType: 'Patient', birthDate: 'soon' }, request: { method: 'POST', url: 'Patient' } }] });
    assert.equal(invalid.status, 400);
    assert.equal(invalid.json.resourceType, 'OperationOutcome');
    assert.match(invalid.json.issue[0].diagnostics, /Bundle\.entry\[2\]/);
    assert.deepEqual(invalid.json.issue[0].expression, ['Bundle.entry[2].resource.birthDate']);
    const dangling = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [good, { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/nobody' } }, request: { method: 'POST', url: 'Observation' } }] });
    assert.equal(dangling.status, 422);
    assert.match(dangling.json.issue[0].diagnostics, /Bundle\.entry\[1\]/);
    const conflict = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [good, { request: { method: 'DELETE', url: 'Patient/never-existed' } }] });
    assert.equal(conflict.status, 404);
    assert.equal(await historyCount(), before, 'no version of any entry was kept');
  });

  test('conditional create, conditional update, conditional references and If-Match', async () => {
    const value = `tx-${Date.now()}`;
    const pat = { resourceType: 'Patient', identifier: [{ system: 'urn:tx', value }], name: [{ family: 'Cond' }] };
    const bundle = () => ({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:p', resource: pat, request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=urn:tx|${value}` } },
        { resource: { resourceType: 'Observation', status: 'final', code: { text: 'cond' }, subject: { reference: `Patient?identifier=urn:tx|${value}` } }, request: { method: 'POST', url: 'Observation' } },
      ],
    });
    // The conditional reference cannot resolve before the Patient exists.
    const early = await fhir(srv.url, 'POST', '', bundle());
    assert.equal(early.status, 412, early.text);
    const first = await fhir(srv.url, 'POST', '', { ...bundle(), entry: [bundle().entry[0]] });
    assert.equal(first.json.entry[0].response.status, '201 Created');
    const second = await fhir(srv.url, 'POST', '', bundle(), { prefer: 'return=representation' });
    assert.equal(second.status, 200, second.text);
    assert.equal(second.json.entry[0].response.status, '200 OK', 'ifNoneExist matched the existing Patient');
    assert.equal(second.json.entry[0].response.location, first.json.entry[0].response.location);
    const patientId = first.json.entry[0].response.location.split('/')[1];
    assert.equal(second.json.entry[1].resource.subject.reference, `Patient/${patientId}`);
    const upd = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { ...pat, gender: 'other' }, request: { method: 'PUT', url: `Patient?identifier=urn:tx|${value}` } },
      ],
    });
    assert.equal(upd.json.entry[0].response.location, `Patient/${patientId}/_history/2`);
    const stale = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { ...pat, id: patientId }, request: { method: 'PUT', url: `Patient/${patientId}`, ifMatch: 'W/"1"' } },
      ],
    });
    assert.equal(stale.status, 412);
  });

  test('DELETE runs before POST and GET after writes; PATCH takes a Binary', async () => {
    const a = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Old' }] })).json.id;
    const patchDoc = Buffer.from(JSON.stringify([{ op: 'add', path: '/active', value: true }])).toString('base64');
    const r = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { request: { method: 'GET', url: `Patient/${a}` } },
        { resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: patchDoc }, request: { method: 'PATCH', url: `Patient/${a}` } },
        { request: { method: 'GET', url: `Patient?_id=${a}` } },
      ],
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.entry[0].resource.active, true, 'GET ran after the PATCH');
    assert.equal(r.json.entry[0].resource.meta.versionId, '2');
    assert.equal(r.json.entry[2].resource.type, 'searchset');
    assert.equal(r.json.entry[2].resource.entry.length, 1);
    const del = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: [
        { resource: { resourceType: 'Patient', name: [{ family: 'New' }] }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'DELETE', url: `Patient/${a}` } },
      ],
    });
    assert.equal(del.json.entry[1].response.status, '204 No Content');
    assert.equal((await fhir(srv.url, 'GET', `Patient/${a}`)).status, 410);
  });

  test('limits and malformed bundles are 4xx', async () => {
    const many = { resourceType: 'Bundle', type: 'batch', entry: Array.from({ length: 10_001 }, () => ({ request: { method: 'GET', url: 'Patient/x' } })) };
    assert.equal((await fhir(srv.url, 'POST', '', many)).status, 413);
    assert.equal((await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'collection' })).status, 400);
    assert.equal((await fhir(srv.url, 'POST', '', { resourceType: 'Patient' })).status, 400);
    const noUrl = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'POST' }, resource: { resourceType: 'Patient' } }] });
    assert.equal(noUrl.status, 400);
    const wrongType = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'POST', url: 'Parameters' }, resource: { resourceType: 'Parameters' } }] });
    assert.equal(wrongType.status, 404);
    const dupFullUrl = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: 'urn:uuid:same', request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient' } },
      { fullUrl: 'urn:uuid:same', request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient' } }] });
    assert.equal(dupFullUrl.status, 400);
  });

  test('an AuditEvent POST is created with the id the transaction assigned (entries refer to it); a PUT is still 405', async () => {
    const event = { resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: '2026-01-02T03:04:05Z',
      agent: [{ requestor: true, who: { display: 'tester' } }], source: { observer: { display: 'kiln' } } };
    const r = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: 'urn:uuid:prov-ae', resource: { resourceType: 'Provenance', target: [{ reference: 'urn:uuid:ae-1' }], recorded: '2026-01-02T03:04:06Z', agent: [{ who: { display: 'tester' } }] }, request: { method: 'POST', url: 'Provenance' } },
      { fullUrl: 'urn:uuid:ae-1', resource: event, request: { method: 'POST', url: 'AuditEvent' } },
    ] }, { prefer: 'return=representation' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.entry[1].response.status, '201 Created');
    const [, type, id] = /^(\w+)\/([^/]+)\/_history\/1$/.exec(r.json.entry[1].response.location) ?? [];
    assert.equal(type, 'AuditEvent', r.json.entry[1].response.location);
    assert.equal(r.json.entry[0].resource.target[0].reference, `AuditEvent/${id}`);
    const read = await fhir(srv.url, 'GET', `AuditEvent/${id}`);
    assert.equal(read.status, 200, read.text);
    assert.equal(read.json.recorded, event.recorded);
    assert.equal((await fhir(srv.url, 'GET', `Provenance?target=AuditEvent/${id}`)).json.entry?.length, 1);

    const before = await historyCount();
    const put = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { resource: { resourceType: 'Patient', name: [{ family: 'NotKept' }] }, request: { method: 'POST', url: 'Patient' } },
      { resource: { ...event, id, outcome: '4' }, request: { method: 'PUT', url: `AuditEvent/${id}` } },
    ] });
    assert.equal(put.status, 405, put.text);
    assert.equal(put.json.resourceType, 'OperationOutcome');
    assert.equal((await fhir(srv.url, 'GET', `AuditEvent/${id}`)).json.outcome, undefined, 'the event is unchanged');
    assert.equal(await historyCount(), before, 'the transaction kept nothing');
  });
});

describe('batch', () => {
  test('entries succeed or fail on their own', async () => {
    const before = await historyCount();
    const r = await fhir(srv.url, 'POST', '', {
      resourceType: 'Bundle', type: 'batch', entry: [
        { resource: { resourceType: 'Patient', name: [{ family: 'Batch' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Patient', gender: 'robot' }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'GET', url: 'Patient/missing' } },
        { request: { method: 'GET', url: 'Parameters/1' } },
      ],
    });
    assert.equal(r.status, 200);
    assert.equal(r.json.type, 'batch-response');
    assert.deepEqual(r.json.entry.map((e: any) => e.response.status.slice(0, 3)), ['201', '400', '404', '404']);
    assert.equal(r.json.entry[1].response.outcome.resourceType, 'OperationOutcome');
    assert.equal(await historyCount(), before + 1);
  });
});
