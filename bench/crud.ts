// CRUD throughput/latency bench: Kiln over real HTTP (autocannon) against the
// same interactions done directly with pg (the minimum SQL, no HTTP, validation
// or mapping) at the same concurrency; then create, read and search of Condition (the
// generic `resources` table) against Observation (a table of its own) over HTTP, in
// alternating rounds, as ratios. See bench/README.md.
//
//   npm run bench                      # ~10 s per measurement, 16 connections
//   BENCH_SECONDS=5 BENCH_CONNECTIONS=32 BENCH_ROUNDS=5 npm run bench
import { fork, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startTestServer, removeDataDir, type TestServer } from '../test/support/server.ts';
import { HEART_RATE, HYPERTENSION, conditionBody, observationBody, observationColumns, patientBody, patientColumns, searchPath, seedMrn } from './fixtures.ts';
import { parseSearch } from '../src/search/query.ts';
import { searchStatements } from '../src/store/searchRun.ts';
import { summarize, type LatencySummary } from './stats.ts';
import type { HttpStats, Op, RunRequest, RunResponse } from './load-worker.ts';
import { envNumber } from './env.ts';
import { withCpu, type CpuUse } from './cpu.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');


const SECONDS = envNumber('BENCH_SECONDS', 10, 1);
const CONNECTIONS = Math.floor(envNumber('BENCH_CONNECTIONS', 16, 1));
const WARMUP = envNumber('BENCH_WARMUP', 1, 0);
const SEED = Math.floor(envNumber('BENCH_SEED', 1000, 1));
const ROUNDS = Math.floor(envNumber('BENCH_ROUNDS', 6, 0));
const SEARCH_PATIENTS = Math.floor(envNumber('BENCH_SEARCH_PATIENTS', 100, 1));
/** Seeded Observations (Conditions) per search patient with the searched code, and as many with another. */
const MATCHES = 5;
const EXPLAIN_RUNS = 15;
/** How long each type runs before the other takes over, within a round. */
const FLIP_MS = envNumber('BENCH_FLIP_MS', 500, 50);

/** Published Medplum figures for this class of machine (quoted, not measured here). */
const MEDPLUM = { read: 1100, create: 245, search: 280 };

/** Condition (generic store) beside Observation (first-class table): the op of each per interaction. */
const PAIRS: { what: string; observation: Op; condition: Op }[] = [
  { what: 'create', observation: 'createObservation', condition: 'createCondition' },
  { what: 'read', observation: 'readObservation', condition: 'readCondition' },
  { what: 'search patient+code', observation: 'searchObservation', condition: 'searchCondition' },
  // A/A control: the same op in both slots, so its spread around 1.00x is the noise floor.
  { what: 'A/A: read Obs twice', observation: 'readObservation', condition: 'readObservation' },
];

/** The operations measured against a direct-SQL baseline. */
type DirectOp = 'createPatient' | 'readPatient' | 'updatePatient' | 'createObservation';

const OPS: { op: DirectOp; label: string }[] = [
  { op: 'createPatient', label: 'create Patient' },
  { op: 'readPatient', label: 'read Patient' },
  { op: 'updatePatient', label: 'update Patient' },
  { op: 'createObservation', label: 'create Observation' },
];

// ---------------------------------------------------------------- direct SQL

interface DirectStats {
  seconds: number;
  ok: number;
  opsPerSec: number;
  latency: LatencySummary;
  errors: number;
  firstError?: string;
}

const INSTANT = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const ORG = `current_setting('app.org_id')::integer`;

/** BEGIN; set_config('app.org_id'); fn; COMMIT: the transaction shape of every Kiln request. */
async function inTx<T>(pool: pg.Pool, orgId: number, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query("SELECT set_config('app.org_id', $1, true)", [String(orgId)]);
    const result = await fn(c);
    await c.query('COMMIT');
    return result;
  } catch (e) {
    await c.query('ROLLBACK').catch(() => {});
    throw e;
  } finally {
    c.release();
  }
}

