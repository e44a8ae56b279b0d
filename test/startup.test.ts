// A start that cannot succeed (issue #23 item 3) says why and what to do in one line, exits
// non-zero and leaves nothing running: no PostgreSQL of its own, no lock, the port free.
// Runs `node src/main.ts` as an operator does, with JSON logs, on fresh data dirs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fhir, freePort, removeDataDir } from './support/server.ts';

/** The environment without any Kiln setting of the one running the tests. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('KILN_') || ['PORT', 'HOST', 'BASE_URL', 'DATABASE_URL', 'APP_DATABASE_URL'].includes(k)) delete env[k];
  return { ...env, KILN_LOG_FORMAT: 'json', ...extra };
}

interface Exit { code: number | null; out: string; ms: number }

/** `node src/main.ts` until it exits (killed after 60 s), or, with `until`, until its output matches. */
function start(env: Record<string, string>) {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const exited = new Promise<Exit>((resolve) => child.once('exit', (code) => { clearTimeout(timer); resolve({ code, out, ms: performance.now() - t0 }); }));
  return {
    child, exited, output: () => out,
    async until(pattern: RegExp): Promise<void> {
      const deadline = Date.now() + 60_000;
      while (!pattern.test(out) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.match(out, pattern);
    },
  };
}

/** The one fatal line of a failed start (JSON logs), and no stack or raw error beside it. */
function fatalLine(exit: Exit): string {
  const lines = exit.out.split('\n').filter(Boolean);
  const fatal = lines.map((l) => { try { return JSON.parse(l); } catch { return undefined; } }).filter((l) => l?.level === 'fatal');
  assert.equal(fatal.length, 1, `one fatal line: ${exit.out}`);
  assert.ok(!/\n\s+at /.test(exit.out) && !/undefined/.test(exit.out), `no stack, no 'undefined': ${exit.out}`);
  return fatal[0].msg as string;
}

/** Postmasters (and their backends) running on a data dir. */
function postgresOn(dataDir: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmd[0].endsWith('postgres') && cmd.includes(path.join(dataDir, 'pg'))) pids.push(Number(entry));
    } catch { /* gone */ }
  }
  return pids;
}

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-startup-'));

