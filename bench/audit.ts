// Read throughput with auditing on vs off, in one run against one server
// (KILN_AUTH=smart, a bearer token on every request): `npm run bench:audit`.
// Rounds alternate off/on (the server reads KILN_AUDIT at each request) so that drift
// (caches, autovacuum, the machine) falls on both sides alike. The load generator runs
// in a forked process (autocannon), as in bench/crud.ts.
// Every audited read stores its AuditEvent (one audit_events row, group-committed with
// other reads' events) before it answers, so a round's figure is the whole cost.
// Two phases:
//  - burst: BENCH_ROUNDS pairs of BENCH_SECONDS rounds;
//  - sustained: one pair of BENCH_SUSTAINED_SECONDS rounds, long enough for what short
//    rounds may not reach (GIN pending-list merges, checkpoints, autovacuum);
//  - interleaved: one run of BENCH_INTERLEAVED_SECONDS during which auditing flips every
//    BENCH_TOGGLE_MS. Rounds seconds apart see the host's drift (other guests, CPU
//    clock) as a difference between off and on; flipping twice a second puts both modes
//    under the same drift. Audited reads are the AuditEvents stored, the others the rest;
//    each mode's rate is its reads over its time. Background work that audited writes
//    cause (checkpoints, autovacuum, WAL writer) also falls in the off halves, so this
//    figure leans towards on: read it next to the others, not instead of them. It also
//    splits CPU per read by mode (server, request backends, audit backend, the rest).
//
//   BENCH_SECONDS=5 BENCH_ROUNDS=2 BENCH_SUSTAINED_SECONDS=20 BENCH_INTERLEAVED_SECONDS=20 BENCH_TOGGLE_MS=500 BENCH_CONNECTIONS=16 BENCH_SEED=500 npm run bench:audit
import { fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { startTestServer, removeDataDir, token, type TestServer } from '../test/support/server.ts';
import { patientBody, seedMrn } from './fixtures.ts';
import { envNumber } from './env.ts';
import { cpuMsOf, cpuSample, postmasterPid, selfUs, treeOf } from './cpu.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SECONDS = envNumber('BENCH_SECONDS', 5);
const ROUNDS = envNumber('BENCH_ROUNDS', 2);
const CONNECTIONS = envNumber('BENCH_CONNECTIONS', 16);
const SEED = envNumber('BENCH_SEED', 500);
const SUSTAINED_SECONDS = envNumber('BENCH_SUSTAINED_SECONDS', 20);
const INTERLEAVED_SECONDS = envNumber('BENCH_INTERLEAVED_SECONDS', 20);
const TOGGLE_MS = envNumber('BENCH_TOGGLE_MS', 500);

interface Load { origin: string; ids: string[]; token: string; seconds: number; connections: number }
interface Result {
  reqPerSec: number; ok: number; non2xx: number; p50: number; p99: number;
  /** CPU per successful read, µs: the load generator's, and (filled by round()) the server's and PostgreSQL's. */
  cpuUs: { load: number; server?: number; postgres?: number };
  commitsPerRead?: number;
  /** CPU time the hypervisor gave to other guests, % of the round (a busy host slows both sides of a pair). */
  stealPct?: number;
}

/** The forked load generator: one autocannon run per message. */
async function worker(): Promise<void> {
  process.on('message', async (m: Load) => {
    process.send!({ started: true });
    let seq = 0;
    const c0 = process.cpuUsage();
    const r = await autocannon({
      url: m.origin, connections: m.connections, duration: m.seconds,
      requests: [{ method: 'GET', path: '/fhir/Patient', setupRequest: (req: any) => ({ ...req, path: `/fhir/Patient/${m.ids[seq++ % m.ids.length]}` }) }],
      headers: { accept: 'application/fhir+json', authorization: `Bearer ${m.token}` },
    });
    const ok = r['2xx'];
    const c = process.cpuUsage(c0);
    process.send!({ reqPerSec: ok / m.seconds, ok, non2xx: r.non2xx, p50: r.latency.p50, p99: r.latency.p99, cpuUs: { load: Math.round((c.user + c.system) / ok) } } satisfies Result);
  });
}

/** One load run; `onStart` is called as the load generator begins. */
function runLoad(load: Load, onStart?: () => void): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ['--worker'], { execArgv: ['--import', 'tsx'], stdio: 'inherit' });
    child.on('message', (m) => {
      if ((m as { started?: boolean }).started) return onStart?.();
      resolve(m as Result);
      child.kill();
    });
    child.once('error', reject);
    child.send(load);
  });
}