function directOps(pool: pg.Pool, orgId: number, ids: string[], tag: string): Record<DirectOp, () => Promise<void>> {
  let seq = 0;
  const n = ids.length;
  const history = (c: pg.PoolClient, type: string, id: string, version: number, at: string, method: string, json: string) =>
    c.query(
      `INSERT INTO resource_history (org_id, resource_type, id, version_id, last_updated, method, resource)
       VALUES (${ORG}, $1, $2, $3, $4, $5, $6)`,
      [type, id, version, at, method, json]);

  return {
    // INSERT locator; INSERT current row; INSERT history.
    async createPatient() {
      const s = seq++;
      const id = crypto.randomUUID();
      const now = new Date().toISOString();
      const body = patientBody(`${tag}-d-${s}`, s);
      const json = JSON.stringify({ ...body, id, meta: { versionId: '1', lastUpdated: now } });
      const col = patientColumns(body);
      await inTx(pool, orgId, async (c) => {
        await c.query(
          `INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted)
           VALUES (${ORG}, 'Patient', $1, 1, $2, false)`, [id, now]);
        await c.query(
          `INSERT INTO patients (org_id, id, version_id, last_updated, identifier_tokens, profiles, tags, resource,
                                 mrn, family_name, given_names, birth_date, sex, active, deceased)
           VALUES (${ORG}, $1, 1, $2, $3, '{}', '{}', $4, $5, $6, $7, $8, $9, $10, $11)`,
          [id, now, col.identifier_tokens, json, col.mrn, col.family_name, col.given_names, col.birth_date, col.sex, col.active, col.deceased]);
        await history(c, 'Patient', id, 1, now, 'POST', json);
      });
    },
    // The single locator-joined SELECT a read does.
    async readPatient() {
      const id = ids[seq++ % n];
      const rows = await inTx(pool, orgId, async (c) => (await c.query(
        `SELECT l.version_id, l.deleted, ${INSTANT('l.last_updated')} AS last_updated, t.resource::text AS json
           FROM resource_ids l
           LEFT JOIN patients t ON t.org_id = l.org_id AND t.id = l.id
          WHERE l.org_id = ${ORG} AND l.resource_type = 'Patient' AND l.id = $1 AND l.version_id > 0`, [id])).rows);
      if (rows.length !== 1 || typeof rows[0].json !== 'string') throw new Error(`Patient/${id} not found`);
    },
    // Lock + bump the locator (one statement), UPDATE the current row, INSERT history.
    async updatePatient() {
      const s = seq++;
      const i = s % n;
      const id = ids[i];
      const now = new Date().toISOString();
      const body = patientBody(seedMrn(tag, i), s, id);
      const col = patientColumns(body);
      await inTx(pool, orgId, async (c) => {
        const { rows } = await c.query(
          `UPDATE resource_ids SET version_id = version_id + 1, last_updated = $2
            WHERE org_id = ${ORG} AND resource_type = 'Patient' AND id = $1 AND NOT deleted
            RETURNING version_id`, [id, now]);
        if (!rows[0]) throw new Error(`Patient/${id} not found`);
        const version: number = rows[0].version_id;
        const json = JSON.stringify({ ...body, meta: { versionId: String(version), lastUpdated: now } });
        await c.query(
          `UPDATE patients SET version_id = $2, last_updated = $3, identifier_tokens = $4, resource = $5, mrn = $6,
                  family_name = $7, given_names = $8, birth_date = $9, sex = $10, active = $11, deceased = $12
            WHERE org_id = ${ORG} AND id = $1`,
          [id, version, now, col.identifier_tokens, json, col.mrn, col.family_name, col.given_names, col.birth_date, col.sex, col.active, col.deceased]);
        await history(c, 'Patient', id, version, now, 'PUT', json);
      });
    },
    // Like createPatient, into the monthly partition; the FK checks the subject.
    async createObservation() {
      const s = seq++;
      const patientId = ids[s % n];
      const id = crypto.randomUUID();
      const now = new Date().toISOString();
      const body = observationBody(patientId, s, now);
      const json = JSON.stringify({ ...body, id, meta: { versionId: '1', lastUpdated: now } });
      const col = observationColumns(body, patientId);
      await inTx(pool, orgId, async (c) => {
        await c.query(
          `INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted, clinical_time)
           VALUES (${ORG}, 'Observation', $1, 1, $2, false, $3)`, [id, now, col.clinical_time]);
        await c.query(
          `INSERT INTO observations (org_id, id, version_id, last_updated, identifier_tokens, profiles, tags, resource,
                                     clinical_time, patient_id, encounter_id, status, category_tokens, code_tokens,
                                     effective_start, effective_end, issued, value_quantity, value_unit, value_code_tokens, value_string)
           VALUES (${ORG}, $1, 1, $2, $3, '{}', '{}', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`,
          [id, now, col.identifier_tokens, json, col.clinical_time, col.patient_id, col.encounter_id, col.status,
            col.category_tokens, col.code_tokens, col.effective_start, col.effective_end, col.issued,
            col.value_quantity, col.value_unit, col.value_code_tokens, col.value_string]);
        await history(c, 'Observation', id, 1, now, 'POST', json);
      });
    },
  };
}

