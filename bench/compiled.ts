// The same server run the old way (`node --import tsx src/main.ts`) and compiled (`node
// dist/src/main.js`, what `npm start` runs): read Patient by id and create Patient over HTTP
// (autocannon in bench/load-worker.ts), `npm run bench:compiled`. One data dir and its
// embedded PostgreSQL serve both: each round starts one server on it, measures, stops it, then
// the other; which goes first alternates, so the shared host's drift falls on both alike. The
// figure is the ratio of the medians, compiled/tsx. KILN_AUTH=off and KILN_AUDIT=off as in
// bench/crud.ts (BENCH_AUDIT=on audits every request).
//
//   BENCH_SECONDS=10 BENCH_ROUNDS=4 BENCH_CONNECTIONS=10 npm run bench:compiled
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { freePort, removeDataDir } from '../test/support/server.ts';
import { patientBody, seedMrn } from './fixtures.ts';
import type { HttpStats, Op, RunRequest, RunResponse } from './load-worker.ts';
import { envNumber } from './env.ts';
import { withCpu } from './cpu.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SECONDS = envNumber('BENCH_SECONDS', 10, 1);
const WARMUP = envNumber('BENCH_WARMUP', 2, 0);
const ROUNDS = Math.floor(envNumber('BENCH_ROUNDS', 4, 1));
const CONNECTIONS = Math.floor(envNumber('BENCH_CONNECTIONS', 10, 1));
const SEED = Math.floor(envNumber('BENCH_SEED', 1000, 1));
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

interface Server { mode: Mode; child: ChildProcess; startMs: number }

