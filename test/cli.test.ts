// The CLI answers --help and --version (issue #23 item 3): asked for, usage goes to stdout
// with exit 0 and names every command group; an unknown command still gets it on stderr, 2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);
const kiln = (...args: string[]) => run('npx', ['tsx', 'src/cli.ts', ...args]).then(
  (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
  (e) => ({ code: e.code as number, stdout: e.stdout as string, stderr: e.stderr as string }));

test('--help, -h and help print the usage of every command group and exit 0', async () => {
  for (const flag of ['--help', '-h', 'help']) {
    const r = await kiln(flag);
    assert.equal(r.code, 0, flag);
    for (const group of ['tenant create', 'tenant list', 'import', 'auth', 'bigquery', 'healthie', 'export', 'export-worker', '--version']) {
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
  assert.match(r.stderr, /^usage:/);
  assert.equal(r.stdout, '');
});