/** CONNECTIONS async loops each running fn back to back for `seconds`. */
async function runDirect(fn: () => Promise<void>, seconds: number): Promise<DirectStats> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        await fn();
        latencies.push(performance.now() - t0);
      } catch (e) {
        errors++;
        firstError ??= String((e as Error)?.message ?? e);
      }
    }
  }));
  const elapsed = (performance.now() - start) / 1000;
  return {
    seconds: Math.round(elapsed * 100) / 100,
    ok: latencies.length,
    opsPerSec: Math.round((latencies.length / elapsed) * 10) / 10,
    latency: summarize(latencies),
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
  };
}

// ---------------------------------------------------------------- HTTP (child)

class LoadGenerator {
  private child: ChildProcess;
  private nextId = 0;
  private pending = new Map<number, { resolve: (r: { stats: HttpStats; versus?: HttpStats }) => void; reject: (e: Error) => void }>();

  constructor() {
    this.child = fork(path.join(HERE, 'load-worker.ts'), [], { cwd: ROOT, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (msg: RunResponse) => {
      const p = this.pending.get(msg.runId);
      if (!p) return;
      this.pending.delete(msg.runId);
      if (msg.kind === 'result') p.resolve(msg);
      else p.reject(new Error(`load generator: ${msg.message}`));
    });
    this.child.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`load generator exited (${code})`));
      this.pending.clear();
    });
  }

  private send(req: Omit<RunRequest, 'kind' | 'runId'>): Promise<{ stats: HttpStats; versus?: HttpStats }> {
    const runId = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(runId, { resolve, reject });
      this.child.send({ kind: 'run', runId, ...req } satisfies RunRequest);
    });
  }

  async run(req: Omit<RunRequest, 'kind' | 'runId' | 'versus'>): Promise<HttpStats> {
    return (await this.send(req)).stats;
  }

  /** req.op and req.versus.op alternating in one run: the stats of each. */
  async runVersus(req: Omit<RunRequest, 'kind' | 'runId'> & { versus: NonNullable<RunRequest['versus']> }): Promise<[HttpStats, HttpStats]> {
    const { stats, versus } = await this.send(req);
    return [stats, versus!];
  }

  close() {
    if (this.child.connected) this.child.disconnect();
    if (this.child.exitCode === null) this.child.kill();
  }
}

// ---------------------------------------------------------------- setup

/** POSTs `count` resources made by `body` over CONNECTIONS clients; their ids in order. */
async function seed(base: string, type: string, count: number, body: (i: number) => object): Promise<string[]> {
  const ids: string[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(CONNECTIONS, count) }, async () => {
    while (next < count) {
      const i = next++;
      const res = await fetch(`${base}/${type}`, {
        method: 'POST',
        headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' },
        body: JSON.stringify(body(i)),
      });
      const text = await res.text();
      if (res.status !== 201) throw new Error(`seeding ${type} ${i}: HTTP ${res.status} ${text.slice(0, 300)}`);
      ids[i] = JSON.parse(text).id;
    }
  }));
  return ids;
}

const seedPatients = (base: string, tag: string) => seed(base, 'Patient', SEED, (i) => patientBody(seedMrn(tag, i), i));

/**
 * Patients of their own for the searches (the creates go to the other ones, so result
 * sizes stay put), each with MATCHES Observations and Conditions of the searched code and
 * as many of another; the reads rotate over all of these.
 */
