// The same server run the old way (`node --import tsx src/main.ts`) and compiled (`node
// dist/src/main.js`, what `npm start` runs): read Patient by id and create Patient over HTTP
// (autocannon in bench/load-worker.ts), `npm run bench:compiled`. Both servers run at once on
// one embedded PostgreSQL (started in this process on one data dir, the children reach it by
// DATABASE_URL), and the measurements alternate between them in short runs, the order swapped
// every round (tsx, compiled, compiled, tsx, ...), so the shared host's drift falls on both
// alike; the figure is the ratio of the medians, compiled/tsx. KILN_AUTH=off and KILN_AUDIT=off
// as in bench/crud.ts (BENCH_AUDIT=on audits every request). Then each server is started and
// stopped a few times in turn for its time from spawn to ready.
//
//   BENCH_SECONDS=5 BENCH_ROUNDS=8 BENCH_CONNECTIONS=10 npm run bench:compiled
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { freePort, removeDataDir, startTestServer, type TestServer } from '../test/support/server.ts';
import { patientBody, seedMrn } from './fixtures.ts';
import type { HttpStats, Op, RunRequest, RunResponse } from './load-worker.ts';
import { envNumber } from './env.ts';
import { cpuMsOf, procSnapshot, withCpu } from './cpu.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SECONDS = envNumber('BENCH_SECONDS', 5, 1);
const WARMUP = envNumber('BENCH_WARMUP', 3, 0);
const ROUNDS = Math.floor(envNumber('BENCH_ROUNDS', 8, 1));
const CONNECTIONS = Math.floor(envNumber('BENCH_CONNECTIONS', 10, 1));
const SEED = Math.floor(envNumber('BENCH_SEED', 1000, 1));
const STARTS = Math.floor(envNumber('BENCH_STARTS', 3, 0));
const AUDIT = process.env.BENCH_AUDIT === 'on' ? 'on' : 'off';

const MODES = [
  { name: 'tsx', args: ['--import', 'tsx', 'src/main.ts'] },
  { name: 'compiled', args: ['dist/src/main.js'] },
] as const;
type Mode = (typeof MODES)[number]['name'];
const OPS: { op: Op; label: string }[] = [
  { op: 'readPatient', label: 'read Patient by id' },
  { op: 'createPatient', label: 'create Patient' },
];

export interface Server<M extends string = Mode> { mode: M; origin: string; child: ChildProcess; startMs: number }

/**
 * A server as a child process on the shared database; resolves when /readyz answers 200.
 * bench/compare.ts passes another checkout (cwd), no databaseUrl (its own embedded PostgreSQL) and env.
 */
