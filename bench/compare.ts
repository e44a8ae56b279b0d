// Issue #25's first table re-measured with the code before the search work and this checkout
// in one run, `npm run bench:compare`. "Before" is a git worktree of BENCH_BEFORE (default
// 02f956c) run as it ran then (`node --import tsx src/main.ts`); "after" is this checkout as
// `npm start` runs it (`node dist/src/main.js`, built here first). Each server has its own data
// dir and embedded PostgreSQL (the schemas differ: the old code must never see a later
// migration), auth on (a token from each server's own `kiln auth token`) and auditing on, as the
// issue measured. Both get the same data over HTTP in transaction Bundles, loaded in slices that
// alternate between them (the load's own rate is reported too); then each table row runs as
// short autocannon runs alternating before/after, the order swapped every round, and the figure
// is the ratio of the medians. Last, Patients are added to both (audit off for that load) and
// `Patient?family=X` is measured again at each size of BENCH_GROW.
//
//   BENCH_SCALE=0.05 BENCH_SECONDS=5 BENCH_ROUNDS=4 BENCH_GROW=50000,100000 npm run bench:compare
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import autocannon, { type RequestSpec } from 'autocannon';
import type { Bundle, BundleEntry, Encounter, Observation, Patient } from '@medplum/fhirtypes';
import { fmt, loadGenerator, median, start, stop, type Server } from './compiled.ts';
import { cpuMsOf, procSnapshot, treeOf, withCpu } from './cpu.ts';
import { envNumber } from './env.ts';
import { freePort } from '../test/support/server.ts';
import { summarize, type LatencySummary } from './stats.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BEFORE = process.env.BENCH_BEFORE || '02f956c';
const SCALE = envNumber('BENCH_SCALE', 1, 0.001);
const SECONDS = envNumber('BENCH_SECONDS', 5, 1);
const WARMUP = envNumber('BENCH_WARMUP', 2, 0);
const ROUNDS = Math.floor(envNumber('BENCH_ROUNDS', 4, 1));
const CONNECTIONS = Math.floor(envNumber('BENCH_CONNECTIONS', 10, 1));
/** Total Patients after each growth step (scaled like the rest); empty skips the growth. */
const GROW = (process.env.BENCH_GROW ?? '50000,100000').split(',').filter(Boolean).map((s) => Math.round(Number(s) * SCALE));

const PATIENTS = Math.round(10_000 * SCALE);
const FAMILIES = Math.max(1, Math.round(1_000 * SCALE)); // ~10 Patients each
const OBS_PATIENTS = Math.max(1, Math.round(1_000 * SCALE)); // the first ones; 100 Observations each
const OBS_PER_PATIENT = 100;
const ENCOUNTERS_PER_PATIENT = 2; // every 5th Observation points at one of them
const BUNDLE = 100;

// ------------------------------------------------------------------ resources
const LOINC = 'http://loinc.org';
const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const CODES = [
  { code: '8867-4', display: 'Heart rate', unit: '/min', base: 55, category: 'vital-signs' },
  { code: '8310-5', display: 'Body temperature', unit: 'Cel', base: 36, category: 'vital-signs' },
  { code: '9279-1', display: 'Respiratory rate', unit: '/min', base: 12, category: 'vital-signs' },
  { code: '8480-6', display: 'Systolic blood pressure', unit: 'mm[Hg]', base: 100, category: 'vital-signs' },
  { code: '29463-7', display: 'Body weight', unit: 'kg', base: 50, category: 'vital-signs' },
  { code: '2339-0', display: 'Glucose', unit: 'mg/dL', base: 70, category: 'laboratory' },
];
const END = Date.parse('2026-12-01T00:00:00Z');
const DAY = 86_400_000;
/** `date=ge` of the sorted search: the last year of the two the Observations cover. */
const DATE_GE = new Date(END - 365 * DAY).toISOString().slice(0, 10);

