// Data written before a stop is there after starting again on the same data dir,
// and a stop lets in-flight requests finish, those of clients that hung up too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startTestServer, removeDataDir, fhir, freePort, token, bearer, type TestServer } from './support/server.ts';
import { CLIENT_ID_SYSTEM } from '../src/audit/event.ts';

test('restart on the same data dir keeps every acknowledged write', async () => {
  const first = await startTestServer();
  const ids: string[] = [];
  try {
    for (let i = 0; i < 20; i++) {
      const r = await fhir(first.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `Keep${i}` }] });
      assert.equal(r.status, 201);
      ids.push(r.json.id);
    }
    // Requests in flight when stop() is called still complete.
    const inflight = Array.from({ length: 10 }, (_, i) => fhir(first.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `Late${i}` }] }));
    await new Promise((r) => setTimeout(r, 5));
    const stopping = first.stop();
    const late = await Promise.allSettled(inflight);
    await stopping;
    for (const r of late) if (r.status === 'fulfilled' && r.value.status === 201) ids.push(r.value.json.id);
  } catch (e) {
    await first.stop();
    throw e;
  }
  const second = await startTestServer({ dataDir: first.dataDir, pgPort: first.pgPort });
  try {
    for (const id of ids) {
      const r = await fhir(second.url, 'GET', `Patient/${id}`);
      assert.equal(r.status, 200, `Patient/${id} lost across restart`);
    }
  } finally {
    await second.stop();
    removeDataDir(first.dataDir);
  }
});

test('a stop waits for the handlers of clients that hung up: their reads are audited', async () => {
  // A long group-commit window holds the reads' AuditEvents in the writer while their
  // clients hang up, so the server's sockets are all closed before any event is stored.
  const first = await startTestServer({ auth: 'smart', auditWindowMs: 1500 });
  const reads = 20;
  let stopped = false;
  try {
    const admin = bearer(await token(first, { scope: 'system/*.cruds', clientId: 'hang-up-admin' }));
    const id = (await fhir(first.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'HungUp' }] }, admin)).json.id;
    const reader = bearer(await token(first, { scope: 'system/*.rs', clientId: 'hung-up-reader' }));
    const aborts = Array.from({ length: reads }, () => new AbortController());
    const pending = aborts.map((a) => fetch(`${first.url}/Patient/${id}`, { headers: reader, signal: a.signal }).then((r) => r.status, () => 'aborted'));
    await new Promise((r) => setTimeout(r, 400));
    for (const a of aborts) a.abort();
    assert.deepEqual([...new Set(await Promise.all(pending))], ['aborted'], 'the reads were still waiting for their AuditEvents');
    await first.stop();
    stopped = true;
  } finally {
    if (!stopped) await first.stop();
  }
  const second = await startTestServer({ auth: 'smart', dataDir: first.dataDir, pgPort: first.pgPort });
  try {
    const admin = bearer(await token(second, { scope: 'system/*.cruds', clientId: 'hang-up-admin' }));
    const r = await fhir(second.url, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|hung-up-reader`)}&subtype=read&_summary=count`, undefined, admin);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.total, reads, 'every read that reached the server left an AuditEvent');
  } finally {
    await second.stop();
    removeDataDir(first.dataDir);
  }
});

test('a stop waits for such handlers no longer than KILN_STOP_GRACE_MS', async () => {
  // The read's AuditEvent waits 10 s in the writer; a grace of 200 ms closes the database
  // long before (the default grace would wait for the event).
  const srv = await startTestServer({ auth: 'smart', auditWindowMs: 10_000, stopGraceMs: 200 });
  let stopped = false;
  try {
    const reader = bearer(await token(srv, { scope: 'system/*.rs', clientId: 'grace-reader' }));
    const abort = new AbortController();
    const pending = fetch(`${srv.url}/Patient/nobody`, { headers: reader, signal: abort.signal }).then((r) => r.status, () => 'aborted');
    await new Promise((r) => setTimeout(r, 300));
    abort.abort();
    assert.equal(await pending, 'aborted', 'the read was still waiting for its AuditEvent');
    const t0 = performance.now();
    await srv.stop();
    stopped = true;
    const took = performance.now() - t0;
    console.log(`stop with a 200 ms grace took ${Math.round(took)} ms`);
    assert.ok(took < 8000, `the stop took ${Math.round(took)} ms: it waited for the handler, not the 200 ms grace`);
  } finally {
    if (!stopped) await srv.stop();
    removeDataDir(srv.dataDir);
  }
});