async function seedComparison(base: string, tag: string) {
  const patients = await seed(base, 'Patient', SEARCH_PATIENTS, (i) => patientBody(`${tag}-search-${i}`, i));
  const per = 2 * MATCHES;
  const owner = (i: number) => patients[Math.floor(i / per) % patients.length];
  const other = (i: number) => i % per >= MATCHES;
  const now = new Date().toISOString();
  const observations = await seed(base, 'Observation', SEARCH_PATIENTS * per, (i) => {
    const o = observationBody(owner(i), i, now);
    return other(i) ? { ...o, code: { coding: [{ system: HEART_RATE.system, code: '9279-1', display: 'Respiratory rate' }], text: 'Respiratory rate' } } : o;
  });
  const conditions = await seed(base, 'Condition', SEARCH_PATIENTS * per, (i) => conditionBody(owner(i), now, other(i)));
  return { patients, observations, conditions };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

/** Planning and execution time (ms) of a statement, from EXPLAIN ANALYZE text. */
function explainTimes(plan: string): { planning: number; execution: number } {
  const num = (re: RegExp) => Number(re.exec(plan)?.[1] ?? NaN);
  return { planning: num(/Planning Time: ([\d.]+) ms/), execution: num(/Execution Time: ([\d.]+) ms/) };
}

/**
 * EXPLAIN (ANALYZE, BUFFERS) of the page statement the server builds for each type's
 * `patient=X&code=Y` search, as kiln_app in the tenant, the two alternating EXPLAIN_RUNS
 * times over the search patients: median planning and execution time, and the last plan.
 */
async function explainSearches(app: pg.Pool, orgId: number, patients: string[]) {
  const c = await app.connect();
  const out: Record<string, { sql: string; plan: string; planningMs: number; executionMs: number }> = {};
  const times: Record<string, { planning: number; execution: number }[]> = { Observation: [], Condition: [] };
  try {
    await c.query('BEGIN');
    await c.query("SELECT set_config('app.org_id', $1, true)", [String(orgId)]);
    for (let i = 0; i < EXPLAIN_RUNS; i++) {
      for (const [type, code] of [['Observation', HEART_RATE], ['Condition', HYPERTENSION]] as const) {
        const pairs = [...new URLSearchParams(searchPath(type, patients[i % patients.length], code).split('?')[1]).entries()];
        const q = parseSearch(type, pairs);
        const st = searchStatements({ orgId, type, criteria: q.criteria, sort: q.sort, count: 20, total: 'none' }).page;
        const plan = (await c.query(`EXPLAIN (ANALYZE, BUFFERS) ${st.sql}`, st.values)).rows.map((r) => r['QUERY PLAN']).join('\n');
        times[type].push(explainTimes(plan));
        out[type] = { sql: st.sql, plan, planningMs: 0, executionMs: 0 };
      }
    }
    await c.query('ROLLBACK');
  } finally {
    c.release();
  }
  for (const type of Object.keys(out)) {
    out[type].planningMs = median(times[type].map((t) => t.planning));
    out[type].executionMs = median(times[type].map((t) => t.execution));
  }
  return out;
}

// ---------------------------------------------------------------- output

const fmt = (v: number, digits = 1) => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ratio = (a: number, b: number) => (b > 0 ? Math.round((a / b) * 100) / 100 : 0);

function table(rows: { label: string; http: HttpStats; direct: DirectStats }[]): string {
  const head = ['operation', 'server req/s', 'p50 ms', 'p95 ms', 'p99 ms', 'direct ops/s', 'p50 ms', 'p95 ms', 'p99 ms', 'server/direct'];
  const body = rows.map(({ label, http, direct }) => [
    label,
    fmt(http.reqPerSec), fmt(http.latency.p50, 2), fmt(http.latency.p95, 2), fmt(http.latency.p99, 2),
    fmt(direct.opsPerSec), fmt(direct.latency.p50, 2), fmt(direct.latency.p95, 2), fmt(direct.latency.p99, 2),
    `${ratio(http.reqPerSec, direct.opsPerSec).toFixed(2)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('-+-'), ...body.map(line)].join('\n');
}

/** Condition vs Observation medians (req/s, latency) and the ratio per round. */
function pairTable(rows: { what: string; observationReqPerSec: number; conditionReqPerSec: number; observationP50: number; conditionP50: number; observationP99: number; conditionP99: number; roundRatios: number[]; medianRatio: number }[]): string {
  const head = ['operation', 'Observation req/s', 'p50 ms', 'p99 ms', 'Condition req/s', 'p50 ms', 'p99 ms', 'Condition/Observation per round', 'median'];
  const body = rows.map((r) => [
    r.what,
    fmt(r.observationReqPerSec), fmt(r.observationP50, 2), fmt(r.observationP99, 2),
    fmt(r.conditionReqPerSec), fmt(r.conditionP50, 2), fmt(r.conditionP99, 2),
    r.roundRatios.map((x) => x.toFixed(2)).join(' '), `${r.medianRatio.toFixed(2)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('-+-'), ...body.map(line)].join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  const startedAt = new Date();
  const loadavgAtStart = os.loadavg();
  const tag = `b${startedAt.getTime().toString(36)}${crypto.randomBytes(2).toString('hex')}`;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-'));
  let server: TestServer | undefined;
  let load: LoadGenerator | undefined;
  let pool: pg.Pool | undefined;
  let cleaned: Promise<void> | undefined;
  const cleanup = () => cleaned ??= (async () => {
    load?.close();
    await pool?.end().catch(() => {});
    await server?.stop().catch((e) => console.error('server stop failed:', e));
    removeDataDir(dataDir);
  })();
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: stopping server and removing ${dataDir}`);
    cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const estimate = (OPS.length * 2 + ROUNDS * PAIRS.length) * (SECONDS + WARMUP);
    console.log(`Kiln CRUD bench: ${CONNECTIONS} connections, ${SECONDS}s per measurement (+${WARMUP}s warmup), ` +
      `${SEED} seeded Patients, ${ROUNDS} rounds of Condition vs Observation; about ${Math.round(estimate)}s of load. Data dir ${dataDir}`);
    const idle = await withCpu(() => new Promise((r) => setTimeout(r, 1000)));
    const backgroundCpuPct = idle.cpu.foreignPct ?? idle.cpu.machinePct;
    if (backgroundCpuPct !== null && backgroundCpuPct > 15) {
      console.log(`WARNING: the machine is not idle before the bench (${backgroundCpuPct}% CPU busy); numbers will be low and noisy`);
    }
    server = await startTestServer({ dataDir });
    load = new LoadGenerator();
    const origin = `http://127.0.0.1:${server.port}`;
    const orgId: number = (await server.db.owner.query(`SELECT id FROM organizations WHERE slug = 'default'`)).rows[0].id;
    const pgVersion: string = (await server.db.owner.query('SHOW server_version')).rows[0].server_version;

    const t0 = performance.now();
    const ids = await seedPatients(server.url, tag);
    console.log(`seeded ${ids.length} Patients in ${((performance.now() - t0) / 1000).toFixed(1)}s`);

    // Same connection details as the server's kiln_app pool (so RLS binds), sized to the concurrency.
    const appOptions = (server.db.app as unknown as { options: pg.PoolConfig }).options;
    pool = new pg.Pool({ connectionString: appOptions.connectionString, max: CONNECTIONS });
    pool.on('error', () => {});
    const direct = directOps(pool, orgId, ids, tag);

    const results: {
      op: Op; label: string; http: HttpStats; direct: DirectStats; httpCpu: CpuUse; directCpu: CpuUse; warmupNon2xx: number; warmupDirectErrors: number;
    }[] = [];
    for (const { op, label } of OPS) {
      const req = { op, origin, connections: CONNECTIONS, ids, tag };
      let warmupNon2xx = 0;
      let warmupDirectErrors = 0;
      if (WARMUP > 0) warmupNon2xx = (await load.run({ ...req, seconds: WARMUP })).non2xx;
      const { result: http, cpu: httpCpu } = await withCpu(() => load!.run({ ...req, seconds: SECONDS }));
      if (WARMUP > 0) warmupDirectErrors = (await runDirect(direct[op], WARMUP)).errors;
      const { result: d, cpu: directCpu } = await withCpu(() => runDirect(direct[op], SECONDS));
      console.log(`  ${label.padEnd(18)} server ${fmt(http.reqPerSec).padStart(9)} req/s (server process ${httpCpu.benchProcessPct}% of a core; machine ${httpCpu.machinePct ?? '?'}%, other processes ${httpCpu.foreignPct ?? '?'}%)` +
        `   direct ${fmt(d.opsPerSec).padStart(9)} ops/s (client process ${directCpu.benchProcessPct}%; machine ${directCpu.machinePct ?? '?'}%, other ${directCpu.foreignPct ?? '?'}%)`);
      results.push({ op, label, http, direct: d, httpCpu, directCpu, warmupNon2xx, warmupDirectErrors });
    }

    // Condition (generic table) vs Observation (its own table), over HTTP only: per round and
    // interaction one run that switches between the two every FLIP_MS (which one starts
    // alternates between rounds), so that the shared host's drift falls on both alike
    // (back-to-back runs of 10 s gave ratios from 0.69 to 1.68 here); the ratio of each
    // round, then the median.
    const pairRuns: { round: number; what: string; first: 'Observation' | 'Condition'; observation: HttpStats; condition: HttpStats; cpu: CpuUse; warmupNon2xx: number }[] = [];
    let comparison: Awaited<ReturnType<typeof seedComparison>> | undefined;
    const searchChecks: Record<string, number> = {};
    let explains: Awaited<ReturnType<typeof explainSearches>> | undefined;
    if (ROUNDS > 0) {
      const t1 = performance.now();
      comparison = await seedComparison(server.url, tag);
      console.log(`seeded ${SEARCH_PATIENTS} search Patients with ${comparison.observations.length} Observations and ${comparison.conditions.length} Conditions ` +
        `in ${((performance.now() - t1) / 1000).toFixed(1)}s`);
      for (const [type, code] of [['Observation', HEART_RATE], ['Condition', HYPERTENSION]] as const) {
        const res = await fetch(`${origin}${searchPath(type, comparison.patients[0], code)}`, { headers: { accept: 'application/fhir+json' } });
        searchChecks[type] = res.status === 200 ? ((await res.json()) as { entry?: unknown[] }).entry?.length ?? 0 : -res.status;
      }
      const targets = (op: Op) => op.startsWith('create') ? undefined
        : op.startsWith('read') ? (op.endsWith('Observation') ? comparison!.observations : comparison!.conditions) : comparison!.patients;
      for (let round = 1; round <= ROUNDS; round++) {
        const first = round % 2 === 1 ? 'Observation' : 'Condition';
        for (const pair of PAIRS) {
          const [a, b] = first === 'Observation' ? [pair.observation, pair.condition] : [pair.condition, pair.observation];
          const req = { op: a, origin, connections: CONNECTIONS, ids, tag, targets: targets(a), versus: { op: b, targets: targets(b), everyMs: FLIP_MS } };
          const warm = WARMUP > 0 ? await load.runVersus({ ...req, seconds: WARMUP }) : undefined;
          const { result: [ra, rb], cpu } = await withCpu(() => load!.runVersus({ ...req, seconds: SECONDS }));
          const [o, c] = first === 'Observation' ? [ra, rb] : [rb, ra];
          pairRuns.push({ round, what: pair.what, first, observation: o, condition: c, cpu, warmupNon2xx: warm ? warm[0].non2xx + warm[1].non2xx : 0 });
          console.log(`  round ${round} ${pair.what.padEnd(19)} Observation ${fmt(o.reqPerSec).padStart(9)} req/s, Condition ${fmt(c.reqPerSec).padStart(9)} req/s ` +
            `(${ratio(c.reqPerSec, o.reqPerSec).toFixed(2)}x; server process ${cpu.benchProcessPct}% of a core, other processes ${cpu.foreignPct ?? '?'}%)`);
        }
      }
      explains = await explainSearches(server.db.app, orgId, comparison.patients);
    }
    const pairSummary = PAIRS.map(({ what }) => {
      const runs = pairRuns.filter((r) => r.what === what);
      return {
        what,
        observationReqPerSec: median(runs.map((r) => r.observation.reqPerSec)),
        conditionReqPerSec: median(runs.map((r) => r.condition.reqPerSec)),
        observationP50: median(runs.map((r) => r.observation.latency.p50)),
        conditionP50: median(runs.map((r) => r.condition.latency.p50)),
        observationP99: median(runs.map((r) => r.observation.latency.p99)),
        conditionP99: median(runs.map((r) => r.condition.latency.p99)),
        // Throughput of Condition over Observation per round (below 1: the generic store is slower).
        roundRatios: runs.map((r) => ratio(r.condition.reqPerSec, r.observation.reqPerSec)),
        medianRatio: median(runs.map((r) => ratio(r.condition.reqPerSec, r.observation.reqPerSec))),
      };
    });

    // Sanity: Observations landed in the current monthly partition, and the server still reads what the baseline wrote.
    const partitions = (await server.db.owner.query(
      `SELECT tableoid::regclass::text AS partition, count(*)::integer AS rows FROM observations GROUP BY 1 ORDER BY 1`)).rows as { partition: string; rows: number }[];
    const now = new Date();
    const expectedPartition = `observations_o${orgId}_${now.getUTCFullYear()}${String(now.getUTCMonth() + 1).padStart(2, '0')}01`;
    const counts = (await server.db.owner.query(
      `SELECT resource_type, count(*)::integer AS n FROM resource_ids GROUP BY 1 ORDER BY 1`)).rows as { resource_type: string; n: number }[];
    const check = await fetch(`${server.url}/Patient/${ids[0]}`, { headers: { accept: 'application/fhir+json' } });
    await check.text();

    const byOp = Object.fromEntries(results.map((r) => [r.op, r])) as Record<Op, (typeof results)[number]>;
    const medplum = {
      reference: MEDPLUM,
      read: { kiln: byOp.readPatient.http.reqPerSec, ratio: ratio(byOp.readPatient.http.reqPerSec, MEDPLUM.read) },
      createPatient: { kiln: byOp.createPatient.http.reqPerSec, ratio: ratio(byOp.createPatient.http.reqPerSec, MEDPLUM.create) },
      createObservation: { kiln: byOp.createObservation.http.reqPerSec, ratio: ratio(byOp.createObservation.http.reqPerSec, MEDPLUM.create) },
      search: ROUNDS > 0 ? { kiln: pairSummary[2].observationReqPerSec, ratio: ratio(pairSummary[2].observationReqPerSec, MEDPLUM.search) } : null,
    };

    const warnings: string[] = [];
    const stray = partitions.filter((p) => p.partition !== expectedPartition);
    if (stray.length) warnings.push(`Observations outside ${expectedPartition}: ${JSON.stringify(stray)}`);
    if (check.status !== 200) warnings.push(`GET Patient/${ids[0]} after the run answered ${check.status}`);
    for (const r of results) {
      if (r.http.non2xx || r.http.errors || r.http.timeouts) {
        warnings.push(`${r.label}: ${r.http.non2xx} non-2xx ${JSON.stringify(r.http.statusCodes)}, ${r.http.errors} errors, ${r.http.timeouts} timeouts` +
          (r.http.firstErrorBody ? `; first error body: ${r.http.firstErrorBody}` : ''));
      }
      if (r.warmupNon2xx) warnings.push(`${r.label}: ${r.warmupNon2xx} non-2xx during warmup`);
      if (r.direct.errors || r.warmupDirectErrors) {
        warnings.push(`${r.label} (direct SQL): ${r.direct.errors + r.warmupDirectErrors} errors; first: ${r.direct.firstError ?? '(warmup)'}`);
      }
    }
    for (const r of pairRuns) {
      for (const [type, h] of [['Observation', r.observation], ['Condition', r.condition]] as const) {
        if (h.non2xx || h.errors || h.timeouts) {
          warnings.push(`round ${r.round} ${r.what} ${type}: ${h.non2xx} non-2xx ${JSON.stringify(h.statusCodes)}, ${h.errors} errors, ${h.timeouts} timeouts` +
            (h.firstErrorBody ? `; first error body: ${h.firstErrorBody}` : ''));
        }
      }
      if (r.warmupNon2xx) warnings.push(`round ${r.round} ${r.what}: ${r.warmupNon2xx} non-2xx during warmup`);
    }
    for (const [type, n] of Object.entries(searchChecks)) {
      if (n !== MATCHES) warnings.push(`${type}?patient&code found ${n} matches (HTTP status when negative), not ${MATCHES}`);
    }
    const failures = warnings.length; // the ones above are correctness problems; below only measurement quality
    if (backgroundCpuPct !== null && backgroundCpuPct > 15) warnings.push(`the machine was ${backgroundCpuPct}% busy before the bench started`);
    for (const r of results) {
      for (const [what, cpu] of [['server', r.httpCpu], ['direct', r.directCpu]] as const) {
        if ((cpu.foreignPct ?? 0) > 10) {
          warnings.push(`${r.label} (${what}): other processes used ${cpu.foreignPct}% of the machine during the measurement; numbers are depressed` +
            (cpu.topForeign.length ? ` (seen: ${cpu.topForeign.map((f) => `${f.pct}% ${f.process}`).join('; ')})` : ''));
        }
      }
    }
    for (const r of pairRuns) {
      if ((r.cpu.foreignPct ?? 0) > 10) warnings.push(`round ${r.round} ${r.what}: other processes used ${r.cpu.foreignPct}% of the machine (both types alike: they alternate every ${FLIP_MS} ms)`);
    }

    console.log('');
    console.log(table(results));
    console.log('');
    console.log(`Medplum reference (quoted figures, not measured here): ` +
      `read 1,100/s -> Kiln ${fmt(medplum.read.kiln)}/s (${medplum.read.ratio.toFixed(2)}x); ` +
      `create 245/s -> Kiln Patient ${fmt(medplum.createPatient.kiln)}/s (${medplum.createPatient.ratio.toFixed(2)}x), ` +
      `Observation ${fmt(medplum.createObservation.kiln)}/s (${medplum.createObservation.ratio.toFixed(2)}x); ` +
      (medplum.search ? `search 280/s -> Kiln Observation patient+code ${fmt(medplum.search.kiln)}/s (${medplum.search.ratio.toFixed(2)}x)` : `search 280/s -> not measured (BENCH_ROUNDS=0)`));
    if (ROUNDS > 0) {
      console.log('');
      console.log(pairTable(pairSummary));
      console.log(`Condition/Observation: throughput ratio per round (median of ${ROUNDS}); below 1.00x the generic store is slower (goal: >= 0.83x, i.e. not over 20% slower)`);
      for (const [type, e] of Object.entries(explains ?? {})) {
        console.log(`EXPLAIN ANALYZE ${type}?patient&code page statement (kiln_app, median of ${EXPLAIN_RUNS}): planning ${e.planningMs} ms, execution ${e.executionMs} ms`);
      }
    }
    console.log(`non-2xx: ${results.map((r) => `${r.label} ${r.http.non2xx}`).join(', ')}; ` +
      `transport errors/timeouts: ${results.reduce((a, r) => a + r.http.errors + r.http.timeouts, 0)}; ` +
      `direct-SQL errors: ${results.reduce((a, r) => a + r.direct.errors, 0)}`);
    console.log(`Observations by partition: ${partitions.map((p) => `${p.partition}=${p.rows}`).join(', ')}`);
    for (const w of warnings) console.log(`WARNING: ${w}`);

    const out = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      config: { seconds: SECONDS, warmupSeconds: WARMUP, connections: CONNECTIONS, seededPatients: SEED, serverPoolSize: server.config.poolSize, directPoolSize: CONNECTIONS },
      environment: { backgroundCpuPct, loadavgAtStart, node: process.version, platform: `${os.platform()} ${os.release()}`, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryGiB: Math.round(os.totalmem() / 2 ** 30), postgres: pgVersion },
      operations: results.map((r) => ({ ...r, serverOverDirect: ratio(r.http.reqPerSec, r.direct.opsPerSec) })),
      medplum,
      genericStore: ROUNDS > 0 ? { rounds: ROUNDS, flipMs: FLIP_MS, searchPatients: SEARCH_PATIENTS, matchesPerSearch: MATCHES, summary: pairSummary, runs: pairRuns, searchChecks, explains } : null,
      sanity: { observationPartitions: partitions, expectedPartition, resourceCounts: counts, readAfterRun: check.status },
      warnings,
    };
    const dir = path.join(HERE, 'results');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `crud-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
    console.log(`results: ${path.relative(ROOT, file)}`);
    if (failures) process.exitCode = 1;
  } finally {
    await cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