// Family names of the searched Patients: three syllables of one set, so none is a prefix of
// another (a string search matches prefixes) and each names ~10 Patients. Added Patients take a
// second set, so the searches keep their hits as the tenant grows.
const SYLLABLES = [['ba', 'ke', 'lo', 'mi', 'nu', 'ra', 'se', 'ti', 'vo', 'ze'], ['da', 'fe', 'gi', 'ho', 'ju', 'pa', 'qe', 'wi', 'xo', 'yu']];
function family(set: 0 | 1, k: number): string {
  const s = SYLLABLES[set];
  const name = s[Math.floor(k / 100) % 10] + s[Math.floor(k / 10) % 10] + s[k % 10];
  return name[0].toUpperCase() + name.slice(1);
}
const searchedFamily = (i: number) => family(0, i % FAMILIES);

function patient(mrn: string, n: number, familyName: string): Patient {
  return {
    resourceType: 'Patient', active: true,
    identifier: [{ system: 'urn:oid:2.16.840.1.113883.19.5.99999.1', value: mrn }],
    name: [{ use: 'official', family: familyName, given: [['Ada', 'Ben', 'Cleo', 'Dev', 'Eli'][n % 5]] }],
    gender: n % 2 ? 'male' : 'female',
    birthDate: `${1940 + (n % 70)}-${String(1 + (n % 12)).padStart(2, '0')}-${String(1 + (n % 28)).padStart(2, '0')}`,
  };
}

function observation(patientId: string, n: number, encounterId?: string): Observation {
  const c = CODES[n % CODES.length];
  return {
    resourceType: 'Observation', status: 'final',
    category: [{ coding: [{ system: OBS_CATEGORY, code: c.category }] }],
    code: { coding: [{ system: LOINC, code: c.code, display: c.display }], text: c.display },
    subject: { reference: `Patient/${patientId}` },
    ...(encounterId ? { encounter: { reference: `Encounter/${encounterId}` } } : {}),
    effectiveDateTime: new Date(END - ((n * 7919) % (730 * 24)) * 3_600_000).toISOString(), // spread over two years
    valueQuantity: { value: c.base + (n % 40), unit: c.unit, system: 'http://unitsofmeasure.org', code: c.unit },
  };
}

function encounter(patientId: string, k: number): Encounter {
  const startAt = END - (k * 300 + 17) * DAY / 2;
  return {
    resourceType: 'Encounter', status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: `Patient/${patientId}` },
    period: { start: new Date(startAt).toISOString(), end: new Date(startAt + 3_600_000).toISOString() },
  };
}

const bundleOf = (type: 'transaction' | 'batch', resources: (Patient | Observation | Encounter)[]): Bundle => ({
  resourceType: 'Bundle', type,
  entry: resources.map((resource): BundleEntry => ({ resource, request: { method: 'POST', url: resource.resourceType } })),
});

// ------------------------------------------------------------------ load generator (a fork of this file)
type Make = 'patient' | 'observation' | 'observationBatch';
interface Job {
  kind: 'run';
  runId: number;
  origin: string;
  connections: number;
  seconds: number;
  headers: Record<string, string>;
  paths?: string[]; // GET, in turn
  make?: Make; // POST a new resource (or batch) for one of `patients`, in turn
  patients?: string[];
  tag?: string;
}
interface Stats { ok: number; reqPerSec: number; latency: LatencySummary; non2xx: number; errors: number; timeouts: number; firstErrorBody?: string }

let seq = 0;
function requestOf(job: Job): RequestSpec {
  const json = { accept: 'application/fhir+json', 'content-type': 'application/fhir+json', ...job.headers };
  if (job.paths) {
    const paths = job.paths;
    return { method: 'GET', path: paths[0], headers: { accept: 'application/fhir+json', ...job.headers }, setupRequest: (req) => ({ ...req, path: paths[seq++ % paths.length] }) };
  }
  const ps = job.patients!;
  const make = job.make!;
  return {
    method: 'POST', path: make === 'observationBatch' ? '/fhir' : `/fhir/${make === 'patient' ? 'Patient' : 'Observation'}`, headers: json,
    setupRequest: (req) => {
      const s = seq++;
      const body = make === 'patient' ? patient(`${job.tag}-m-${s}`, s, family(1, s % 1000))
        : make === 'observation' ? observation(ps[s % ps.length], s)
          : bundleOf('batch', Array.from({ length: BUNDLE }, (_, k) => observation(ps[(s * BUNDLE + k) % ps.length], s * BUNDLE + k)));
      return { ...req, body: JSON.stringify(body) };
    },
  };
}

