// The Healthie workers in several processes at once (issue #24, scale): the push and
// webhook workers hold no transaction while Healthie answers (rows are leased instead),
// two `kiln healthie push` / `kiln healthie webhooks` processes on one queue send each
// change once, a second `kiln healthie pull` stands aside while one runs, and a dead
// worker's rows are sent once its lease has run out. Real child processes, one embedded
// PostgreSQL, one local Healthie server answering slowly.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { migrate } from '../src/store/migrate.ts';
import { withTenant } from '../src/store/resources.ts';
import { listOutbox } from '../src/store/healthieSync.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { pull } from '../src/healthie/pull.ts';
import { pushOutbox, startHealthieLoop } from '../src/healthie/push.ts';
import { signDelivery, processWebhooks } from '../src/healthie/webhooks.ts';
import { withPullLease } from '../src/healthie/lease.ts';
import { SYSTEM } from '../mappings/healthie/index.ts';

const N = 12;
const SECRET = 'whsec-workers';
let srv: TestServer;
const fake = new FakeHealthie('k');
const userIds = Array.from({ length: N }, (_, i) => String(2_000_000 + i));
before(async () => {
  srv = await startTestServer();
  await fake.start();
  fake.seedExamples();
  fake.seedMany(N);
});
after(async () => { await fake.stop(); await srv.stop(); removeDataDir(srv.dataDir); });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const envName = (slug: string) => slug.toUpperCase().replace(/-/g, '_');
const fast = () => new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 1, maxDelayMs: 5 });

/**
 * Two processes started together. Rows sit in DEFAULT partitions (the seeds' dates), so both
 * open the database splitting the same partitions at once: that deadlocked (40P01) before
 * partition maintenance took a per-tenant lock.
 */
async function startPair(slug: string, args: string[]) {
  return Promise.all([kiln(slug, args).done, kiln(slug, args).done]);
}

/** A `kiln healthie ...` child process on the test server's database and the local Healthie. */
function kiln(slug: string, args: string[], extra: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'healthie', ...args, '--tenant', slug], {
    env: { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), DATABASE_URL: '', KILN_LOG_LEVEL: 'warn',
      [`HEALTHIE_API_KEY_${envName(slug)}`]: 'k', [`HEALTHIE_API_URL_${envName(slug)}`]: fake.url, ...extra },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A tenant with everything pulled from the local Healthie (its patients linked, so FHIR changes are queued). */
async function pulledTenant(slug: string) {
  const org = await createOrg(srv.db.owner, slug, slug);
  const s = await pull({ db: srv.db, orgId: org.id, client: fast(), full: true });
  assert.deepEqual(s.failures, []);
  return { orgId: org.id, base: `${srv.url}/${slug}` };
}

async function patientOf(base: string, userId: string) {
  return (await fhir(base, 'GET', `Patient?identifier=${encodeURIComponent(`${SYSTEM.user}|${userId}`)}`)).json.entry[0].resource;
}

const outbox = async (orgId: number) => (await srv.db.owner.query(
  `SELECT id, status, lease_owner, leased_until > now() AS leased FROM healthie_outbox WHERE org_id = $1 ORDER BY id`, [orgId])).rows;
const updatesOf = (from: number) => fake.mutations().slice(from).filter((m) => m.operation === 'UpdateClient');
const idleInTransaction = async () => (await srv.db.owner.query(
  `SELECT count(*)::integer AS n FROM pg_stat_activity WHERE usename = 'kiln_app' AND state LIKE 'idle in transaction%'`)).rows[0].n;

