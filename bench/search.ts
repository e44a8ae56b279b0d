// Search bench (issue #25): database time and HTTP latency of each search shape at two
// tenant sizes, and right after a burst of writes, against the goals of the issue.
//
// Two data sets, each in its own embedded PostgreSQL, bulk-loaded through SQL
// (bench/search-data.ts): "10k" (the queried tenant holds 10,000 Patients / 100,000
// Observations) and "100k" (100,000 / 1,000,000), plus 4 Encounters and 4
// MedicationStatements per patient; a second tenant holds a tenth of that. Per shape:
// - database time: every statement the server runs for the search (runSearch and
//   fetchIncludes of src/store/searchRun.ts, recorded as they run in a kiln_app
//   transaction with app.org_id set) is explained (ANALYZE, BUFFERS, TIMING OFF); the
//   median over BENCH_DB_RUNS runs of planning and execution ms, summed over statements;
// - HTTP: req/s and p50 with BENCH_CLIENTS keep-alive clients.
// Then on the 100k set BENCH_WRITES writes over HTTP and, with no ANALYZE, the database
// time again. Prints one table; writes bench/results/search-<ts>.json and
// bench/results/<date>-search-plans.md (the table, each shape's SQL and plans).
//
//   npm run bench:search
//   BENCH_SMALL_PATIENTS=200 BENCH_SMALL_OBSERVATIONS=2000 BENCH_PATIENTS=400 BENCH_OBSERVATIONS=4000 BENCH_WRITES=1000 npm run bench:search
//   BENCH_DB_ONLY=1 BENCH_REUSE_SMALL=<dir> BENCH_REUSE_BIG=<dir> npm run bench:search   # plans only, kept data
//   BENCH_DB_ONLY=1 BENCH_SETS=100k BENCH_REUSE_BIG=<dir> BENCH_SHAPES=family,code npm run bench:search
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { startTestServer, removeDataDir, freePort, type TestServer } from '../test/support/server.ts';
import { createOrg, ensureOrgPartitions } from '../src/store/tenants.ts';
import { parseSearch } from '../src/search/query.ts';
import { runSearch, fetchIncludes } from '../src/store/searchRun.ts';
import {
  BulkLoader, MRN_SYSTEM, RARE_GROUP, mrnOf, observation, patient, rareFamily, tenantJobs,
} from './search-data.ts';
import { envNumber } from './env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SETS = [
  { label: '10k', patients: envNumber('BENCH_SMALL_PATIENTS', 10_000, 1), observations: envNumber('BENCH_SMALL_OBSERVATIONS', 100_000), reuse: process.env.BENCH_REUSE_SMALL },
  { label: '100k', patients: envNumber('BENCH_PATIENTS', 100_000, 1), observations: envNumber('BENCH_OBSERVATIONS', 1_000_000), reuse: process.env.BENCH_REUSE_BIG },
].filter((s) => (process.env.BENCH_SETS ?? '10k,100k').split(',').includes(s.label));
/** The second tenant's share of the queried tenant's size. */
const SECOND_SHARE = envNumber('BENCH_SECOND_SHARE', 0.1);
const DB_ONLY = process.env.BENCH_DB_ONLY === '1';
/** Writes of the after-writes phase (100k set); off by default when only the plans are wanted or data is reused. */
const WRITES = envNumber('BENCH_WRITES', DB_ONLY || process.env.BENCH_REUSE_BIG ? 0 : 50_000);
const DB_RUNS = envNumber('BENCH_DB_RUNS', 20, 1);
const DB_WARMUP = envNumber('BENCH_DB_WARMUP', 3);
/** Runs of a shape whose first run took over a second (the exact totals): its median needs no 20 runs of seconds each. */
const DB_SLOW_RUNS = envNumber('BENCH_DB_SLOW_RUNS', 5, 1);
/** Only the shapes whose names contain one of these (comma-separated, case-insensitive), e.g. BENCH_SHAPES=family,identifier. */
const SHAPE_FILTER = (process.env.BENCH_SHAPES ?? '').toLowerCase().split(',').filter(Boolean);
const SECONDS = envNumber('BENCH_SECONDS', 3);
const MAX_REQ = envNumber('BENCH_MAX_REQUESTS', 2000);
const CLIENTS = envNumber('BENCH_CLIENTS', 4, 1);
const BATCH = envNumber('BENCH_BATCH', 2000, 1);
const KEEP = process.env.BENCH_KEEP === '1';
const DAY = 86_400_000;

interface LoadStats { seconds: number; resources: number; indexRows: number; resourcesPerSec: number; rowsPerSec: number; indexSeconds: number; analyzeSeconds: number; byTable: Record<string, number> }
interface Dataset { server: TestServer; load?: LoadStats; orgs: { default: number; second: number }; patients: number; observations: number }

