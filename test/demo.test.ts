// `kiln demo` (issue #23 item 4): beside a running server, with nothing in its environment
// but the data dir, it creates the `demo` tenant, loads Synthea bundles through the importer
// and prints a token and five requests; each printed request, run verbatim by bash, answers
// with what it says. A second run loads nothing again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import { startTestServer, removeDataDir, fhir, bearer, type TestServer } from './support/server.ts';
import { SHARED_DATA } from './support/data.ts';

const run = promisify(execFile);
let srv: TestServer;
let data: string;
let patientFiles: string[];
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-demo-work-'));

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  // Two patient bundles and the hospital and practitioner bundles.
  const synthea = path.join(SHARED_DATA, 'synthea-r4');
  data = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-demo-data-'));
  const names = fs.readdirSync(synthea).sort();
  patientFiles = names.filter((f) => !/Information/.test(f)).slice(0, 2);
  for (const f of [...names.filter((n) => /Information/.test(n)), ...patientFiles]) fs.copyFileSync(path.join(synthea, f), path.join(data, f));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
  for (const dir of [data, work]) fs.rmSync(dir, { recursive: true, force: true });
});

/** The CLI with none of the server's settings in its environment but its data dir: the runtime card gives the rest. */
function kiln(...args: string[]) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('KILN_') || ['PORT', 'HOST', 'BASE_URL', 'DATABASE_URL', 'APP_DATABASE_URL'].includes(k)) delete env[k];
  return run('npx', ['tsx', 'src/cli.ts', ...args], { env: { ...env, KILN_DATA_DIR: srv.dataDir }, maxBuffer: 16 << 20 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e) => ({ code: e.code as number, stdout: e.stdout as string, stderr: e.stderr as string }));
}

interface Printed { assignments: string; vars: Record<string, string>; examples: { title: string; script: string }[] }

/** The shell block the demo prints: the BASE/TOKEN/PATIENT_TOKEN lines, then "# n. ..." examples. */
function parse(stdout: string): Printed {
  const lines = stdout.slice(stdout.indexOf('\nBASE=') + 1).split('\n');
  const assignments = lines.filter((l) => /^[A-Z_]+='[^']*'$/.test(l));
  const vars = Object.fromEntries(assignments.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 2, -1)]));
  const examples: Printed['examples'] = [];
  for (const line of lines) {
    if (/^# \d\. /.test(line)) examples.push({ title: line, script: '' });
    else if (examples.length && line.trim()) examples.at(-1)!.script += `${line}\n`;
  }
  return { assignments: assignments.join('\n'), vars, examples };
}

/** One printed example run verbatim by bash after the printed assignments; its stdout parsed as JSON. */
async function runExample(p: Printed, n: number): Promise<any> {
  const r = await run('bash', ['-c', `set -e\n${p.assignments}\n${p.examples[n - 1].script}`], { cwd: work, timeout: 60_000, maxBuffer: 16 << 20 })
    .catch((e) => assert.fail(`${p.examples[n - 1].title} failed (${e.code}): ${e.stderr} ${String(e.stdout).slice(0, 500)}`));
  return JSON.parse(r.stdout);
}

async function counts(base: string, token: string) {
  const out: Record<string, number> = {};
  for (const type of ['Patient', 'Organization', 'Practitioner', 'Observation', 'Encounter', 'Claim']) {
    const r = await fhir(base, 'GET', `${type}?_summary=count`, undefined, bearer(token));
    assert.equal(r.status, 200, r.text);
    out[type] = r.json.total;
  }
  return out;
}

let first: Printed;

