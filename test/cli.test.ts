// The CLI answers --help and --version (issue #23 item 3): asked for, usage goes to stdout
// with exit 0 and names every command group; an unknown command still gets it on stderr, 2.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { bearer, fhir, freePort, removeDataDir, startTestServer, type TestServer } from './support/server.ts';
import { runtimePath } from '../src/runtime.ts';
import { promisify } from 'node:util';

const run = promisify(execFile);
const kiln = (...args: string[]) => run('npx', ['tsx', 'src/cli.ts', ...args]).then(
  (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
  (e) => ({ code: e.code as number, stdout: e.stdout as string, stderr: e.stderr as string }));

test('--help, -h and help print the usage of every command group and exit 0', async () => {
  for (const flag of ['--help', '-h', 'help']) {
    const r = await kiln(flag);
    assert.equal(r.code, 0, flag);
    for (const group of ['tenant create', 'tenant list', 'import', 'auth', 'bigquery', 'healthie', 'views', 'export', 'export-worker', '--version']) {
      assert.ok(r.stdout.includes(`kiln ${group}`) || r.stdout.includes(group), `${flag}: usage names ${group}`);
    }
  }
});

test('--version prints the package version', async () => {
  const { version } = JSON.parse(fs.readFileSync('package.json', 'utf8'));
  const r = await kiln('--version');
  assert.equal(r.code, 0);
  assert.equal(r.stdout.trim(), `kiln ${version}`);
});

test('an unknown command prints the usage on stderr and exits 2', async () => {
  const r = await kiln('frobnicate');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^unknown command 'frobnicate'\nusage:/);
  assert.equal(r.stdout, '');
});

// Every command answers --help and -h with its own usage (issue #23: `auth client add --help`
// answered "--help needs a value", `bigquery --help` exited 2); each entry: the command, and
// the usage lines its help must show.
const HELP: [string[], string[]][] = [
  [['tenant'], ['kiln tenant create', 'kiln tenant list']],
  [['tenant', 'create'], ['kiln tenant create']],
  [['import'], ['kiln import']],
  [['auth'], ['kiln auth client add', 'kiln auth client list', 'kiln auth client revoke', 'kiln auth user add', 'kiln auth user list',
    'kiln auth user disable|enable', 'kiln auth user password', 'kiln auth token [', 'kiln auth token revoke', 'kiln auth launch', 'kiln auth rotate-keys']],
  [['auth', 'client', 'add'], ['kiln auth client add', '--jwks', '--secret', '--public']],
  [['auth', 'user', 'add'], ['kiln auth user add']],
  [['auth', 'user', 'disable'], ['kiln auth user disable|enable']],
  [['auth', 'token'], ['kiln auth token [', 'kiln auth token revoke']],
  [['auth', 'launch'], ['kiln auth launch']],
  [['export'], ['kiln export [']],
  [['export-worker'], ['kiln export-worker']],
  [['bigquery'], ['kiln bigquery sync']],
  [['bigquery', 'sync'], ['kiln bigquery sync']],
  [['healthie'], ['kiln healthie pull', 'kiln healthie push', 'kiln healthie webhooks', 'kiln healthie status']],
  [['healthie', 'pull'], ['kiln healthie pull']],
  [['views'], ['kiln views install', 'kiln views materialize', 'kiln views refresh']],
  [['views', 'materialize'], ['kiln views materialize', '--materialized']],
];

test('--help and -h at every level print that command\'s usage on stdout and exit 0', async () => {
  for (const [i, [command, shown]] of HELP.entries()) {
    for (const flag of [i % 2 ? '-h' : '--help']) {
      const r = await kiln(...command, flag);
      const what = `kiln ${command.join(' ')} ${flag}`;
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      assert.match(r.stdout, /^usage:\n/, what);
      for (const line of shown) assert.ok(r.stdout.includes(line), `${what} shows ${line}:\n${r.stdout}`);
      assert.equal(r.stderr, '', what);
    }
  }
  // The most specific usage: a subcommand's help leaves its siblings out.
  assert.ok(!(await kiln('auth', 'client', 'add', '--help')).stdout.includes('kiln auth user'));
});