/** A plain TCP listener (not PostgreSQL, not Kiln) holding a port. */
async function occupy(host: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => server.listen(0, host, () => resolve()));
  return { port: (server.address() as net.AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
}

test('the HTTP port taken: one line naming it, exit 1, before PostgreSQL starts (no initdb, no migrations)', async () => {
  const dataDir = tempDir();
  const held = await occupy('127.0.0.1');
  try {
    const exit = await start({ PORT: String(held.port), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(await freePort()) }).exited;
    assert.equal(exit.code, 1, exit.out);
    assert.equal(fatalLine(exit), `port ${held.port} is in use by another process: stop it or set PORT`);
    assert.ok(exit.ms < 30_000, `failed in ${Math.round(exit.ms)} ms`);
    assert.ok(!fs.existsSync(path.join(dataDir, 'pg', 'PG_VERSION')), 'no database was created (so none migrated)');
    assert.deepEqual(postgresOn(dataDir), []);
  } finally {
    await held.close();
    removeDataDir(dataDir);
  }
});

test('KILN_PG_PORT taken by another program: one line naming KILN_PG_PORT, exit 1, no PostgreSQL left', async () => {
  const dataDir = tempDir();
  const held = await occupy('127.0.0.1');
  const port = await freePort();
  try {
    const exit = await start({ PORT: String(port), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(held.port) }).exited;
    assert.equal(exit.code, 1, exit.out);
    assert.match(fatalLine(exit), new RegExp(`^KILN_PG_PORT ${held.port} is in use by another process .*: stop it or set KILN_PG_PORT to a free port$`));
    assert.deepEqual(postgresOn(dataDir), []);
    // The HTTP port it had taken is free again.
    const again = await occupy('127.0.0.1').then((s) => s.close());
    assert.equal(again, undefined);
  } finally {
    await held.close();
    removeDataDir(dataDir);
  }
});

test('DATABASE_URL unreachable: one line naming it without its password, exit 1; a PORT that is no port or a setting that cannot be read: exit 2', async () => {
  const pgPort = await freePort();
  const exit = await start({ PORT: String(await freePort()), HOST: '127.0.0.1', DATABASE_URL: `postgres://kiln:s3cret-pw@127.0.0.1:${pgPort}/kiln` }).exited;
  assert.equal(exit.code, 1, exit.out);
  assert.equal(fatalLine(exit), `DATABASE_URL postgres://kiln@127.0.0.1:${pgPort}/kiln refused the connection: is PostgreSQL running there?`);
  assert.ok(!exit.out.includes('s3cret-pw'));
  const dataDir = tempDir();
  const bad = await start({ PORT: 'eighty', KILN_DATA_DIR: dataDir }).exited;
  assert.equal(bad.code, 2, bad.out);
  assert.equal(fatalLine(bad), `PORT must be a TCP port (0-65535), not 'eighty'`);
  const unreadable = await start({ KILN_AUTH_ISSUER: 'https://issuer.example', KILN_DATA_DIR: dataDir }).exited;
  assert.equal(unreadable.code, 2, unreadable.out);
  assert.equal(fatalLine(unreadable), 'configuration: KILN_AUTH_ISSUER and KILN_AUTH_JWKS_URL go together: set both or neither');
  removeDataDir(dataDir);
});

test('beside a running server: a second one on its data dir is refused naming the data dir; KILN_AUTH=off warns; auth user add without a password is exit 2', async () => {
  const dataDir = tempDir();
  const pgPort = await freePort();
  const port = await freePort();
  // KILN_AUTH=off on every interface: the start warns, naming the address and that it is not loopback.
  const first = start({ PORT: String(port), HOST: '0.0.0.0', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort), KILN_AUTH: 'off' });
  try {
    await first.until(/listening on/);
    const warn = first.output().split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.level === 'warn' && /KILN_AUTH=off/.test(l.msg));
    assert.ok(warn, first.output());
    assert.match(warn.msg, new RegExp(`every tenant is open without authorization on 0\\.0\\.0\\.0:${port}, and 0\\.0\\.0\\.0 is not loopback`));
    const [postmaster] = postgresOn(dataDir);
    assert.ok(postmaster);

    // Same data dir, same or another PostgreSQL port: refused before it touches the database.
    for (const secondPg of [pgPort, await freePort()]) {
      const exit = await start({ PORT: String(await freePort()), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(secondPg) }).exited;
      assert.equal(exit.code, 1, exit.out);
      assert.match(fatalLine(exit), new RegExp(`^data dir ${dataDir} is used by a running PostgreSQL \\(pid ${postmaster}\\) of another Kiln process \\(pid ${first.child.pid}\\): stop that process, or set KILN_DATA_DIR to another directory$`));
    }
    assert.equal((await fhir(`http://127.0.0.1:${port}/fhir`, 'GET', 'metadata')).status, 200, 'the first server still serves');
    const card = JSON.parse(fs.readFileSync(path.join(dataDir, 'kiln-runtime.json'), 'utf8'));
    assert.deepEqual([card.pid, card.state, card.port], [first.child.pid, 'ready', port], 'the refused server left the running one\'s runtime card as it was');
    assert.ok(postgresOn(dataDir).includes(postmaster), 'its PostgreSQL still runs');

    // No terminal, no KILN_AUTH_PASSWORD, nothing on stdin: an error naming KILN_AUTH_PASSWORD, and no user.
    const cli = (args: string[], password?: string) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args],
        { env: cleanEnv({ KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort), ...(password ? { KILN_AUTH_PASSWORD: password } : {}) }), stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => { stdout += d; });
      child.stderr.on('data', (d) => { stderr += d; });
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    const add = await cli(['auth', 'user', 'add', '--tenant', 'default', 'nopass.user']);
    assert.equal(add.code, 2, add.stderr);
    assert.match(add.stderr, /KILN_AUTH_PASSWORD/);
    assert.doesNotMatch(add.stderr, /Password:/);
    const users = await cli(['auth', 'user', 'list']);
    assert.equal(users.code, 0, users.stderr);
    assert.doesNotMatch(users.stdout, /nopass\.user/);
    const withPassword = await cli(['auth', 'user', 'add', '--tenant', 'default', 'pass.user'], 'a long enough password');
    assert.equal(withPassword.code, 0, withPassword.stderr);
  } finally {
    first.child.kill('SIGTERM');
    assert.equal((await first.exited).code, 0, first.output());
  }
  // PostgreSQL that fails to start: its own FATAL line, never an ERROR line (which can quote rows).
  try {
    assert.deepEqual(postgresOn(dataDir), []);
    fs.appendFileSync(path.join(dataDir, 'pg', 'postgresql.conf'), '\nshared_buffers = plenty\n');
    const exit = await start({ PORT: String(await freePort()), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort) }).exited;
    assert.equal(exit.code, 1, exit.out);
    const line = fatalLine(exit);
    assert.match(line, new RegExp(`^embedded PostgreSQL did not start in data dir ${dataDir}: .*"shared_buffers".* \\| FATAL: configuration file .* contains errors`));
    assert.doesNotMatch(line, /ERROR:|DETAIL:|STATEMENT:/);
    assert.deepEqual(postgresOn(dataDir), []);
    assert.ok(!fs.existsSync(path.join(dataDir, 'pg', 'postmaster.pid')), 'no stale lock');
  } finally {
    for (const pid of postgresOn(dataDir)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    removeDataDir(dataDir);
  }
});

