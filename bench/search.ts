// Search bench: the same query set over HTTP at a small (10k Observations) and a big
// (BENCH_OBSERVATIONS) data set, bulk-loaded through SQL (bench/search-data.ts), to
// see how search latency grows with table size at similar result sizes.
//
//   npx tsx bench/search.ts
//   BENCH_OBSERVATIONS=300000 BENCH_PATIENTS=3000 npx tsx bench/search.ts
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { startTestServer, removeDataDir, freePort, type TestServer } from '../test/support/server.ts';
import { createOrg, ensureOrgPartitions } from '../src/store/tenants.ts';
import { parseSearch } from '../src/search/query.ts';
import { searchStatements } from '../src/store/searchRun.ts';
import { BulkLoader, ENCOUNTERS_PER_PATIENT, MRN_SYSTEM, encounter, medicationStatement, mrnOf, observation, patient, patientId } from './search-data.ts';
import { envNumber } from './env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIG_OBS = envNumber('BENCH_OBSERVATIONS', 1_000_000);
const BIG_PATIENTS = envNumber('BENCH_PATIENTS', 10_000);
const SMALL_OBS = envNumber('BENCH_SMALL_OBSERVATIONS', 10_000);
const SMALL_PATIENTS = envNumber('BENCH_SMALL_PATIENTS', 100);
const SECONDS = envNumber('BENCH_SECONDS', 5);
const MAX_REQ = envNumber('BENCH_MAX_REQUESTS', 200);
const CLIENTS = envNumber('BENCH_CLIENTS', 4);
const BATCH = envNumber('BENCH_BATCH', 2000);
const KEEP = process.env.BENCH_KEEP === '1';

interface LoadStats { seconds: number; resources: number; indexRows: number; resourcesPerSec: number; rowsPerSec: number; byTable: Record<string, number> }

/** Loads one tenant: patients, 4 encounters + 4 medication statements each, observations spread over patients. */
async function loadTenant(server: TestServer, orgId: number, tag: string, patients: number, observations: number, loadTime: number, log: (s: string) => void) {
  const owner = server.db.owner;
  const loader = new BulkLoader(owner, orgId, loadTime);
  await loader.init();
  const now = Date.now();
  let batch: any[] = [];
  const push = async (r: any) => { batch.push(r); if (batch.length >= BATCH) { const b = batch; batch = []; await loader.add(b); } };
  const end = async () => { if (batch.length) { const b = batch; batch = []; await loader.add(b); } await loader.flush(); };
  for (let i = 0; i < patients; i++) await push(patient(tag, i));
  await end();
  for (let i = 0; i < patients; i++) for (let k = 0; k < ENCOUNTERS_PER_PATIENT; k++) await push(encounter(tag, i, k, now));
  await end();
  for (let i = 0; i < patients; i++) for (let k = 0; k < ENCOUNTERS_PER_PATIENT; k++) await push(medicationStatement(tag, i, k, now));
  await end();
  const t0 = performance.now();
  for (let j = 0; j < observations; j++) {
    // Patient of observation j: a skewed-but-bounded spread (each patient gets 0.5x..1.5x the mean).
    const p = Math.floor(patients * Math.pow((j * 0.6180339887) % 1, 1.0)) % patients;
    await push(observation(tag, j, p, now));
    if (j > 0 && j % 50_000 === 0) log(`  ${tag}: ${j} observations, ${Math.round(j / ((performance.now() - t0) / 1000))}/s`);
  }
  await end();
  return loader.counters;
}

/** A data set kept by an earlier run (BENCH_KEEP=1), measured again without loading. */
async function reuseDataset(label: string, dataDir: string): Promise<{ server: TestServer; load: LoadStats; orgs: { default: number; second: number } }> {
  const server = await startTestServer({ dataDir, pgPort: await freePort() });
  const org = async (slug: string) => (await server.db.owner.query(`SELECT id FROM organizations WHERE slug = $1`, [slug])).rows[0].id as number;
  const resources = Number((await server.db.owner.query(`SELECT count(*) FROM resource_ids`)).rows[0].count);
  console.log(`[${label}] reusing ${dataDir} (${resources} resources)`);
  return { server, load: { seconds: 0, resources, indexRows: 0, resourcesPerSec: 0, rowsPerSec: 0, byTable: {} }, orgs: { default: await org('default'), second: await org('bench-b') } };
}

