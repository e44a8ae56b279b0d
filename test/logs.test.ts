// Logs (issue #23 item 1), read from a real server process's stdout (KILN_LOG_FORMAT=json):
// one access line per request with its request id, tenant, client, interaction, status and
// duration; the id from X-Request-Id when sane, echoed, and in a 5xx's OperationOutcome;
// never the query string or the token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { fhir, freePort, removeDataDir, startTestServer } from './support/server.ts';
import { log, tapLog } from '../src/log.ts';
import { keyRingFor } from '../src/auth/keys.ts';
import { signAccessToken } from '../src/auth/tokens.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let child: ChildProcessWithoutNullStreams;
let dataDir: string;
let base: string;
let owner: pg.Pool;
let accessToken: string;
let out = '';

interface Line { level: string; time: string; msg: string; reqId?: string; [k: string]: unknown }

function lines(): Line[] {
  return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line);
}

/** The access line of a request, once the server has written it (after the response is sent). */
async function accessLine(reqId: string): Promise<Line> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const line = lines().find((l) => l.msg === 'request' && l.reqId === reqId);
    if (line) return line;
    if (Date.now() > deadline) assert.fail(`no access line for request ${reqId} in:\n${out.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  const port = await freePort();
  const pgPort = await freePort();
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-logs-'));
  base = `http://127.0.0.1:${port}/fhir`;
  child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: {
      ...process.env, PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '',
      KILN_AUTH: 'smart', KILN_LOG_FORMAT: 'json', KILN_LOG_LEVEL: 'info', KILN_STATEMENT_TIMEOUT_MS: '500',
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) assert.fail(`the server exited (${child.exitCode}):\n${out}`);
    const up = await fetch(`${base}/metadata`).then((r) => r.status === 200, () => false);
    if (up) break;
    if (Date.now() > deadline) assert.fail(`the server did not answer within 90 s:\n${out}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  // A token signed with the server's own key, as the CLI's `auth token` does.
  const password = fs.readFileSync(path.join(dataDir, 'pg-superuser-password'), 'utf8').trim();
  owner = new pg.Pool({ host: '127.0.0.1', port: pgPort, user: 'postgres', password, database: 'kiln', max: 2 });
  accessToken = (await signAccessToken(keyRingFor(owner), {
    tenant: 'default', audience: base, clientId: 'log-test-app', subject: 'log-test-app', scopes: ['system/*.cruds'],
  }, 600)).token;
});

after(async () => {
  await owner?.end();
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  removeDataDir(dataDir);
});

test('a FHIR request has one access line: its X-Request-Id, tenant, client, interaction, type, status and duration; no query string, no token', async () => {
  const auth = { authorization: `Bearer ${accessToken}` };
  const created = await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Quillfeather' }] }, auth);
  assert.equal(created.status, 201, created.text);
  const r = await fhir(base, 'GET', 'Patient?family=Quillfeather&identifier=mrn-SECRET-7431', undefined, { ...auth, 'x-request-id': 'trace-7.a:B_c' });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get('x-request-id'), 'trace-7.a:B_c', 'the request id is echoed');
  const line = await accessLine('trace-7.a:B_c');
  assert.equal(line.level, 'info');
  assert.ok(!Number.isNaN(Date.parse(line.time)), `time is an instant: ${line.time}`);
  assert.equal(line.method, 'GET');
  assert.equal(line.path, '/fhir/Patient', 'the path without its query string');
  assert.equal(line.status, 200);
  assert.equal(line.tenant, 'default');
  assert.equal(line.client, 'log-test-app');
  assert.equal(line.interaction, 'search-type');
  assert.equal(line.type, 'Patient');
  assert.equal(typeof line.durationMs, 'number');
  assert.ok((line.durationMs as number) >= 0);
  assert.equal(lines().filter((l) => l.reqId === 'trace-7.a:B_c' && l.msg === 'request').length, 1, 'one access line per request');
  // Nothing of the query, the token or the body anywhere in the server's output.
  for (const secret of ['mrn-SECRET-7431', 'Quillfeather', accessToken, accessToken.split('.')[2]]) {
    assert.ok(!out.includes(secret), `the log holds ${secret.slice(0, 20)}...`);
  }
});

test('a request without X-Request-Id gets a generated one; an unfit one is replaced; /healthz and 404s are logged too', async () => {
  const health = await fetch(`${base.replace('/fhir', '')}/healthz`);
  assert.equal(health.status, 200);
  const generated = health.headers.get('x-request-id') ?? '';
  assert.match(generated, UUID);
  const hl = await accessLine(generated);
  assert.equal(hl.path, '/healthz');
  assert.equal(hl.status, 200);

  for (const unfit of ['has spaces in it', 'x'.repeat(201), 'semi;colon', '']) {
    const r = await fetch(`${base}/metadata`, { headers: { 'x-request-id': unfit } });
    assert.equal(r.status, 200);
    const id = r.headers.get('x-request-id') ?? '';
    assert.match(id, UUID, `'${unfit.slice(0, 20)}' is replaced by a generated id`);
    assert.equal((await accessLine(id)).interaction, 'capabilities');
  }

  const missing = await fetch(`${base.replace('/fhir', '')}/nowhere/at-all?name=SECRET-404`, { headers: { 'x-request-id': 'lost-1' } });
  assert.equal(missing.status, 404);
  const ml = await accessLine('lost-1');
  assert.equal(ml.path, '/nowhere/at-all');
  assert.equal(ml.status, 404);
  assert.ok(!out.includes('SECRET-404'), 'no query string in the log');
});

test('the authorization endpoints are logged by name, without the form they were sent', async () => {
  const r = await fetch(`${base}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-request-id': 'token-1' },
    body: 'grant_type=client_credentials&client_id=nobody&client_secret=PASSWORD-SECRET-99',
  });
  assert.ok(r.status >= 400 && r.status < 500, `refused: ${r.status}`);
  const line = await accessLine('token-1');
  assert.equal(line.interaction, 'token');
  assert.equal(line.tenant, 'default');
  assert.equal(line.path, '/fhir/auth/token');
  assert.equal(line.status, r.status);
  assert.ok(!out.includes('PASSWORD-SECRET-99'), 'no form value in the log');
});

