// Losing the database: PostgreSQL restarted under load must never crash the process;
// while it is away every request gets 503 + Retry-After with an OperationOutcome, service
// comes back by itself, and no acknowledged write is lost. Also the bounds on waiting for
// the database: a full pool and a long statement answer 503 within their limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer } from './support/server.ts';

interface Answer { phase: 'before' | 'outage' | 'after'; method: string; status: number | 'network error'; retryAfter: string | null; issueCode?: string; text: string }

/** Records uncaught exceptions and unhandled rejections (a crash, were nothing listening). */
function crashRecorder() {
  const seen: unknown[] = [];
  const rec = (e: unknown) => { seen.push(e); };
  process.on('uncaughtException', rec);
  process.on('unhandledRejection', rec);
  return { seen, off: () => { process.off('uncaughtException', rec); process.off('unhandledRejection', rec); } };
}

test('PostgreSQL restarted under load: no crash, 503 + Retry-After while it is away, service back by itself, no acknowledged write lost', async () => {
  const srv = await startTestServer({ auth: 'smart' });
  const crashes = crashRecorder();
  try {
    assert.ok(srv.db.embedded, 'the test server runs its own embedded PostgreSQL');
    const auth = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'dbloss-client' }));
    const acked: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `Seed${i}` }] }, auth);
      assert.equal(r.status, 201, r.text);
      acked.push(r.json.id);
    }
    let phase: Answer['phase'] = 'before';
    let running = true;
    const answers: Answer[] = [];
    const client = async (n: number) => {
      for (let i = 0; running; i++) {
        const create = (i + n) % 2 === 0;
        const at = phase;
        const method = create ? 'POST' : 'GET';
        try {
          const r = create
            ? await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `Load${n}-${i}` }] }, auth)
            : await fhir(srv.url, 'GET', `Patient/${acked[(i * 7 + n) % acked.length]}`, undefined, auth);
          if (r.status === 201) acked.push(r.json.id);
          answers.push({ phase: at, method, status: r.status, retryAfter: r.headers.get('retry-after'), issueCode: r.json?.issue?.[0]?.code, text: r.text.slice(0, 300) });
          if (r.status === 503) await new Promise((res) => setTimeout(res, 50));
        } catch (e) {
          answers.push({ phase: at, method, status: 'network error', retryAfter: null, text: String(e) });
        }
      }
    };
    const clients = Array.from({ length: 8 }, (_, n) => client(n));
    await new Promise((r) => setTimeout(r, 1000));

    phase = 'outage';
    await srv.db.embedded.stop(); // fast shutdown (SIGINT to the postmaster), as `kill -INT` does
    await new Promise((r) => setTimeout(r, 1500));
    const root = srv.url.replace(/\/fhir$/, '');
    const ready = await fetch(`${root}/readyz`);
    assert.equal(ready.status, 503, '/readyz while the database is away');
    assert.ok(ready.headers.get('retry-after'), '/readyz 503 has Retry-After');
    assert.equal((await fetch(`${root}/healthz`)).status, 200, '/healthz: the process is alive and serving');

    await srv.db.embedded.start();
    const back = performance.now();
    let recoveredMs: number | undefined;
    while (performance.now() - back < 15_000) {
      const r = await fhir(srv.url, 'GET', `Patient/${acked[0]}`, undefined, auth);
      if (r.status === 200) { recoveredMs = performance.now() - back; break; }
      await new Promise((res) => setTimeout(res, 100));
    }
    console.log(`service back ${recoveredMs === undefined ? 'never' : `${Math.round(recoveredMs)} ms`} after PostgreSQL was ready again`);
    assert.ok(recoveredMs !== undefined && recoveredMs < 5000, 'a read succeeds within 5 s of the database being back');
    phase = 'after';
    await new Promise((r) => setTimeout(r, 1000));
    running = false;
    await Promise.all(clients);

    assert.deepEqual(crashes.seen.map(String), [], 'no uncaught exception or unhandled rejection');
    const count = (p: Answer['phase'], s: Answer['status']) => answers.filter((a) => a.phase === p && a.status === s).length;
    console.log(`answers: before ${count('before', 200)}x200 ${count('before', 201)}x201; outage ${count('outage', 200)}x200 ${count('outage', 201)}x201 ${count('outage', 503)}x503; after ${count('after', 200)}x200 ${count('after', 201)}x201 ${count('after', 503)}x503`);
    const wrong = answers.filter((a) => ![200, 201, 503].includes(a.status as number));
    assert.deepEqual(wrong, [], 'every answer is 200/201 or 503 (never 500, never a dropped connection)');
    for (const a of answers.filter((x) => x.status === 503)) {
      assert.ok(a.retryAfter && Number(a.retryAfter) > 0, `503 without Retry-After: ${a.text}`);
      assert.equal(a.issueCode, 'transient', `503 is an OperationOutcome with code transient: ${a.text}`);
    }
    assert.ok(count('outage', 503) > 0, 'requests during the outage were answered 503');
    assert.ok(count('after', 200) + count('after', 201) > 0, 'requests succeed again after the outage');

    for (const id of acked) {
      const r = await fhir(srv.url, 'GET', `Patient/${id}`, undefined, auth);
      assert.equal(r.status, 200, `acknowledged Patient/${id} is readable after the restart`);
    }
  } finally {
    crashes.off();
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
});