async function buildDataset(label: string, patients: number, observations: number): Promise<{ server: TestServer; load: LoadStats; orgs: { default: number; second: number } }> {
  const reuse = process.env[label === 'small' ? 'BENCH_REUSE_SMALL' : 'BENCH_REUSE_BIG'];
  if (reuse) return reuseDataset(label, reuse);
  const server = await startTestServer();
  const owner = server.db.owner;
  const def: number = (await owner.query(`SELECT id FROM organizations WHERE slug = 'default'`)).rows[0].id;
  const second = (await createOrg(owner, 'bench-b', 'Bench B')).id;
  // The data spans 24 months: give both tenants monthly partitions for all of it, as an
  // operator would with KILN_PARTITION_MONTHS_BACK, instead of filling DEFAULT.
  for (const org of [def, second]) await ensureOrgPartitions(owner, org, 25);
  const t0 = performance.now();
  const loadTime = Date.now() - 3_600_000;
  const log = (s: string) => console.log(s);
  const half = Math.floor(observations / 2);
  const half_p = Math.max(1, Math.floor(patients / 2));
  console.log(`[${label}] loading ${patients} patients, ${observations} observations (2 tenants)...`);
  // Bulk-load style: the index tables' indexes are dropped for the load and rebuilt from
  // their own definitions afterwards (one sort per index instead of row-by-row upkeep).
  const indexDefs = (await owner.query(
    `SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
      JOIN pg_class t ON t.oid = i.indrelid WHERE t.relkind = 'p' AND t.relname LIKE 'search\\_%'`)).rows as { name: string; def: string }[];
  for (const ix of indexDefs) await owner.query(`DROP INDEX ${ix.name}`);
  const a = await loadTenant(server, def, 'a', half_p, half, loadTime, log);
  const b = await loadTenant(server, second, 'b', half_p, observations - half, loadTime, log);
  const tI = performance.now();
  const ddl = await owner.connect();
  try {
    await ddl.query(`SET maintenance_work_mem = '512MB'`);
    // pg_get_indexdef says ON ONLY for a partitioned index, which would build no partition's index.
    for (const ix of indexDefs) await ddl.query(ix.def.replace(' ON ONLY ', ' ON '));
    await ddl.query('RESET maintenance_work_mem');
  } finally { ddl.release(); }
  const invalid = (await owner.query(`SELECT count(*)::int AS n FROM pg_index WHERE NOT indisvalid`)).rows[0].n;
  if (invalid) throw new Error(`${invalid} indexes are not valid after the rebuild`);
  log(`[${label}] rebuilt ${indexDefs.length} index-table indexes in ${((performance.now() - tI) / 1000).toFixed(1)}s`);
  const loadSec = (performance.now() - t0) / 1000;
  const tA = performance.now();
  // VACUUM sets the visibility map, which index-only scans of the index tables need;
  // autovacuum would do it on its own schedule after a bulk load.
  await owner.query('VACUUM ANALYZE');
  const analyzeSec = (performance.now() - tA) / 1000;
  const byTable: Record<string, number> = {};
  for (const c of [a, b]) for (const [k, v] of Object.entries(c.byTable)) byTable[k] = (byTable[k] ?? 0) + v;
  const rows = Object.values(byTable).reduce((x, y) => x + y, 0);
  const load: LoadStats = {
    seconds: loadSec, resources: a.resources + b.resources, indexRows: a.indexRows + b.indexRows,
    resourcesPerSec: (a.resources + b.resources) / loadSec, rowsPerSec: rows / loadSec, byTable,
  };
  const size = (await owner.query(`SELECT pg_size_pretty(pg_database_size(current_database())) AS s`)).rows[0].s;
  console.log(`[${label}] loaded ${load.resources} resources (${rows} rows incl. ${load.indexRows} index rows) in ${loadSec.toFixed(1)}s: ` +
    `${Math.round(load.resourcesPerSec)} resources/s, ${Math.round(load.rowsPerSec)} rows/s; VACUUM ANALYZE ${analyzeSec.toFixed(1)}s; database ${size}`);
  return { server, load, orgs: { default: def, second } };
}

// ------------------------------------------------------------ queries

/** `operation`: not a search (no EXPLAIN of the search SQL). */
interface QueryDef { name: string; path: (ctx: QCtx) => string; walk?: number; operation?: true }
interface QCtx { patient: string; mrn: string }

