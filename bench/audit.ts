// Read throughput with auditing on vs off, in one run against one server
// (KILN_AUTH=smart, a bearer token on every request): `npm run bench:audit`.
// Rounds alternate off/on (the server reads KILN_AUDIT at each request) so that drift
// (caches, autovacuum, the machine) falls on both sides alike. The load generator runs
// in a forked process (autocannon), as in bench/crud.ts.
// Reads queue their AuditEvent (write-behind audit log); the server's materializer turns
// the queue into FHIR AuditEvents, yielding to requests in flight until an event has
// waited KILN_AUDIT_MAX_LAG_SECONDS. Before every round the bench waits until the queue
// is empty, so an off round never pays for an on round's backlog; it reports the queue
// left at the end of each on round and how long its materialization took.
// Two phases:
//  - burst: BENCH_ROUNDS pairs of BENCH_SECONDS rounds with the default lag bound (30 s):
//    the materializer catches up after each round;
//  - sustained: one pair of BENCH_SUSTAINED_SECONDS rounds with the lag bound set to
//    BENCH_SUSTAINED_LAG seconds, so that the materializer keeps up during the round, as
//    it must under load that never pauses.
//
//   BENCH_SECONDS=5 BENCH_ROUNDS=2 BENCH_SUSTAINED_SECONDS=20 BENCH_SUSTAINED_LAG=2 BENCH_CONNECTIONS=16 BENCH_SEED=500 npm run bench:audit
import { fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { startTestServer, removeDataDir, token, type TestServer } from '../test/support/server.ts';
import { patientBody, seedMrn } from './fixtures.ts';
import { flushAuditQueue } from '../src/store/auditQueue.ts';
import { envNumber } from './env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SECONDS = envNumber('BENCH_SECONDS', 5);
const ROUNDS = envNumber('BENCH_ROUNDS', 2);
const CONNECTIONS = envNumber('BENCH_CONNECTIONS', 16);
const SEED = envNumber('BENCH_SEED', 500);
const SUSTAINED_SECONDS = envNumber('BENCH_SUSTAINED_SECONDS', 20);
const SUSTAINED_LAG = envNumber('BENCH_SUSTAINED_LAG', 2);

interface Load { origin: string; ids: string[]; token: string; seconds: number; connections: number }
interface Result { reqPerSec: number; ok: number; non2xx: number; p50: number; p99: number }
interface Audit { recorded: number; materializedDuring: number; queuedAtEnd: number; drainSeconds: number }

/** The forked load generator: one autocannon run per message. */
async function worker(): Promise<void> {
  process.on('message', async (m: Load) => {
    let seq = 0;
    const r = await autocannon({
      url: m.origin, connections: m.connections, duration: m.seconds,
      requests: [{ method: 'GET', path: '/fhir/Patient', setupRequest: (req: any) => ({ ...req, path: `/fhir/Patient/${m.ids[seq++ % m.ids.length]}` }) }],
      headers: { accept: 'application/fhir+json', authorization: `Bearer ${m.token}` },
    });
    const ok = r['2xx'];
    process.send!({ reqPerSec: ok / m.seconds, ok, non2xx: r.non2xx, p50: r.latency.p50, p99: r.latency.p99 } satisfies Result);
  });
}

function runLoad(load: Load): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ['--worker'], { execArgv: ['--import', 'tsx'], stdio: 'inherit' });
    child.once('message', (m) => { resolve(m as Result); child.kill(); });
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
    const materialized = async () => (await server!.db.owner.query(`SELECT count(*)::integer AS n FROM audit_events`)).rows[0].n as number;
    const queued = async () => (await server!.db.owner.query(`SELECT count(*)::integer AS n FROM audit_log_queue`)).rows[0].n as number;
    /** Waits for the background materializer to empty the queue; seconds taken. */
    const drain = async () => {
      const t0 = performance.now();
      // KILN_AUDIT_MATERIALIZE=off: nothing materializes during the reads; the bench does it now.
      if (server!.config.auditMaterialize === 'off') await flushAuditQueue(server!.db);
      while (await queued() > 0) {
        if (performance.now() - t0 > 600_000) throw new Error('audit queue not drained in 10 minutes');
        await new Promise((r) => setTimeout(r, 100));
      }
      return (performance.now() - t0) / 1000;
    };
    const load: Load = { origin, ids, token: bearerToken, seconds: SECONDS, connections: CONNECTIONS };
    // Warm-up with auditing on (JIT, caches, partitions), not measured.
    await runLoad({ ...load, seconds: Math.min(2, SECONDS) });
    const results: Record<'off' | 'on', Result[]> = { off: [], on: [] };
    const audits: Audit[] = [];
    let auditedReads = 0;
    /** One measured round; an on round also reports its AuditEvents and the catch-up after it. */
    const round = async (label: string, mode: 'off' | 'on', seconds: number): Promise<{ res: Result; audit?: Audit }> => {
      await drain();
      server!.config.audit = mode;
      const before = await materialized();
      const res = await runLoad({ ...load, seconds });
      const during = (await materialized()) - before;
      const left = await queued();
      let line = `${label} audit ${mode.padEnd(3)}: ${res.reqPerSec.toFixed(0)} reads/s, p50 ${res.p50} ms, p99 ${res.p99} ms, non-2xx ${res.non2xx}`;
      let audit: Audit | undefined;
      if (mode === 'on') {
        const drainSeconds = await drain();
        audit = { recorded: during + left, materializedDuring: during, queuedAtEnd: left, drainSeconds };
        line += `; AuditEvents recorded ${audit.recorded}, materialized during the round ${during} (${(during / seconds).toFixed(0)}/s), queued at its end ${left}, drained in ${drainSeconds.toFixed(1)} s (${left && drainSeconds ? (left / drainSeconds).toFixed(0) : '-'}/s)`;
      }
      console.log(line);
      return { res, audit };
    };
    for (let r = 0; r < ROUNDS; r++) {
      for (const mode of ['off', 'on'] as const) {
        const { res, audit } = await round(`burst round ${r + 1}`, mode, SECONDS);
        results[mode].push(res);
        if (audit) { audits.push(audit); auditedReads += audit.recorded; }
      }
    }
    // Sustained: the materializer may defer an event by SUSTAINED_LAG seconds only.
    const defaultLag = server.config.auditMaxLagSeconds;
    server.config.auditMaxLagSeconds = SUSTAINED_LAG;
    const sustained = { off: (await round('sustained', 'off', SUSTAINED_SECONDS)).res, on: await round('sustained', 'on', SUSTAINED_SECONDS) };
    server.config.auditMaxLagSeconds = defaultLag;
    const mean = (xs: Result[], k: keyof Result) => xs.reduce((a, x) => a + x[k], 0) / xs.length;
    const off = mean(results.off, 'reqPerSec');
    const on = mean(results.on, 'reqPerSec');
    const okOn = results.on.reduce((a, x) => a + x.ok, 0);
    const summary = {
      seconds: SECONDS, rounds: ROUNDS, connections: CONNECTIONS, seed: SEED,
      off: { readsPerSec: Math.round(off), p50: mean(results.off, 'p50'), p99: mean(results.off, 'p99') },
      on: { readsPerSec: Math.round(on), p50: mean(results.on, 'p50'), p99: mean(results.on, 'p99') },
      ratio: Math.round((on / off) * 100) / 100,
      // Every 2xx read with auditing on left one AuditEvent (the count can exceed it by in-flight requests at round ends).
      auditEventsPerRead: Math.round((auditedReads / okOn) * 1000) / 1000,
      non2xx: [...results.off, ...results.on].reduce((a, x) => a + x.non2xx, 0),
      // The deferred work: events materialized per second while reads ran, the queue left at
      // the end of the on rounds, and the time the materializer took to empty it afterwards.
      materializer: {
        perSecDuringReads: Math.round(audits.reduce((a, x) => a + x.materializedDuring, 0) / (audits.length * SECONDS)),
        queuedAtEnd: audits.map((a) => a.queuedAtEnd),
        drainSeconds: audits.map((a) => Math.round(a.drainSeconds * 10) / 10),
        drainPerSec: audits.filter((a) => a.queuedAtEnd > 0).map((a) => Math.round(a.queuedAtEnd / a.drainSeconds)),
      },
      sustained: {
        seconds: SUSTAINED_SECONDS, maxLagSeconds: SUSTAINED_LAG,
        off: Math.round(sustained.off.reqPerSec), on: Math.round(sustained.on.res.reqPerSec),
        ratio: Math.round((sustained.on.res.reqPerSec / sustained.off.reqPerSec) * 100) / 100,
        materializedPerSec: Math.round(sustained.on.audit!.materializedDuring / SUSTAINED_SECONDS),
        queuedAtEnd: sustained.on.audit!.queuedAtEnd,
      },
    };
    console.log(`\nburst (${SECONDS} s rounds): read Patient with a bearer token: audit off ${summary.off.readsPerSec}/s, on ${summary.on.readsPerSec}/s -> ratio on/off ${summary.ratio} (goal >= 0.8); AuditEvents per audited read ${summary.auditEventsPerRead}`);
    console.log(`sustained (${SUSTAINED_SECONDS} s rounds, events materialized at most ${SUSTAINED_LAG} s behind): off ${summary.sustained.off}/s, on ${summary.sustained.on}/s -> ratio ${summary.sustained.ratio}; ${summary.sustained.materializedPerSec} events/s materialized during the on round, ${summary.sustained.queuedAtEnd} queued at its end`);
    console.log(`burst rounds' materializer: ${summary.materializer.perSecDuringReads} events/s during reads; queue at the end of the on rounds ${summary.materializer.queuedAtEnd.join(', ')}, drained in ${summary.materializer.drainSeconds.join(', ')} s (${summary.materializer.drainPerSec.join(', ') || '-'} events/s)`);
    const dir = path.join(HERE, 'results');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `audit-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...summary, rounds: results, audits }, null, 2));
    console.log(`saved ${path.relative(process.cwd(), file)}`);
  } finally {
    await server?.stop();
    if (server) removeDataDir(server.dataDir);
  }
}

if (process.argv.includes('--worker')) await worker();
else await main();