test('kiln demo loads the data into a demo tenant and prints requests that work verbatim', async () => {
  const r = await kiln('demo', '--data', data);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /created tenant 'demo'; loaded \d+ resources from 4 files .*; 0 failures/);
  first = parse(r.stdout);
  assert.equal(first.vars.BASE, `${srv.url}/demo`, 'the base of the running server (its runtime card)');
  assert.equal(first.examples.length, 5, r.stdout);
  const claims = decodeJwt(first.vars.PATIENT_TOKEN);
  assert.equal(claims.scope, 'patient/*.rs');
  const patientId = claims.patient as string;
  assert.match(first.examples[0].script, new RegExp(`/Patient/${patientId}"`));
  assert.equal(decodeJwt(first.vars.TOKEN).scope, 'system/*.cruds');

  // Every resource of the bundles is stored (each bundle entry is one resource).
  const entries = (f: string) => JSON.parse(fs.readFileSync(path.join(data, f), 'utf8')).entry.length;
  assert.match(r.stdout, new RegExp(`loaded ${fs.readdirSync(data).reduce((n, f) => n + entries(f), 0)} resources`));

  const patient = await runExample(first, 1);
  assert.equal(patient.resourceType, 'Patient');
  assert.equal(patient.id, patientId);

  const search = await runExample(first, 2);
  assert.equal(search.type, 'searchset');
  assert.ok(search.entry.length >= 1, 'the search finds the Observations of the code printed');
  for (const e of search.entry) {
    assert.equal(e.resource.resourceType, 'Observation');
    assert.equal(e.resource.subject.reference, `Patient/${patientId}`);
  }

  const everything = await runExample(first, 3);
  assert.equal(everything.type, 'searchset');
  assert.equal(everything.entry[0].resource.resourceType, 'Patient');
  assert.equal(everything.entry[0].resource.id, patientId);
  assert.ok(everything.link.some((l: any) => l.relation === 'next'), 'a record of more than 50 resources has a next page');

  const manifest = await runExample(first, 4);
  assert.equal(manifest.requiresAccessToken, true);
  assert.deepEqual([...new Set(manifest.output.map((o: any) => o.type))].sort(), ['Observation', 'Patient']);
  const exportedPatients = manifest.output.filter((o: any) => o.type === 'Patient').reduce((n: number, o: any) => n + o.count, 0);
  assert.equal(exportedPatients, patientFiles.length);

  const own = await runExample(first, 5);
  assert.equal(own.total, 1, 'the patient token finds one Patient');
  assert.equal(own.entry.filter((e: any) => e.search.mode === 'match').length, 1);
  assert.equal(own.entry[0].resource.id, patientId);
  // The same search with the system token finds every patient.
  const all = await fhir(first.vars.BASE, 'GET', 'Patient?_total=accurate', undefined, bearer(first.vars.TOKEN));
  assert.equal(all.json.total, patientFiles.length);
  // And the patient token's Observations are all its patient's.
  const obs = await fhir(first.vars.BASE, 'GET', 'Observation?_count=200', undefined, bearer(first.vars.PATIENT_TOKEN));
  assert.equal(obs.status, 200);
  assert.ok(obs.json.entry.length > 0);
  assert.ok(obs.json.entry.every((e: any) => e.search.mode !== 'match' || e.resource.subject.reference === `Patient/${patientId}`));
});

test('a second run reuses the tenant, loads nothing twice and prints fresh working requests', async () => {
  const before = await counts(first.vars.BASE, first.vars.TOKEN);
  assert.equal(before.Patient, patientFiles.length);
  const r = await kiln('demo', '--data', data);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /reused tenant 'demo'; all 4 files of .* were already loaded/);
  assert.deepEqual(await counts(first.vars.BASE, first.vars.TOKEN), before);
  const again = parse(r.stdout);
  assert.equal((await runExample(again, 1)).id, decodeJwt(again.vars.PATIENT_TOKEN).patient);
});

test('a missing data directory is a clear error, exit 2', async () => {
  const missing = path.join(work, 'no-such-dir');
  const r = await kiln('demo', '--data', missing);
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`no data directory ${missing}.*--data <dir>`));
  assert.equal(r.stdout, '');
});

test('kiln demo --help prints its usage, exit 0; the CLI usage names it', async () => {
  const r = await kiln('demo', '--help');
  assert.equal(r.code, 0);
  assert.match(r.stdout, /kiln demo \[--data <dir>\]/);
  assert.match((await kiln('--help')).stdout, /kiln demo/);
});