test('a connection that never sent a request (a preconnect) does not hold the stop open', { timeout: 60_000 }, async () => {
  const srv = await startTestServer();
  let stopped = false;
  const net = await import('node:net');
  const idle = net.connect(srv.port, '127.0.0.1');
  idle.on('error', () => {});
  try {
    await new Promise<void>((resolve) => idle.once('connect', () => resolve()));
    const t0 = performance.now();
    await srv.stop();
    stopped = true;
    const took = performance.now() - t0;
    assert.ok(took < 8000, `the stop took ${Math.round(took)} ms`);
  } finally {
    idle.destroy();
    if (!stopped) await srv.stop();
    removeDataDir(srv.dataDir);
  }
});

test('the start script serves, and SIGTERM stops the server and its embedded PostgreSQL', async () => {
  const port = await freePort();
  const pgPort = await freePort();
  const dataDir = `/tmp/kiln-start-${process.pid}`;
  // node itself (not npx) so that the signal reaches the server process.
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  try {
    const deadline = Date.now() + 60_000;
    while (!out.includes('listening') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.match(out, /listening on/);
    const r = await fhir(`http://127.0.0.1:${port}/fhir`, 'GET', 'metadata');
    assert.equal(r.status, 200);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, out);
    // The embedded PostgreSQL is gone with it.
    await assert.rejects(fetch(`http://127.0.0.1:${port}/fhir/metadata`));
    const pg = await import('pg');
    const probe = new pg.default.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', connectionTimeoutMillis: 1000 });
    await assert.rejects(probe.connect());
  } finally {
    child.kill('SIGKILL');
    removeDataDir(dataDir);
  }
});

/**
 * Runs `node src/main.ts` (auth on) under load of reads, creates and a `Patient/$everything`,
 * sends `signal` mid-load, then starts again on the same data dir and checks that every
 * answered read was audited and every acknowledged create kept.
 */
