// Healthie group appointments (user_id null, several attendees) against a real Kiln and the
// local Healthie server: each attendee gets an Encounter of their own carrying the one
// appointment identifier; cancellation, deletion and a removed attendee reach all of them
// through webhooks and the pull; a re-run writes nothing; a group Encounter changed in FHIR
// is not pushed.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { processWebhooks, signDelivery } from '../src/healthie/webhooks.ts';
import { pushOutbox } from '../src/healthie/push.ts';
import { pull } from '../src/healthie/pull.ts';
import { mirrorObject } from '../src/healthie/refetch.ts';
import { upsert } from '../src/healthie/upsert.ts';
import { SYSTEM, EXT, loadMaps, appointmentToEncounter } from '../mappings/healthie/index.ts';

const SLUG = 'group-tenant';
const SECRET = 'whsec-group-secret';
const path = `/fhir/${SLUG}/$healthie-webhook`;
const PROVIDER = { id: '388120', full_name: 'Dana Okafor, RD' };
const CLIENTS = ['7100001', '7100002', '7100003'];
let srv: TestServer;
const fake = new FakeHealthie('k');
let client: HealthieClient;
let orgId: number;
let base: string;

before(async () => {
  process.env[`HEALTHIE_WEBHOOK_SECRET_${SLUG.toUpperCase().replace(/-/g, '_')}`] = SECRET;
  srv = await startTestServer();
  await fake.start();
  for (const [i, id] of CLIENTS.entries()) {
    fake.put('users', { id, first_name: `Group${i}`, last_name: 'Member', dob: '1990-01-01', active: true, location: null, locations: [] });
  }
  client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1, maxDelayMs: 5 });
  orgId = (await createOrg(srv.db.owner, SLUG, SLUG)).id;
  base = `${srv.url}/${SLUG}`;
});
after(async () => { await fake.stop(); await srv.stop(); removeDataDir(srv.dataDir); });

