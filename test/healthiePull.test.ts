// Pull from a local Healthie server into a real Kiln: idempotent conditional updates,
// watermarks, archival, many pages under injected rate limits, and an interrupted pull.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { pull } from '../src/healthie/pull.ts';
import { startHealthieLoop } from '../src/healthie/push.ts';
import { SYSTEM, toFhirDateTime } from '../mappings/healthie/index.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

async function tenant(slug: string) {
  const org = await createOrg(srv.db.owner, slug, slug);
  return { orgId: org.id, base: `${srv.url}/${slug}` };
}
async function versions(orgId: number): Promise<number> {
  return (await srv.db.owner.query('SELECT count(*)::integer AS n FROM resource_history WHERE org_id = $1', [orgId])).rows[0].n;
}
async function counts(orgId: number): Promise<Record<string, number>> {
  const { rows } = await srv.db.owner.query(
    'SELECT resource_type, count(*)::integer AS n FROM resource_ids WHERE org_id = $1 AND NOT deleted GROUP BY resource_type', [orgId]);
  return Object.fromEntries(rows.map((r) => [r.resource_type, r.n]));
}

describe('healthie pull', () => {
  const fake = new FakeHealthie('k');
  let client: HealthieClient;
  before(async () => { await fake.start(); fake.seedExamples(); client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10 }); });
  after(() => fake.stop());

  test('the server loop pulls on a schedule (KILN_HEALTHIE_PULL_MINUTES)', async () => {
    const { orgId } = await tenant('pull-scheduled');
    const env = { HEALTHIE_API_KEY_PULL_SCHEDULED: 'k', HEALTHIE_API_URL_PULL_SCHEDULED: fake.url };
    Object.assign(process.env, env);
    const logs: string[] = [];
    const stop = startHealthieLoop(srv.db, 100, (m) => logs.push(m), 60_000);
    try {
      // The first tick pulls (users first, then the rest); wait until that pull is over.
      const deadline = Date.now() + 20_000;
      let last = -1;
      for (let n = await versions(orgId); (n === 0 || n !== last) && Date.now() < deadline; n = await versions(orgId)) {
        last = n;
        await new Promise((r) => setTimeout(r, 700));
      }
      assert.ok((await counts(orgId)).Patient >= 1, logs.join('\n'));
      // Later ticks (every 100 ms) run the push/webhook work but no pull: not due for a minute.
      const queries = () => fake.requests.filter((r) => /^\s*(query|\{)/.test(r.query)).length;
      const seen = queries();
      await new Promise((r) => setTimeout(r, 800));
      assert.equal(queries(), seen);
    } finally {
      await stop();
      for (const k of Object.keys(env)) delete process.env[k];
    }
  });

  test('imports the examples; a second pull creates no new versions; changes and archival come through', async () => {
    const { orgId, base } = await tenant('pull-examples');
    const first = await pull({ db: srv.db, orgId, client });
    assert.equal(first.phases.users.created, 1);
    assert.equal(first.phases.appointments.created, 3, 'video, in person, no-show');
    assert.equal(first.phases.appointments.skipped, 1, 'the calendar blocker');
    assert.equal(first.phases.entries.created, 4);
    assert.equal(first.phases.medications.created, 2);
    assert.deepEqual(first.failures, []);
    assert.deepEqual(await counts(orgId), { Patient: 1, Encounter: 3, Observation: 4, MedicationStatement: 2 });

    const p = await fhir(base, 'GET', `Patient?identifier=${encodeURIComponent(`${SYSTEM.user}|1204417`)}`);
    assert.equal(p.json.entry.length, 1);
    const patient = p.json.entry[0].resource;
    const enc = await fhir(base, 'GET', `Encounter?identifier=${encodeURIComponent(`${SYSTEM.appointment}|330145982`)}`);
    assert.equal(enc.json.entry[0].resource.subject.reference, `Patient/${patient.id}`);
    assert.equal(enc.json.entry[0].resource.class.code, 'VR');

    const v = await versions(orgId);
    const again = await pull({ db: srv.db, orgId, client });
    assert.equal(await versions(orgId), v, 'no new versions');
    assert.equal(again.phases.users.created + again.phases.users.updated, 0);
    const full = await pull({ db: srv.db, orgId, client, full: true });
    assert.equal(full.phases.users.unchanged, 1);
    assert.equal(full.phases.entries.unchanged, 4);
    assert.equal(await versions(orgId), v, 'a full re-pull writes nothing either');

    // Healthie-side change and archival.
    fake.put('users', { ...fake.users.get('1204417')!, phone_number: '555-999-0000', active: false });
    const changed = await pull({ db: srv.db, orgId, client });
    assert.equal(changed.phases.users.updated, 1);
    assert.equal(await versions(orgId), v + 1);
    const read = await fhir(base, 'GET', `Patient/${patient.id}`);
    assert.equal(read.json.active, false);
    assert.equal(read.json.telecom.find((t: any) => t.system === 'phone').value, '555-999-0000');
    assert.equal(read.json.meta.versionId, '2');
    const hist = await fhir(base, 'GET', `Patient/${patient.id}/_history`);
    assert.equal(hist.json.entry.length, 2, 'the previous version stays in history');
    // Pulled writes are not queued for push (no echo).
    const out = await srv.db.owner.query('SELECT count(*)::integer AS n FROM healthie_outbox WHERE org_id = $1', [orgId]);
    assert.equal(out.rows[0].n, 0);

    // A FHIR-side update of the linked patient (and a new Observation for it) is queued
    // for push in the same transaction; a patient not linked to Healthie is not.
    const upd = await fhir(base, 'PUT', `Patient/${patient.id}`, { ...read.json, birthDate: '1987-04-20' });
    assert.equal(upd.status, 200);
    const obs = await fhir(base, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] },
      subject: { reference: `Patient/${patient.id}` }, valueQuantity: { value: 80, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' } });
    assert.equal(obs.status, 201);
    const other = await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Unlinked' }] });
    assert.equal(other.status, 201);
    const queued = await srv.db.owner.query('SELECT resource_type, resource_id, version_id, status FROM healthie_outbox WHERE org_id = $1 ORDER BY id', [orgId]);
    assert.deepEqual(queued.rows, [
      { resource_type: 'Patient', resource_id: patient.id, version_id: 3, status: 'pending' },
      { resource_type: 'Observation', resource_id: obs.json.id, version_id: 1, status: 'pending' },
    ]);
    // Conflict rule: the pending FHIR change is newer than Healthie's copy, so a pull keeps it.
    const kept = await pull({ db: srv.db, orgId, client, full: true });
    assert.equal(kept.phases.users.keptFhir, 1);
    assert.equal((await fhir(base, 'GET', `Patient/${patient.id}`)).json.birthDate, '1987-04-20');
  });
});