async function start(mode: (typeof MODES)[number], env: NodeJS.ProcessEnv, log: string): Promise<Server> {
  const t0 = performance.now();
  const child = spawn(process.execPath, mode.args, {
    cwd: ROOT, env,
    // The access log to a file, as in bench/observability.ts: a pipe would make this process its reader.
    stdio: ['ignore', fs.openSync(log, 'a'), 'inherit'],
  });
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${mode.name} server exited (${child.exitCode}); see ${log}`);
    if (await fetch(`http://127.0.0.1:${env.PORT}/readyz`).then((r) => r.ok, () => false)) break;
    if (Date.now() > deadline) throw new Error(`${mode.name} server not ready in 120 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { mode: mode.name, child, startMs: Math.round(performance.now() - t0) };
}

async function stop(s: Server): Promise<void> {
  if (s.child.exitCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await exited;
}

/** One run at a time in the forked load generator (bench/load-worker.ts, its own event loop). */
function loadGenerator() {
  const child = fork(path.join(ROOT, 'bench/load-worker.ts'), [], { cwd: ROOT, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let runId = 0;
  return {
    run: (req: Omit<RunRequest, 'kind' | 'runId'>) => new Promise<HttpStats>((resolve, reject) => {
      const id = runId++;
      const onMessage = (msg: RunResponse) => {
        if (msg.runId !== id) return;
        child.off('message', onMessage);
        if (msg.kind === 'result') resolve(msg.stats);
        else reject(new Error(`load generator: ${msg.message}`));
      };
      child.on('message', onMessage);
      child.send({ kind: 'run', runId: id, ...req } satisfies RunRequest);
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

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (v: number, digits = 0) => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

async function main() {
  const t0 = performance.now();
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  console.log(`npm run build: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-compiled-'));
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env, PORT: String(port), HOST: '127.0.0.1', KILN_PG_PORT: String(await freePort()), KILN_DATA_DIR: dataDir,
    DATABASE_URL: '', KILN_AUTH: 'off', KILN_AUDIT: AUDIT, KILN_LOG_FORMAT: 'json',
  };
  const origin = `http://127.0.0.1:${port}`;
  const tag = `compiled-${Date.now().toString(36)}`;
  console.log(`Kiln tsx vs compiled: ${ROUNDS} rounds, ${SECONDS} s per measurement (+${WARMUP} s warmup), ${CONNECTIONS} connections, ` +
    `audit ${AUDIT}, ${SEED} seeded Patients; data dir ${dataDir}`);
  const load = loadGenerator();
  let server: Server | undefined;
  const runs: { round: number; mode: Mode; op: Op; stats: HttpStats; foreignPct: number | null }[] = [];
  const starts: Record<Mode, number[]> = { tsx: [], compiled: [] };
  try {
    server = await start(MODES[1], env, path.join(dataDir, 'seed.log'));
    const ids = await seedPatients(`${origin}/fhir`, tag);
    await stop(server);
    for (let round = 1; round <= ROUNDS; round++) {
      for (const mode of round % 2 ? MODES : [...MODES].reverse()) {
        server = await start(mode, env, path.join(dataDir, `${mode.name}.log`));
        starts[mode.name].push(server.startMs);
        const line: string[] = [];
        for (const { op } of OPS) {
          const req = { op, origin, connections: CONNECTIONS, ids, tag };
          if (WARMUP > 0) await load.run({ ...req, seconds: WARMUP });
          const { result: stats, cpu } = await withCpu(() => load.run({ ...req, seconds: SECONDS }));
          runs.push({ round, mode: mode.name, op, stats, foreignPct: cpu.foreignPct });
          line.push(`${op} ${fmt(stats.reqPerSec)}/s${stats.non2xx || stats.errors ? ` (${stats.non2xx} non-2xx, ${stats.errors} errors)` : ''}`);
        }
        console.log(`  round ${round} ${mode.name.padEnd(8)} ready in ${fmt(server.startMs)} ms; ${line.join(', ')}`);
        await stop(server);
        server = undefined;
      }
    }
  } finally {
    if (server) await stop(server);
    load.close();
    removeDataDir(dataDir);
  }

  const rows = OPS.map(({ op, label }) => {
    const of = (mode: Mode) => runs.filter((r) => r.op === op && r.mode === mode);
    const rate = (mode: Mode) => median(of(mode).map((r) => r.stats.reqPerSec));
    const p50 = (mode: Mode) => median(of(mode).map((r) => r.stats.latency.p50));
    const perRound = Array.from({ length: ROUNDS }, (_, i) => {
      const at = (mode: Mode) => of(mode).find((r) => r.round === i + 1)!.stats.reqPerSec;
      return at('compiled') / at('tsx');
    });
    return { op, label, tsx: rate('tsx'), compiled: rate('compiled'), ratio: rate('compiled') / rate('tsx'), perRound, p50Tsx: p50('tsx'), p50Compiled: p50('compiled') };
  });
  console.log('');
  console.log(`| test (${CONNECTIONS} connections, medians of ${ROUNDS} rounds) | tsx req/s | compiled req/s | compiled / tsx | per round | p50 ms tsx / compiled |`);
  console.log('| --- | ---: | ---: | ---: | --- | ---: |');
  for (const r of rows) {
    console.log(`| ${r.label} | ${fmt(r.tsx)} | ${fmt(r.compiled)} | ${r.ratio.toFixed(2)} | ${r.perRound.map((x) => x.toFixed(2)).join(' ')} | ${r.p50Tsx.toFixed(2)} / ${r.p50Compiled.toFixed(2)} |`);
  }
  console.log(`| start to ready (spawn to /readyz 200, ms) | ${fmt(median(starts.tsx))} | ${fmt(median(starts.compiled))} | ${(median(starts.compiled) / median(starts.tsx)).toFixed(2)} | | |`);
  const failed = runs.filter((r) => r.stats.non2xx || r.stats.errors || r.stats.timeouts);
  for (const r of failed) console.log(`WARNING: round ${r.round} ${r.mode} ${r.op}: ${r.stats.non2xx} non-2xx, ${r.stats.errors} errors, ${r.stats.timeouts} timeouts; ${r.stats.firstErrorBody ?? ''}`);
  const busy = runs.filter((r) => (r.foreignPct ?? 0) > 10);
  if (busy.length) console.log(`note: other processes used over 10% of the machine in ${busy.length} of ${runs.length} measurements (max ${Math.max(...busy.map((r) => r.foreignPct!))}%)`);
  const file = path.join(ROOT, 'bench/results', `compiled-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ seconds: SECONDS, warmup: WARMUP, rounds: ROUNDS, connections: CONNECTIONS, audit: AUDIT, seed: SEED, node: process.version, rows, starts, runs }, null, 2) + '\n');
  console.log(`results: ${path.relative(ROOT, file)}`);
  if (failed.length) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