async function runJob(job: Job): Promise<Stats> {
  const latencies: number[] = [];
  let firstErrorBody: string | undefined;
  const req = requestOf(job);
  req.onResponse = (status, body) => { if ((status < 200 || status >= 300) && firstErrorBody === undefined) firstErrorBody = body.slice(0, 500); };
  const instance = autocannon({ url: job.origin, connections: job.connections, duration: job.seconds, timeout: 30, requests: [req] });
  instance.on('response', (_c: unknown, status: number, _b: number, ms: number) => { if (status >= 200 && status < 300) latencies.push(ms); });
  const res = await instance;
  return { ok: res['2xx'], reqPerSec: Math.round((res['2xx'] / res.duration) * 10) / 10, latency: summarize(latencies), non2xx: res.non2xx, errors: res.errors, timeouts: res.timeouts, ...(firstErrorBody ? { firstErrorBody } : {}) };
}

// ------------------------------------------------------------------ servers
type Side = 'before' | 'after';
const SIDES: Side[] = ['before', 'after'];
interface Up { server: Server<Side>; auth: Record<string, string>; cwd: string }

function worktree(): string {
  const rev = execFileSync('git', ['rev-parse', '--short', BEFORE], { cwd: ROOT, encoding: 'utf8' }).trim();
  const dir = path.join(os.tmpdir(), `kiln-before-${rev}`);
  if (!fs.existsSync(path.join(dir, 'src/main.ts'))) execFileSync('git', ['worktree', 'add', '--detach', dir, rev], { cwd: ROOT, stdio: 'inherit' });
  if (!fs.existsSync(path.join(dir, 'node_modules'))) {
    // The same lockfile: this checkout's node_modules serve; another: its own install.
    let same = true;
    try { execFileSync('git', ['diff', '--quiet', rev, '--', 'package-lock.json'], { cwd: ROOT, stdio: 'ignore' }); } catch { same = false; }
    if (same) fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
    else execFileSync('npm', ['ci'], { cwd: dir, stdio: 'inherit' });
  }
  return dir;
}

async function up(side: Side, beforeDir: string, dir: string, audit: 'on' | 'off'): Promise<Up> {
  const cwd = side === 'before' ? beforeDir : ROOT;
  const mode = side === 'before' ? { name: side, args: ['--import', 'tsx', 'src/main.ts'], cwd } : { name: side, args: ['dist/src/main.js'], cwd };
  const pgPort = await freePort();
  // KILN_AUTH unset: SMART auth, the default. A first start runs initdb and every migration.
  const server = await start(mode, undefined, dir, { KILN_AUTH: undefined, KILN_AUDIT: audit, KILN_PG_PORT: String(pgPort) }, 600_000);
  const token = execFileSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'auth', 'token', '--scope', 'system/*.cruds', '--minutes', '600', '--aud', `${server.origin}/fhir`],
    { cwd, env: { ...process.env, KILN_DATA_DIR: path.join(dir, side) }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  return { server, auth: { authorization: `Bearer ${token}` }, cwd };
}

/** POSTs transaction Bundles of `make(i)` for i in [from, to), `CONNECTIONS` at once; the new ids in order. */
async function post(u: Up, from: number, to: number, make: (i: number) => Patient | Observation | Encounter): Promise<string[]> {
  const ids: string[] = new Array(to - from);
  let next = from;
  await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    while (next < to) {
      const first = next;
      next = Math.min(to, next + BUNDLE);
      const body = bundleOf('transaction', Array.from({ length: next - first }, (_, k) => make(first + k)));
      const res = await fetch(`${u.server.origin}/fhir`, { method: 'POST', headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json', ...u.auth }, body: JSON.stringify(body) });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${u.server.mode}: transaction at ${first}: HTTP ${res.status} ${text.slice(0, 300)}`);
      (JSON.parse(text) as Bundle).entry!.forEach((e, k) => { ids[first - from + k] = e.response!.location!.split('/')[1]; });
    }
  }));
  return ids;
}

interface Data { patients: string[]; encounters: string[] }
const loadMs: Record<string, Record<Side, number>> = {};

