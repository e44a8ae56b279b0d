// AuditEvent search at scale: `npm run bench:audit-search`. Every access records an
// AuditEvent, so audit_events grows faster than any other table; an auditor's questions
// (who saw this patient, what did this client do, what failed, what happened today) must
// stay fast as it does. Fills one tenant with BENCH_AUDIT_EVENTS server-made events
// (default 500,000) over BENCH_AUDIT_WEEKS weeks (default 8) through the server's own
// insert (src/store/auditWrite.ts), then times each query over HTTP (sequential requests,
// auditing off so the data stays put) next to a Patient read in the same run, and prints
// each query's plan timing from EXPLAIN ANALYZE of the server's own SQL. That is a custom
// plan, planned for the values; the server runs AuditEvent searches on their generic plan,
// planned once per connection (src/store/searchRun.ts), so its planning time is what the
// server no longer spends per request.
//
//   BENCH_AUDIT_EVENTS=200000 BENCH_AUDIT_PATIENTS=2000 BENCH_AUDIT_REQUESTS=30 npm run bench:audit-search
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestServer, removeDataDir, token } from '../test/support/server.ts';
import type { AuditFacts } from '../src/audit/event.ts';
import { serverAuditRow } from '../src/audit/request.ts';
import { insertAuditEvents } from '../src/store/auditWrite.ts';
import { parseSearch } from '../src/search/query.ts';
import { searchKeyForms, searchStatements } from '../src/store/searchRun.ts';
import { envNumber } from './env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EVENTS = envNumber('BENCH_AUDIT_EVENTS', 500_000);
const WEEKS = envNumber('BENCH_AUDIT_WEEKS', 8, 1);
const PATIENTS = envNumber('BENCH_AUDIT_PATIENTS', 5_000, 1);
const CLIENTS = envNumber('BENCH_AUDIT_CLIENTS', 20, 1);
const REQUESTS = envNumber('BENCH_AUDIT_REQUESTS', 30, 1);
const BATCH = 500;
const DAY = 86_400_000;

