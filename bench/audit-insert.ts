// What one AuditEvent insert costs PostgreSQL and the server, and what each index of
// audit_events adds: `npm run bench:audit-insert`. One kiln_app connection writes
// BENCH_BATCHES group-commit batches of BENCH_BATCH server-made read events (the shape
// src/audit/request.ts records); then each index is dropped in turn and the run repeated,
// so each line's difference from the one before is that index's share.
//   BENCH_BATCHES=1500 BENCH_BATCH=6 npm run bench:audit-insert
import { startTestServer, removeDataDir } from '../test/support/server.ts';
import { serverAuditRow } from '../src/audit/request.ts';
import { insertAuditEvents } from '../src/store/auditWrite.ts';
import { envNumber } from './env.ts';
import { cpuMsOf, cpuSample, selfUs } from './cpu.ts';

const BATCHES = envNumber('BENCH_BATCHES', 1500);
const BATCH = envNumber('BENCH_BATCH', 6);

const server = await startTestServer({ audit: 'on' });
try {
  const base = server.url;
  const row = () => serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: ['Patient/bench-1'], patients: ['bench-1'] },
    { clientId: 'bench-client', subject: 'bench-client', address: '127.0.0.1' }, base);
  const sample = row();
  console.log(`one event: ${sample.detail!.length} bytes of detail (its part: ${sample.part!.json.length}, stored once), ${sample.keys.refKeys.length} ref keys, ${sample.keys.tokenKeys.length} token keys; ${BATCHES} batches of ${BATCH}`);
  const run = async (label: string) => {
    const c = await server.db.app.connect();
    try {
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
      for (let i = 0; i < 100; i++) await insertAuditEvents(c, 1, Array.from({ length: BATCH }, row), { stamp: true }); // warm-up; stores the part
      // As the group commit does: a part it has stored is not sent again.
      const s0 = cpuSample();
      const t0 = performance.now();
      for (let i = 0; i < BATCHES; i++) await insertAuditEvents(c, 1, Array.from({ length: BATCH }, row), { stamp: true, parts: [] });
      const wallUs = (performance.now() - t0) * 1000;
      const s1 = cpuSample();
      const n = BATCHES * BATCH;
      const pgUs = s0.procs && s1.procs ? (cpuMsOf(s0.procs, s1.procs, new Set([pid])) * 1000 / n).toFixed(0) : '?';
      console.log(`${label.padEnd(34)} PostgreSQL ${pgUs} µs/event, server ${(selfUs(s0, s1) / n).toFixed(0)} µs/event (building included), wall ${(wallUs / n).toFixed(0)} µs/event`);
    } finally {
      c.release();
    }
  };
  await run('all indexes (warming)');
  await run('all indexes');
  for (const index of ['audit_events_last_updated', 'audit_events_time', 'audit_events_ref_keys']) {
    await server.db.owner.query(`DROP INDEX ${index}`);
    await run(`without ${index}`);
  }
} finally {
  await server.stop();
  removeDataDir(server.dataDir);
}