const LOAD_WORKERS = envNumber('BENCH_LOAD_WORKERS', 2);

/** Loads both tenants: patients, 4 encounters + 4 medication statements each, observations spread evenly over patients. */
async function loadTenants(server: TestServer, tenants: { orgId: number; tag: string; patients: number; observations: number }[], loadTime: number, now: number, log: (s: string) => void) {
  const loader = new BulkLoader(server.db.owner, LOAD_WORKERS);
  await loader.init();
  let seq = 0;
  const jobs = tenants.flatMap((t) => {
    const js = tenantJobs({ tag: t.tag, patients: t.patients, now, orgId: t.orgId, loadTime }, t.observations, BATCH, seq);
    seq += js.reduce((n, j) => n + j.to - j.from, 0);
    return js;
  });
  const t0 = performance.now();
  const every = Math.max(1, Math.floor(jobs.length / 10));
  await loader.run(jobs, (done) => {
    if (done % every === 0) log(`  ${loader.counters.resources} resources, ${Math.round(loader.counters.resources / ((performance.now() - t0) / 1000))}/s`);
  });
  return loader.counters;
}

/** A data set kept by an earlier run (BENCH_KEEP=1), measured again without loading. */
async function reuseDataset(label: string, dataDir: string, patients: number, observations: number): Promise<Dataset> {
  const server = await startTestServer({ dataDir, pgPort: await freePort() });
  const org = async (slug: string) => (await server.db.owner.query(`SELECT id FROM organizations WHERE slug = $1`, [slug])).rows[0].id as number;
  const orgs = { default: await org('default'), second: await org('bench-b') };
  // The sizes the set was loaded with, read back (the env may say otherwise).
  const n = async (table: string) => Number((await server.db.owner.query(`SELECT count(*) FROM ${table} WHERE org_id = $1 AND id LIKE '%-a-%'`, [orgs.default])).rows[0].count);
  patients = await n('patients');
  observations = await n('observations');
  console.log(`[${label}] reusing ${dataDir}: ${patients} patients, ${observations} observations loaded in the queried tenant`);
  return { server, orgs, patients, observations };
}

// session_replication_role: no foreign-key checks or triggers for rows built consistent;
// autovacuum would analyze the tables over and over as they grow (VACUUM ANALYZE follows).
const LOAD_SETTINGS = [['session_replication_role', 'replica'], ['autovacuum', 'off'], ['fsync', 'off'], ['synchronous_commit', 'off'], ['full_page_writes', 'off'], ['max_wal_size', '16GB'], ['checkpoint_timeout', '1h']];

