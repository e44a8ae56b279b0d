// `npm run bench:views [-- --scale 0.05] [--rounds 3]`: the vital-signs view shipped with Kiln
// (conformance/views/vital_signs.json: LOINC code, value, unit, time, patient; blood pressure
// panels give a row per component) over 1,000,000 Observations × scale, computed
//   (a) in PostgreSQL by the SQL src/store/views compiles from the view,
//   (b) in PostgreSQL by a hand-written query giving the same rows (the limit), and
//   (c) by the in-memory runner (src/views) over the Observations' bulk export NDJSON
//       (the export's own time reported beside it),
// with rows/s and the ratio (a)/(b) (goal >= 0.5). (a) and (b) run in a tenant transaction as
// kiln_app (row-level security on), each fully computed: count(*) and a checksum of every row's
// text, which must agree between them. Before timing, the three are compared row for row over
// a sample of Observations. Rounds alternate (a) and (b); the median round is reported.
// The Observations are generated in SQL straight into the tenant's partition (no API).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Resource } from '@medplum/fhirtypes';
import { loadConfig } from '../src/config.ts';
import { openDatabase, type Database } from '../src/store/database.ts';
import { withTenant } from '../src/store/resources.ts';
import { createOrg } from '../src/store/tenants.ts';
import { compileView, type CompiledView } from '../src/store/views/index.ts';
import { prepareView, type ViewDefinition } from '../src/views/index.ts';
import { exportNow } from '../src/export/run.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const n = Number(process.argv[i + 1]);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} needs a positive number, got '${process.argv[i + 1]}'`);
  return n;
}

const SCALE = option('scale', 1);
const ROUNDS = Math.round(option('rounds', 3));
const OBSERVATIONS = Math.max(60, Math.round(1_000_000 * SCALE));
const PATIENTS = Math.max(1, Math.round(OBSERVATIONS / 20));
const BATCH = 100_000;
const SAMPLE = 3000;

const LOINC = 'http://loinc.org';
/** Vital signs codes of the view's where clause; the last kind (hemoglobin) is not one: the where drops it. */
const KINDS = [
  { code: '29463-7', display: 'Body weight', unit: 'kg', base: 70.5 },
  { code: '8302-2', display: 'Body height', unit: 'cm', base: 170.2 },
  { code: '8867-4', display: 'Heart rate', unit: '/min', base: 72 },
  { code: '85354-9', display: 'Blood pressure panel', unit: '', base: 0 },
  { code: '2339-0', display: 'Glucose [Mass/volume] in Blood', unit: 'mg/dL', base: 95.25 },
  { code: '718-7', display: 'Hemoglobin [Mass/volume] in Blood', unit: 'g/dL', base: 13.5 },
];

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Observations shaped as the server stores them (id and meta first), with the indexed columns
 * the table needs; inserted without per-row foreign-key checks (consistent by construction).
 */