describe('healthie workers hold leases, not transactions', () => {
  test('while Healthie is slow and a push is in flight, no transaction is open and the outbox row is visibly leased', async () => {
    const { orgId, base } = await pulledTenant('workers-a');
    const p = await patientOf(base, userIds[0]);
    assert.equal((await fhir(base, 'PUT', `Patient/${p.id}`, { ...p, birthDate: '1981-02-03' })).status, 200);
    fake.delayMs = 1500;
    const seen = fake.requests.length;
    const mutations = fake.mutations().length;
    try {
      const push = pushOutbox({ db: srv.db, orgId, client: fast() });
      await until('the push to ask Healthie', async () => fake.requests.length > seen);
      assert.equal(await idleInTransaction(), 0, 'no transaction of the push is open while Healthie answers');
      const [row] = await outbox(orgId);
      assert.equal(row.status, 'pending');
      assert.match(row.lease_owner ?? '', /^push@/, 'leased by the push worker');
      assert.equal(row.leased, true);
      const s = await push;
      assert.equal(s.done, 1, JSON.stringify(s));
    } finally {
      fake.delayMs = 0;
    }
    const [row] = await outbox(orgId);
    assert.deepEqual([row.status, row.lease_owner], ['done', null], 'finished and the lease let go');
    assert.deepEqual(updatesOf(mutations).map((m) => m.input.id), [userIds[0]]);
  });

  test('while Healthie is slow and a webhook delivery is re-fetched, no transaction is open and the delivery is visibly leased', async () => {
    const slug = 'workers-a';
    const orgId = (await srv.db.owner.query('SELECT id FROM organizations WHERE slug = $1', [slug])).rows[0].id;
    process.env[`HEALTHIE_WEBHOOK_SECRET_${envName(slug)}`] = SECRET;
    const path = `/fhir/${slug}/$healthie-webhook`;
    const body = JSON.stringify({ resource_id: userIds[2], resource_id_type: 'User', event_type: 'patient.updated', changed_fields: [] });
    const res = await fetch(`${srv.url.replace(/\/fhir$/, '')}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signDelivery(SECRET, path, body) }, body });
    assert.equal(res.status, 202);
    fake.delayMs = 1500;
    const seen = fake.requests.length;
    try {
      const work = processWebhooks({ db: srv.db, orgId, client: fast() });
      await until('the worker to ask Healthie', async () => fake.requests.length > seen);
      assert.equal(await idleInTransaction(), 0, 'no transaction of the webhook worker is open while Healthie answers');
      const [row] = (await srv.db.owner.query(`SELECT status, lease_owner, leased_until > now() AS leased FROM healthie_webhook_events WHERE org_id = $1`, [orgId])).rows;
      assert.deepEqual([row.status, row.leased], ['pending', true]);
      assert.match(row.lease_owner, /^webhooks@/);
      assert.equal((await work).done, 1);
    } finally {
      fake.delayMs = 0;
    }
  });

  test('two `kiln healthie push` processes on one queue send each change to Healthie exactly once', async () => {
    const { orgId, base } = await pulledTenant('workers-b');
    for (const [i, uid] of userIds.entries()) {
      const p = await patientOf(base, uid);
      assert.equal((await fhir(base, 'PUT', `Patient/${p.id}`, { ...p, birthDate: `1970-01-${String(i + 1).padStart(2, '0')}` })).status, 200);
    }
    assert.equal((await outbox(orgId)).length, N);
    const mutations = fake.mutations().length;
    fake.delayMs = 250;
    let results;
    try {
      results = await startPair('workers-b', ['push']);
    } finally {
      fake.delayMs = 0;
    }
    const claimed = results.map((r) => {
      assert.equal(r.code, 0, r.stderr + r.stdout);
      return Number(/(\d+) claimed/.exec(r.stdout)![1]);
    });
    assert.equal(claimed[0] + claimed[1], N, `each row claimed by one process: ${claimed}`);
    assert.ok(claimed.every((c) => c > 0), `both processes worked: ${claimed}`);
    const sent = updatesOf(mutations).map((m) => m.input.id).sort();
    assert.deepEqual(sent, [...userIds].sort(), 'each change sent once');
    for (const [i, uid] of userIds.entries()) assert.equal(fake.users.get(uid)!.dob, `1970-01-${String(i + 1).padStart(2, '0')}`);
    assert.ok((await outbox(orgId)).every((r) => r.status === 'done' && r.lease_owner === null));
  });

  test('two `kiln healthie webhooks` processes on one queue re-fetch each delivery\'s object exactly once', async () => {
    const slug = 'workers-b';
    process.env[`HEALTHIE_WEBHOOK_SECRET_${envName(slug)}`] = SECRET;
    const base = `${srv.url}/${slug}`;
    const path = `/fhir/${slug}/$healthie-webhook`;
    for (const [i, uid] of userIds.entries()) {
      fake.put('users', { ...fake.users.get(uid)!, phone_number: `555-300-${String(i).padStart(4, '0')}` });
      const body = JSON.stringify({ resource_id: uid, resource_id_type: 'User', event_type: 'patient.updated', changed_fields: ['phone_number'] });
      const res = await fetch(`${srv.url.replace(/\/fhir$/, '')}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...signDelivery(SECRET, path, body) }, body });
      assert.equal(res.status, 202);
    }
    const seen = fake.requests.length;
    fake.delayMs = 250;
    let results;
    try {
      results = await startPair(slug, ['webhooks']);
    } finally {
      fake.delayMs = 0;
    }
    const claimed = results.map((r) => {
      assert.equal(r.code, 0, r.stderr + r.stdout);
      return Number(/(\d+) claimed/.exec(r.stdout)![1]);
    });
    assert.equal(claimed[0] + claimed[1], N, `each delivery claimed by one process: ${claimed}`);
    assert.ok(claimed.every((c) => c > 0), `both processes worked: ${claimed}`);
    const fetched = fake.requests.slice(seen).filter((r) => r.operation === 'User').map((r) => String(r.variables.id)).sort();
    assert.deepEqual(fetched, [...userIds].sort(), 'each object re-fetched once');
    for (const [i, uid] of userIds.entries()) {
      assert.equal((await patientOf(base, uid)).telecom.find((t: any) => t.system === 'phone').value, `555-300-${String(i).padStart(4, '0')}`);
    }
    const statuses = (await srv.db.owner.query(`SELECT status, count(*)::integer AS n FROM healthie_webhook_events w JOIN organizations o ON o.id = w.org_id
      WHERE o.slug = $1 GROUP BY status`, [slug])).rows;
    assert.deepEqual(statuses, [{ status: 'done', n: N }]);
  });

  test('a second `kiln healthie pull` while one runs says which one runs, exits 0 and pulls nothing; the server loop skips its pull then', async () => {
    const slug = 'workers-c';
    const org = await createOrg(srv.db.owner, slug, slug);
    const lease = async () => (await srv.db.owner.query('SELECT lease_owner FROM healthie_pull_leases WHERE org_id = $1', [org.id])).rows[0];
    // Healthie answers slowly until the second pull is over, however long a child takes to start.
    fake.delayMs = 3000;
    try {
      const first = kiln(slug, ['pull']);
      const holder = await until('the first pull to take its lease', lease);
      assert.match(holder.lease_owner, /^pull@/);
      const second = await kiln(slug, ['pull']).done;
      fake.delayMs = 0;
      assert.equal(second.code, 0, second.stderr);
      const lines = second.stdout.trim().split('\n');
      assert.equal(lines.length, 1, second.stdout);
      assert.match(lines[0], new RegExp(`^healthie pull '${slug}' skipped: a pull is already running \\(${holder.lease_owner.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, since `));
      const r = await first.done;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /pulled \d+ Healthie objects/);
      assert.equal(first.child.exitCode, 0);
    } finally {
      fake.delayMs = 0;
    }
    assert.equal(await lease(), undefined, 'the lease is let go after the pull');

    // In-process: a held lease makes the loop skip its pull (no Healthie request) until it is gone.
    await srv.db.owner.query(`INSERT INTO healthie_pull_leases (org_id, lease_owner, leased_until) VALUES ($1, 'pull@elsewhere', now() + interval '1 minute')`, [org.id]);
    const skipped = await withPullLease(srv.db, org.id, async () => 'ran');
    assert.equal(skipped.ran, false);
    assert.equal(!skipped.ran && skipped.holder.owner, 'pull@elsewhere');
    process.env[`HEALTHIE_API_KEY_${envName(slug)}`] = 'k';
    process.env[`HEALTHIE_API_URL_${envName(slug)}`] = fake.url;
    const stop = startHealthieLoop(srv.db, 100, () => {}, 1);
    try {
      const seen = fake.requests.length;
      await sleep(600);
      assert.equal(fake.requests.filter((q, i) => i >= seen && q.operation === 'Users').length, 0, 'no pull while another holds the lease');
      await srv.db.owner.query('DELETE FROM healthie_pull_leases WHERE org_id = $1', [org.id]);
      await until('the loop to pull', async () => fake.requests.slice(seen).some((q) => q.operation === 'Users'), 10_000);
    } finally {
      await stop();
      delete process.env[`HEALTHIE_API_KEY_${envName(slug)}`];
      delete process.env[`HEALTHIE_API_URL_${envName(slug)}`];
    }
  });

  test('a row leased by a worker that died is left alone until its lease runs out, then sent once', async () => {
    const slug = 'workers-d';
    const { orgId, base } = await pulledTenant(slug);
    const uid = userIds[1];
    const p = await patientOf(base, uid);
    assert.equal((await fhir(base, 'PUT', `Patient/${p.id}`, { ...p, birthDate: '1999-09-09' })).status, 200);
    const mutations = fake.mutations().length;
    const seen = fake.requests.length;
    fake.delayMs = 5000;
    const dying = kiln(slug, ['push'], { KILN_HEALTHIE_LEASE_SECONDS: '3' });
    try {
      await until('the worker to ask Healthie', async () => fake.requests.length > seen);
      const [row] = await outbox(orgId);
      assert.match(row.lease_owner, /^push@/);
      dying.child.kill('SIGKILL'); // dies between its re-read of the object and the update
      await dying.done;
    } finally {
      fake.delayMs = 0;
    }
    const early = await pushOutbox({ db: srv.db, orgId, client: fast(), leaseSeconds: 3 });
    assert.equal(early.claimed, 0, 'the dead worker\'s lease still stands');
    const [listed] = await withTenant(srv.db.app, orgId, (tx) => listOutbox(tx));
    assert.equal(listed.status, 'pending');
    assert.match(listed.leasedBy ?? '', /^push@/, '`kiln healthie status` shows who holds it');
    await until('the lease to run out', async () => !(await outbox(orgId))[0].leased, 10_000);
    const late = await pushOutbox({ db: srv.db, orgId, client: fast(), leaseSeconds: 3 });
    assert.equal(late.done, 1, JSON.stringify(late));
    assert.deepEqual(updatesOf(mutations).map((m) => m.input.id), [uid], 'sent once');
    assert.equal(fake.users.get(uid)!.dob, '1999-09-09');
  });

  test('sql/034 applies to a database whose outbox and webhook queue hold rows', async () => {
    const owner = srv.db.owner;
    const before = (await owner.query(`SELECT (SELECT count(*) FROM healthie_outbox)::integer AS o, (SELECT count(*) FROM healthie_webhook_events)::integer AS w`)).rows[0];
    assert.ok(before.o > 0 && before.w > 0);
    await owner.query(`DROP TABLE healthie_pull_leases; DROP INDEX healthie_webhook_object;
      ALTER TABLE healthie_outbox DROP COLUMN lease_owner, DROP COLUMN leased_until;
      ALTER TABLE healthie_webhook_events DROP COLUMN lease_owner, DROP COLUMN leased_until;
      DELETE FROM schema_migrations WHERE version = '034_healthie_leases.sql'`);
    assert.deepEqual(await migrate(owner), ['034_healthie_leases.sql']);
    const afterRows = (await owner.query(`SELECT (SELECT count(*) FROM healthie_outbox WHERE lease_owner IS NULL)::integer AS o,
      (SELECT count(*) FROM healthie_webhook_events WHERE lease_owner IS NULL)::integer AS w`)).rows[0];
    assert.deepEqual(afterRows, before, 'every row kept, none leased');
    const org = (await owner.query(`SELECT id FROM organizations WHERE slug = 'workers-a'`)).rows[0].id;
    assert.deepEqual(await withPullLease(srv.db, org, async () => 'ran'), { ran: true, result: 'ran' }, 'kiln_app may take a pull lease');
  });
});