describe('healthie pull watermark', () => {
  const fake = new FakeHealthie('k');
  let client: HealthieClient;
  before(async () => { await fake.start(); fake.seedExamples(); client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10 }); });
  after(() => fake.stop());

  test('a change in the same second as the newest updated_at of the last pull comes through the next incremental pull', async () => {
    const { orgId, base } = await tenant('pull-same-second');
    await pull({ db: srv.db, orgId, client });
    const v = await versions(orgId);
    // Healthie's times are to the second: a change made in the second the last pull saw as
    // its newest carries the same updated_at (set explicitly: the fake's clock would move on).
    const newest = (kind: 'users' | 'entries') => [...fake[kind].values()].sort((a, b) => Date.parse(toFhirDateTime(b.updated_at)!) - Date.parse(toFhirDateTime(a.updated_at)!))[0];
    const entry = fake.entries.get('98811001')!; // the Weight entry, changed in the newest entry's second
    fake.put('entries', { ...entry, metric_stat: 77.5, updated_at: newest('entries').updated_at }, false);
    const user = newest('users');
    fake.put('users', { ...user, phone_number: '555-123-4567' }, false);
    const next = await pull({ db: srv.db, orgId, client });
    assert.equal(next.phases.entries.updated, 1, 'the same-second entry change');
    assert.equal(next.phases.users.updated, 1, 'the same-second user change');
    assert.equal(await versions(orgId), v + 2, 'unchanged objects of that second write nothing');
    const obs = await fhir(base, 'GET', `Observation?identifier=${encodeURIComponent(`${SYSTEM.entry}|${entry.id}`)}`);
    assert.equal(obs.json.entry[0].resource.valueQuantity.value, 77.5);
    const pat = await fhir(base, 'GET', `Patient?identifier=${encodeURIComponent(`${SYSTEM.user}|${user.id}`)}`);
    assert.equal(pat.json.entry[0].resource.telecom.find((t: any) => t.system === 'phone').value, '555-123-4567');
    // The second is read again on the pull after, but writes nothing.
    const again = await pull({ db: srv.db, orgId, client });
    assert.equal(again.phases.entries.updated + again.phases.users.updated, 0);
    assert.equal(await versions(orgId), v + 2);
  });
});

