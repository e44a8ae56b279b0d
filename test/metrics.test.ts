// GET /metrics (Prometheus text), /healthz and /readyz over real HTTP against a real
// PostgreSQL: a request is counted once under its interaction, type and status; the pool,
// audit queue and background-queue gauges are there and read the database at the scrape;
// with the database stopped the scrape still answers, /healthz stays up, /readyz does not.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
let root: string;
// The export worker off: a kicked-off job stays queued for the gauge to count. A read's
// AuditEvent waits 800 ms for others (group commit), long enough to see it queued.
const AUDIT_WINDOW_MS = 800;
before(async () => {
  srv = await startTestServer({ audit: 'on', auditWindowMs: AUDIT_WINDOW_MS, config: { exportWorker: 'off' } });
  root = srv.url.replace(/\/fhir$/, '');
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

interface Sample { name: string; labels: Record<string, string>; value: number }

/** Parses the text exposition format's samples. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

async function scrape(): Promise<{ status: number; type: string | null; text: string; samples: Sample[] }> {
  const r = await fetch(`${root}/metrics`);
  const text = await r.text();
  return { status: r.status, type: r.headers.get('content-type'), text, samples: parse(text) };
}

/** The value of the one sample with exactly these labels (undefined when absent). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = samples.filter((s) => s.name === name && Object.keys(s.labels).length === Object.keys(labels).length
    && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(hits.length <= 1, `one sample of ${name} ${JSON.stringify(labels)}`);
  return hits[0]?.value;
}

const READ_200 = { interaction: 'read', type: 'Patient', status: '200' };

describe('/metrics', () => {
  test('a FHIR read is counted exactly once under read, Patient, 200, with its latency', async () => {
    const id = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Counted' }] })).json.id;
    const before = await scrape();
    assert.equal(before.status, 200);
    assert.match(before.type ?? '', /^text\/plain; version=0\.0\.4/);
    const count0 = value(before.samples, 'kiln_http_requests_total', READ_200) ?? 0;
    const hist0 = value(before.samples, 'kiln_http_request_duration_seconds_count', { interaction: 'read', type: 'Patient' }) ?? 0;
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).status, 200);
    const afterRead = await scrape();
    assert.equal(value(afterRead.samples, 'kiln_http_requests_total', READ_200), count0 + 1);
    assert.equal(value(afterRead.samples, 'kiln_http_request_duration_seconds_count', { interaction: 'read', type: 'Patient' }), hist0 + 1);
    assert.equal(value(afterRead.samples, 'kiln_http_request_duration_seconds_bucket', { interaction: 'read', type: 'Patient', le: '10' }), hist0 + 1);
    assert.equal(value(afterRead.samples, 'kiln_http_requests_total', { interaction: 'create', type: 'Patient', status: '201' }), 1);
    // The previous scrape was counted when it finished.
    assert.ok((value(afterRead.samples, 'kiln_http_requests_total', { interaction: 'metrics', type: '', status: '200' }) ?? 0) >= 1);
  });

  test('labels never carry a path or id: unknown paths and ids fall into bounded names', async () => {
    await fhir(srv.url, 'GET', 'Patient/no-such-id-x4711q');
    await fetch(`${root}/no/such/path-x4711q`);
    await fhir(srv.url, 'GET', 'NoSuchTypeX4711q/1');
    const { text, samples } = await scrape();
    // A marker no figure can contain (a GC duration once held the digits 4711).
    assert.doesNotMatch(text, /x4711q/i);
    assert.equal(value(samples, 'kiln_http_requests_total', { interaction: 'read', type: 'Patient', status: '404' }), 1);
    assert.ok((value(samples, 'kiln_http_requests_total', { interaction: 'not-found', type: '', status: '404' }) ?? 0) >= 2);
  });

  test('pool, audit queue and process gauges are exposed', async () => {
    const { samples } = await scrape();
    for (const pool of ['app', 'owner', 'audit', 'jobs']) {
      for (const name of ['kiln_db_pool_in_use', 'kiln_db_pool_idle', 'kiln_db_pool_waiting', 'kiln_db_pool_max']) {
        assert.notEqual(value(samples, name, { pool }), undefined, `${name}{pool="${pool}"}`);
      }
    }
    assert.equal(value(samples, 'kiln_db_pool_max', { pool: 'app' }), srv.config.poolSize);
    assert.equal(value(samples, 'kiln_db_pool_waiting', { pool: 'app' }), 0);
    // Every earlier request's AuditEvent was committed before it was answered.
    assert.equal(value(samples, 'kiln_audit_queue_events'), 0);
    assert.equal(value(samples, 'kiln_audit_queue_lag_seconds'), 0);
    assert.equal(value(samples, 'kiln_database_up'), 1);
    assert.ok(samples.some((s) => s.name === 'process_resident_memory_bytes'), 'the default process metrics');
  });

  test('the audit queue gauges show a read waiting for its AuditEvent\'s group commit, and how long', async () => {
    const id = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Audited' }] })).json.id;
    const read = fhir(srv.url, 'GET', `Patient/${id}`);
    await new Promise((r) => setTimeout(r, AUDIT_WINDOW_MS / 4));
    const { samples } = await scrape();
    assert.equal(value(samples, 'kiln_audit_queue_events'), 1);
    const lag = value(samples, 'kiln_audit_queue_lag_seconds')!;
    assert.ok(lag >= 0.15 && lag < AUDIT_WINDOW_MS / 1000, `lag ${lag}`);
    assert.equal((await read).status, 200);
    assert.equal(value((await scrape()).samples, 'kiln_audit_queue_events'), 0);
  });

  test('export jobs by state: a kicked-off job is counted as queued', async () => {
    const before = value((await scrape()).samples, 'kiln_export_jobs', { state: 'queued' });
    assert.equal(before, 0);
    const r = await fhir(srv.url, 'GET', '$export?_type=Patient', undefined, { accept: 'application/fhir+json', prefer: 'respond-async' });
    assert.equal(r.status, 202, r.text);
    const { samples } = await scrape();
    assert.equal(value(samples, 'kiln_export_jobs', { state: 'queued' }), 1);
    assert.equal(value(samples, 'kiln_export_jobs', { state: 'running' }), 0);
  });

  test('Healthie outbox by status with the oldest pending age, BigQuery watermark age per tenant', async () => {
    // Rows as the sync code leaves them (its own tests cover how they get there).
    await srv.db.owner.query(`INSERT INTO healthie_outbox (org_id, resource_type, resource_id, version_id, status, created_at)
      VALUES (1, 'Patient', 'a', 1, 'pending', now() - interval '90 seconds'), (1, 'Patient', 'b', 1, 'pending', now()),
             (1, 'Patient', 'c', 1, 'done', now() - interval '1 day')`);
    await srv.db.owner.query(`INSERT INTO bigquery_sync_watermarks (org_id, target, resource_type, loaded_through)
      VALUES (1, 'proj:ds', 'Patient', now() - interval '1 hour'), (1, 'proj:ds', 'Observation', now() - interval '2 hours')`);
    try {
      const { samples } = await scrape();
      assert.equal(value(samples, 'kiln_healthie_outbox_entries', { tenant: 'default', status: 'pending' }), 2);
      assert.equal(value(samples, 'kiln_healthie_outbox_entries', { tenant: 'default', status: 'done' }), 1);
      const age = value(samples, 'kiln_healthie_outbox_oldest_pending_seconds', { tenant: 'default' })!;
      assert.ok(age >= 90 && age < 150, `oldest pending age ${age}`);
      const lag = value(samples, 'kiln_bigquery_sync_watermark_age_seconds', { tenant: 'default', target: 'proj:ds' })!;
      assert.ok(lag >= 7200 && lag < 7260, `watermark age ${lag} (the stalest type)`);
    } finally {
      await srv.db.owner.query('DELETE FROM healthie_outbox WHERE org_id = 1');
      await srv.db.owner.query('DELETE FROM bigquery_sync_watermarks WHERE org_id = 1');
    }
  });
});

describe('/healthz and /readyz', () => {
  test('/readyz is 200 on a migrated database, 503 naming a migration that is not recorded', async () => {
    const ready = await fetch(`${root}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { status: 'ready' });
    const { rows } = await srv.db.owner.query('SELECT version, applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1');
    await srv.db.owner.query('DELETE FROM schema_migrations WHERE version = $1', [rows[0].version]);
    try {
      const r = await fetch(`${root}/readyz`);
      assert.equal(r.status, 503);
      assert.ok(Number(r.headers.get('retry-after')) > 0);
      assert.deepEqual(await r.json(), { status: 'not ready', database: 'reachable', pendingMigrations: [rows[0].version] });
    } finally {
      await srv.db.owner.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [rows[0].version, rows[0].applied_at]);
    }
    assert.equal((await fetch(`${root}/readyz`)).status, 200);
  });

  test('database stopped: /healthz 200, /readyz 503 with Retry-After, /metrics 200 with kiln_database_up 0; all back after', async () => {
    assert.ok(srv.db.embedded, 'the test server runs its own embedded PostgreSQL');
    await srv.db.embedded.stop();
    try {
      const health = await fetch(`${root}/healthz`);
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { status: 'ok' });
      const ready = await fetch(`${root}/readyz`);
      assert.equal(ready.status, 503);
      assert.ok(Number(ready.headers.get('retry-after')) > 0, 'Retry-After');
      assert.deepEqual(await ready.json(), { status: 'not ready', database: 'unreachable' });
      const t0 = performance.now();
      const m = await scrape();
      assert.ok(performance.now() - t0 < 5000, 'the scrape does not hang on the database');
      assert.equal(m.status, 200);
      assert.equal(value(m.samples, 'kiln_database_up'), 0);
      assert.equal(value(m.samples, 'kiln_export_jobs', { state: 'queued' }), undefined, 'no stale figures from the database');
      assert.ok((value(m.samples, 'kiln_http_requests_total', { interaction: 'readyz', type: '', status: '503' }) ?? 0) >= 1);
      assert.notEqual(value(m.samples, 'kiln_db_pool_in_use', { pool: 'app' }), undefined);
    } finally {
      await srv.db.embedded.start();
    }
    const back = performance.now();
    let status = 0;
    while (performance.now() - back < 15_000) {
      status = (await fetch(`${root}/readyz`)).status;
      if (status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 200, '/readyz is 200 again once the database is back');
    assert.equal((await fetch(`${root}/healthz`)).status, 200);
    assert.equal(value((await scrape()).samples, 'kiln_database_up'), 1);
  });
});