test('a 503 (statement over KILN_STATEMENT_TIMEOUT_MS) names the request id in its OperationOutcome and is logged as a warning', async () => {
  const auth = { authorization: `Bearer ${accessToken}` };
  const id = (await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Locked' }] }, auth)).json.id;
  const locker = await owner.connect();
  try {
    // Another transaction holds the id's lock, so the update waits on it past the limit.
    await locker.query('BEGIN');
    await locker.query(`SELECT 1 FROM resource_ids WHERE resource_type = 'Patient' AND id = $1 FOR UPDATE`, [id]);
    const r = await fhir(base, 'PUT', `Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: 'Changed' }] }, { ...auth, 'x-request-id': 'outage-1' });
    assert.equal(r.status, 503, r.text);
    assert.equal(r.headers.get('x-request-id'), 'outage-1');
    assert.equal(r.json.issue[0].code, 'transient', 'the first issue still says what happened');
    assert.ok(r.json.issue.some((i: { diagnostics?: string }) => i.diagnostics?.includes('outage-1')), `the request id is in the OperationOutcome: ${r.text}`);
    const line = await accessLine('outage-1');
    assert.equal(line.level, 'warn');
    assert.equal(line.status, 503);
    assert.equal(line.interaction, 'update');
    assert.equal(line.client, 'log-test-app');
  } finally {
    await locker.query('ROLLBACK');
    locker.release();
  }
  // A 4xx's OperationOutcome is left as it was.
  const bad = await fhir(base, 'GET', 'Patient/no_such!id', undefined, auth);
  assert.ok(bad.status >= 400 && bad.status < 500, bad.text);
  assert.ok(!bad.text.includes(bad.headers.get('x-request-id') ?? '-'), 'no request id in a 4xx outcome');
});

test('an in-process server is quiet by default, and a test reads its lines with tapLog', async () => {
  const srv = await startTestServer();
  const seen: string[] = [];
  const untap = tapLog((l) => seen.push(l));
  const level = log.level;
  try {
    await fhir(srv.url, 'GET', 'metadata', undefined, { 'x-request-id': 'quiet-1' });
    assert.deepEqual(seen.filter((l) => l.includes('quiet-1')), [], `below the tests' level (${level}): no access line`);
    log.level = 'info';
    await fhir(srv.url, 'GET', 'Patient?name=SECRET-TAP', undefined, { 'x-request-id': 'tapped-1' });
    const line = seen.map((l) => JSON.parse(l)).find((l) => l.reqId === 'tapped-1');
    assert.equal(line?.path, '/fhir/Patient');
    assert.equal(line?.interaction, 'search-type');
    assert.ok(!seen.join('').includes('SECRET-TAP'));
  } finally {
    log.level = level;
    untap();
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
});