async function buildDataset(label: string, patients: number, observations: number, reuse?: string): Promise<Dataset> {
  if (reuse) return reuseDataset(label, reuse, patients, observations);
  const server = await startTestServer();
  const owner = server.db.owner;
  const def: number = (await owner.query(`SELECT id FROM organizations WHERE slug = 'default'`)).rows[0].id;
  const second = (await createOrg(owner, 'bench-b', 'Bench B')).id;
  // The data spans 24 months: give both tenants monthly partitions for all of it, as an
  // operator would with KILN_PARTITION_MONTHS_BACK, instead of filling DEFAULT.
  for (const org of [def, second]) await ensureOrgPartitions(owner, org, 25);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const now = Date.now();
  const loadTime = now - 3_600_000;
  const log = (s: string) => console.log(s);
  const p2 = Math.max(1, Math.round(patients * SECOND_SHARE));
  const o2 = Math.round(observations * SECOND_SHARE);
  console.log(`[${label}] loading ${patients} patients / ${observations} observations, second tenant ${p2} / ${o2}...`);
  // Bulk-load style: the secondary indexes are dropped for the load and rebuilt from their
  // own definitions afterwards (one sort per index instead of row-by-row upkeep).
  const indexDefs = (await owner.query(
    `SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
      JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
      WHERE t.relkind IN ('p', 'r') AND NOT t.relispartition AND NOT ic.relispartition AND t.relnamespace = 'public'::regnamespace
        AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)`)).rows as { name: string; def: string }[];
  for (const ix of indexDefs) await owner.query(`DROP INDEX ${ix.name}`);
  // This data dir's server skips the WAL flushes and frequent checkpoints for the load
  // only (a crash would lose the bench's data, nothing else); reset before measuring.
  for (const [k, v] of LOAD_SETTINGS) await owner.query(`ALTER SYSTEM SET ${k} = '${v}'`);
  await owner.query('SELECT pg_reload_conf()');
  const counters = await loadTenants(server, [{ orgId: def, tag: 'a', patients, observations }, { orgId: second, tag: 'b', patients: p2, observations: o2 }], loadTime, now, log);
  const tI = performance.now();
  const cpu = process.cpuUsage(cpu0);
  log(`[${label}] rows inserted in ${((tI - t0) / 1000).toFixed(1)}s, this process's CPU ${((cpu.user + cpu.system) / 1e6).toFixed(1)}s`);
  // Two sessions build indexes side by side (2 cores: one sort each).
  const queue = [...indexDefs];
  await Promise.all([0, 1].map(async () => {
    const ddl = await owner.connect();
    try {
      await ddl.query(`SET maintenance_work_mem = '512MB'`);
      await ddl.query(`SET max_parallel_maintenance_workers = 0`);
      // pg_get_indexdef says ON ONLY for a partitioned index, which would build no partition's index.
      for (let ix = queue.shift(); ix; ix = queue.shift()) await ddl.query(ix.def.replace(' ON ONLY ', ' ON '));
    } finally { ddl.release(); }
  }));
  for (const [k] of LOAD_SETTINGS) await owner.query(`ALTER SYSTEM RESET ${k}`);
  await owner.query('SELECT pg_reload_conf()');
  await owner.query('CHECKPOINT');
  const invalid = (await owner.query(`SELECT count(*)::int AS n FROM pg_index WHERE NOT indisvalid`)).rows[0].n;
  if (invalid) throw new Error(`${invalid} indexes are not valid after the rebuild`);
  const indexSeconds = (performance.now() - tI) / 1000;
  log(`[${label}] rebuilt ${indexDefs.length} indexes in ${indexSeconds.toFixed(1)}s`);
  const tA = performance.now();
  // VACUUM sets the visibility map, which index-only scans need; autovacuum would do it
  // on its own schedule after a bulk load.
  const tables = (await owner.query(`SELECT c.oid::regclass::text AS t FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
    AND c.relkind = 'r' ORDER BY pg_relation_size(c.oid) DESC`)).rows.map((r) => r.t as string);
  await Promise.all([0, 1].map(async () => { for (let t = tables.shift(); t; t = tables.shift()) await owner.query(`VACUUM ${t}`); }));
  await owner.query('ANALYZE');
  const analyzeSeconds = (performance.now() - tA) / 1000;
  const loadSec = (performance.now() - t0) / 1000;
  const byTable = counters.byTable;
  const rows = Object.values(byTable).reduce((x, y) => x + y, 0);
  const load: LoadStats = {
    seconds: loadSec, resources: counters.resources, indexRows: counters.indexRows,
    resourcesPerSec: counters.resources / loadSec, rowsPerSec: rows / loadSec, indexSeconds, analyzeSeconds, byTable,
  };
  const size = (await owner.query(`SELECT pg_size_pretty(pg_database_size(current_database())) AS s`)).rows[0].s;
  console.log(`[${label}] loaded ${load.resources} resources (${rows} rows incl. ${load.indexRows} index rows) in ${loadSec.toFixed(1)}s ` +
    `(indexes ${indexSeconds.toFixed(1)}s, VACUUM ANALYZE ${analyzeSeconds.toFixed(1)}s): ${Math.round(load.resourcesPerSec)} resources/s; database ${size}`);
  return { server, load, orgs: { default: def, second }, patients, observations };
}

// ------------------------------------------------------------ shapes

/** What a run of a shape varies: a patient with the usual observation count, its MRN, a rare family name. */
interface QCtx { patient: string; mrn: string; family: string; since: string }

/** `goal`: the issue's database-time goal (ms). `http`: measured over HTTP only (not one search). */
interface Shape { name: string; goal?: number; path: (ctx: QCtx) => string; walk?: number; http?: true }

const selected = (s: Shape) => !SHAPE_FILTER.length || SHAPE_FILTER.some((f) => s.name.toLowerCase().includes(f));
const LOINC_HR = encodeURIComponent('http://loinc.org|8867-4');
const SHAPES: Shape[] = [
  { name: 'Patient?family (10 hits)', goal: 0.25, path: (c) => `Patient?family=${c.family}` },
  { name: 'Patient?identifier', goal: 0.25, path: (c) => `Patient?identifier=${encodeURIComponent(`${MRN_SYSTEM}|${c.mrn}`)}` },
  { name: 'Obs patient+code', goal: 0.7, path: (c) => `Observation?patient=${c.patient}&code=${LOINC_HR}` },
  { name: 'Obs patient+category+date -date', goal: 1, path: (c) => `Observation?patient=${c.patient}&category=vital-signs&date=ge${c.since}&_sort=-date` },
  { name: 'Encounter patient _revinclude', goal: 2, path: (c) => `Encounter?patient=${c.patient}&_revinclude=Observation:encounter` },
  { name: 'Patient?family common prefix', path: () => 'Patient?family=smi&_count=20' },
  { name: 'Obs code+value-quantity', path: () => `Observation?code=${LOINC_HR}&value-quantity=gt100&_count=20` },
  { name: 'Obs code+vq _total=estimate', path: () => `Observation?code=${LOINC_HR}&value-quantity=gt100&_count=20&_total=estimate` },
  { name: 'Obs code+vq _total=accurate', path: () => `Observation?code=${LOINC_HR}&value-quantity=gt100&_count=20&_total=accurate` },
  { name: '10-page walk -date', path: (c) => `Observation?patient=${c.patient}&_count=1&_sort=-date`, walk: 10 },
  { name: 'Patient $everything', path: (c) => `Patient/${c.patient}/$everything?_type=Patient,Encounter,Observation,MedicationStatement&_count=100`, http: true },
];