export async function start<M extends string>(mode: { name: M; args: readonly string[]; cwd?: string }, databaseUrl: string | undefined, dir: string,
  extraEnv: Record<string, string | undefined> = {}, readyMs = 120_000): Promise<Server<M>> {
  const port = await freePort();
  const dataDir = path.join(dir, mode.name); // its own runtime card and export files; the database is shared
  fs.mkdirSync(dataDir, { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: '127.0.0.1', KILN_DATA_DIR: dataDir, DATABASE_URL: databaseUrl,
    KILN_AUTH: 'off', KILN_AUDIT: AUDIT, KILN_LOG_FORMAT: 'json', ...extraEnv };
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  const t0 = performance.now();
  // The access log to a file, as in bench/observability.ts: a pipe would make this process its reader.
  const child = spawn(process.execPath, mode.args, { cwd: mode.cwd ?? ROOT, env, stdio: ['ignore', fs.openSync(path.join(dataDir, 'server.log'), 'a'), 'inherit'] });
  const origin = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${mode.name} server exited (${child.exitCode}); see ${dataDir}/server.log`);
    if (await fetch(`${origin}/readyz`).then((r) => r.ok, () => false)) break;
    if (Date.now() > deadline) throw new Error(`${mode.name} server not ready in ${readyMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { mode: mode.name, origin, child, startMs: Math.round(performance.now() - t0) };
}

export async function stop(s: Server<string>): Promise<void> {
  if (s.child.exitCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await exited;
}

/** One run at a time in the forked load generator (bench/load-worker.ts, its own event loop; bench/compare.ts forks its own). */
export function loadGenerator<Req extends { runId: number } = RunRequest, Res = HttpStats>(worker = 'bench/load-worker.ts', args: string[] = []) {
  const child = fork(path.join(ROOT, worker), args, { cwd: ROOT, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let runId = 0;
  return {
    run: (req: Omit<Req, 'kind' | 'runId'>) => new Promise<Res>((resolve, reject) => {
      const id = runId++;
      const onMessage = (msg: RunResponse) => {
        if (msg.runId !== id) return;
        child.off('message', onMessage);
        if (msg.kind === 'result') resolve(msg.stats as Res);
        else reject(new Error(`load generator: ${msg.message}`));
      };
      child.on('message', onMessage);
      child.send({ kind: 'run', runId: id, ...req });
    }),
    close: () => { if (child.connected) child.disconnect(); },
  };
}

async function seedPatients(base: string, tag: string): Promise<string[]> {
  const ids: string[] = new Array(SEED);
  let next = 0;
  await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    while (next < SEED) {
      const i = next++;
      const res = await fetch(`${base}/Patient`, {
        method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(patientBody(seedMrn(tag, i), i)),
      });
      const text = await res.text();
      if (res.status !== 201) throw new Error(`seeding Patient ${i}: HTTP ${res.status} ${text.slice(0, 300)}`);
      ids[i] = JSON.parse(text).id;
    }
  }));
  return ids;
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
export const fmt = (v: number, digits = 0) => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

async function main() {
  const t0 = performance.now();
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  console.log(`npm run build: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-compiled-'));
  fs.chmodSync(dir, 0o755); // as root, initdb runs as 'postgres', which must reach db/ inside
  const tag = `compiled-${Date.now().toString(36)}`;
  console.log(`Kiln tsx vs compiled: ${ROUNDS} rounds of ${SECONDS} s per server and test (+${WARMUP} s warmup each), ${CONNECTIONS} connections, ` +
    `audit ${AUDIT}, ${SEED} seeded Patients; ${dir}`);
  const load = loadGenerator();
  let db: TestServer | undefined;
  const servers: Server[] = [];
  const runs: { round: number; mode: Mode; op: Op; stats: HttpStats; cpuUsPerRequest: number; foreignPct: number | null }[] = [];
  const starts: Record<Mode, number[]> = { tsx: [], compiled: [] };
  try {
    // The embedded PostgreSQL and its data dir, shared by both servers (this in-process server only seeds).
    db = await startTestServer({ dataDir: path.join(dir, 'db') });
    const ids = await seedPatients(db.url, tag);
    for (const mode of MODES) servers.push(await start(mode, db.db.ownerUrl, dir));
    const byMode = Object.fromEntries(servers.map((s) => [s.mode, s])) as Record<Mode, Server>;
    if (WARMUP > 0) for (const s of servers) for (const { op } of OPS) await load.run({ op, origin: s.origin, connections: CONNECTIONS, seconds: WARMUP, ids, tag });
    for (let round = 1; round <= ROUNDS; round++) {
      const order: Mode[] = round % 2 ? ['tsx', 'compiled'] : ['compiled', 'tsx'];
      const line: string[] = [];
      for (const { op } of OPS) {
        for (const mode of op === OPS[0].op ? order : [...order].reverse()) {
          const p0 = procSnapshot();
          const { result: stats, cpu } = await withCpu(() => load.run({ op, origin: byMode[mode].origin, connections: CONNECTIONS, seconds: SECONDS, ids, tag }));
          const p1 = procSnapshot();
          // The server process's own CPU per answered request: steadier than req/s on a shared host.
          const cpuUsPerRequest = p0 && p1 && stats.ok ? Math.round(cpuMsOf(p0, p1, new Set([byMode[mode].child.pid!])) * 1000 / stats.ok) : NaN;
          runs.push({ round, mode, op, stats, cpuUsPerRequest, foreignPct: cpu.foreignPct });
          line.push(`${op} ${mode} ${fmt(stats.reqPerSec)}/s${stats.non2xx || stats.errors ? ` (${stats.non2xx} non-2xx, ${stats.errors} errors)` : ''}`);
        }
      }
      console.log(`  round ${round}: ${line.join(', ')}`);
    }
    for (const s of servers.splice(0)) await stop(s);
    for (let i = 0; i < STARTS; i++) {
      for (const mode of i % 2 ? [...MODES].reverse() : MODES) {
        const s = await start(mode, db.db.ownerUrl, dir);
        starts[mode.name].push(s.startMs);
        await stop(s);
      }
    }
  } finally {
    for (const s of servers) await stop(s);
    load.close();
    await db?.stop();
    removeDataDir(dir);
  }

  const rows = OPS.map(({ op, label }) => {
    const of = (mode: Mode) => runs.filter((r) => r.op === op && r.mode === mode);
    const rate = (mode: Mode) => median(of(mode).map((r) => r.stats.reqPerSec));
    const p50 = (mode: Mode) => median(of(mode).map((r) => r.stats.latency.p50));
    const cpuUs = (mode: Mode) => median(of(mode).map((r) => r.cpuUsPerRequest));
    const perRound = Array.from({ length: ROUNDS }, (_, i) => {
      const at = (mode: Mode) => of(mode).find((r) => r.round === i + 1)!.stats.reqPerSec;
      return at('compiled') / at('tsx');
    });
    return { op, label, tsx: rate('tsx'), compiled: rate('compiled'), ratio: rate('compiled') / rate('tsx'), medianRoundRatio: median(perRound), perRound, p50Tsx: p50('tsx'), p50Compiled: p50('compiled'), cpuUsTsx: cpuUs('tsx'), cpuUsCompiled: cpuUs('compiled') };
  });
  console.log('');
  console.log(`| test (${CONNECTIONS} connections, medians of ${ROUNDS} runs of ${SECONDS} s) | tsx req/s | compiled req/s | compiled / tsx | median of the rounds' ratios (range) | p50 ms tsx / compiled | server CPU µs per request tsx / compiled (ratio) |`);
  console.log('| --- | ---: | ---: | ---: | --- | ---: | ---: |');
  for (const r of rows) {
    console.log(`| ${r.label} | ${fmt(r.tsx)} | ${fmt(r.compiled)} | ${r.ratio.toFixed(2)} | ${r.medianRoundRatio.toFixed(2)} (${Math.min(...r.perRound).toFixed(2)}–${Math.max(...r.perRound).toFixed(2)}) | ${r.p50Tsx.toFixed(2)} / ${r.p50Compiled.toFixed(2)} | ${fmt(r.cpuUsTsx)} / ${fmt(r.cpuUsCompiled)} (${(r.cpuUsCompiled / r.cpuUsTsx).toFixed(2)}) |`);
  }
  if (STARTS > 0) {
    console.log(`| spawn to /readyz 200, ms (median of ${STARTS}) | ${fmt(median(starts.tsx))} | ${fmt(median(starts.compiled))} | ${(median(starts.compiled) / median(starts.tsx)).toFixed(2)} | | | |`);
  }
  const failed = runs.filter((r) => r.stats.non2xx || r.stats.errors || r.stats.timeouts);
  for (const r of failed) console.log(`WARNING: round ${r.round} ${r.mode} ${r.op}: ${r.stats.non2xx} non-2xx, ${r.stats.errors} errors, ${r.stats.timeouts} timeouts; ${r.stats.firstErrorBody ?? ''}`);
  const busy = runs.filter((r) => (r.foreignPct ?? 0) > 10);
  if (busy.length) console.log(`note: other processes used over 10% of the machine in ${busy.length} of ${runs.length} runs (max ${Math.max(...busy.map((r) => r.foreignPct!))}%)`);
  const file = path.join(ROOT, 'bench/results', `compiled-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ seconds: SECONDS, warmup: WARMUP, rounds: ROUNDS, connections: CONNECTIONS, audit: AUDIT, seed: SEED, node: process.version, rows, starts, runs }, null, 2) + '\n');
  console.log(`results: ${path.relative(ROOT, file)}`);
  if (failed.length) process.exitCode = 1;
}

// Run as a script only: bench/compare.ts imports the pieces above.
if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
