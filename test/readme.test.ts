// The README's first request, run verbatim as a newcomer pastes it (issue #23 item 4):
// `npm start &`, a token from the CLI, a curl POST. The data dir is fresh, so the CLI asks
// for its token while the server's first start still runs initdb and the migrations.
// Only the environment differs from a newcomer's: a temporary KILN_DATA_DIR, a free
// KILN_PG_PORT, and CURL_HOME naming a .curlrc that makes curl print the HTTP status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { freePort } from './support/server.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const STATUS_MARK = 'README-TEST-HTTP-STATUS';

function readmeBlock(): string {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('A first request in three commands');
  assert.ok(at >= 0, 'the README has its "A first request in three commands" section');
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(block, 'a ```sh block follows it');
  return block[1];
}

/** Fails (never skips) when the port the README's block uses is taken. */
async function assertPortFree(port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = net.createServer();
    s.once('error', (e: NodeJS.ErrnoException) => reject(new Error(
      `port ${port} is ${e.code === 'EADDRINUSE' ? 'in use' : `not available (${e.code})`}: the README's block starts the server on it; free it to run this test`)));
    s.listen(port, '0.0.0.0', () => s.close(() => resolve()));
  });
}

/** The first JSON object in text that starts at `from` (curl prints no newline after it). */
function jsonAt(text: string, from: number): any {
  for (let end = text.indexOf('}', from); end >= 0; end = text.indexOf('}', end + 1)) {
    try { return JSON.parse(text.slice(from, end + 1)); } catch { /* not closed yet */ }
  }
  return undefined;
}

const groupAlive = (pgid: number) => { try { process.kill(-pgid, 0); return true; } catch { return false; } };

/** PostgreSQL processes whose command line names the data dir. */
function postgresOf(dataDir: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (/postgres/.test(cmd[0]) && cmd.some((arg) => arg.startsWith(dataDir))) pids.push(Number(entry));
    } catch { /* exited meanwhile */ }
  }
  return pids;
}

async function until(what: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!what()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return true;
}

test("the README's first request gives 201 on a first start, verbatim", { timeout: 300_000 }, async () => {
  const block = readmeBlock();
  assert.match(block, /npm start &/);
  await assertPortFree(8080);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-readme-'));
  fs.writeFileSync(path.join(dataDir, '.curlrc'), `write-out = "\\n${STATUS_MARK} %{http_code}\\n"\n`);
  // A newcomer's environment: none of Kiln's settings.
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('KILN_') || ['PORT', 'HOST', 'BASE_URL', 'DATABASE_URL', 'APP_DATABASE_URL'].includes(k)) delete env[k];
  Object.assign(env, { KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(await freePort()), CURL_HOME: dataDir });
  // A newcomer's `npm install` built dist/ (package.json prepare); here src/ may have changed
  // since, and `npm start` rebuilding it would outlast the CLI's wait for a first start.
  execFileSync('npm', ['run', '-s', 'build'], { cwd: ROOT, stdio: 'ignore', timeout: 120_000 });
  // Its own process group: the server the block leaves running in the background is stopped with it.
  const shell = spawn('bash', ['-c', block], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const pgid = shell.pid!;
  let stdout = '';
  let stderr = '';
  shell.stdout.on('data', (d) => { stdout += d; });
  shell.stderr.on('data', (d) => { stderr += d; });
  let failure: unknown;
  try {
    // 'exit', not 'close': the background server keeps the pipes open.
    const code = await new Promise<number | null>((resolve) => shell.on('exit', resolve));
    const said = `stdout:\n${stdout}\nstderr:\n${stderr}`;
    assert.equal(code, 0, said);
    const at = stdout.indexOf('{"resourceType":"Patient"');
    assert.ok(at >= 0, `curl printed a Patient\n${said}`);
    const patient = jsonAt(stdout, at);
    assert.match(patient?.id ?? '', /^[A-Za-z0-9\-.]{1,64}$/, said);
    assert.equal(patient.name[0].family, 'Chalmers');
    assert.equal(patient.meta.versionId, '1');
    assert.match(stdout, new RegExp(`${STATUS_MARK} 201\\n`), said);
    // The CLI met the first start: it waited for the server rather than racing its initdb.
    assert.match(stderr, /waiting for the Kiln server \(pid \d+\) to finish starting/, said);
  } catch (e) {
    failure = e;
  }
  // Stopped whatever happened above; what the stop left behind fails the test only when the rest passed.
  if (groupAlive(pgid)) process.kill(-pgid, 'SIGTERM');
  const stopped = await until(() => !groupAlive(pgid), 90_000);
  if (!stopped) process.kill(-pgid, 'SIGKILL');
  const left = await until(() => postgresOf(dataDir).length === 0, 20_000) ? [] : postgresOf(dataDir);
  for (const pid of left) process.kill(pid, 'SIGKILL');
  const card = fs.existsSync(path.join(dataDir, 'kiln-runtime.json'));
  fs.rmSync(dataDir, { recursive: true, force: true });
  if (failure) throw failure;
  assert.ok(stopped, 'the server stopped on SIGTERM within 90 s');
  assert.deepEqual(left, [], 'the embedded PostgreSQL stopped with the server');
  assert.equal(card, false, 'a clean stop removes the runtime card');
});