/** Run contexts: patients of the queried tenant with exactly the mean observation count, spread over the tenant. */
async function contexts(ds: Dataset, n: number): Promise<QCtx[]> {
  const mean = Math.round(ds.observations / ds.patients);
  const since = new Date(Date.now() - 365 * DAY).toISOString().slice(0, 10);
  // Also the usual number of heart rates (35% of a patient's observations) and of vital signs
  // in the last year (80%, half of them), so the code and category+date shapes match as many
  // at every run; with too few such patients, only the observation count is kept.
  const pick = (strict: boolean) => ds.server.db.owner.query(
    `SELECT patient_id FROM observations WHERE org_id = $1 AND patient_id LIKE 'pat-a-%' GROUP BY patient_id
      HAVING count(*) = $2 AND (NOT $4 OR (count(*) FILTER (WHERE code_tokens @> '{|8867-4}') = $5
        AND count(*) FILTER (WHERE category_tokens @> '{|vital-signs}' AND effective_start >= $6::timestamptz) = $7))
      ORDER BY md5(patient_id) LIMIT $3`, [ds.orgs.default, mean, n, strict, Math.round(mean * 0.35), since, Math.round(mean * 0.4)]);
  let { rows } = await pick(true);
  if (rows.length < n / 2) rows = (await pick(false)).rows;
  const groups = Math.max(1, Math.floor(ds.patients / RARE_GROUP));
  return rows.map((r, k) => {
    const index = Number(String(r.patient_id).split('-').pop());
    const g = Math.floor((k * groups) / rows.length);
    return { patient: r.patient_id, mrn: mrnOf('a', index), family: rareFamily('a', g * RARE_GROUP + 1), since };
  });
}

// ------------------------------------------------------------ database time

/** `generic`: the server ran it prepared, on its generic plan (onGenericPlans, src/store/statements.ts). */
interface Statement { sql: string; values: unknown[]; generic?: boolean }
interface DbTime { plan: number; exec: number; total: number; statements: number; runs: number; rows: [min: number, max: number]; plans: { sql: string; plan: string }[] }