const QUERIES: QueryDef[] = [
  { name: 'Patient family prefix', path: () => 'Patient?family=smi&_count=20' },
  { name: 'Patient identifier', path: (c) => `Patient?identifier=${encodeURIComponent(`${MRN_SYSTEM}|${c.mrn}`)}` },
  { name: 'Obs patient+code', path: (c) => `Observation?patient=${c.patient}&code=${encodeURIComponent('http://loinc.org|8867-4')}` },
  { name: 'Obs patient+category+date sort', path: (c) => `Observation?patient=${c.patient}&category=vital-signs&date=ge2025-01-01&date=lt2025-07-01&_sort=date` },
  { name: 'Obs code+value-quantity', path: () => `Observation?code=${encodeURIComponent('http://loinc.org|8867-4')}&value-quantity=gt100&_count=20` },
  { name: 'Obs code+value-quantity _total=estimate', path: () => `Observation?code=${encodeURIComponent('http://loinc.org|8867-4')}&value-quantity=gt100&_count=20&_total=estimate` },
  { name: 'Obs code+value-quantity _total=accurate', path: () => `Observation?code=${encodeURIComponent('http://loinc.org|8867-4')}&value-quantity=gt100&_count=20&_total=accurate` },
  { name: 'Encounter patient _revinclude', path: (c) => `Encounter?patient=${c.patient}&_revinclude=Observation:encounter` },
  { name: '10-page walk -date', path: (c) => `Observation?patient=${c.patient}&_count=10&_sort=-date`, walk: 10 },
  { name: 'Patient $everything', path: (c) => `Patient/${c.patient}/$everything?_type=Patient,Encounter,Observation,MedicationStatement&_count=100`, operation: true },
];

interface Measure { p50: number; p95: number; reqPerSec: number; n: number; resultEntries: number; total?: number; errors: number; firstError?: string }

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

async function measure(base: string, q: QueryDef, ctx: QCtx): Promise<Measure> {
  const url = `${base}/${q.path(ctx)}`;
  const first = await once(url, q.walk); // warm-up + result size
  for (let i = 0; i < 3; i++) await once(url, q.walk);
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const deadline = performance.now() + SECONDS * 1000;
  let issued = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (performance.now() < deadline && issued < MAX_REQ) {
      issued++;
      const s = performance.now();
      try { await once(url, q.walk); lat.push(performance.now() - s); } catch (e) { errors++; firstError ??= String(e); }
    }
  }));
  const sec = (performance.now() - t0) / 1000;
  return { p50: pct(lat, 0.5), p95: pct(lat, 0.95), reqPerSec: lat.length / sec, n: lat.length, resultEntries: first.entries, total: first.total, errors, firstError };
}

/** The patient of tenant 'a' whose observation count is closest to `target`, and its count. */
async function pickPatient(server: TestServer, orgId: number, target: number): Promise<{ id: string; count: number; index: number }> {
  const { rows } = await server.db.owner.query(
    `SELECT patient_id, count(*)::int AS n FROM observations WHERE org_id = $1 GROUP BY patient_id ORDER BY abs(count(*) - $2), patient_id LIMIT 1`, [orgId, target]);
  const id = rows[0].patient_id as string;
  return { id, count: rows[0].n, index: Number(id.split('-').pop()) };
}

// ------------------------------------------------------------ EXPLAIN (the server's own SQL)

function searchSql(orgId: number, type: string, pairs: [string, string][], count: number) {
  const q = parseSearch(type, pairs.filter(([n]) => !['_count', '_total'].includes(n)));
  const st = searchStatements({ orgId, type, criteria: q.criteria, sort: q.sort, count, total: 'none' });
  return { sql: st.page.sql, values: st.page.values, countSql: st.count.sql, countValues: st.count.values };
}

function inline(sql: string, values: unknown[]): string {
  return sql.replace(/\$(\d+)/g, (_, i) => { const v = values[Number(i) - 1]; return typeof v === 'number' ? String(v) : `'${String(v).replace(/'/g, "''")}'`; });
}