/** One step of the load to both servers, in `slices` slices alternating between them; time per server. */
async function loadBoth(label: string, ups: Record<Side, Up>, count: number, slices: number, make: (side: Side, i: number) => Patient | Observation | Encounter, into: (side: Side) => string[]) {
  const ms: Record<Side, number> = { before: 0, after: 0 };
  const per = Math.ceil(count / slices / BUNDLE) * BUNDLE;
  for (let s = 0, from = 0; from < count; s++, from += per) {
    for (const side of s % 2 ? [...SIDES].reverse() : SIDES) {
      const t0 = performance.now();
      into(side).push(...await post(ups[side], from, Math.min(count, from + per), (i) => make(side, i)));
      ms[side] += performance.now() - t0;
    }
  }
  loadMs[label] = ms;
  console.log(`  load ${label}: ${count} per server, before ${(ms.before / 1000).toFixed(1)} s (${fmt(count / ms.before * 1000)}/s), after ${(ms.after / 1000).toFixed(1)} s (${fmt(count / ms.after * 1000)}/s)`);
}

// ------------------------------------------------------------------ the measurement
interface Row { label: string; job: (d: Data) => Pick<Job, 'paths' | 'make' | 'patients'>; perRequest?: number; seconds?: number }
const obsPatients = (d: Data) => d.patients.slice(0, OBS_PATIENTS);
const otherPatients = (d: Data) => (d.patients.length > OBS_PATIENTS ? d.patients.slice(OBS_PATIENTS) : d.patients);
const familyRow: Row = { label: '`Patient?family=X` (10 hits)', job: () => ({ paths: Array.from({ length: FAMILIES }, (_, k) => `/fhir/Patient?family=${family(0, k)}`) }) };
const ROWS: Row[] = [
  { label: 'read Patient by id', job: (d) => ({ paths: d.patients.slice(0, PATIENTS).map((id) => `/fhir/Patient/${id}`) }) },
  { label: `Patient/$everything (~${OBS_PER_PATIENT + ENCOUNTERS_PER_PATIENT + 1} entries)`, job: (d) => ({ paths: obsPatients(d).map((id) => `/fhir/Patient/${id}/$everything`) }) },
  familyRow,
  { label: '`Observation?patient=X&code=8867-4` (~17 hits)', job: (d) => ({ paths: obsPatients(d).map((id) => `/fhir/Observation?patient=${id}&code=8867-4`) }) },
  { label: `\`Observation?patient=X&category=vital-signs&date=ge${DATE_GE}&_sort=-date\` (~42 hits)`, job: (d) => ({ paths: obsPatients(d).map((id) => `/fhir/Observation?patient=${id}&category=vital-signs&date=ge${DATE_GE}&_sort=-date`) }) },
  { label: `\`Encounter?patient=X&_revinclude=Observation:encounter\` (${ENCOUNTERS_PER_PATIENT} + ~${OBS_PER_PATIENT / 5} entries)`, job: (d) => ({ paths: obsPatients(d).map((id) => `/fhir/Encounter?patient=${id}&_revinclude=Observation:encounter`) }) },
  { label: 'create Patient', job: () => ({ make: 'patient' }) },
  { label: 'create Observation', job: (d) => ({ make: 'observation', patients: otherPatients(d) }) },
  { label: `batch of ${BUNDLE} Observations (resources/s)`, job: (d) => ({ make: 'observationBatch', patients: otherPatients(d) }), perRequest: BUNDLE,
    seconds: Math.max(3 * SECONDS, 15) }, // a Bundle takes seconds with 10 at once: a short run would count few of them
];

interface Run { label: string; round: number; side: Side; stats: Stats; cpuUsPerRequest: number; foreignPct: number | null }

