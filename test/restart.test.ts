// Data written before a stop is there after starting again on the same data dir,
// and a stop lets in-flight requests finish, those of clients that hung up too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { startTestServer, removeDataDir, fhir, freePort, token, bearer } from './support/server.ts';
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