async function explainAll(server: TestServer, orgId: number, ctx: QCtx): Promise<Record<string, { sql: string; plan: string; countSql: string; countPlan: string; extra?: string }>> {
  const out: Record<string, any> = {};
  const client = await server.db.app.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
    const explain = async (sql: string, values: unknown[]) =>
      (await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${inline(sql, values)}`)).rows.map((r) => r['QUERY PLAN']).join('\n');
    for (const q of QUERIES) {
      if (q.name.includes('_total=') || q.operation) continue;
      const rel = q.path(ctx);
      const [type, qs] = rel.split('?');
      const pairs = [...new URLSearchParams(qs).entries()] as [string, string][];
      const count = Number(pairs.find(([n]) => n === '_count')?.[1] ?? 20);
      const criteriaPairs = pairs.filter(([n]) => !n.startsWith('_revinclude'));
      const s = searchSql(orgId, type, criteriaPairs, count);
      out[q.name] = { sql: inline(s.sql, s.values), plan: await explain(s.sql, s.values), countSql: inline(s.countSql, s.countValues), countPlan: await explain(s.countSql, s.countValues) };
      if (rel.includes('_revinclude')) {
        const ids = (await client.query(s.sql, s.values)).rows.slice(0, count).map((r) => r.id);
        const rev = `SELECT DISTINCT id FROM search_references WHERE org_id = current_setting('app.org_id')::integer AND resource_type = 'Observation' AND ('encounter'::text = '*' OR param = 'encounter') AND target_type = 'Encounter' AND target_id = ANY(ARRAY[${ids.map((i) => `'${i}'`).join(',')}]::text[])`;
        out[q.name].extra = `-- revinclude step\n${rev}\n${await explain(rev, [])}`;
      }
    }
    await client.query('ROLLBACK');
  } finally { client.release(); }
  return out;
}

// ------------------------------------------------------------ main

async function runSet(label: string, patients: number, observations: number) {
  const { server, load, orgs } = await buildDataset(label, patients, observations);
  try {
    const perPatient = observations / patients;
    const pick = await pickPatient(server, orgs.default, Math.round(SMALL_OBS / SMALL_PATIENTS)); void perPatient;
    const ctx: QCtx = { patient: pick.id, mrn: mrnOf('a', pick.index) };
    console.log(`[${label}] query patient ${pick.id} has ${pick.count} observations`);
    const results: Record<string, Measure> = {};
    for (const q of QUERIES) {
      const m = await measure(server.url, q, ctx);
      results[q.name] = m;
      console.log(`[${label}] ${q.name.padEnd(36)} p50 ${m.p50.toFixed(1)}ms p95 ${m.p95.toFixed(1)}ms ${m.reqPerSec.toFixed(0)} req/s entries ${m.resultEntries} total ${m.total ?? '-'}${m.errors ? ` ERRORS ${m.errors} ${m.firstError}` : ''}`);
    }
    const explains = label === 'big' || process.env.BENCH_EXPLAIN_SMALL === '1' ? await explainAll(server, orgs.default, ctx) : undefined;
    return { load, patient: pick, results, explains, patients, observations };
  } finally {
    await server.stop();
    if (!KEEP && !process.env.BENCH_REUSE_SMALL && !process.env.BENCH_REUSE_BIG) removeDataDir(server.dataDir);
    else console.log(`[${label}] data kept in ${server.dataDir}`);
  }
}

const started = new Date();
const small = await runSet('small', SMALL_PATIENTS, SMALL_OBS);
const big = await runSet('big', BIG_PATIENTS, BIG_OBS);

const rows = QUERIES.map((q) => {
  const s = small.results[q.name];
  const b = big.results[q.name];
  const ratio = b.p95 / s.p95;
  return { query: q.name, small: s, big: b, ratio, ok: ratio <= 1.5 };
});
const table = [
  `| query | ${SMALL_OBS / 1000}k p50 | ${SMALL_OBS / 1000}k p95 | ${SMALL_OBS / 1000}k req/s | ${BIG_OBS / 1000}k p50 | ${BIG_OBS / 1000}k p95 | ${BIG_OBS / 1000}k req/s | p95 ratio | ≤1.5 | entries small/big | total small/big |`,
  '|---|---:|---:|---:|---:|---:|---:|---:|:-:|---|---|',
  ...rows.map((r) => `| ${r.query} | ${r.small.p50.toFixed(1)} | ${r.small.p95.toFixed(1)} | ${r.small.reqPerSec.toFixed(0)} | ${r.big.p50.toFixed(1)} | ${r.big.p95.toFixed(1)} | ${r.big.reqPerSec.toFixed(0)} | ${r.ratio.toFixed(2)} | ${r.ok ? 'yes' : '**no**'} | ${r.small.resultEntries}/${r.big.resultEntries} | ${r.small.total ?? '-'}/${r.big.total ?? '-'} |`),
].join('\n');

if (big.explains) {
  for (const [name, e] of Object.entries(big.explains)) {
    console.log(`\n===== EXPLAIN at ${BIG_OBS} observations: ${name}\n${e.sql}\n${e.plan}\n-- total (count) query\n${e.countSql}\n${e.countPlan}${e.extra ? `\n${e.extra}` : ''}`);
  }
}
console.log(`\nLoad: small ${small.load.seconds.toFixed(1)}s (${Math.round(small.load.rowsPerSec)} rows/s), big ${big.load.seconds.toFixed(1)}s (${Math.round(big.load.resourcesPerSec)} resources/s, ${Math.round(big.load.rowsPerSec)} rows/s)`);
console.log(`Latencies in ms; ${CLIENTS} concurrent keep-alive clients, each query for ${SECONDS}s or ${MAX_REQ} requests; a walk is 10 requests.\n`);
console.log(table);

fs.mkdirSync(path.join(HERE, 'results'), { recursive: true });
const file = path.join(HERE, 'results', `search-${started.toISOString().replace(/[:.]/g, '-')}.json`);
fs.writeFileSync(file, JSON.stringify({ started: started.toISOString(), config: { BIG_OBS, BIG_PATIENTS, SMALL_OBS, SMALL_PATIENTS, SECONDS, MAX_REQ, CLIENTS, BATCH }, small, big, rows }, null, 2));
console.log(`\nwritten ${file}`);
process.exit(0);