async function measure(rows: Row[], ups: Record<Side, Up>, data: Record<Side, Data>, load: ReturnType<typeof loadGenerator<Job, Stats>>, tag: string, runs: Run[], created: Record<Side, number>) {
  const once = async (row: Row, side: Side, seconds: number, round: number) => {
    const u = ups[side];
    const job = { origin: u.server.origin, connections: CONNECTIONS, seconds, headers: u.auth, tag: `${tag}-${side}`, ...row.job(data[side]) };
    const p0 = procSnapshot();
    const { result: stats, cpu } = await withCpu(() => load.run(job));
    const p1 = procSnapshot();
    if (job.make === 'patient') created[side] += stats.ok;
    if (round === 0) return;
    // CPU of the server and its embedded PostgreSQL per answered request.
    const cpuUsPerRequest = p0 && p1 && stats.ok ? Math.round(cpuMsOf(p0, p1, treeOf(p1, u.server.child.pid!)) * 1000 / stats.ok) : NaN;
    runs.push({ label: row.label, round, side, stats: { ...stats, reqPerSec: stats.reqPerSec * (row.perRequest ?? 1) }, cpuUsPerRequest, foreignPct: cpu.foreignPct });
    if (stats.non2xx || stats.errors || !stats.ok) console.log(`  WARNING ${row.label} ${side}: ${stats.non2xx} non-2xx, ${stats.errors} errors; ${stats.firstErrorBody ?? ''}`);
  };
  if (WARMUP > 0) for (const row of rows) for (const side of SIDES) await once(row, side, row.seconds ? row.seconds / 2 : WARMUP, 0);
  for (let round = 1; round <= ROUNDS; round++) {
    const line: string[] = [];
    for (const [k, row] of rows.entries()) {
      for (const side of (round + k) % 2 ? SIDES : [...SIDES].reverse()) await once(row, side, row.seconds ?? SECONDS, round);
      const r = (side: Side) => runs.find((x) => x.label === row.label && x.round === round && x.side === side)!.stats.reqPerSec;
      line.push(`${(r('after') / r('before')).toFixed(2)}`);
    }
    console.log(`  round ${round} after/before: ${line.join(' ')}`);
  }
}

/** Waits (up to 3 min) until both servers and their PostgreSQL are idle (autovacuum's ANALYZE after a load), so neither is measured mid-way. */
async function settle(ups: Record<Side, Up>) {
  for (let i = 0; i < 60; i++) {
    const p0 = procSnapshot();
    await new Promise((r) => setTimeout(r, 3000));
    const p1 = procSnapshot();
    if (!p0 || !p1) return;
    const busy = SIDES.map((side) => cpuMsOf(p0, p1, treeOf(p1, ups[side].server.child.pid!)) / 3000);
    if (busy.every((b) => b < 0.05)) return;
  }
}

const uptime = () => execFileSync('uptime', { encoding: 'utf8' }).trim();