async function stopUnderLoad(how: 'Ctrl-C to the process group' | 'SIGTERM to the process') {
  const port = await freePort();
  const pgPort = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-stop-'));
  // Its own process group, as a shell gives a foreground job: a signal to -pid reaches node
  // and, unless it runs in a session of its own, its embedded PostgreSQL.
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '', KILN_AUTH: 'smart' },
    stdio: ['ignore', 'pipe', 'pipe'], detached: true,
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const base = `http://127.0.0.1:${port}/fhir`;
  const tag = how.startsWith('Ctrl') ? 'int' : 'term';
  let owner: pg.Pool | undefined;
  try {
    const deadline = Date.now() + 60_000;
    while (!out.includes('listening') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.match(out, /listening on/);
    // Tokens signed with the child's own key, read from its database as the test server helper does.
    const password = fs.readFileSync(path.join(dataDir, 'pg-superuser-password'), 'utf8').trim();
    owner = new pg.Pool({ connectionString: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${pgPort}/kiln`, max: 1 });
    owner.on('error', () => {});
    const srvLike = { db: { owner }, url: base } as unknown as TestServer;
    const admin = bearer(await token(srvLike, { scope: 'system/*.cruds', clientId: `stop-writer-${tag}` }));
    const reader = bearer(await token(srvLike, { scope: 'system/*.rs', clientId: `stop-reader-${tag}` }));
    const everything = bearer(await token(srvLike, { scope: 'system/*.rs', clientId: `stop-everything-${tag}` }));
    const patient = (await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Drained' }] }, admin)).json.id;
    const obs = Array.from({ length: 300 }, (_, i) => ({ request: { method: 'POST', url: 'Observation' }, resource: {
      resourceType: 'Observation', status: 'final', code: { text: `m${i}` }, subject: { reference: `Patient/${patient}` }, valueQuantity: { value: i } } }));
    assert.equal((await fhir(base, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: obs }, admin)).status, 200);

    interface Sent { kind: 'read' | 'create' | 'everything'; started: number; finished?: number; status: number | string; id?: string }
    const sent: Sent[] = [];
    let signalAt = Infinity;
    const loop = async (kind: Sent['kind'], n: number) => {
      for (let i = 0; ; i++) {
        const s: Sent = { kind, started: performance.now(), status: 'pending' };
        sent.push(s);
        try {
          const r = kind === 'read' ? await fhir(base, 'GET', `Patient/${patient}`, undefined, reader)
            : kind === 'everything' ? await fhir(base, 'GET', `Patient/${patient}/$everything`, undefined, everything)
              : await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: `Load${n}-${i}` }] }, admin);
          s.status = r.status;
          if (r.status === 201) s.id = r.json.id;
          if (r.status === 503) assert.equal(r.headers.get('connection'), 'close', 'a refused request closes its connection');
        } catch (e) {
          s.status = `network error: ${(e as Error).cause ?? e}`;
        }
        s.finished = performance.now();
        if (s.status !== 200 && s.status !== 201) return; // refused or gone: the stop has begun
      }
    };
    const clients = [loop('everything', 0), ...Array.from({ length: 7 }, (_, n) => loop(n % 2 ? 'create' : 'read', n))];
    await new Promise((r) => setTimeout(r, 1500));
    signalAt = performance.now();
    if (how.startsWith('Ctrl')) process.kill(-child.pid!, 'SIGINT');
    else child.kill('SIGTERM');
    await Promise.all(clients);
    assert.equal(await exited, 0, out);

    const before = sent.filter((s) => s.started < signalAt);
    const after = sent.filter((s) => s.started >= signalAt);
    const answered = (s: Sent) => s.status === 200 || s.status === 201;
    console.log(`${how}: ${before.length} requests sent before the signal (${before.filter(answered).length} 2xx, ${before.filter((s) => s.status === 503).length} 503), after it: ${JSON.stringify(after.map((s) => String(s.status).slice(0, 40)))}`);
    // Sent before the signal: a complete answer, 2xx, or 503 when it reached the server after the stop began.
    for (const s of before) assert.ok([200, 201, 503].includes(s.status as number), `${s.kind} sent before the signal got ${s.status}`);
    // Sent after: 2xx when it still beat the signal's delivery, else 503, or a refused connection
    // once the listener closed; never a 500 or a connection reset mid-request.
    for (const s of after) assert.ok([200, 201, 503].includes(s.status as number) || /ECONNREFUSED/.test(String(s.status)), `${s.kind} sent after the signal got ${s.status}`);
    assert.ok(after.some((s) => s.status === 503), 'requests that arrived during the stop were answered 503');
    assert.ok(sent.some((s) => s.kind === 'everything' && s.status === 200), 'a $everything completed');
    const spanning = before.filter((s) => s.finished! > signalAt);
    assert.ok(spanning.some((s) => s.status === 200 || s.status === 201), `requests in flight at the signal finished with 2xx: ${JSON.stringify(spanning.map((s) => s.status))}`);
    const lastEverything = sent.filter((s) => s.kind === 'everything').at(-1)!;

    // Started again on the same data dir: every answered read and $everything left its AuditEvent, every create is there.
    const again = await startTestServer({ auth: 'smart', dataDir, pgPort });
    try {
      const auditor = bearer(await token(again, { scope: 'system/*.cruds', clientId: 'stop-auditor' }));
      const count = async (clientId: string, extra = '') => {
        const r = await fhir(again.url, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|${clientId}`)}${extra}&_summary=count`, undefined, auditor);
        assert.equal(r.status, 200, r.text);
        return r.json.total as number;
      };
      assert.equal(await count(`stop-reader-${tag}`, '&subtype=read'), sent.filter((s) => s.kind === 'read' && s.status === 200).length, 'every answered read has its AuditEvent');
      assert.equal(await count(`stop-everything-${tag}`), sent.filter((s) => s.kind === 'everything' && s.status === 200).length,
        `every answered $everything has its AuditEvent (the last one: ${lastEverything.status})`);
      for (const s of sent.filter((x) => x.status === 201)) {
        assert.equal((await fhir(again.url, 'GET', `Patient/${s.id}`, undefined, auditor)).status, 200, `acknowledged Patient/${s.id} kept`);
      }
    } finally {
      await again.stop();
    }
  } finally {
    await owner?.end().catch(() => {});
    try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ }
    // A postmaster left behind by a failed run must not outlive the test.
    try { process.kill(Number(fs.readFileSync(path.join(dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]), 'SIGKILL'); } catch { /* stopped */ }
    removeDataDir(dataDir);
  }
}

test('Ctrl-C (SIGINT to the process group) under load: in-flight requests finish with their AuditEvents, new ones get 503, exit 0', async () => {
  await stopUnderLoad('Ctrl-C to the process group');
});

test('SIGTERM to the process under load: in-flight requests finish with their AuditEvents, new ones get 503, exit 0', async () => {
  await stopUnderLoad('SIGTERM to the process');
});
