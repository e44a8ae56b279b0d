// What the access log and the metrics cost a request: `npm run bench:observability`.
// Two servers from the same code on two data dirs with the same data (a Patient read by id,
// KILN_AUTH=off and KILN_AUDIT=off so the request is as cheap as Kiln makes it and the
// logging's share is as large as it gets): one logs every request (KILN_LOG_LEVEL=info, JSON
// lines to a file) and counts it in /metrics, the
// other logs nothing (KILN_LOG_LEVEL=warn) and has KILN_METRICS=off. Rounds alternate between
// them so the host's drift falls on both alike; the ratio of the medians is the figure.
//
//   BENCH_SECONDS=5 BENCH_ROUNDS=6 BENCH_CONNECTIONS=16 npm run bench:observability
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { freePort, removeDataDir } from '../test/support/server.ts';
import { envNumber } from './env.ts';

const SECONDS = envNumber('BENCH_SECONDS', 5);
const ROUNDS = envNumber('BENCH_ROUNDS', 6, 1);
const CONNECTIONS = envNumber('BENCH_CONNECTIONS', 16, 1);

interface Server { name: string; base: string; child: ChildProcess; dataDir: string }

const logSize = (s: Server) => fs.statSync(path.join(s.dataDir, 'server.log')).size;

async function start(name: string, env: Record<string, string>): Promise<Server> {
  const port = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `kiln-bench-${name}-`));
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', KILN_PG_PORT: String(await freePort()), KILN_DATA_DIR: dataDir, DATABASE_URL: '', KILN_AUTH: 'off', KILN_AUDIT: 'off', KILN_LOG_FORMAT: 'json', ...env },
    // The log goes to a file: a shipper reading a pipe would be another process, not this one
    // (whose CPU the load generator needs); the file's size gives the bytes per line.
    stdio: ['ignore', fs.openSync(path.join(dataDir, 'server.log'), 'a'), 'inherit'],
  });
  const server: Server = { name, base: `http://127.0.0.1:${port}/fhir`, child, dataDir };
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} server exited (${child.exitCode})`);
    const ok = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
    if (ok) return server;
    if (Date.now() > deadline) throw new Error(`${name} server not ready in 120 s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function stop(s: Server): Promise<void> {
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await exited;
  removeDataDir(s.dataDir);
}

async function round(s: Server, id: string): Promise<number> {
  const r = await autocannon({ url: `${s.base}/Patient/${id}`, connections: CONNECTIONS, duration: SECONDS });
  if (r.non2xx || r.errors) throw new Error(`${s.name}: ${r.non2xx} non-2xx, ${r.errors} errors`);
  return r.requests.average;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const logged = await start('logged', { KILN_LOG_LEVEL: 'info' });
const quiet = await start('quiet', { KILN_LOG_LEVEL: 'warn', KILN_METRICS: 'off' });
try {
  for (const s of [logged, quiet]) {
    const r = await fetch(`${s.base}/Patient/bench-1`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: 'bench-1', name: [{ family: 'Bench' }] }) });
    if (!r.ok) throw new Error(`${s.name}: PUT ${r.status}`);
  }
  await round(logged, 'bench-1'); // warm both (JIT, plans, pools)
  await round(quiet, 'bench-1');
  const rates: Record<string, number[]> = { logged: [], quiet: [] };
  for (let i = 0; i < ROUNDS; i++) {
    // Alternate which goes first, so neither always follows the other's load.
    for (const s of i % 2 ? [quiet, logged] : [logged, quiet]) rates[s.name].push(await round(s, 'bench-1'));
  }
  const bytesBefore = logSize(logged);
  const lines = await round(logged, 'bench-1') * SECONDS;
  const perLine = (logSize(logged) - bytesBefore) / lines;
  const l = median(rates.logged);
  const q = median(rates.quiet);
  console.log(`reads/s, ${ROUNDS} rounds of ${SECONDS} s, ${CONNECTIONS} connections (medians)`);
  console.log(`  access log + metrics: ${Math.round(l)}  (rounds: ${rates.logged.map(Math.round).join(', ')})`);
  console.log(`  neither:              ${Math.round(q)}  (rounds: ${rates.quiet.map(Math.round).join(', ')})`);
  console.log(`  ratio logged/quiet:   ${(l / q).toFixed(3)}`);
  console.log(`  access line: about ${Math.round(perLine)} bytes`);
  const metrics = await (await fetch(`${logged.base.replace(/\/fhir$/, '')}/metrics`)).text();
  const reads = metrics.split('\n').find((m) => m.startsWith('kiln_http_requests_total{interaction="read",type="Patient",status="200"}'));
  console.log(`  /metrics: ${reads}`);
} finally {
  await stop(logged);
  await stop(quiet);
}
