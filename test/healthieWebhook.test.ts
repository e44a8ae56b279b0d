// Healthie webhooks against a real Kiln and the local Healthie server: signatures are
// checked (401 and nothing stored otherwise), deliveries are queued and acknowledged,
// the worker re-fetches and upserts, replays write nothing, deletions come through.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { processWebhooks, signDelivery, checkSignature } from '../src/healthie/webhooks.ts';
import { SYSTEM } from '../mappings/healthie/index.ts';

const SLUG = 'hook-tenant';
const SECRET = 'whsec-test-secret';
let srv: TestServer;
const fake = new FakeHealthie('k');
let client: HealthieClient;
let orgId: number;
let base: string;
const path = `/fhir/${SLUG}/$healthie-webhook`;

before(async () => {
  process.env[`HEALTHIE_WEBHOOK_SECRET_${SLUG.toUpperCase().replace(/-/g, '_')}`] = SECRET;
  srv = await startTestServer();
  await fake.start();
  fake.seedExamples();
  client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1, maxDelayMs: 5 });
  orgId = (await createOrg(srv.db.owner, SLUG, SLUG)).id;
  base = `${srv.url}/${SLUG}`;
});
after(async () => { await fake.stop(); await srv.stop(); removeDataDir(srv.dataDir); });