test('a wrong or missing argument prints the reason and the usage on stderr, exit 2', async () => {
  const cases: [string[], RegExp][] = [
    [['tenant'], /^a tenant command is required\nusage:\n {2}kiln tenant create/],
    [['tenant', 'list', 'extra'], /^unexpected 'extra'/],
    [['import', '--tenant', 'default'], /^no files to import\nusage:\n {2}kiln import/],
    [['auth'], /^an auth command is required\nusage:/],
    [['auth', 'client', 'add', '--tenant'], /^--tenant needs a value\nusage:\n {2}kiln auth client add/],
    [['auth', 'user', 'add', '--tenant', 'default', 'bob', '--fhiruser', 'Practitioner/1'], /^kiln auth user add does not take --fhiruser/],
    [['auth', 'token', 'extra'], /^unexpected 'extra'/],
    [['export', '--since'], /^--since needs a value/],
    [['export-worker', 'now'], /^unexpected 'now'/],
    [['bigquery'], /^a bigquery command is required\nusage:/],
    [['healthie', 'push', '--full'], /^kiln healthie push does not take '--full'/],
    [['healthie', 'pull', '--tenat', 'x'], /^kiln healthie pull does not take '--tenat'/],
  ];
  for (const [args, stderr] of cases) {
    const r = await kiln(...args);
    assert.equal(r.code, 2, `kiln ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, stderr, `kiln ${args.join(' ')}`);
    assert.equal(r.stdout, '', `kiln ${args.join(' ')}`);
  }
});

// ---------------------------------------------------------------- the CLI finds its server
// src/runtime.ts: the server's card in its data dir gives the CLI its ports and base URL, so
// `kiln auth token` needs no environment beside a server on any ports (issue #23 item 3).

/** The CLI with none of the server's settings in its environment but the data dir (and `extra`). */
function kilnBeside(dataDir: string, extra: Record<string, string>, ...args: string[]) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('KILN_') || ['PORT', 'HOST', 'BASE_URL', 'DATABASE_URL', 'APP_DATABASE_URL'].includes(k)) delete env[k];
  return spawn('npx', ['tsx', 'src/cli.ts', ...args], { env: { ...env, KILN_DATA_DIR: dataDir, ...extra }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function outcome(child: ChildProcess, onStderr: (text: string) => void = () => {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; onStderr(stderr); });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.on('exit', resolve));
  return child.pid!;
}

describe('the CLI beside a running server on non-default ports', () => {
  let srv: TestServer;
  let card: string;
  before(async () => {
    srv = await startTestServer({ auth: 'smart' });
    card = fs.readFileSync(runtimePath(srv.dataDir), 'utf8');
  });
  after(async () => {
    await srv.stop();
    assert.equal(fs.existsSync(runtimePath(srv.dataDir)), false, 'a clean stop removes the card');
    removeDataDir(srv.dataDir);
  });
  afterEach(() => fs.writeFileSync(runtimePath(srv.dataDir), card));

  const status = async (base: string, t: string) => (await fhir(base, 'GET', 'Patient?_count=1', undefined, bearer(t))).status;

  test('auth token with no PORT or KILN_PG_PORT is for the server, accepted at localhost and 127.0.0.1', async () => {
    assert.notEqual(srv.port, 8080);
    assert.notEqual(srv.pgPort, 54329);
    const r = await outcome(kilnBeside(srv.dataDir, {}, 'auth', 'token'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`^token for http://127\\.0\\.0\\.1:${srv.port}/fhir,`));
    const t = r.stdout.trim();
    assert.equal(await status(`http://localhost:${srv.port}/fhir`, t), 200);
    assert.equal(await status(`http://127.0.0.1:${srv.port}/fhir`, t), 200);
    // The loopback names are one server only on its own port, and never stand for another host.
    for (const aud of [`http://localhost:${srv.port + 1}/fhir`, `http://kiln.example:${srv.port}/fhir`]) {
      const other = await outcome(kilnBeside(srv.dataDir, {}, 'auth', 'token', '--aud', aud));
      assert.equal(other.code, 0, other.stderr);
      assert.equal(await status(`http://localhost:${srv.port}/fhir`, other.stdout.trim()), 401, aud);
      assert.equal(await status(`http://127.0.0.1:${srv.port}/fhir`, other.stdout.trim()), 401, aud);
    }
  });

  test('a stale card (its pid is dead) is ignored: no wait, the environment decides', async () => {
    fs.writeFileSync(runtimePath(srv.dataDir), JSON.stringify({ state: 'starting', pid: await deadPid(), dataDir: srv.dataDir, startedAt: new Date().toISOString(), postgres: 1 }));
    const t0 = Date.now();
    const r = await outcome(kilnBeside(srv.dataDir, { KILN_PG_PORT: String(srv.pgPort) }, 'tenant', 'list'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\tdefault\t/);
    assert.doesNotMatch(r.stderr, /waiting/);
    assert.ok(Date.now() - t0 < 60_000);
  });

  test('a server still starting is waited for, with one line on stderr', async () => {
    fs.writeFileSync(runtimePath(srv.dataDir), JSON.stringify({ state: 'starting', pid: process.pid, dataDir: srv.dataDir, startedAt: new Date().toISOString(), postgres: srv.pgPort }));
    let ready = false;
    const r = await outcome(kilnBeside(srv.dataDir, {}, 'auth', 'token'), (stderr) => {
      if (ready || !stderr.includes('to finish starting')) return;
      ready = true;
      setTimeout(() => fs.writeFileSync(runtimePath(srv.dataDir), card), 500);
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`^waiting for the Kiln server \\(pid ${process.pid}\\) to finish starting\\.\\.\\.\\n`));
    assert.equal(await status(`http://localhost:${srv.port}/fhir`, r.stdout.trim()), 200);
  });

  test('a server that exits while starting ends the wait with a message, exit 1', async () => {
    const starter = spawn('sleep', ['30']);
    fs.writeFileSync(runtimePath(srv.dataDir), JSON.stringify({ state: 'starting', pid: starter.pid, dataDir: srv.dataDir, startedAt: new Date().toISOString(), postgres: srv.pgPort }));
    const r = await outcome(kilnBeside(srv.dataDir, {}, 'auth', 'token'), (stderr) => {
      if (stderr.includes('to finish starting')) starter.kill();
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the Kiln server exited before it was ready/);
    assert.equal(r.stdout, '');
  });
});

test('on a data dir without a database, a CLI started just before the server waits for its card instead of running initdb itself', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-first-'));
  const starter = spawn('sleep', ['30']);
  try {
    const cli = kilnBeside(dataDir, { KILN_PG_PORT: String(await freePort()) }, 'tenant', 'list');
    // The server announces itself a moment after the CLI started (npm start & then the CLI).
    const announce = setTimeout(() => fs.writeFileSync(runtimePath(dataDir), JSON.stringify({ state: 'starting', pid: starter.pid, dataDir, startedAt: new Date().toISOString(), postgres: 1 })), 1500);
    const r = await outcome(cli, (stderr) => { if (stderr.includes('to finish starting')) starter.kill(); });
    clearTimeout(announce);
    assert.match(r.stderr, /waiting for the Kiln server \(pid \d+\) to finish starting/);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(fs.existsSync(path.join(dataDir, 'pg', 'PG_VERSION')), false, 'the CLI ran no initdb of its own');
  } finally {
    starter.kill();
    removeDataDir(dataDir);
  }
});