/** The client with every query recorded before it runs (text and values, as the server sends them). */
function recording(client: pg.PoolClient, into: Statement[]): pg.PoolClient {
  let generic = false;
  return new Proxy(client, {
    get(target, prop) {
      if (prop === 'query') {
        return (cfg: any, values?: unknown[]) => {
          const sql: string = typeof cfg === 'string' ? cfg : cfg.text;
          if (/set_config\('plan_cache_mode', 'force_generic_plan'/.test(sql)) generic = true;
          else if (/set_config\('plan_cache_mode', \$1/.test(sql)) generic = false;
          into.push(typeof cfg === 'string' ? { sql: cfg, values: values ?? [] }
            : { sql: cfg.text, values: cfg.values ?? values ?? [], generic: generic && cfg.name !== undefined });
          return (target.query as any)(cfg, values);
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** Runs the search as the server does (runSearch, then fetchIncludes; a walk follows its cursor) and returns its statements. */
async function serverStatements(tx: pg.PoolClient, orgId: number, rel: string, walk: number, maxCount: number, defaultCount: number): Promise<{ statements: Statement[]; matches: number }> {
  const [type, qs] = rel.split('?');
  const q = parseSearch(type, [...new URLSearchParams(qs).entries()]);
  const statements: Statement[] = [];
  const rec = recording(tx, statements);
  const count = Math.min(q.count !== undefined ? Number(q.count) : defaultCount, maxCount);
  let after: string[] | undefined;
  let matches = 0;
  for (let i = 0; i < walk; i++) {
    const page = await runSearch(rec, { orgId, type, criteria: q.criteria, sort: q.sort, count, after, total: q.total });
    const included = q.include.length || q.revinclude.length ? await fetchIncludes(rec, type, page.rows.map((r) => r.id), q.include, q.revinclude, maxCount) : [];
    matches += page.rows.length + included.length;
    after = page.next;
    if (!after) break;
  }
  // Binding the tenant and plan-cache switches are not the search's.
  return { statements: statements.filter((s) => !/set_config\(/.test(s.sql)), matches };
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

function inline(sql: string, values: unknown[]): string {
  return sql.replace(/\$(\d+)\b/g, (_, i) => {
    const v = values[Number(i) - 1];
    if (v === null || v === undefined) return 'NULL';
    if (typeof v === 'number') return String(v);
    if (Array.isArray(v)) return `'{${v.map((x) => `"${String(x).replace(/["\\]/g, '\\$&')}"`).join(',')}}'`;
    return `'${String(v).replace(/'/g, "''")}'`;
  });
}

/** Planning and execution ms of one statement as the request role: EXPLAIN ANALYZE, or for the planner's
 * own row estimate (an EXPLAIN the server runs) the planning of what it explains. */
async function timeStatement(c: pg.PoolClient, s: Statement): Promise<{ plan: number; exec: number }> {
  if (s.generic) {
    // As the server runs it: prepared once per connection, executed on its generic plan.
    const name = await prepared(c, s.sql);
    await c.query(`SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`);
    const json = (await c.query(`EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) EXECUTE ${name}(${s.values.map((v) => inline('$1', [v])).join(', ')})`)).rows[0]['QUERY PLAN'];
    await c.query(`SELECT set_config('plan_cache_mode', 'force_custom_plan', true)`);
    const top = (Array.isArray(json) ? json : JSON.parse(json))[0];
    return { plan: top['Planning Time'], exec: top['Execution Time'] };
  }
  const inner = /^EXPLAIN \(FORMAT JSON\) /.exec(s.sql);
  const sql = inner ? `EXPLAIN (SUMMARY ON, FORMAT JSON) ${s.sql.slice(inner[0].length)}` : `EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) ${s.sql}`;
  const json = (await c.query(sql, s.values)).rows[0]['QUERY PLAN'];
  const top = (Array.isArray(json) ? json : JSON.parse(json))[0];
  return { plan: top['Planning Time'], exec: inner ? 0 : top['Execution Time'] };
}

/** The statement's name on this connection, prepared at first use (PREPARE outlives the transaction). */
const preparedNames = new WeakMap<pg.PoolClient, Map<string, string>>();
async function prepared(c: pg.PoolClient, sql: string): Promise<string> {
  const names = preparedNames.get(c) ?? new Map<string, string>();
  preparedNames.set(c, names);
  let name = names.get(sql);
  if (!name) {
    name = `bench_${names.size}`;
    await c.query(`PREPARE ${name} AS ${sql}`);
    names.set(sql, name);
  }
  return name;
}

async function planText(c: pg.PoolClient, s: Statement): Promise<string> {
  if (s.generic) {
    const name = await prepared(c, s.sql);
    await c.query(`SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`);
    const text = (await c.query(`EXPLAIN (ANALYZE, BUFFERS) EXECUTE ${name}(${s.values.map((v) => inline('$1', [v])).join(', ')})`)).rows.map((r) => r['QUERY PLAN']).join('\n');
    await c.query(`SELECT set_config('plan_cache_mode', 'force_custom_plan', true)`);
    return `-- generic plan (prepared)\n${text}`;
  }
  const inner = /^EXPLAIN \(FORMAT JSON\) /.exec(s.sql);
  const sql = inner ? `EXPLAIN (SUMMARY ON) ${s.sql.slice(inner[0].length)}` : `EXPLAIN (ANALYZE, BUFFERS) ${s.sql}`;
  return (await c.query(sql, s.values)).rows.map((r) => r['QUERY PLAN']).join('\n');
}

/** Median database time of a shape over DB_RUNS runs (after DB_WARMUP), each run with the next context. */
async function dbTime(ds: Dataset, shape: Shape, ctxs: QCtx[]): Promise<DbTime> {
  const c = await ds.server.db.app.connect();
  const plans: number[] = [];
  const execs: number[] = [];
  const totals: number[] = [];
  let statements = 0;
  const rows: [number, number] = [Infinity, 0];
  let shown: { sql: string; plan: string }[] = [];
  try {
    let runs = DB_RUNS;
    // Warm-up visits every context once (a reused data set starts cold), or DB_WARMUP runs of a slow shape.
    let warm = Math.max(DB_WARMUP, ctxs.length);
    for (let run = 0; run < warm + runs; run++) {
      const t0 = performance.now();
      await c.query('BEGIN');
      try {
        await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(ds.orgs.default)]);
        const found = await serverStatements(c, ds.orgs.default, shape.path(ctxs[run % ctxs.length]), shape.walk ?? 1, ds.server.config.maxCount, ds.server.config.defaultCount);
        let plan = 0;
        let exec = 0;
        for (const s of found.statements) { const t = await timeStatement(c, s); plan += t.plan; exec += t.exec; }
        if (run === 0) {
          shown = [];
          for (const s of found.statements) shown.push({ sql: inline(s.sql, s.values), plan: await planText(c, s) });
        }
        if (run === 0 && performance.now() - t0 > 1000) { runs = Math.min(runs, DB_SLOW_RUNS); warm = DB_WARMUP; }
        if (run >= warm) { plans.push(plan); execs.push(exec); totals.push(plan + exec); statements = found.statements.length; rows[0] = Math.min(rows[0], found.matches); rows[1] = Math.max(rows[1], found.matches); }
      } finally { await c.query('ROLLBACK'); }
    }
  } finally { c.release(); }
  return { plan: median(plans), exec: median(execs), total: median(totals), statements, runs: plans.length, rows, plans: shown };
}

async function dbTimes(ds: Dataset, ctxs: QCtx[], label: string): Promise<Record<string, DbTime>> {
  const out: Record<string, DbTime> = {};
  const t0 = performance.now();
  for (const shape of SHAPES) {
    if (shape.http || !selected(shape)) continue;
    const d = await dbTime(ds, shape, ctxs);
    out[shape.name] = d;
    console.log(`[${label}] ${shape.name.padEnd(34)} db plan ${d.plan.toFixed(3)} exec ${d.exec.toFixed(3)} total ${d.total.toFixed(3)} ms (${d.statements} statements, ${d.rows[0]}-${d.rows[1]} resources)`);
  }
  console.log(`[${label}] database times in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  return out;
}

// ------------------------------------------------------------ HTTP

interface Http { p50: number; reqPerSec: number; n: number; entries: number; total?: number; errors: number; firstError?: string }

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };

async function once(url: string, walk: number | undefined): Promise<{ entries: number; total?: number }> {
  let next: string | undefined = url;
  let entries = 0;
  let total: number | undefined;
  for (let i = 0; i < (walk ?? 1) && next; i++) {
    const res = await fetch(next, { headers: { accept: 'application/fhir+json' } });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`HTTP ${res.status} ${text.slice(0, 300)}`);
    const b = JSON.parse(text);
    entries += b.entry?.length ?? 0;
    if (i === 0) total = b.total;
    next = b.link?.find((l: any) => l.relation === 'next')?.url;
  }
  return { entries, total };
}

/** Each client walks the contexts from its own offset, for SECONDS or MAX_REQ requests in all. */
async function http(base: string, shape: Shape, ctxs: QCtx[]): Promise<Http> {
  const urls = ctxs.map((c) => `${base}/${shape.path(c)}`);
  const first = await once(urls[0], shape.walk);
  for (let i = 1; i < 4; i++) await once(urls[i % urls.length], shape.walk);
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const deadline = performance.now() + SECONDS * 1000;
  let issued = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async (_, k) => {
    for (let i = k; performance.now() < deadline && issued < MAX_REQ; i += CLIENTS) {
      issued++;
      const s = performance.now();
      try { await once(urls[i % urls.length], shape.walk); lat.push(performance.now() - s); } catch (e) { errors++; firstError ??= String(e); }
    }
  }));
  const sec = (performance.now() - t0) / 1000;
  return { p50: pct(lat, 0.5), reqPerSec: lat.length / sec, n: lat.length, entries: first.entries, total: first.total, errors, firstError };
}

async function httpAll(ds: Dataset, ctxs: QCtx[], label: string): Promise<Record<string, Http>> {
  const out: Record<string, Http> = {};
  for (const shape of SHAPES) {
    if (!selected(shape)) continue;
    const m = await http(ds.server.url, shape, ctxs);
    out[shape.name] = m;
    console.log(`[${label}] ${shape.name.padEnd(34)} http p50 ${m.p50.toFixed(1)}ms ${m.reqPerSec.toFixed(0)} req/s entries ${m.entries} total ${m.total ?? '-'}${m.errors ? ` ERRORS ${m.errors} ${m.firstError}` : ''}`);
  }
  return out;
}

// ------------------------------------------------------------ writes

/** `n` writes over HTTP as transaction Bundles of 100 (20 new Patients, 80 Observations of them), 4 at a time. */
async function writePhase(ds: Dataset, n: number): Promise<{ seconds: number; resourcesPerSec: number; errors: number }> {
  const now = Date.now();
  const bundles = Math.ceil(n / 100);
  let next = 0;
  let errors = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    for (let b = next++; b < bundles; b = next++) {
      const entries: any[] = [];
      for (let k = 0; k < 20; k++) entries.push(patient('w', b * 20 + k));
      for (let k = 0; k < 80; k++) {
        // No encounter reference: the new patients have no Encounters.
        const { encounter: _e, ...o } = observation('w', b * 80 + k, b * 20 + (k % 20), now) as any;
        entries.push(o);
      }
      const res = await fetch(`${ds.server.url}/`, {
        method: 'POST', headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' },
        body: JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: entries.map((r) => ({ resource: r, request: { method: 'PUT', url: `${r.resourceType}/${r.id}` } })) }),
      });
      const text = await res.text();
      if (res.status !== 200) { errors++; if (errors === 1) console.log(`write error: HTTP ${res.status} ${text.slice(0, 300)}`); }
      if (b % 100 === 99) console.log(`  ${(b + 1) * 100} writes, ${Math.round(((b + 1) * 100) / ((performance.now() - t0) / 1000))}/s`);
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, resourcesPerSec: (bundles * 100) / seconds, errors };
}

// ------------------------------------------------------------ main

interface SetResult {
  label: string; patients: number; observations: number; load?: LoadStats; dataDir: string;
  db: Record<string, DbTime>; http?: Record<string, Http>; writes?: Awaited<ReturnType<typeof writePhase>>; afterWrites?: Record<string, DbTime>;
  seconds: Record<string, number>;
}

async function runSet(set: (typeof SETS)[number]): Promise<SetResult> {
  const seconds: Record<string, number> = {};
  let t = performance.now();
  const lap = (k: string) => { seconds[k] = (performance.now() - t) / 1000; t = performance.now(); };
  const ds = await buildDataset(set.label, set.patients, set.observations, set.reuse);
  lap('load');
  try {
    const ctxs = await contexts(ds, 24);
    if (!ctxs.length) throw new Error(`no patient of the queried tenant has ${Math.round(ds.observations / ds.patients)} observations`);
    const db = await dbTimes(ds, ctxs, set.label);
    lap('database times');
    const httpRes = DB_ONLY ? undefined : await httpAll(ds, ctxs, set.label);
    if (httpRes) lap('http');
    let writes: SetResult['writes'];
    let afterWrites: SetResult['afterWrites'];
    if (set.label === '100k' && WRITES > 0) {
      console.log(`[${set.label}] ${WRITES} writes over HTTP...`);
      writes = await writePhase(ds, WRITES);
      console.log(`[${set.label}] writes: ${writes.seconds.toFixed(1)}s, ${Math.round(writes.resourcesPerSec)} resources/s${writes.errors ? `, ${writes.errors} failed bundles` : ''}`);
      lap('writes');
      afterWrites = await dbTimes(ds, ctxs, `${set.label} after writes`);
      lap('database times after writes');
    }
    return { label: set.label, patients: ds.patients, observations: ds.observations, load: ds.load, dataDir: ds.server.dataDir, db, http: httpRes, writes, afterWrites, seconds };
  } finally {
    await ds.server.stop();
    if (KEEP || set.reuse) console.log(`[${set.label}] data kept in ${ds.server.dataDir}`);
    else removeDataDir(ds.server.dataDir);
  }
}

const started = new Date();
const results: SetResult[] = [];
for (const set of SETS) results.push(await runSet(set));
const small = results.find((r) => r.label === '10k');
const big = results.find((r) => r.label === '100k');

const f = (x: number | undefined, d = 3) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
const ppt = (d?: DbTime) => (d ? `${f(d.plan)} / ${f(d.exec)} / ${f(d.total)}` : '-');
const rows = SHAPES.filter((s) => !s.http && selected(s)).map((s) => {
  const a = small?.db[s.name];
  const b = big?.db[s.name];
  const w = big?.afterWrites?.[s.name];
  const ratio = a && b ? b.total / a.total : undefined;
  const wRatio = a && w ? w.total / a.total : undefined;
  // The goal: within it at 10k, and at most 1.5x that at 100k and after the writes.
  const meets = s.goal === undefined || !a ? undefined : a.total <= s.goal && (ratio === undefined || ratio <= 1.5) && (wRatio === undefined || wRatio <= 1.5);
  return { shape: s.name, goal: s.goal, small: a && { plan: a.plan, exec: a.exec, total: a.total }, big: b && { plan: b.plan, exec: b.exec, total: b.total }, ratio, afterWrites: w?.total, meets };
});
const sizeOf = (r?: SetResult) => (r ? `${r.patients / 1000}k Pat / ${r.observations / 1000}k Obs` : 'not run');
const table = [
  `| shape | goal ms | 10k plan / exec / total ms | 100k plan / exec / total ms | ratio 100k/10k (≤1.5?) | after writes total ms | meets goal |`,
  '|---|---:|---:|---:|---:|---:|:-:|',
  ...rows.map((r) => `| ${r.shape} | ${r.goal ?? '-'} | ${ppt(small?.db[r.shape])} | ${ppt(big?.db[r.shape])} | ${r.ratio === undefined ? '-' : `${r.ratio.toFixed(2)} ${r.ratio <= 1.5 ? 'yes' : 'no'}`} | ${f(r.afterWrites)} | ${r.meets === undefined ? '-' : r.meets ? 'yes' : '**no**'} |`),
].join('\n');
const httpTable = small?.http || big?.http ? [
  `| shape | 10k p50 ms | 10k req/s | 100k p50 ms | 100k req/s | entries 10k/100k |`,
  '|---|---:|---:|---:|---:|---|',
  ...SHAPES.filter(selected).map((s) => { const a = small?.http?.[s.name]; const b = big?.http?.[s.name]; return `| ${s.name} | ${f(a?.p50, 1)} | ${f(a?.reqPerSec, 0)} | ${f(b?.p50, 1)} | ${f(b?.reqPerSec, 0)} | ${a?.entries ?? '-'}/${b?.entries ?? '-'} |`; }),
].join('\n') : '';

const setup = `Sets: 10k = ${sizeOf(small)}, 100k = ${sizeOf(big)} in the queried tenant (plus 4 Encounters and 4 MedicationStatements per patient; a second tenant of ${SECOND_SHARE}x). ` +
  `Database time: median of ${DB_RUNS} runs (after a warm-up run per context) of EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) as kiln_app under RLS, planning and execution summed over the statements the server runs for the search (page, total, includes; a walk's 10 pages); runs vary the patient / name / MRN among ${24} of equal result size. ` +
  (big?.writes ? `After writes: ${WRITES} resources written over HTTP (transaction Bundles of 20 Patients + 80 Observations, ${CLIENTS} at a time, ${Math.round(big.writes.resourcesPerSec)} resources/s), measured at once with no manual ANALYZE. ` : 'No write phase in this run. ') +
  (httpTable ? `HTTP: ${CLIENTS} keep-alive clients, ${SECONDS}s or ${MAX_REQ} requests per shape, auth and audit off.` : 'HTTP not measured (BENCH_DB_ONLY=1).');

console.log(`\n${setup}\n`);
for (const r of results) console.log(`[${r.label}] phases: ${Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(1)}s`).join(', ')}`);
console.log(`\n${table}\n`);
if (httpTable) console.log(`${httpTable}\n`);

fs.mkdirSync(path.join(HERE, 'results'), { recursive: true });
const stamp = started.toISOString().replace(/[:.]/g, '-');
const file = path.join(HERE, 'results', `search-${stamp}.json`);
const config = { SETS, SECOND_SHARE, DB_ONLY, WRITES, DB_RUNS, DB_WARMUP, SECONDS, MAX_REQ, CLIENTS, BATCH };
fs.writeFileSync(file, JSON.stringify({ started: started.toISOString(), config, rows, results }, null, 2));
console.log(`written ${file}`);

const md: string[] = [
  `# Search plans, ${started.toISOString().slice(0, 10)} (\`npm run bench:search\`, issue #25)`, '',
  `Written by bench/search.ts at ${started.toISOString()}. ${setup}`, '',
  table, '',
  ...(httpTable ? ['HTTP:', '', httpTable, ''] : []),
  ...results.map((r) => `- ${r.label}: ${Object.entries(r.seconds).map(([k, v]) => `${k} ${v.toFixed(1)}s`).join(', ')}${r.load ? ` (load ${Math.round(r.load.resourcesPerSec)} resources/s, indexes ${r.load.indexSeconds.toFixed(1)}s, VACUUM ANALYZE ${r.load.analyzeSeconds.toFixed(1)}s)` : ''}`),
  '', '## Statements and plans', '',
  'Each shape\'s statements as the server built them (values inlined for reading; they run with bind parameters), with EXPLAIN (ANALYZE, BUFFERS) of the first measured run.', '',
];
for (const s of SHAPES.filter((x) => !x.http && selected(x))) {
  md.push(`### ${s.name}`, '');
  const states: [string, DbTime | undefined][] = [['10k', small?.db[s.name]], ['100k', big?.db[s.name]], ['100k after writes', big?.afterWrites?.[s.name]]];
  for (const [state, d] of states) {
    if (!d) continue;
    md.push(`#### ${state}: plan ${f(d.plan)} + exec ${f(d.exec)} = ${f(d.total)} ms (median of ${d.runs} runs, ${d.rows[0]}-${d.rows[1]} resources)`, '');
    d.plans.forEach((p, i) => md.push(`Statement ${i + 1}:`, '', '```sql', p.sql, '```', '', '```', p.plan, '```', ''));
  }
}
const mdFile = path.join(HERE, 'results', `${started.toISOString().slice(0, 10)}-search-plans.md`);
fs.writeFileSync(mdFile, md.join('\n'));
console.log(`written ${mdFile}`);
for (const r of results) if (KEEP || SETS.find((s) => s.label === r.label)?.reuse) console.log(`kept ${r.label}: ${r.dataDir}`);
process.exit(0);