/** A group appointment as Healthie lists it: no user, the clients as attendees. */
function putGroup(id: string, attendees = CLIENTS, extra: Record<string, unknown> = {}) {
  return fake.put('appointments', {
    id, date: '2025-01-14 10:00:00 -0600', end: '2025-01-14 11:00:00 -0600', length: 60, contact_type: 'Healthie Video Call',
    pm_status: 'Occurred', user_id: null, user: null, attendees: attendees.map((a) => ({ id: a })), provider: PROVIDER,
    appointment_type: { id: '41877', name: 'Group Class' }, is_blocker: false, ...extra,
  });
}
let deliveries = 0;
/** A signed webhook delivery (each distinct, so none waits out the replay window), then the queue worker. */
async function hook(appointmentId: string, event = 'appointment.updated') {
  const body = JSON.stringify({ resource_id: appointmentId, resource_id_type: 'Appointment', event_type: event, changed_fields: [`n${deliveries++}`] });
  const res = await fetch(`${srv.url.replace(/\/fhir$/, '')}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signDelivery(SECRET, path, body) }, body });
  assert.equal(res.status, 202, await res.text());
  return processWebhooks({ db: srv.db, orgId, client });
}
const byIdentifier = async (type: string, system: string, value: string, b = base) =>
  (await fhir(b, 'GET', `${type}?identifier=${encodeURIComponent(`${system}|${value}`)}&_count=50`)).json.entry?.map((e: any) => e.resource) ?? [];
const versions = async (org = orgId) => (await srv.db.owner.query('SELECT count(*)::integer AS n FROM resource_history WHERE org_id = $1', [org])).rows[0].n;
/** The appointment's Encounters by the client in their subject. */
async function encountersOf(appointmentId: string, b = base): Promise<Map<string, any>> {
  const all = await byIdentifier('Encounter', SYSTEM.appointment, appointmentId, b);
  return new Map(all.map((e: any) => [e.subject?.identifier?.value, e]));
}
const groupCount = (e: any) => e.extension?.find((x: any) => x.url === EXT.groupAppointment)?.valueInteger;

describe('healthie group appointments', () => {
  test('a group appointment with three attendees gives three Encounters, one per patient, each with the appointment identifier; a re-run writes nothing', async () => {
    putGroup('7200001');
    const s = await hook('7200001', 'appointment.created');
    assert.equal(s.done, 1, JSON.stringify(s));
    const encs = await encountersOf('7200001');
    assert.deepEqual([...encs.keys()].sort(), CLIENTS, 'one Encounter per attendee');
    for (const c of CLIENTS) {
      const [patient] = await byIdentifier('Patient', SYSTEM.user, c);
      assert.ok(patient, `client ${c} imported first`);
      const e = encs.get(c);
      assert.equal(e.subject.reference, `Patient/${patient.id}`);
      assert.deepEqual(e.identifier, [{ system: SYSTEM.appointment, value: '7200001' }]);
      assert.equal(e.status, 'finished');
      assert.equal(groupCount(e), 3);
    }
    const out = await srv.db.owner.query('SELECT count(*)::integer AS n FROM healthie_outbox WHERE org_id = $1', [orgId]);
    assert.equal(out.rows[0].n, 0, 'mirrored writes are not pushed back');

    const v = await versions();
    const again = await hook('7200001');
    assert.deepEqual(again.outcomes, { unchanged: 1 });
    assert.equal(await versions(), v, 'no new version');
  });

  test('cancelled in Healthie (pm_status Cancelled): the webhook cancels all three Encounters', async () => {
    putGroup('7200002');
    await hook('7200002', 'appointment.created');
    putGroup('7200002', CLIENTS, { pm_status: 'Cancelled' });
    const s = await hook('7200002');
    assert.deepEqual(s.outcomes, { updated: 1 }, JSON.stringify(s));
    const encs = await encountersOf('7200002');
    assert.equal(encs.size, 3);
    for (const c of CLIENTS) assert.equal(encs.get(c).status, 'cancelled', c);
  });

  test('deleted in Healthie: soft-deleted makes all three entered-in-error; gone altogether deletes all three', async () => {
    putGroup('7200003');
    await hook('7200003', 'appointment.created');
    const ids = [...(await encountersOf('7200003')).values()].map((e) => e.id);
    assert.equal(ids.length, 3);
    putGroup('7200003', CLIENTS, { deleted_at: '2025-06-02 10:00:00 +0000' });
    await hook('7200003', 'appointment.deleted');
    for (const e of (await encountersOf('7200003')).values()) assert.equal(e.status, 'entered-in-error');
    fake.appointments.delete('7200003');
    const s = await hook('7200003', 'appointment.deleted');
    assert.deepEqual(s.outcomes, { deleted: 1 }, JSON.stringify(s));
    for (const id of ids) assert.equal((await fhir(base, 'GET', `Encounter/${id}`)).status, 410, id);
  });

  test('an attendee removed from the group keeps a cancelled Encounter (not written back); the others now count two', async () => {
    putGroup('7200004');
    await hook('7200004', 'appointment.created');
    putGroup('7200004', [CLIENTS[0], CLIENTS[2]]);
    await hook('7200004', 'appointment.patient_removed');
    const encs = await encountersOf('7200004');
    assert.equal(encs.size, 3, 'not deleted');
    const left = encs.get(CLIENTS[1]);
    assert.equal(left.status, 'cancelled');
    assert.ok(left.extension.some((x: any) => x.url === EXT.removedAttendee && x.valueBoolean === true));
    for (const c of [CLIENTS[0], CLIENTS[2]]) {
      assert.equal(encs.get(c).status, 'finished', c);
      assert.equal(groupCount(encs.get(c)), 2, c);
    }
    const v = await versions();
    assert.deepEqual((await hook('7200004')).outcomes, { unchanged: 1 }, 'a re-run writes nothing');
    assert.equal(await versions(), v);
  });

  test('an Encounter stored by the one-Encounter code (subject the first attendee) becomes that attendee\'s: no duplicate', async () => {
    const a = putGroup('7200005');
    const first = await mirrorObject({ db: srv.db, orgId, client, maps: loadMaps() }, 'user', CLIENTS[0]);
    // What the code before this change stored: the group as one Encounter of its first attendee.
    const old = appointmentToEncounter({ ...a, attendees: [{ id: CLIENTS[0] }] } as any, loadMaps(), { source: fake.url, now: new Date().toISOString(), patientId: first.id! })!;
    const stored = await upsert(srv.db, orgId, old, SYSTEM.appointment, '7200005', a.updated_at);
    assert.equal(stored.outcome, 'created');
    await hook('7200005');
    const encs = await encountersOf('7200005');
    assert.equal(encs.size, 3);
    assert.equal(encs.get(CLIENTS[0]).id, stored.id, 'the stored one is the first attendee\'s');
    assert.equal(groupCount(encs.get(CLIENTS[0])), 3);
  });

  test('a group Encounter changed in FHIR is not pushed: skipped as not representable, no mutation sent', async () => {
    putGroup('7200006');
    await hook('7200006', 'appointment.created');
    const e = (await encountersOf('7200006')).get(CLIENTS[1]);
    assert.ok(e, 'the second attendee has an Encounter');
    const put = await fhir(base, 'PUT', `Encounter/${e.id}`, { ...e, status: 'cancelled' });
    assert.equal(put.status, 200, put.text);
    const before = fake.mutations().length;
    const s = await pushOutbox({ db: srv.db, orgId, client });
    assert.equal(s.skipped, 1, JSON.stringify(s));
    assert.equal(s.done, 0);
    assert.equal(fake.mutations().length, before, 'no mutation');
    const row = (await srv.db.owner.query(`SELECT status, last_error FROM healthie_outbox WHERE org_id = $1 AND resource_id = $2`, [orgId, e.id])).rows[0];
    assert.deepEqual(row, { status: 'skipped', last_error: 'not representable in Healthie' });
    assert.equal(fake.appointments.get('7200006')!.pm_status, 'Occurred', 'Healthie unchanged');
  });

  test('pull: a group appointment gives one Encounter per attendee; a second pull writes nothing', async () => {
    putGroup('7200007');
    const org = (await createOrg(srv.db.owner, 'group-pull', 'group-pull')).id;
    const pbase = `${srv.url}/group-pull`;
    const first = await pull({ db: srv.db, orgId: org, client, full: true });
    assert.deepEqual(first.failures, []);
    const encs = await encountersOf('7200007', pbase);
    assert.deepEqual([...encs.keys()].sort(), CLIENTS);
    for (const e of encs.values()) assert.equal(groupCount(e), 3);
    const v = await versions(org);
    const second = await pull({ db: srv.db, orgId: org, client, full: true });
    assert.deepEqual(second.failures, []);
    assert.equal(await versions(org), v, 'no new version');
    // A change and a removal reach every attendee through an incremental pull too.
    putGroup('7200007', [CLIENTS[0], CLIENTS[2]], { pm_status: 'Cancelled' });
    const third = await pull({ db: srv.db, orgId: org, client });
    assert.deepEqual(third.failures, []);
    const after = await encountersOf('7200007', pbase);
    assert.equal(after.size, 3);
    for (const e of after.values()) assert.equal(e.status, 'cancelled');
    assert.ok(after.get(CLIENTS[1]).extension.some((x: any) => x.url === EXT.removedAttendee));
    assert.equal(groupCount(after.get(CLIENTS[0])), 2);
  });
});
