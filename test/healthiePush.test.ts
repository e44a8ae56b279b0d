// Push worker against a real Kiln and the local Healthie server: FHIR changes of linked
// patients become Healthie mutations with the mapped inputs, pulled changes are never
// pushed back, failures are retried, Healthie-newer objects are not overwritten, and
// queued rows survive a restart.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { pull } from '../src/healthie/pull.ts';
import { pushOutbox } from '../src/healthie/push.ts';
import { SYSTEM, EXTERNAL_TAG } from '../mappings/healthie/index.ts';

const run = promisify(execFile);
let srv: TestServer;
const fake = new FakeHealthie('k');
let client: HealthieClient;
before(async () => {
  srv = await startTestServer();
  await fake.start();
  fake.seedExamples();
  client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1, maxDelayMs: 5, maxRetries: 0 });
});
after(async () => { await fake.stop(); await srv.stop(); removeDataDir(srv.dataDir); });

async function outbox(orgId: number) {
  return (await srv.db.owner.query('SELECT resource_type, resource_id, version_id, status, attempts, last_error, healthie_id FROM healthie_outbox WHERE org_id = $1 ORDER BY id', [orgId])).rows;
}
const JO = '1204417';

async function linkedTenant(slug: string) {
  const org = await createOrg(srv.db.owner, slug, slug);
  const base = `${srv.url}/${slug}`;
  const s = await pull({ db: srv.db, orgId: org.id, client: new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1 }), full: true });
  assert.deepEqual(s.failures, []);
  const found = await fhir(base, 'GET', `Patient?identifier=${encodeURIComponent(`${SYSTEM.user}|${JO}`)}`);
  return { orgId: org.id, base, patient: found.json.entry[0].resource };
}

describe('healthie push', () => {
  test('a FHIR update of a linked patient reaches Healthie as updateClient with the mapped input; a pulled change is not pushed back', async () => {
    const { orgId, base, patient } = await linkedTenant('push-update');
    assert.deepEqual(await outbox(orgId), [], 'pulled writes are not queued');
    const before = fake.mutations().length;
    const nothing = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(nothing.claimed, 0);
    assert.equal(fake.mutations().length, before, 'nothing sent for pulled data (no echo)');

    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...patient, birthDate: '1987-04-20',
      telecom: [...(patient.telecom ?? []).filter((t: any) => t.system !== 'phone'), { system: 'phone', value: '555-123-4567' }] });
    assert.equal(upd.status, 200);
    const s = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(s.done, 1, JSON.stringify(s));
    const sent = fake.mutations().slice(before);
    assert.equal(sent.length, 1);
    assert.equal(sent[0].operation, 'UpdateClient');
    assert.equal(sent[0].input.id, JO);
    assert.equal(sent[0].input.dob, '1987-04-20');
    assert.equal(sent[0].input.phone_number, '555-123-4567');
    assert.equal(sent[0].input.first_name, 'Jo');
    assert.equal(fake.users.get(JO)!.dob, '1987-04-20', 'Healthie now has the FHIR change');
    const rows = await outbox(orgId);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].status, 'done');
    assert.equal(rows[0].healthie_id, JO);

    // The change now comes back from Healthie on the next pull: mirrored without being queued again.
    const v = (await fhir(base, 'GET', `Patient/${patient.id}`)).json.meta.versionId;
    await pull({ db: srv.db, orgId, client: new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1 }) });
    assert.equal((await outbox(orgId)).length, 1, 'the pulled echo of our own change is not queued');
    const again = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(again.claimed, 0);
    assert.equal(fake.mutations().length, before + 1, 'no mutation echoed back');
    assert.ok(Number((await fhir(base, 'GET', `Patient/${patient.id}`)).json.meta.versionId) >= Number(v));
  });

  test('a FHIR-made Observation is created in Healthie and its Healthie id written back without being queued again; external care is skipped', async () => {
    const { orgId, base, patient } = await linkedTenant('push-create');
    const obs = await fhir(base, 'POST', 'Observation', { resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] }, subject: { reference: `Patient/${patient.id}` },
      effectiveDateTime: '2025-03-01T08:00:00Z', valueQuantity: { value: 80, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' } });
    assert.equal(obs.status, 201);
    const ext = await fhir(base, 'POST', 'Encounter', { resourceType: 'Encounter', status: 'finished', meta: { tag: [EXTERNAL_TAG] },
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${patient.id}` },
      period: { start: '2025-03-02T09:00:00Z', end: '2025-03-02T09:30:00Z' } });
    assert.equal(ext.status, 201);
    const before = fake.mutations().length;
    const s = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(s.done, 1, JSON.stringify(s));
    assert.equal(s.skipped, 1);
    const sent = fake.mutations().slice(before);
    assert.deepEqual(sent.map((m) => m.operation), ['CreateEntry']);
    assert.equal(sent[0].input.user_id, JO);
    assert.equal(sent[0].input.category, 'Weight');
    assert.equal(sent[0].input.type, 'MetricEntry');
    assert.ok(Math.abs(Number(sent[0].input.metric_stat) - 176.37) < 0.1, `kg converted to the practice's lb: ${sent[0].input.metric_stat}`);
    const rows = await outbox(orgId);
    assert.deepEqual(rows.map((r) => [r.resource_type, r.status]), [['Observation', 'done'], ['Encounter', 'skipped']]);
    const newId = rows[0].healthie_id;
    assert.ok(fake.entries.has(newId));
    const read = await fhir(base, 'GET', `Observation/${obs.json.id}`);
    assert.equal(read.json.identifier.find((i: any) => i.system === SYSTEM.entry)?.value, newId, 'Healthie id written back');
    assert.equal(read.json.meta.versionId, '2');
    assert.equal((await outbox(orgId)).length, 2, 'the write-back is a sync write, not queued');

    // A later FHIR change of the same Observation is an update of that entry, not a second create.
    const upd = await fhir(base, 'PUT', `Observation/${obs.json.id}`, { ...read.json, valueQuantity: { value: 81, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' } });
    assert.equal(upd.status, 200);
    await pushOutbox({ db: srv.db, orgId, client });
    const last = fake.mutations().at(-1)!;
    assert.equal(last.operation, 'UpdateEntry');
    assert.equal(last.input.id, newId);
  });

  test('a failed send stays queued with its error and attempts, and the retry succeeds', async () => {
    const { orgId, base, patient } = await linkedTenant('push-retry');
    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...patient, birthDate: '1987-05-01' });
    assert.equal(upd.status, 200);
    fake.failures.push(503);
    const first = await pushOutbox({ db: srv.db, orgId, client, backoffSeconds: () => 0 });
    assert.equal(first.retried, 1, JSON.stringify(first));
    assert.equal(first.done, 0);
    let rows = await outbox(orgId);
    assert.equal(rows[0].status, 'pending');
    assert.equal(rows[0].attempts, 1);
    assert.match(rows[0].last_error, /503/);
    assert.notEqual(fake.users.get(JO)!.dob, '1987-05-01');

    // With a real backoff the row is not due yet.
    fake.failures.push(500);
    const second = await pushOutbox({ db: srv.db, orgId, client, backoffSeconds: () => 3600 });
    assert.equal(second.retried, 1);
    const notDue = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(notDue.claimed, 0, 'backing off');
    await srv.db.owner.query('UPDATE healthie_outbox SET next_attempt_at = now() WHERE org_id = $1', [orgId]);
    const third = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(third.done, 1, JSON.stringify(third));
    rows = await outbox(orgId);
    assert.equal(rows[0].status, 'done');
    assert.equal(rows[0].attempts, 3);
    assert.equal(fake.users.get(JO)!.dob, '1987-05-01');
  });

  test('conflict: when Healthie changed the object after the FHIR change, the push does not overwrite it and Healthie\'s copy is mirrored', async () => {
    const { orgId, base, patient } = await linkedTenant('push-conflict');
    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...patient, birthDate: '1990-01-01' });
    assert.equal(upd.status, 200);
    // Healthie's copy changes afterwards (its clock set after the FHIR write).
    const savedClock = fake.clock;
    fake.clock = Date.now() + 60_000;
    fake.put('users', { ...fake.users.get(JO)!, phone_number: '555-777-0000' });
    const before = fake.mutations().length;
    const s = await pushOutbox({ db: srv.db, orgId, client });
    fake.clock = savedClock;
    assert.equal(s.superseded, 1, JSON.stringify(s));
    assert.equal(fake.mutations().length, before, 'no update sent');
    assert.notEqual(fake.users.get(JO)!.dob, '1990-01-01');
    const read = await fhir(base, 'GET', `Patient/${patient.id}`);
    assert.equal(read.json.telecom.find((t: any) => t.system === 'phone').value, '555-777-0000', 'Healthie\'s newer copy mirrored');
    const hist = await fhir(base, 'GET', `Patient/${patient.id}/_history`);
    assert.ok(hist.json.entry.some((e: any) => e.resource.birthDate === '1990-01-01'), 'the losing FHIR version stays in history');
    assert.equal((await outbox(orgId)).length, 1, 'mirroring is not queued for push');
  });
});