async function fill(db: Database, org: number): Promise<void> {
  const t0 = performance.now();
  const client = await db.owner.connect();
  const lastUpdated = new Date(Date.now() - 60_000).toISOString();
  try {
    await client.query('SET session_replication_role = replica');
    for (let from = 1; from <= OBSERVATIONS; from += BATCH) {
      const to = Math.min(OBSERVATIONS, from + BATCH - 1);
      await client.query(
        `WITH k AS (SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::numeric[]) WITH ORDINALITY AS k(code, display, unit, base, n)),
              o AS (SELECT g, 'vo' || g AS id, 've' || (g % 50000 + 1) AS enc, 'vp' || (g % $4::integer + 1) AS patient,
                           date_trunc('second', now()) - make_interval(days => g % 340, secs => g % 86400) AS t, (g % 6) + 1 AS n
                      FROM generate_series($2::integer, $3::integer) g),
              j AS (SELECT o.*, k.code, k.unit, to_char(o.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS ts,
                           CASE WHEN k.code = '85354-9' THEN
                             format(',"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"valueQuantity":{"value":%s,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic blood pressure"}]},"valueQuantity":{"value":%s,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]',
                                    110 + o.g % 40, 70 + o.g % 25)
                           ELSE format(',"valueQuantity":{"value":%s,"unit":"%s","system":"http://unitsofmeasure.org","code":"%s"}', (k.base + (o.g % 100) / 10.0)::float8, k.unit, k.unit) END AS value_json,
                           CASE WHEN k.code = '85354-9' THEN NULL ELSE (k.base + (o.g % 100) / 10.0)::float8 END AS v, k.display
                      FROM o JOIN k ON k.n = o.n)
         INSERT INTO observations (org_id, id, version_id, last_updated, resource, clinical_time, patient_id, encounter_id, status,
                                   category_tokens, code_tokens, effective_start, effective_end, value_quantity, value_unit)
         SELECT $1, j.id, 1, $9::timestamptz,
                format('{"resourceType":"Observation","id":"%s","meta":{"versionId":"1","lastUpdated":"%s"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"%s","display":"%s"}]},"subject":{"reference":"Patient/%s"},"encounter":{"reference":"Encounter/%s"},"effectiveDateTime":"%s"%s}',
                       j.id, $9::text, j.code, j.display, j.patient, j.enc, j.ts, j.value_json)::json,
                j.t, j.patient, j.enc, 'final', ARRAY['http://terminology.hl7.org/CodeSystem/observation-category|vital-signs', '|vital-signs'],
                ARRAY['http://loinc.org|' || j.code, '|' || j.code], j.t, j.t, j.v, NULLIF(j.unit, '')
           FROM j`,
        [org, from, to, PATIENTS, KINDS.map((k) => k.code), KINDS.map((k) => k.display), KINDS.map((k) => k.unit), KINDS.map((k) => k.base), lastUpdated]);
      process.stderr.write(`\r  observations ${to}/${OBSERVATIONS}`);
    }
    process.stderr.write('\n');
    // The locator, so the export reads them like API-written rows.
    await client.query(
      `INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted, clinical_time)
       SELECT org_id, 'Observation', id, 1, last_updated, false, clinical_time FROM observations WHERE org_id = $1`, [org]);
    await client.query('RESET session_replication_role');
    await client.query('VACUUM (ANALYZE) observations, resource_ids');
  } finally {
    client.release();
  }
  console.log(`filled ${OBSERVATIONS} Observations (${PATIENTS} patients) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

/** The view's rows written by hand over the same stored JSON: what the compiled SQL could at best be. */
function handSql(codes: string[]): { sql: string; params: unknown[] } {
  const first = (coding: string, field: string) =>
    `(SELECT c->>'${field}' FROM jsonb_array_elements(${coding}) c WHERE c->>'system' = $1 AND c ? '${field}' LIMIT 1)`;
  const key = (ref: string, type: string) => `CASE WHEN split_part(${ref}, '/', 1) = '${type}' THEN split_part(${ref}, '/', 2) END`;
  const quantity = (on: string) => `${first(`${on}->'code'->'coding'`, 'code')}, ${first(`${on}->'code'->'coding'`, 'display')},
      (${on}->'valueQuantity'->'value')::numeric, ${on}->'valueQuantity'->>'unit', ${on}->'valueQuantity'->>'code'`;
  const vital = (coding: string) => `EXISTS (SELECT 1 FROM jsonb_array_elements(${coding}) c WHERE c->>'system' = $1 AND c->>'code' = ANY ($2::text[]))`;
  return {
    sql: `SELECT r.id AS observation_id, ${key("j->'subject'->>'reference'", 'Patient')}, ${key("j->'encounter'->>'reference'", 'Encounter')}, j->>'status',
      j->>'effectiveDateTime', ${first("j->'code'->'coding'", 'code')}, v.code, v.display, v.value, v.unit, v.unit_code
    FROM observations r CROSS JOIN LATERAL (SELECT r.resource::jsonb AS j OFFSET 0) d
    CROSS JOIN LATERAL (
      SELECT ${quantity('j')} WHERE j ? 'valueQuantity'
      UNION ALL
      SELECT ${quantity('comp')} FROM jsonb_array_elements(j->'component') comp WHERE comp ? 'valueQuantity'
    ) v(code, display, value, unit, unit_code)
    WHERE r.org_id = current_setting('app.org_id')::integer
      AND (${vital("j->'code'->'coding'")} OR EXISTS (SELECT 1 FROM jsonb_array_elements(j->'component') comp WHERE ${vital("comp->'code'->'coding'")}))`,
    params: [LOINC, codes],
  };
}

/** The LOINC codes the view's where clause lists (so the hand-written query asks for the same). */
function whereCodes(view: ViewDefinition): string[] {
  return [...new Set([...(view.where ?? []).map((w) => w.path).join(' ').matchAll(/code = '([^']+)'/g)].map((m) => m[1]))];
}

interface SqlRun { rows: number; checksum: string; seconds: number }

/** Every row computed (count and a checksum over each row's text), in the tenant's transaction as kiln_app. */
async function runSql(db: Database, org: number, q: { sql: string; params: unknown[] }): Promise<SqlRun> {
  const t0 = performance.now();
  const { rows } = await withTenant(db.jobs, org, (tx) =>
    tx.query(`SELECT count(*)::bigint AS n, coalesce(sum(hashtext(x::text)::bigint), 0)::text AS h FROM (${q.sql}) x`, q.params));
  return { rows: Number(rows[0].n), checksum: rows[0].h, seconds: (performance.now() - t0) / 1000 };
}

/** The rows of one Observation sample, each as a JSON array in column order, sorted. */
async function sqlSample(db: Database, org: number, q: { sql: string; params: unknown[] }, idColumn: string, ids: string[]): Promise<string[]> {
  const n = q.params.length + 1;
  const { rows } = await withTenant(db.jobs, org, (tx) =>
    tx.query({ text: `SELECT x.* FROM (${q.sql}) x WHERE x.${idColumn} = ANY ($${n}::text[])`, values: [...q.params, ids], rowMode: 'array' }));
  return rows.map((r) => JSON.stringify(r.map((v: unknown) => (v === null ? null : String(v))))).sort();
}

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-views-'));
  const config = loadConfig({ ...process.env, KILN_DATA_DIR: dataDir, KILN_PG_PORT: String(await freePort()), DATABASE_URL: '' });
  const db = await openDatabase(config);
  try {
    const org = (await createOrg(db.owner, 'bench', 'Views bench')).id;
    await fill(db, org);
    const view = JSON.parse(fs.readFileSync(path.join(ROOT, 'conformance/views/vital_signs.json'), 'utf8')) as ViewDefinition;
    const prepared = prepareView(view);
    let compiled: CompiledView | undefined;
    try {
      compiled = compileView(view);
    } catch (e) {
      console.log(`(a) not measured: src/store/views does not compile the view: ${(e as Error).message}`);
    }
    const hand = handSql(whereCodes(view));

    // The in-memory runner reads the bulk export, as `kiln bigquery sync` does.
    const t0 = performance.now();
    const exported = await exportNow(db, config, { orgId: org, types: ['Observation'] });
    const exportSeconds = (performance.now() - t0) / 1000;
    const files = exported.files.filter((f) => f.type === 'Observation');
    const runner = async (keep?: Set<string>) => {
      const start = performance.now();
      let rows = 0;
      const sample: string[] = [];
      for (const f of files) {
        for await (const line of readline.createInterface({ input: fs.createReadStream(f.path), crlfDelay: Infinity })) {
          if (!line) continue;
          const resource = JSON.parse(line) as Resource;
          for (const row of prepared.rowsOf(resource)) {
            rows++;
            if (keep?.has(resource.id!)) sample.push(JSON.stringify(Object.values(row).map((v) => (v === null ? null : String(v)))));
          }
        }
      }
      return { rows, seconds: (performance.now() - start) / 1000, sample: sample.sort() };
    };

    // Row for row over a sample (every Observation kind, blood pressure panels and excluded codes
    // included); the runner's pass over every resource is also its timed run.
    const ids = Array.from({ length: Math.min(SAMPLE, OBSERVATIONS) }, (_, i) => `vo${1 + Math.floor((i * OBSERVATIONS) / Math.min(SAMPLE, OBSERVATIONS))}`);
    const handRows = await sqlSample(db, org, hand, 'observation_id', ids);
    const memory = await runner(new Set(ids));
    if (JSON.stringify(memory.sample) !== JSON.stringify(handRows)) {
      throw new Error(`the hand-written query and the in-memory runner disagree on the sample (${handRows.length} vs ${memory.sample.length} rows), e.g.\n${handRows[0]}\n${memory.sample[0]}`);
    }
    if (compiled) {
      const compiledRows = await sqlSample(db, org, compiled, compiled.columns[0].alias, ids);
      if (JSON.stringify(compiledRows) !== JSON.stringify(handRows)) throw new Error(`the compiled and the hand-written query disagree on the sample (${compiledRows.length} vs ${handRows.length} rows)`);
    }
    console.log(`sample of ${ids.length} Observations: ${handRows.length} rows, the same from ${compiled ? 'all three' : 'the hand-written query and the runner'}`);

    const rounds: { compiled?: SqlRun; hand: SqlRun }[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      const round = r % 2
        ? { compiled: compiled && await runSql(db, org, compiled), hand: await runSql(db, org, hand) }
        : { hand: await runSql(db, org, hand), compiled: compiled && await runSql(db, org, compiled) };
      if (round.compiled && (round.compiled.rows !== round.hand.rows || round.compiled.checksum !== round.hand.checksum)) {
        throw new Error(`round ${r}: compiled ${round.compiled.rows} rows (checksum ${round.compiled.checksum}), hand-written ${round.hand.rows} (${round.hand.checksum})`);
      }
      console.log(`round ${r}: ${round.compiled ? `compiled ${round.compiled.seconds.toFixed(2)} s, ` : ''}hand-written ${round.hand.seconds.toFixed(2)} s (${round.hand.rows} rows)`);
      rounds.push(round);
    }
    const ratioOf = (x: { compiled?: SqlRun; hand: SqlRun }) => (x.compiled ? x.hand.seconds / x.compiled.seconds : 0);
    const median = [...rounds].sort((a, b) => (ratioOf(a) || a.hand.seconds) - (ratioOf(b) || b.hand.seconds))[Math.floor(rounds.length / 2)];

    const full = memory;
    if (full.rows !== median.hand.rows) throw new Error(`the in-memory runner made ${full.rows} rows, the hand-written query ${median.hand.rows}`);
    const rate = (rows: number, s: number) => Math.round(rows / s).toLocaleString('en-US');
    console.log(`\n${OBSERVATIONS} Observations -> ${median.hand.rows} rows (median of ${ROUNDS} rounds for SQL)`);
    console.log('| runner | seconds | rows/s |');
    console.log('| --- | ---: | ---: |');
    if (median.compiled) console.log(`| (a) compiled SQL (src/store/views) | ${median.compiled.seconds.toFixed(2)} | ${rate(median.compiled.rows, median.compiled.seconds)} |`);
    console.log(`| (b) hand-written SQL | ${median.hand.seconds.toFixed(2)} | ${rate(median.hand.rows, median.hand.seconds)} |`);
    console.log(`| (c) in-memory runner over the export NDJSON | ${full.seconds.toFixed(2)} | ${rate(full.rows, full.seconds)} |`);
    console.log(`| bulk export of the Observations (before (c)) | ${exportSeconds.toFixed(2)} | ${rate(OBSERVATIONS, exportSeconds)} resources/s |`);
    if (median.compiled) console.log(`compiled / hand-written speed: ${ratioOf(median).toFixed(2)} (goal >= 0.5); per round ${rounds.map((x) => ratioOf(x).toFixed(2)).join(', ')}`);
    console.log(`(c) / (b) speed: ${(median.hand.seconds / full.seconds).toFixed(2)}`);
  } finally {
    await db.close();
    if (process.env.KILN_BENCH_KEEP === '1') console.log(`data dir kept: ${dataDir}`);
    else fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