test('the embedded PostgreSQL stopped from outside (kill -INT, kill -9 on its postmaster) is started again: service comes back by itself', async () => {
  const srv = await startTestServer();
  const crashes = crashRecorder();
  try {
    const id = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Supervised' }] })).json.id;
    for (const signal of ['SIGINT', 'SIGKILL'] as const) {
      const pid = srv.db.embedded!.pid!;
      process.kill(pid, signal);
      // Gone: requests are 503 until the server has started it again.
      const t0 = performance.now();
      let sawOutage = false;
      let back: number | undefined;
      while (performance.now() - t0 < 30_000) {
        const r = await fhir(srv.url, 'GET', `Patient/${id}`);
        if (r.status === 503) sawOutage = true;
        else if (r.status === 200 && sawOutage) { back = performance.now() - t0; break; }
        else assert.equal(r.status, 200, r.text);
        await new Promise((res) => setTimeout(res, 100));
      }
      console.log(`after ${signal} to the postmaster: service back in ${back === undefined ? 'never' : `${Math.round(back)} ms`}`);
      assert.ok(sawOutage, `the outage after ${signal} was seen as 503s`);
      assert.ok(back !== undefined, `service came back by itself after ${signal}`);
      assert.notEqual(srv.db.embedded!.pid, pid, 'a new postmaster runs');
      const created = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `After${signal}` }] });
      assert.equal(created.status, 201, created.text);
    }
    assert.deepEqual(crashes.seen.map(String), [], 'no uncaught exception or unhandled rejection');
  } finally {
    crashes.off();
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
});

test('an exhausted connection pool answers 503 + Retry-After within KILN_POOL_WAIT_MS, not an endless queue', async () => {
  const srv = await startTestServer({ config: { poolSize: 2, poolWaitMs: 500 } });
  const held: Promise<unknown>[] = [];
  try {
    const id = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Waiting' }] })).json.id;
    // Both request connections busy for 4 s.
    for (let i = 0; i < 2; i++) held.push(srv.db.app.query('SELECT pg_sleep(4)'));
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    const r = await fhir(srv.url, 'GET', `Patient/${id}`);
    const took = performance.now() - t0;
    assert.equal(r.status, 503, r.text);
    assert.ok(Number(r.headers.get('retry-after')) > 0, 'Retry-After');
    assert.equal(r.json.issue[0].code, 'transient');
    assert.ok(took < 2500, `answered after ${Math.round(took)} ms, within the 500 ms wait (not after the 4 s hold)`);
    await Promise.all(held);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).status, 200, 'served again once connections are free');
  } finally {
    await Promise.allSettled(held);
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
});

test('a request statement over KILN_STATEMENT_TIMEOUT_MS is cancelled and answered 503', async () => {
  const srv = await startTestServer({ audit: 'on', config: { statementTimeoutMs: 300 } });
  const locker = await srv.db.owner.connect();
  try {
    const id = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Locked' }] })).json.id;
    // Another transaction holds the id's lock, so the update's statement waits on it past the limit.
    await locker.query('BEGIN');
    await locker.query(`SELECT 1 FROM resource_ids WHERE resource_type = 'Patient' AND id = $1 FOR UPDATE`, [id]);
    const t0 = performance.now();
    const r = await fhir(srv.url, 'PUT', `Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: 'Changed' }] });
    const took = performance.now() - t0;
    assert.equal(r.status, 503, r.text);
    assert.ok(Number(r.headers.get('retry-after')) > 0, 'Retry-After');
    assert.equal(r.json.issue[0].code, 'transient');
    assert.match(r.json.issue[0].diagnostics, /KILN_STATEMENT_TIMEOUT_MS/);
    assert.ok(took < 3000, `cut at the limit (${Math.round(took)} ms)`);
    await locker.query('ROLLBACK');
    const after = await fhir(srv.url, 'PUT', `Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: 'Changed' }] });
    assert.equal(after.status, 200, 'statements below the limit run');
    // The refused update's AuditEvent says what the client was told, not "internal error".
    const failed = await fhir(srv.url, 'GET', 'AuditEvent?outcome=8');
    assert.equal(failed.json.entry?.length, 1, failed.text);
    assert.match(failed.json.entry[0].resource.outcomeDesc, /^503 The request took longer .*KILN_STATEMENT_TIMEOUT_MS/);
  } finally {
    await locker.query('ROLLBACK').catch(() => {});
    locker.release();
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
});