test('a PostgreSQL left running by a killed server is stopped and run under the next one, which leaves none behind', async () => {
  const dataDir = tempDir();
  const pgPort = await freePort();
  const env = () => freePort().then((port) => ({ port, env: { PORT: String(port), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort) } }));
  try {
    const a = await env();
    const killed = start(a.env);
    await killed.until(/listening on/);
    killed.child.kill('SIGKILL');
    await killed.exited;
    const [orphan] = postgresOn(dataDir);
    assert.ok(orphan, 'the killed server left its PostgreSQL running');

    const b = await env();
    const next = start(b.env);
    try {
      await next.until(/listening on/);
      assert.match(next.output(), new RegExp(`stopping the PostgreSQL \\(pid ${orphan}\\) that an exited Kiln process left running`));
      assert.equal((await fhir(`http://127.0.0.1:${b.port}/fhir`, 'GET', 'metadata')).status, 200);
      assert.ok(!postgresOn(dataDir).includes(orphan), 'the orphan is gone; this server runs its own');
    } finally {
      next.child.kill('SIGTERM');
      assert.equal((await next.exited).code, 0, next.output());
    }
    assert.deepEqual(postgresOn(dataDir), [], 'nothing left running');
  } finally {
    for (const pid of postgresOn(dataDir)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    removeDataDir(dataDir);
  }
});

test('a server that starts while a kiln command runs the data dir\'s PostgreSQL (the command won the race) waits for the command to end, then starts', async () => {
  const dataDir = tempDir();
  const pgPort = await freePort();
  const port = await freePort();
  // export-worker runs until stopped: a kiln command holding the data dir's PostgreSQL, as
  // `auth token` does for the moment it runs when it starts before the server announced itself.
  const worker = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'export-worker'],
    { env: cleanEnv({ KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort) }), stdio: ['ignore', 'pipe', 'pipe'] });
  const workerExit = new Promise<number | null>((resolve) => worker.once('exit', resolve));
  try {
    for (const deadline = Date.now() + 60_000; !postgresOn(dataDir).length && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 200));
    assert.ok(postgresOn(dataDir).length, 'the command started PostgreSQL');
    const server = start({ PORT: String(port), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(pgPort) });
    try {
      await server.until(/waiting for the kiln command \(pid \d+\) that runs its PostgreSQL to finish/);
      assert.equal(server.child.exitCode, null, server.output());
      worker.kill('SIGTERM');
      await workerExit;
      await server.until(/listening on/);
      assert.equal((await fhir(`http://127.0.0.1:${port}/fhir`, 'GET', 'metadata')).status, 200);
    } finally {
      server.child.kill('SIGTERM');
      assert.equal((await server.exited).code, 0, server.output());
    }
    assert.deepEqual(postgresOn(dataDir), [], 'nothing left running');
  } finally {
    worker.kill('SIGKILL');
    for (const pid of postgresOn(dataDir)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    removeDataDir(dataDir);
  }
});