const origin = () => srv.url.replace(/\/fhir$/, '');
async function deliver(body: string, headers: Record<string, string>) {
  const res = await fetch(`${origin()}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  return { status: res.status, json: await res.json().catch(() => undefined) };
}
const signed = (body: string) => deliver(body, signDelivery(SECRET, path, body));
const queued = async () => (await srv.db.owner.query('SELECT count(*)::integer AS n FROM healthie_webhook_events WHERE org_id = $1', [orgId])).rows[0].n;
const versions = async () => (await srv.db.owner.query('SELECT count(*)::integer AS n FROM resource_history WHERE org_id = $1', [orgId])).rows[0].n;
const byIdentifier = async (type: string, system: string, value: string) =>
  (await fhir(base, 'GET', `${type}?identifier=${encodeURIComponent(`${system}|${value}`)}`)).json.entry?.map((e: any) => e.resource) ?? [];

describe('healthie webhooks', () => {
  test('signature check: hex and RFC 9530 digests, first "=" only, tampered bodies refused', () => {
    const body = Buffer.from('{"resource_id":"1","resource_id_type":"User","event_type":"patient.updated","changed_fields":["dob"]}');
    const h = signDelivery(SECRET, path, body);
    const req = { method: 'POST', path, query: '', contentDigest: h['content-digest'], signature: h.signature, body };
    assert.equal(checkSignature(req, SECRET), undefined);
    assert.match(checkSignature({ ...req, body: Buffer.from(body.toString().replace('dob', 'sex')) }, SECRET)!, /Content-Digest/);
    assert.match(checkSignature(req, 'other-secret')!, /Signature/);
    assert.match(checkSignature({ ...req, signature: undefined }, SECRET)!, /Missing/);
    assert.match(checkSignature({ ...req, path: '/fhir/other/$healthie-webhook' }, SECRET)!, /Signature/);
    // RFC 9530 form: sha-256=:base64:, whose padding '=' must survive the split on the first '='.
    const b64 = `:${crypto.createHash('sha256').update(body).digest('base64')}:`;
    assert.ok(b64.endsWith('=:'));
    const sig = crypto.createHmac('sha256', SECRET).update(`post ${path}  ${b64} application/json ${body.length}`).digest('hex');
    assert.equal(checkSignature({ ...req, contentDigest: `sha-256=${b64}`, signature: `sig1=${sig}` }, SECRET), undefined);
    assert.match(checkSignature({ ...req, contentDigest: `sha-256=${b64}`, signature: `sig1=${sig.replace(/^./, (c) => (c === 'a' ? 'b' : 'a'))}` }, SECRET)!, /Signature/);
  });

  test('unsigned or wrongly signed deliveries get 401 OperationOutcome and store nothing', async () => {
    const body = JSON.stringify({ resource_id: '1204417', resource_id_type: 'User', event_type: 'patient.updated', changed_fields: ['dob'] });
    const v = await versions();
    const unsigned = await deliver(body, {});
    assert.equal(unsigned.status, 401);
    assert.equal(unsigned.json.resourceType, 'OperationOutcome');
    assert.equal(unsigned.json.issue[0].code, 'security');
    const wrongKey = await deliver(body, signDelivery('not-the-secret', path, body));
    assert.equal(wrongKey.status, 401);
    const tampered = await deliver(body.replace('1204417', '1204418'), signDelivery(SECRET, path, body));
    assert.equal(tampered.status, 401);
    const badSig = signDelivery(SECRET, path, body);
    const flipped = await deliver(body, { ...badSig, signature: badSig.signature.replace(/.$/, (c) => (c === '0' ? '1' : '0')) });
    assert.equal(flipped.status, 401);
    assert.equal(await queued(), 0, 'nothing queued');
    const s = await processWebhooks({ db: srv.db, orgId, client });
    assert.equal(s.claimed, 0);
    assert.equal(await versions(), v, 'nothing changed in FHIR');
  });

  test('a good delivery is acknowledged with 202, queued, and the worker re-fetches and upserts; a replay writes no new version', async () => {
    const body = JSON.stringify({ resource_id: '330145982', resource_id_type: 'Appointment', event_type: 'appointment.created', changed_fields: [] });
    const res = await signed(body);
    assert.equal(res.status, 202, JSON.stringify(res.json));
    assert.equal(await queued(), 1);
    const dup = await signed(body);
    assert.equal(dup.status, 202, 'an identical pending delivery is acknowledged');
    assert.equal(await queued(), 1, 'and collapses into the waiting one');
    const s = await processWebhooks({ db: srv.db, orgId, client });
    assert.equal(s.done, 1, JSON.stringify(s));
    // The appointment's client was not imported yet: it is imported first.
    const [patient] = await byIdentifier('Patient', SYSTEM.user, '1204417');
    assert.ok(patient, 'patient imported');
    const [enc] = await byIdentifier('Encounter', SYSTEM.appointment, '330145982');
    assert.equal(enc.subject.reference, `Patient/${patient.id}`);
    assert.equal(enc.class.code, 'VR');
    const fetched = fake.requests.filter((r) => r.operation === 'Appointment');
    assert.equal(fetched.at(-1)!.variables.id, '330145982', 're-fetched by id');

    const v = await versions();
    assert.equal((await signed(body)).status, 202);
    // A repeat waits out the replay window (below); here the window has passed.
    await srv.db.owner.query(`UPDATE healthie_webhook_events SET next_attempt_at = now() WHERE org_id = $1 AND status = 'pending'`, [orgId]);
    const replay = await processWebhooks({ db: srv.db, orgId, client });
    assert.equal(replay.done, 1);
    assert.deepEqual(replay.outcomes, { unchanged: 1 });
    assert.equal(await versions(), v, 'replay: no new version');
    const out = await srv.db.owner.query('SELECT count(*)::integer AS n FROM healthie_outbox WHERE org_id = $1', [orgId]);
    assert.equal(out.rows[0].n, 0, 'webhook writes are not pushed back');
  });

  test('updates and deletions come through: a changed patient, a deleted appointment, a deleted metric entry', async () => {
    fake.put('users', { ...fake.users.get('1204417')!, phone_number: '555-222-3333' });
    assert.equal((await signed(JSON.stringify({ resource_id: 1204417, resource_id_type: 'User', event_type: 'patient.updated', changed_fields: ['phone_number'] }))).status, 202);
    fake.put('appointments', { ...fake.appointments.get('330145982')!, deleted_at: '2025-06-02 10:00:00 +0000' });
    assert.equal((await signed(JSON.stringify({ resource_id: '330145982', resource_id_type: 'Appointment', event_type: 'appointment.deleted', changed_fields: [] }))).status, 202);
    assert.equal((await signed(JSON.stringify({ resource_id: '98811001', resource_id_type: 'Entry', event_type: 'metric_entry.created', changed_fields: [] }))).status, 202);
    assert.equal((await signed(JSON.stringify({ resource_id: '777', resource_id_type: 'FormAnswerGroup', event_type: 'form_answer_group.created', changed_fields: [] }))).status, 202);
    const s = await processWebhooks({ db: srv.db, orgId, client });
    assert.equal(s.done, 3, JSON.stringify(s));
    assert.equal(s.ignored, 1, 'form answers are not mirrored');
    const [patient] = await byIdentifier('Patient', SYSTEM.user, '1204417');
    assert.equal(patient.telecom.find((t: any) => t.system === 'phone').value, '555-222-3333');
    const [enc] = await byIdentifier('Encounter', SYSTEM.appointment, '330145982');
    assert.equal(enc.status, 'entered-in-error', 'deleted appointment');
    const [obs] = await byIdentifier('Observation', SYSTEM.entry, '98811001');
    assert.ok(obs, 'entry imported');

    fake.entries.delete('98811001');
    assert.equal((await signed(JSON.stringify({ resource_id: '98811001', resource_id_type: 'Entry', event_type: 'metric_entry.deleted', changed_fields: [] }))).status, 202);
    const d = await processWebhooks({ db: srv.db, orgId, client });
    assert.deepEqual(d.outcomes, { deleted: 1 });
    assert.equal((await fhir(base, 'GET', `Observation/${obs.id}`)).status, 410);
  });

  test('a replayed delivery is not queued again within the replay window: however often it comes, at most one re-fetch per window', async () => {
    const body = JSON.stringify({ resource_id: '330160044', resource_id_type: 'Appointment', event_type: 'appointment.updated', changed_fields: ['date'] });
    const rows = async () => (await srv.db.owner.query(
      `SELECT status, next_attempt_at > now() + interval '4 minutes' AS deferred FROM healthie_webhook_events WHERE org_id = $1 AND body::text = $2 ORDER BY id`, [orgId, body])).rows;
    const first = await signed(body);
    assert.equal(first.status, 202, JSON.stringify(first.json));
    assert.equal((await processWebhooks({ db: srv.db, orgId, client })).done, 1);
    const fetches = fake.requests.length;
    // The same signed bytes again, ten times (a replay, or Healthie repeating itself).
    for (let i = 0; i < 10; i++) {
      const again = await signed(body);
      assert.equal(again.status, 202, JSON.stringify(again.json));
      assert.equal(again.json.resourceType, 'OperationOutcome');
    }
    const after = await rows();
    assert.equal(after.length, 2, `one delivery processed and at most one waiting: ${JSON.stringify(after)}`);
    assert.deepEqual(after[1], { status: 'pending', deferred: true }, 'the repeat waits out the window from the processed one');
    const now = await processWebhooks({ db: srv.db, orgId, client });
    assert.equal(now.claimed, 0, 'nothing to re-fetch now');
    assert.equal(fake.requests.length, fetches, 'no request to Healthie');
    // Once the window has passed the repeat is processed (an identical body may be a real
    // second change: Healthie's thin payloads carry no time), once.
    await srv.db.owner.query(`UPDATE healthie_webhook_events SET next_attempt_at = now() WHERE org_id = $1 AND status = 'pending'`, [orgId]);
    assert.equal((await processWebhooks({ db: srv.db, orgId, client })).done, 1);
  });

  test('bad bytes in a signed delivery: a NUL (raw or escaped) and invalid UTF-8 are 400 OperationOutcomes and store nothing', async () => {
    const before = await queued();
    const bodies = [
      Buffer.from('{"resource_id":"1\\u0000","resource_id_type":"User","event_type":"patient.updated"}'), // escaped, in a value Kiln stores
      Buffer.from('{"resource_id":"1204417","resource_id_type":"User\\u0000","event_type":"patient.updated"}'),
      Buffer.from('{"resource_id":"1204417","resource_id_type":"User","event_type":"patient.updated","changed_fields":["\\u0000"]}'),
      Buffer.from('{"resource_id":"1204417\u0000","resource_id_type":"User","event_type":"patient.updated"}'), // a raw NUL byte
      Buffer.concat([Buffer.from('{"resource_id":"1204417","resource_id_type":"User","event_type":"patient.updated","x":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]),
    ];
    for (const body of bodies) {
      const res = await fetch(`${origin()}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signDelivery(SECRET, path, body) }, body });
      const text = await res.text();
      assert.equal(res.status, 400, `${JSON.stringify(body.toString('latin1'))}: ${res.status} ${text}`);
      assert.equal(JSON.parse(text).resourceType, 'OperationOutcome');
      assert.ok(!/\bat \S+ \(/.test(text), 'no stack trace');
    }
    assert.equal(await queued(), before, 'nothing queued');
  });

  test('a Healthie outage puts the delivery back for retry; it is processed later', async () => {
    fake.put('users', { ...fake.users.get('1204417')!, email: 'jo.new@example.com' });
    assert.equal((await signed(JSON.stringify({ resource_id: '1204417', resource_id_type: 'User', event_type: 'patient.updated', changed_fields: ['email'] }))).status, 202);
    const impatient = new HealthieClient({ url: fake.url, apiKey: 'k', maxRetries: 0 });
    fake.failures.push(503);
    const first = await processWebhooks({ db: srv.db, orgId, client: impatient, backoffSeconds: () => 0 });
    assert.equal(first.retried, 1, JSON.stringify(first));
    const row = (await srv.db.owner.query(`SELECT status, attempts, last_error FROM healthie_webhook_events WHERE org_id = $1 ORDER BY id DESC LIMIT 1`, [orgId])).rows[0];
    assert.deepEqual([row.status, row.attempts], ['pending', 1]);
    assert.match(row.last_error, /503/);
    const second = await processWebhooks({ db: srv.db, orgId, client: impatient });
    assert.equal(second.done, 1);
    const [patient] = await byIdentifier('Patient', SYSTEM.user, '1204417');
    assert.equal(patient.telecom.find((t: any) => t.system === 'email').value, 'jo.new@example.com');
  });
});