describe('kiln healthie push', () => {
  test('the command sends the due outbox rows and status lists them', async () => {
    fake.put('users', fake.users.get(JO)!); // back on the fake's past clock after the conflict test
    const { orgId, base, patient } = await linkedTenant('push-cli');
    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...patient, birthDate: '1987-07-07' });
    assert.equal(upd.status, 200);
    const env = { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), DATABASE_URL: '',
      HEALTHIE_API_KEY_PUSH_CLI: 'k', HEALTHIE_API_URL_PUSH_CLI: fake.url };
    const push = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'healthie', 'push', '--tenant', 'push-cli'], { env });
    assert.match(push.stdout, /1 claimed, 1 sent/);
    assert.equal(fake.users.get(JO)!.dob, '1987-07-07');
    assert.equal((await outbox(orgId))[0].status, 'done');
    const status = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'healthie', 'status', '--tenant', 'push-cli'], { env });
    assert.match(status.stdout, new RegExp(`done\tPatient/${patient.id}/_history/\\d+\\tattempts 1`));
  });
});

describe('healthie push across a restart', () => {
  test('a queued change survives a server restart and is sent by the in-process loop of the restarted server', async () => {
    fake.put('users', fake.users.get(JO)!); // back on the fake's past clock after the conflict test
    const { orgId, base, patient } = await linkedTenant('push-restart');
    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...patient, birthDate: '1987-06-06' });
    assert.equal(upd.status, 200);
    const { dataDir, pgPort } = srv;
    await srv.stop();
    const env = { KILN_HEALTHIE_SYNC_SECONDS: '1', HEALTHIE_API_KEY_PUSH_RESTART: 'k', HEALTHIE_API_URL_PUSH_RESTART: fake.url };
    Object.assign(process.env, env);
    try {
      srv = await startTestServer({ dataDir, pgPort });
      const deadline = Date.now() + 20_000;
      let rows = await outbox(orgId);
      while (rows[0].status === 'pending' && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        rows = await outbox(orgId);
      }
      assert.equal(rows[0].status, 'done', JSON.stringify(rows));
      assert.equal(fake.users.get(JO)!.dob, '1987-06-06');
      assert.equal(fake.mutations().at(-1)!.operation, 'UpdateClient');
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
  });
});