async function main() {
  const uptimeStart = uptime();
  const startedAt = new Date().toISOString().replace(/[:.]/g, '-');
  const t0 = performance.now();
  const beforeDir = worktree();
  const beforeRev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: beforeDir, encoding: 'utf8' }).trim();
  const afterRev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  // "After" is the working tree as built: name any uncommitted server change it carried.
  const dirty = execFileSync('git', ['status', '--short', '--', 'src', 'sql', 'mappings'], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-compare-'));
  fs.chmodSync(dir, 0o755); // as root, initdb runs as 'postgres', which must reach the data dirs inside
  const tag = `cmp-${Date.now().toString(36)}`;
  console.log(`Kiln before (${beforeRev}, tsx) vs after (${afterRev}, compiled): scale ${SCALE} (${PATIENTS} Patients, ${OBS_PATIENTS * OBS_PER_PATIENT} Observations), ` +
    `${ROUNDS} rounds of ${SECONDS} s, ${CONNECTIONS} connections, auth on, audit on; ${dir}\n  ${uptimeStart}`);
  const load = loadGenerator<Job, Stats>('bench/compare.ts', ['worker']);
  const ups = {} as Record<Side, Up>;
  const data: Record<Side, Data> = { before: { patients: [], encounters: [] }, after: { patients: [], encounters: [] } };
  const created: Record<Side, number> = { before: 0, after: 0 };
  const runs: Run[] = [];
  const grown: { size: number; runs: Run[] }[] = [];
  // Written after each measurement, so a run stopped at a deadline leaves what it measured.
  const report = (final: boolean): number => {
    const minutes = (performance.now() - t0) / 60_000;
    const uptimeEnd = uptime();

    const summary = (label: string, rs: Run[]) => {
      const of = (side: Side) => rs.filter((r) => r.label === label && r.side === side);
      const rate = (side: Side) => median(of(side).map((r) => r.stats.reqPerSec));
      const cpu = (side: Side) => median(of(side).map((r) => r.cpuUsPerRequest).filter((v) => Number.isFinite(v))); // a run with no answer has none
      const ratios = Array.from({ length: ROUNDS }, (_, i) => {
        const at = (side: Side) => of(side).find((r) => r.round === i + 1)!.stats.reqPerSec;
        return at('after') / at('before');
      });
      return { label, before: rate('before'), after: rate('after'), ratio: rate('after') / rate('before'), lo: Math.min(...ratios), hi: Math.max(...ratios), cpuBefore: cpu('before'), cpuAfter: cpu('after') };
    };
    const rows = [
      ...ROWS.map((r) => summary(r.label, runs)),
      ...grown.map((g) => ({ ...summary(familyRow.label, g.runs), label: `same, at ~${fmt(g.size)} Patients (added with audit off)` })),
    ];
    const lines = [
      `| test (${CONNECTIONS} connections, medians of ${ROUNDS} runs of ${SECONDS} s) | before/s | after/s | after / before | rounds' ratios | server+PG CPU µs per request, before / after |`,
      '| --- | ---: | ---: | ---: | --- | ---: |',
      ...rows.map((r) => `| ${r.label} | ${fmt(r.before)} | ${fmt(r.after)} | **${r.ratio.toFixed(2)}** | ${r.lo.toFixed(2)}–${r.hi.toFixed(2)} | ${fmt(r.cpuBefore)} / ${fmt(r.cpuAfter)} |`),
    ];
    const loads = Object.entries(loadMs).map(([label, ms]) => `| load: ${label}, transaction Bundles of ${BUNDLE}, ${CONNECTIONS} at once | ${(ms.before / 1000).toFixed(1)} s | ${(ms.after / 1000).toFixed(1)} s | ${(ms.before / ms.after).toFixed(2)} (rate) | | |`);
    console.log('');
    if (final) for (const l of [...lines, ...loads]) console.log(l);
    const busy = [...runs, ...grown.flatMap((g) => g.runs)].filter((r) => (r.foreignPct ?? 0) > 10);
    const failed = [...runs, ...grown.flatMap((g) => g.runs)].filter((r) => r.stats.non2xx || r.stats.errors || r.stats.timeouts || !r.stats.ok);
    const notes = [
      ...(busy.length ? [`Other processes used over 10% of the machine in ${busy.length} of the runs (max ${Math.max(...busy.map((r) => r.foreignPct!))}%).`] : []),
      ...failed.map((r) => `WARNING: round ${r.round} ${r.side} ${r.label}: ${r.stats.ok} answers, ${r.stats.non2xx} non-2xx, ${r.stats.errors} errors, ${r.stats.timeouts} timeouts`),
    ];
    if (final) for (const n of notes) console.log(n);
    console.log(`run so far: ${minutes.toFixed(1)} min`);
    const md = [
      `# Issue #25's table, before (${beforeRev}) and after (${afterRev}) in one run${final ? '' : ' (partial: the run had not ended)'}`,
      '',
      `\`npm run bench:compare\` (bench/compare.ts), ${new Date().toISOString().slice(0, 16)}Z, ${minutes.toFixed(0)} min, Node ${process.version}, ${os.cpus().length} cores.`,
      `Before: a worktree of ${beforeRev} run as \`node --import tsx src/main.ts\`; after: this checkout's \`node dist/src/main.js\` (what \`npm start\` runs).`,
      ...(dirty.length ? [`After was built from ${afterRev} with uncommitted changes in: ${dirty.map((l) => l.slice(3)).join(', ')}.`] : []),
    `Each on its own data dir and embedded PostgreSQL, SMART auth on (system/*.cruds token), auditing on (off only while the growth Patients were loaded).`,
      `Data (scale ${SCALE}): ${PATIENTS} Patients with ${FAMILIES} family names, ${OBS_PATIENTS * ENCOUNTERS_PER_PATIENT} Encounters and ${OBS_PATIENTS * OBS_PER_PATIENT} Observations over ${OBS_PATIENTS} Patients ` +
        `(6 LOINC codes, 8867-4 among them; 5 vital-signs, 1 laboratory; two years of dates; every 5th with an encounter), loaded in transaction Bundles of ${BUNDLE}, slices alternating between the servers.`,
      `Measured: ${ROUNDS} rounds of ${SECONDS} s per row and server (+${WARMUP} s warmup), ${CONNECTIONS} connections, order swapped every row and round; ratio of the medians. ` +
        `Creates of the rounds go to Patients outside the searched ones. CPU: the server process and its embedded PostgreSQL, per 2xx answer.`,
      '',
      `Machine at start: \`${uptimeStart}\``,
      `Machine at end: \`${uptimeEnd}\``,
      '',
      ...lines,
      ...loads,
      '',
      ...notes,
    ].join('\n') + '\n';
    fs.writeFileSync(path.join(ROOT, 'bench/results/2026-12-07-compare.md'), md);
    fs.writeFileSync(path.join(ROOT, 'bench/results', `compare-${startedAt}.json`), JSON.stringify({ scale: SCALE, seconds: SECONDS, rounds: ROUNDS, connections: CONNECTIONS, grow: GROW, beforeRev, afterRev, loadMs, runs, grown }, null, 2) + '\n');
    console.log('results: bench/results/2026-12-07-compare.md');
    return failed.length;
  };
  try {
    for (const side of SIDES) ups[side] = await up(side, beforeDir, dir, 'on');
    await loadBoth('Patients', ups, PATIENTS, 4, (_s, i) => patient(`${tag}-${i}`, i, searchedFamily(i)), (s) => data[s].patients);
    await loadBoth('Encounters', ups, OBS_PATIENTS * ENCOUNTERS_PER_PATIENT, 2, (s, i) => encounter(data[s].patients[i % OBS_PATIENTS], Math.floor(i / OBS_PATIENTS)), (s) => data[s].encounters);
    const obs: Record<Side, string[]> = { before: [], after: [] };
    await loadBoth('Observations', ups, OBS_PATIENTS * OBS_PER_PATIENT, 10, (s, i) => {
      const p = i % OBS_PATIENTS;
      return observation(data[s].patients[p], i, i % 5 === 0 ? data[s].encounters[p + OBS_PATIENTS * ((i / 5) % ENCOUNTERS_PER_PATIENT)] : undefined);
    }, (s) => obs[s]);
    await settle(ups);
    console.log(`loaded in ${((performance.now() - t0) / 1000).toFixed(0)} s; measuring`);
    await measure(ROWS, ups, data, load, tag, runs, created);
    report(false);
    for (const size of GROW) {
      // The added Patients go in with auditing off (as in the issue); the searches run with it on again.
      for (const side of SIDES) { await stop(ups[side].server); ups[side] = await up(side, beforeDir, dir, 'off'); }
      const have = { before: PATIENTS + created.before, after: PATIENTS + created.after };
      const count = Math.max(0, size - Math.min(have.before, have.after));
      const extra: Record<Side, string[]> = { before: [], after: [] };
      await loadBoth(`Patients to ~${size}`, ups, count, 4, (_s, i) => patient(`${tag}-g${size}-${i}`, i, family(1, i % 1000)), (s) => extra[s]);
      created.before += count;
      created.after += count;
      for (const side of SIDES) { await stop(ups[side].server); ups[side] = await up(side, beforeDir, dir, 'on'); }
      await settle(ups);
      const gr: Run[] = [];
      await measure([familyRow], ups, data, load, tag, gr, created);
      grown.push({ size, runs: gr });
      report(false);
    }
  } finally {
    for (const side of SIDES) if (ups[side]) await stop(ups[side].server);
    load.close();
    if (!process.env.BENCH_KEEP) fs.rmSync(dir, { recursive: true, force: true });
  }
  if (report(true)) process.exitCode = 1;
}

if (process.argv[2] === 'worker') {
  process.on('message', (msg: Job) => {
    if (msg?.kind !== 'run') return;
    runJob(msg).then(
      (stats) => process.send!({ kind: 'result', runId: msg.runId, stats }),
      (e: unknown) => process.send!({ kind: 'error', runId: msg.runId, message: String((e as Error)?.stack ?? e) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
} else {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