async function main(): Promise<void> {
  let server: TestServer | undefined;
  try {
    server = await startTestServer({ auth: 'smart', audit: 'on' });
    const origin = server.url.replace(/\/fhir$/, '');
    const bearerToken = await token(server, { scope: 'system/*.cruds', clientId: 'bench-audit' });
    // Seed Patients (these writes are audited too, in their transactions).
    const ids: string[] = [];
    for (let i = 0; i < SEED; i += 16) {
      const batch = await Promise.all(Array.from({ length: Math.min(16, SEED - i) }, async (_, j) => {
        const res = await fetch(`${server!.url}/Patient`, {
          method: 'POST', headers: { 'content-type': 'application/fhir+json', authorization: `Bearer ${bearerToken}` },
          body: JSON.stringify(patientBody(seedMrn('audit', i + j), i + j)),
        });
        if (res.status !== 201) throw new Error(`seeding: HTTP ${res.status} ${await res.text()}`);
        return (await res.json()).id as string;
      }));
      ids.push(...batch);
    }
    const commits = async () => Number((await server!.db.owner.query(`SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`)).rows[0].xact_commit);
    const stored = async () => (await server!.db.owner.query(`SELECT count(*)::integer AS n FROM audit_events`)).rows[0].n as number;
    const load: Load = { origin, ids, token: bearerToken, seconds: SECONDS, connections: CONNECTIONS };
    // Warm-up with auditing on (JIT, caches, partitions), not measured.
    await runLoad({ ...load, seconds: Math.min(2, SECONDS) });
    const results: Record<'off' | 'on', Result[]> = { off: [], on: [] };
    // The server runs in this process; PostgreSQL is the postmaster's tree.
    const postmaster = postmasterPid(path.join(server.dataDir, 'pg'));
    let auditedReads = 0;
    /** One measured round; an on round also counts the AuditEvents it stored. */
    const round = async (label: string, mode: 'off' | 'on', seconds: number): Promise<Result> => {
      server!.config.audit = mode;
      const before = await stored();
      const x0 = await commits();
      const s0 = cpuSample();
      const res = await runLoad({ ...load, seconds });
      const s1 = cpuSample();
      const [m0, m1, p0, p1] = [s0.machine, s1.machine, s0.procs, s1.procs];
      if (m0 && m1) res.stealPct = Math.round(((m1.steal - m0.steal) / (m1.total - m0.total)) * 100);
      const events = (await stored()) - before;
      // pg_stat_database lags by up to its flush interval (1 s): a rough figure.
      res.commitsPerRead = Math.round((((await commits()) - x0) / res.ok) * 100) / 100;
      if (mode === 'on') auditedReads += events;
      res.cpuUs.server = Math.round(selfUs(s0, s1) / res.ok);
      if (p0 && p1 && postmaster) res.cpuUs.postgres = Math.round((cpuMsOf(p0, p1, treeOf(p1, postmaster)) * 1000) / res.ok);
      const cpu = `CPU per read ${res.cpuUs.server} µs server + ${res.cpuUs.postgres ?? '?'} µs PostgreSQL + ${res.cpuUs.load} µs load, ${res.commitsPerRead} commits per read, steal ${res.stealPct ?? '?'}%`;
      console.log(`${label} audit ${mode.padEnd(3)}: ${res.reqPerSec.toFixed(0)} reads/s, p50 ${res.p50} ms, p99 ${res.p99} ms, non-2xx ${res.non2xx}, AuditEvents stored ${events}, ${cpu}`);
      return res;
    };
    /** One load run while auditing flips every TOGGLE_MS; each mode's reads/s over its own time. */
    const interleavedRun = async () => {
      const before = await stored();
      const ms = { off: 0, on: 0 };
      let mode: 'off' | 'on' = 'off';
      let since = 0;
      let timer: NodeJS.Timeout | undefined;
      // CPU per mode: a sample at every flip; what was used since the last one goes to the mode that ended.
      const split = () => ({ server: 0, serverKernel: 0, requestBackends: 0, auditBackend: 0, otherPostgres: 0 });
      const cpu = { off: split(), on: split() };
      const backends = async (where: string) => new Set<number>((await server!.db.owner.query(`SELECT pid FROM pg_stat_activity WHERE usename = 'kiln_app' AND ${where}`)).rows.map((r) => Number(r.pid)));
      const auditPids = await backends(`application_name = 'kiln-audit'`);
      const requestPids = await backends(`application_name <> 'kiln-audit'`);
      let last = cpuSample();
      const account = () => {
        const now = cpuSample();
        const c = cpu[mode];
        c.server += selfUs(last, now);
        c.serverKernel += now.self.system - last.self.system;
        if (last.procs && now.procs && postmaster) {
          const tree = treeOf(now.procs, postmaster);
          const ms = (pids: Set<number>) => cpuMsOf(last.procs!, now.procs!, pids);
          c.auditBackend += ms(auditPids) * 1000;
          c.requestBackends += ms(requestPids) * 1000;
          c.otherPostgres += (ms(tree) - ms(auditPids) - ms(requestPids)) * 1000;
        }
        last = now;
      };
      const flip = () => {
        const now = performance.now();
        account();
        ms[mode] += now - since;
        since = now;
        mode = mode === 'off' ? 'on' : 'off';
        server!.config.audit = mode;
      };
      server!.config.audit = 'off';
      const res = await runLoad({ ...load, seconds: INTERLEAVED_SECONDS }, () => {
        since = performance.now();
        last = cpuSample();
        timer = setInterval(flip, TOGGLE_MS);
      });
      clearInterval(timer);
      account();
      ms[mode] += performance.now() - since;
      const audited = (await stored()) - before;
      const rate = { off: (res.ok - audited) / (ms.off / 1000), on: audited / (ms.on / 1000) };
      const ratio = Math.round((rate.on / rate.off) * 100) / 100;
      const reads = { off: res.ok - audited, on: audited };
      type Split = ReturnType<typeof split>;
      const perRead = (m: 'off' | 'on') => Object.fromEntries(Object.entries(cpu[m]).map(([k, v]) => [k, Math.round(v / reads[m])])) as Split;
      const cpuUs = { off: perRead('off'), on: perRead('on') };
      console.log(`interleaved CPU per read, µs, off / on: ${(Object.keys(cpuUs.off) as (keyof Split)[]).map((k) => `${k} ${cpuUs.off[k]} / ${cpuUs.on[k]}`).join(', ')}`);
      console.log(`interleaved (${INTERLEAVED_SECONDS} s, audit flipped every ${TOGGLE_MS} ms): off ${rate.off.toFixed(0)} reads/s over ${(ms.off / 1000).toFixed(1)} s, on ${rate.on.toFixed(0)} reads/s over ${(ms.on / 1000).toFixed(1)} s, p50 ${res.p50} ms, p99 ${res.p99} ms, non-2xx ${res.non2xx}`);
      return { seconds: INTERLEAVED_SECONDS, toggleMs: TOGGLE_MS, off: Math.round(rate.off), on: Math.round(rate.on), ratio, cpuUs, non2xx: res.non2xx };
    };
    for (let r = 0; r < ROUNDS; r++) {
      for (const mode of ['off', 'on'] as const) results[mode].push(await round(`burst round ${r + 1}`, mode, SECONDS));
    }
    const okOn = results.on.reduce((a, x) => a + x.ok, 0);
    const eventsPerRead = auditedReads / okOn;
    const sustained = { off: await round('sustained', 'off', SUSTAINED_SECONDS), on: await round('sustained', 'on', SUSTAINED_SECONDS) };
    const interleaved = await interleavedRun();
    const mean = (xs: Result[], k: 'reqPerSec' | 'p50' | 'p99') => xs.reduce((a, x) => a + x[k], 0) / xs.length;
    const r2 = (x: number) => Math.round(x * 100) / 100;
    // Each off/on pair ran back to back, so its ratio is the least disturbed by the machine's drift.
    const pairRatios = results.on.map((x, i) => r2(x.reqPerSec / results.off[i].reqPerSec));
    const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : NaN; };
    // Server + PostgreSQL CPU per read, off over on: the throughput ratio a machine with nothing else
    // to do would give, as the reads are CPU-bound; it does not move with the host's load as much.
    const cost = (xs: Result[]) => xs.reduce((a, x) => a + (x.cpuUs.server ?? 0) + (x.cpuUs.postgres ?? 0), 0) / xs.length;
    const off = mean(results.off, 'reqPerSec');
    const on = mean(results.on, 'reqPerSec');
    const summary = {
      seconds: SECONDS, rounds: ROUNDS, connections: CONNECTIONS, seed: SEED,
      off: { readsPerSec: Math.round(off), p50: mean(results.off, 'p50'), p99: mean(results.off, 'p99') },
      on: { readsPerSec: Math.round(on), p50: mean(results.on, 'p50'), p99: mean(results.on, 'p99') },
      ratio: r2(on / off),
      pairRatios,
      medianPairRatio: r2(median(pairRatios)),
      cpuCostRatio: r2(cost(results.off) / cost(results.on)),
      // Every 2xx read with auditing on stored one AuditEvent (the count can exceed it by requests in flight at round ends).
      auditEventsPerRead: Math.round(eventsPerRead * 1000) / 1000,
      non2xx: [...results.off, ...results.on, sustained.off, sustained.on].reduce((a, x) => a + x.non2xx, 0) + interleaved.non2xx,
      interleaved,
      sustained: {
        seconds: SUSTAINED_SECONDS, off: Math.round(sustained.off.reqPerSec), on: Math.round(sustained.on.reqPerSec),
        ratio: r2(sustained.on.reqPerSec / sustained.off.reqPerSec),
        cpuCostRatio: r2(cost([sustained.off]) / cost([sustained.on])),
      },
    };
    console.log(`\nburst (${SECONDS} s rounds): read Patient with a bearer token: audit off ${summary.off.readsPerSec}/s, on ${summary.on.readsPerSec}/s -> ratio on/off ${summary.ratio} (goal >= 0.8), per pair ${pairRatios.join(' ')}, median ${summary.medianPairRatio}; CPU cost off/on ${summary.cpuCostRatio}; AuditEvents per audited read ${summary.auditEventsPerRead}`);
    console.log(`sustained (${SUSTAINED_SECONDS} s rounds): off ${summary.sustained.off}/s, on ${summary.sustained.on}/s -> ratio ${summary.sustained.ratio}; CPU cost off/on ${summary.sustained.cpuCostRatio}`);
    console.log(`interleaved: off ${interleaved.off}/s, on ${interleaved.on}/s -> ratio ${interleaved.ratio}`);
    const dir = path.join(HERE, 'results');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `audit-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...summary, rounds: results }, null, 2));
    console.log(`saved ${path.relative(process.cwd(), file)}`);
  } finally {
    await server?.stop();
    if (server) removeDataDir(server.dataDir);
  }
}

if (process.argv.includes('--worker')) await worker();
else await main();