const server = await startTestServer({ auth: 'smart', audit: 'on' });
try {
  const base = server.url;
  const orgId = (await server.db.owner.query(`SELECT id FROM organizations ORDER BY id LIMIT 1`)).rows[0].id as number;
  const bearer = await token(server, { scope: 'system/*.cruds', clientId: 'bench-audit-search' });
  const headers = { accept: 'application/fhir+json', 'content-type': 'application/fhir+json', authorization: `Bearer ${bearer}` };
  const created = await fetch(`${base}/Patient`, { method: 'POST', headers, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Baseline' }] }) });
  const baselinePatient = (await created.json()).id as string;
  server.config.audit = 'off';

  // Events: reads of a patient by one of CLIENTS clients, 2% of them refused (outcome 4),
  // recorded evenly over WEEKS weeks up to now.
  const now = Date.now();
  const span = WEEKS * 7 * DAY;
  const event = (i: number) => {
    const ms = now - Math.floor(((i * 0.6180339887) % 1) * span);
    const patient = `p${i % PATIENTS}`;
    const facts: AuditFacts = { subtype: 'read', action: 'R', outcome: i % 50 === 7 ? '4' : '0', resources: [`Patient/${patient}`], patients: [patient] };
    const client = `client-${i % CLIENTS}`;
    return serverAuditRow(facts, { clientId: client, subject: client, address: '10.0.0.1' }, base, ms);
  };
  const t0 = performance.now();
  let next = 0;
  // Two writers, as the server's group commit and a write transaction might be.
  await Promise.all([0, 1].map(async () => {
    for (;;) {
      const from = next;
      if (from >= EVENTS) return;
      next += BATCH;
      const rows = Array.from({ length: Math.min(BATCH, EVENTS - from) }, (_, k) => event(from + k));
      await insertAuditEvents(server.db.app, orgId, rows);
      if ((from / BATCH) % 100 === 0) process.stderr.write(`\r  ${from + rows.length}/${EVENTS} events`);
    }
  }));
  process.stderr.write('\n');
  await server.db.owner.query('VACUUM (ANALYZE) audit_events');
  const fillSeconds = (performance.now() - t0) / 1000;
  const size = (await server.db.owner.query(
    `SELECT count(*)::integer AS parts, sum(pg_total_relation_size(relid))::bigint AS bytes FROM pg_partition_tree('audit_events') WHERE isleaf`)).rows[0];
  console.log(`filled ${EVENTS} AuditEvents over ${WEEKS} weeks in ${fillSeconds.toFixed(1)} s; audit_events: ${size.parts} leaf partitions, ${(Number(size.bytes) / 1024 / 1024).toFixed(0)} MB`);

  const sampleId = (await server.db.owner.query(`SELECT id FROM audit_events WHERE org_id = $1 ORDER BY clinical_time DESC OFFSET 1000 LIMIT 1`, [orgId])).rows[0].id as string;
  const day = (d: number) => new Date(now - d * DAY).toISOString().slice(0, 10);
  const queries: { name: string; path: string }[] = [
    { name: 'baseline: read Patient', path: `/Patient/${baselinePatient}` },
    { name: 'read AuditEvent', path: `/AuditEvent/${sampleId}` },
    { name: 'latest events', path: `/AuditEvent?_sort=-date&_count=10` },
    { name: 'one day', path: `/AuditEvent?date=ge${day(3)}&date=lt${day(2)}&_count=10` },
    { name: 'patient', path: `/AuditEvent?patient=Patient/p17&_count=10` },
    { name: 'patient, latest first', path: `/AuditEvent?patient=Patient/p17&_sort=-date&_count=10` },
    { name: 'patient, total', path: `/AuditEvent?patient=Patient/p17&_total=accurate&_count=10` },
    { name: 'entity', path: `/AuditEvent?entity=Patient/p17&_count=10` },
    { name: 'client, latest first', path: `/AuditEvent?agent:identifier=urn:kiln:client-id|client-3&_sort=-date&_count=10` },
    { name: 'client, last 7 days', path: `/AuditEvent?agent:identifier=urn:kiln:client-id|client-3&date=ge${day(7)}&_count=10` },
    { name: 'failures, last 7 days', path: `/AuditEvent?outcome=4&date=ge${day(7)}&_count=10` },
    { name: 'failures, latest first', path: `/AuditEvent?outcome=4&_sort=-date&_count=10` },
  ];

  // The plan of each search, from the server's own SQL (EXPLAIN ANALYZE as kiln_app).
  const explain = async (rel: string): Promise<{ planningMs: number; executionMs: number; plan: string } | undefined> => {
    const [type, qs] = rel.slice(1).split('?');
    if (type !== 'AuditEvent' || !qs) return undefined;
    const pairs = [...new URLSearchParams(qs).entries()].filter(([n]) => !['_count', '_total'].includes(n)) as [string, string][];
    const q = parseSearch('AuditEvent', pairs);
    const c = await server!.db.app.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
      const req = { orgId, type, criteria: q.criteria, sort: q.sort, count: 10, total: 'none' as const };
      const st = searchStatements({ ...req, keyForms: await searchKeyForms(c, req) });
      const lines = (await c.query(`EXPLAIN (ANALYZE, BUFFERS) ${st.page.sql}`, st.page.values)).rows.map((r) => r['QUERY PLAN'] as string);
      await c.query('ROLLBACK');
      const ms = (label: string) => Number(/([\d.]+) ms/.exec(lines.find((l) => l.startsWith(label)) ?? '')?.[1] ?? NaN);
      return { planningMs: ms('Planning Time'), executionMs: ms('Execution Time'), plan: lines.join('\n') };
    } finally {
      c.release();
    }
  };

  const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
  const results = [];
  let baseline = NaN;
  for (const q of queries) {
    const times: number[] = [];
    let entries = 0;
    let total: number | undefined;
    for (let i = 0; i < REQUESTS + 3; i++) {
      const s = performance.now();
      const res = await fetch(`${base}${q.path}`, { headers });
      const body = await res.json();
      if (res.status !== 200) throw new Error(`${q.name}: HTTP ${res.status} ${JSON.stringify(body).slice(0, 300)}`);
      if (i >= 3) times.push(performance.now() - s);
      entries = body.resourceType === 'Bundle' ? (body.entry ?? []).length : 1;
      total = body.total;
    }
    const p50 = pct(times, 0.5);
    if (Number.isNaN(baseline)) baseline = p50;
    const plan = await explain(q.path);
    results.push({ ...q, p50, p95: pct(times, 0.95), entries, total, planningMs: plan?.planningMs, executionMs: plan?.executionMs, plan: plan?.plan });
    console.log(`${q.name.padEnd(28)} p50 ${p50.toFixed(2).padStart(7)} ms (${(p50 / baseline).toFixed(1)}x the Patient read), p95 ${pct(times, 0.95).toFixed(2).padStart(7)} ms, ${entries} entries${total !== undefined ? `, total ${total}` : ''}` +
      (plan ? `; as a custom plan: planning ${plan.planningMs.toFixed(1)} ms, execution ${plan.executionMs.toFixed(1)} ms` : ''));
  }
  const dir = path.join(HERE, 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `audit-search-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ events: EVENTS, weeks: WEEKS, patients: PATIENTS, clients: CLIENTS, fillSeconds, partitions: size.parts, bytes: Number(size.bytes), results }, null, 2));
  console.log(`saved ${path.relative(process.cwd(), file)} (with each query's plan)`);
} finally {
  await server.stop();
  removeDataDir(server.dataDir);
}