describe('healthie incremental pull', () => {
  const fake = new FakeHealthie('k');
  let client: HealthieClient;
  before(async () => { await fake.start(); fake.seedMany(120); client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10 }); });
  after(() => fake.stop());

  test('asks only for what changed: users newest first down to the watermark, medications of changed clients; a sweep reads every client\'s', async () => {
    const { orgId } = await tenant('pull-incremental');
    const first = await pull({ db: srv.db, orgId, client, pageSize: 50 });
    assert.equal(first.medicationSweep, true, 'the first pull sweeps medications');
    assert.deepEqual(await counts(orgId), { Patient: 120, Encounter: 120, Observation: 240, MedicationStatement: 120 });

    const changedUser = '2000042';
    fake.put('users', { ...fake.users.get(changedUser)!, phone_number: '555-222-3333' });
    fake.put('entries', { ...fake.entries.get('4000010')!, metric_stat: 321 });
    fake.put('medications', { ...fake.medications.get('5000042')!, dosage: '1000 MG' });
    const seen = fake.requests.length;
    const next = await pull({ db: srv.db, orgId, client, pageSize: 50 });
    const asked = fake.requests.slice(seen);
    const ops = asked.map((r) => r.operation);
    assert.equal(next.medicationSweep, false);
    // One page per list: active users (it reaches the watermark), archived (empty), appointments, entries.
    assert.deepEqual(ops.filter((o) => o !== 'Medications'), ['Users', 'Users', 'Appointments', 'Entries']);
    // The changed client's, and the client of the watermark's second (read again, unchanged).
    assert.deepEqual(asked.filter((r) => r.operation === 'Medications').map((r) => r.variables.patient_id), [changedUser, '2000119']);
    assert.equal(next.phases.users.updated, 1);
    assert.equal(next.phases.entries.updated, 1);
    assert.equal(next.phases.medications.updated, 1, "the changed client's medication");

    // A sweep (asked for, or due after KILN_HEALTHIE_MEDICATION_SWEEP_HOURS) reads every linked client's.
    const before = fake.requests.length;
    const swept = await pull({ db: srv.db, orgId, client, pageSize: 50, medicationSweepHours: 0 });
    assert.equal(swept.medicationSweep, true);
    assert.equal(fake.requests.slice(before).filter((r) => r.operation === 'Medications').length, 120);
    assert.equal(swept.phases.medications.unchanged, 120);
  });
});

describe('healthie pull: a page with an object the database refuses', () => {
  const fake = new FakeHealthie('k');
  let client: HealthieClient;
  before(async () => { await fake.start(); fake.seedMany(6); client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10 }); });
  after(() => fake.stop());

  test('two clients with one MRN: the second fails (409), the rest of its page and the pull go on', async () => {
    const { orgId } = await tenant('pull-dup-mrn');
    fake.put('users', { ...fake.users.get('2000003')!, record_identifier: 'MRN-1' }); // 2000001's
    const s = await pull({ db: srv.db, orgId, client });
    assert.equal(s.phases.users.created, 5);
    assert.equal(s.phases.users.failed, 1);
    assert.match(s.failures[0].reason, /^409 /);
    assert.equal(s.phases.entries.created, 10, "the failed client's entries are skipped, the others written");
    assert.equal(s.phases.entries.skipped, 2);
    assert.deepEqual(await counts(orgId), { Patient: 5, Encounter: 5, Observation: 10, MedicationStatement: 5 });
  });
});

describe('healthie pull at scale', () => {
  const N = Number(process.env.KILN_HEALTHIE_PULL_N ?? 300);
  const fake = new FakeHealthie('k');
  let client: HealthieClient;
  before(async () => { await fake.start(); fake.seedMany(N); client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10, maxRetries: 10 }); });
  after(() => fake.stop());

  test(`${N} patients with appointments, entries and medications across many pages under injected rate limits and 5xx`, async () => {
    const { orgId } = await tenant('pull-scale');
    fake.failures.push('rate', 429, 503, 'rate');
    fake.failureRate = 0.05;
    const s = await pull({ db: srv.db, orgId, client, pageSize: 50 });
    fake.failureRate = 0;
    assert.ok(s.retries > 0, 'failures were injected and retried');
    assert.deepEqual(s.failures, []);
    assert.deepEqual(await counts(orgId), { Patient: N, Encounter: N, Observation: 2 * N, MedicationStatement: N });
    const dup = await srv.db.owner.query(
      `SELECT count(*)::integer AS n FROM resource_history WHERE org_id = $1 AND version_id > 1`, [orgId]);
    assert.equal(dup.rows[0].n, 0, 'every object written once');
    console.log(`pull: ${s.objects} objects in ${s.seconds.toFixed(1)} s = ${Math.round(s.objects / s.seconds)} objects/s; ${s.requests} requests, ${s.retries} retries`);
    const v = await versions(orgId);
    await pull({ db: srv.db, orgId, client, pageSize: 50 });
    assert.equal(await versions(orgId), v, 'second pull: no new versions');
  });

  test('a pull that dies part-way is completed by the next one, nothing lost or duplicated', async () => {
    const { orgId } = await tenant('pull-killed');
    const impatient = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1, maxRetries: 1 });
    let seen = 0;
    await assert.rejects(pull({
      db: srv.db, orgId, client: impatient, pageSize: 50,
      onProgress: (phase) => { if (phase === 'appointments' && ++seen === Math.min(60, Math.floor(N / 2))) fake.failureRate = 1; },
    }), /HTTP|Too many/);
    fake.failureRate = 0;
    const partial = await counts(orgId);
    assert.equal(partial.Patient, N);
    assert.ok((partial.Encounter ?? 0) + (partial.Observation ?? 0) + (partial.MedicationStatement ?? 0) < 4 * N, 'the pull stopped part-way');
    await pull({ db: srv.db, orgId, client, pageSize: 50 });
    assert.deepEqual(await counts(orgId), { Patient: N, Encounter: N, Observation: 2 * N, MedicationStatement: N });
    const dup = await srv.db.owner.query(`SELECT count(*)::integer AS n FROM resource_history WHERE org_id = $1 AND version_id > 1`, [orgId]);
    assert.equal(dup.rows[0].n, 0);
  });
});
