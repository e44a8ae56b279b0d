// `npm run bench:export`: bulk $export at scale. Fills one tenant with
// BENCH_EXPORT_ROWS resources (default 1,000,000: ~90% Observations, the rest Patients
// and Encounters) straight into the type tables with generate_series, then measures in
// the same run, in BENCH_EXPORT_ROUNDS rounds (default 3; the median round is reported):
//   - a raw `COPY (SELECT resource::text ...) TO STDOUT` of the same rows,
//   - right after it, the full export through the server's HTTP kick-off and status polling,
//   - their ratio (goal: export >= 0.5 of raw COPY),
//   - CPU seconds of PostgreSQL, the reading client and the server (by thread), and
//   - the server process's RSS during the export (goal: peak < 300 MB), sampled from
//     /proc/<pid>/status (the server runs as a child process);
// then Group exports of BENCH_EXPORT_GROUPS members (default 10,1000) against a raw COPY of
// the same rows found through the patient indexes.
// KILN_BENCH_KEEP=1 keeps the data dir; BENCH_EXPORT_DATA_DIR=<dir> reuses its filled tenant.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import net from 'node:net';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { createOrg } from '../src/store/tenants.ts';
import { envNumber } from './env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const ROWS = envNumber('BENCH_EXPORT_ROWS', 1_000_000);
const PATIENTS = Math.max(1, Math.round(ROWS * 0.05));
const ENCOUNTERS = Math.max(1, Math.round(ROWS * 0.05));
const OBSERVATIONS = ROWS - PATIENTS - ENCOUNTERS;
const BATCH = 100_000;
// Status polls while the export runs. Each is a real request (audited when auditing is on)
// that competes with the export for the 2 cores; 100 ms bounds the timing error to 0.1 s.
const POLL_MS = envNumber('BENCH_EXPORT_POLL_MS', 100);
const ROUNDS = envNumber('BENCH_EXPORT_ROUNDS', 3, 1);
// Members of the Group exports measured after the full ones (comma-separated; empty = none).
const GROUP_SIZES = (process.env.BENCH_EXPORT_GROUPS ?? '10,1000').split(',').filter(Boolean).map(Number);

interface Round {
  raw: { rows: number; bytes: number; seconds: number };
  export: { rows: number; bytes: number; seconds: number; files: number };
  ratio: number;
  cpuSeconds: Record<string, unknown>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function rssKb(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rss: get('VmRSS'), hwm: get('VmHWM') };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
function cpuSeconds(pid: number, processId?: number): number {
  try {
    const file = processId === undefined ? `/proc/${pid}/stat` : `/proc/${processId}/task/${pid}/stat`;
    const f = fs.readFileSync(file, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks (USER_HZ, 100 on Linux)
  } catch {
    return 0; // exited meanwhile
  }
}

/** CPU seconds of a process by thread name (node: main, libuv-worker for file I/O, V8 GC helpers, ...). */
function threadCpu(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const name = Number(t) === pid ? 'main' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      byName.set(name, (byName.get(name) ?? 0) + cpuSeconds(Number(t), pid));
    } catch { /* gone */ }
  }
  return byName;
}

/**
 * CPU seconds of the PostgreSQL server: the postmaster and its children (backends,
 * WAL writer, ...). With the machine shared, CPU used tells more than wall time
 * where the time goes.
 */
function pgCpu(dataDir: string): Map<number, number> {
  const postmaster = Number(fs.readFileSync(path.join(dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]);
  const byPid = new Map([[postmaster, cpuSeconds(postmaster)]]);
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = Number(fs.readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
      if (ppid === postmaster) byPid.set(Number(d), cpuSeconds(Number(d)));
    } catch { /* gone */ }
  }
  return byPid;
}

/** CPU used since `before` by the PostgreSQL processes alive now (one that exited meanwhile is not counted). */
function pgCpuSince(dataDir: string, before: Map<number, number>): number {
  let used = 0;
  for (const [pid, cpu] of pgCpu(dataDir)) used += cpu - (before.get(pid) ?? 0);
  return used;
}

/** Rows generated in SQL, the JSON text shaped like what the server stores (id and meta first). */
async function fill(pool: pg.Pool, org: number, lastUpdated: string): Promise<void> {
  const t0 = performance.now();
  const db = await pool.connect();
  try {
    await fillRows(db, org, lastUpdated);
  } finally {
    db.release();
  }
  console.log(`filled ${ROWS} resources (${PATIENTS} Patient, ${ENCOUNTERS} Encounter, ${OBSERVATIONS} Observation) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

const FILLED = ['patients', 'encounters', 'observations', 'resource_ids', 'clinical_events'];

/**
 * The rows go in without per-row foreign-key checks (session_replication_role = replica:
 * they are consistent by construction) and with the secondary indexes dropped, then
 * rebuilt in one pass each: several times faster than maintaining them row by row.
 */
async function fillRows(pool: pg.PoolClient, org: number, lastUpdated: string): Promise<void> {
  const indexDefs = (await pool.query(
    `SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
      WHERE i.indrelid = ANY($1::regclass[]) AND NOT i.indisprimary AND NOT i.indisunique`, [FILLED])).rows as { name: string; def: string }[];
  for (const ix of indexDefs) await pool.query(`DROP INDEX ${ix.name}`);
  await pool.query(`SET session_replication_role = replica`);
  await pool.query(
    `WITH p AS (SELECT g, 'bp' || g AS id FROM generate_series(1, $2::integer) g)
     INSERT INTO patients (org_id, id, version_id, last_updated, resource, mrn, family_name, given_names, birth_date, sex, active)
     SELECT $1, id, 1, $3::timestamptz,
            format('{"resourceType":"Patient","id":"%s","meta":{"versionId":"1","lastUpdated":"%s"},"identifier":[{"use":"usual","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"http://hospital.example.org/mrn","value":"MRN%s"}],"active":true,"name":[{"use":"official","family":"Family%s","given":["Given%s","Q"]}],"telecom":[{"system":"phone","value":"555-%s","use":"home"}],"gender":"%s","birthDate":"%s","address":[{"line":["%s Main St"],"city":"Springfield","state":"IL","postalCode":"62701"}]}',
                   id, $3::text, g, g % 997, g % 113, lpad((g % 10000)::text, 4, '0'), CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
                   to_char(date '1930-01-01' + (g % 30000), 'YYYY-MM-DD'), g % 999)::json,
            'http://hospital.example.org/mrn|MRN' || g, 'Family' || (g % 997), 'Given' || (g % 113) || ' Q',
            date '1930-01-01' + (g % 30000), CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END, true
       FROM p`, [org, PATIENTS, lastUpdated]);
  await pool.query(
    `INSERT INTO clinical_events (org_id, encounter_id, patient_id)
     SELECT $1, 'be' || g, 'bp' || (g % $3::integer + 1) FROM generate_series(1, $2::integer) g`, [org, ENCOUNTERS, PATIENTS]);
  await pool.query(
    `WITH e AS (SELECT g, 'be' || g AS id, 'bp' || (g % $3::integer + 1) AS patient,
                       date_trunc('second', now()) - make_interval(days => g % 340, secs => g % 86400) AS t
                  FROM generate_series(1, $2::integer) g)
     INSERT INTO encounters (org_id, id, version_id, last_updated, resource, clinical_time, patient_id, status, class_code, period_start, period_end)
     SELECT $1, id, 1, $4::timestamptz,
            format('{"resourceType":"Encounter","id":"%s","meta":{"versionId":"1","lastUpdated":"%s"},"status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},"type":[{"coding":[{"system":"http://snomed.info/sct","code":"185349003","display":"Encounter for check up"}],"text":"Encounter for check up"}],"subject":{"reference":"Patient/%s"},"period":{"start":"%s","end":"%s"}}',
                   id, $4::text, patient, to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), to_char((t + interval '30 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))::json,
            t, patient, 'finished', 'AMB', t, t + interval '30 minutes'
       FROM e`, [org, ENCOUNTERS, PATIENTS, lastUpdated]);
  const codes = [['8302-2', 'Body Height', 'cm', 170.2], ['29463-7', 'Body Weight', 'kg', 70.5], ['8867-4', 'Heart rate', '/min', 72],
    ['9279-1', 'Respiratory rate', '/min', 14], ['2339-0', 'Glucose [Mass/volume] in Blood', 'mg/dL', 95.25]];
  for (let from = 1; from <= OBSERVATIONS; from += BATCH) {
    const to = Math.min(OBSERVATIONS, from + BATCH - 1);
    await pool.query(
      `WITH c AS (SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::numeric[]) WITH ORDINALITY AS c(code, display, unit, base, n)),
            o AS (SELECT g, 'bo' || g AS id, 'be' || (g % $4::integer + 1) AS enc, 'bp' || ((g % $4::integer + 1) % $5::integer + 1) AS patient,
                         date_trunc('second', now()) - make_interval(days => g % 340, secs => g % 86400) AS t, (g % 5) + 1 AS n
                    FROM generate_series($2::integer, $3::integer) g)
       INSERT INTO observations (org_id, id, version_id, last_updated, resource, clinical_time, patient_id, encounter_id, status,
                                 category_tokens, code_tokens, effective_start, effective_end, issued, value_quantity, value_unit)
       SELECT $1, o.id, 1, $10::timestamptz,
              format('{"resourceType":"Observation","id":"%s","meta":{"versionId":"1","lastUpdated":"%s"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"%s","display":"%s"}],"text":"%s"},"subject":{"reference":"Patient/%s"},"encounter":{"reference":"Encounter/%s"},"effectiveDateTime":"%s","issued":"%s","valueQuantity":{"value":%s,"unit":"%s","system":"http://unitsofmeasure.org","code":"%s"}}',
                     o.id, $10::text, c.code, c.display, c.display, o.patient, o.enc, to_char(o.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                     to_char(o.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), c.base + (o.g % 100) / 10.0, c.unit, c.unit)::json,
              o.t, o.patient, o.enc, 'final', ARRAY['http://terminology.hl7.org/CodeSystem/observation-category|vital-signs', '|vital-signs'],
              ARRAY['http://loinc.org|' || c.code, '|' || c.code], o.t, o.t, o.t, c.base + (o.g % 100) / 10.0, c.unit
         FROM o JOIN c ON c.n = o.n`,
      [org, from, to, ENCOUNTERS, PATIENTS, codes.map((c) => c[0]), codes.map((c) => c[1]), codes.map((c) => c[2]), codes.map((c) => c[3]), lastUpdated]);
    process.stderr.write(`\r  observations ${to}/${OBSERVATIONS}`);
  }
  process.stderr.write('\n');
  // The locator, so reads (and the spot check below) work like for API-written rows.
  for (const [type, table] of [['Patient', 'patients'], ['Encounter', 'encounters'], ['Observation', 'observations']]) {
    await pool.query(
      `INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted, clinical_time)
       SELECT org_id, $2, id, 1, last_updated, false, ${table === 'patients' ? 'NULL' : 'clinical_time'} FROM ${table} WHERE org_id = $1`, [org, type]);
  }
  await pool.query(`RESET session_replication_role`);
  // pg_get_indexdef says ON ONLY for a partitioned index, which would build no partition's index.
  for (const ix of indexDefs) await pool.query(ix.def.replace(' ON ONLY ', ' ON '));
  await pool.query(`VACUUM (ANALYZE) ${FILLED.join(', ')}`);
}

/** Raw COPY of the stored JSON, read and discarded by this process. */
/**
 * A raw COPY of the filled rows: all of them, or (`patients`) those of a patient list,
 * found through the patient indexes the way a hand-written query would.
 */
async function rawCopy(pool: pg.Pool, org: number, patients?: string[]): Promise<{ rows: number; bytes: number; seconds: number }> {
  const client = await pool.connect();
  const t0 = performance.now();
  let bytes = 0;
  let rows = 0;
  try {
    // COPY takes no bind parameters: the org (and the list) are bound with set_config, as the server does.
    await client.query(`SELECT set_config('app.org_id', $1, false), set_config('bench.patients', $2, false)`, [String(org), `{${(patients ?? []).join(',')}}`]);
    for (const table of ['patients', 'encounters', 'observations']) {
      // The list as a once-computed subquery, so the planner probes the index with it.
      const member = patients ? ` AND ${table === 'patients' ? 'id' : 'patient_id'} = ANY((SELECT current_setting('bench.patients')::text[])::text[])` : '';
      const stream = client.query(copyTo(`COPY (SELECT resource::text FROM ${table} WHERE org_id = current_setting('app.org_id')::integer${member}) TO STDOUT`));
      await pipeline(stream, new Writable({
        write(chunk: Buffer, _e, done) {
          bytes += chunk.length;
          for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) rows++;
          done();
        },
      }));
    }
  } finally {
    client.release();
  }
  return { rows, bytes, seconds: (performance.now() - t0) / 1000 };
}

/** Kick-off to manifest of one export; `pollMs` bounds the timing error. */
async function runExport(url: string, pollMs: number, onPoll = () => {}): Promise<{ manifest: any; seconds: number; statusUrl: string }> {
  const t0 = performance.now();
  const k = await fetch(url, { headers: { accept: 'application/fhir+json', prefer: 'respond-async' } });
  if (k.status !== 202) throw new Error(`kick-off ${k.status}: ${await k.text()}`);
  const statusUrl = k.headers.get('content-location')!;
  for (;;) {
    onPoll();
    const st = await fetch(statusUrl);
    if (st.status === 200) return { manifest: await st.json(), seconds: (performance.now() - t0) / 1000, statusUrl };
    await st.arrayBuffer();
    if (st.status !== 202) throw new Error(`status ${st.status}`);
    await sleep(pollMs);
  }
}

/**
 * Group exports of BENCH_EXPORT_GROUPS members (patients bp1..bpN), against a raw COPY of
 * the same rows through the patient indexes: a small Group must cost its own rows, not a
 * scan of every row of the tenant.
 */
async function groupExports(pool: pg.Pool, org: number, base: string): Promise<{ members: number; rows: number; seconds: number; rawSeconds: number }[]> {
  const out = [];
  for (const members of GROUP_SIZES) {
    const ids = Array.from({ length: Math.min(members, PATIENTS) }, (_, i) => `bp${i + 1}`);
    const created = await fetch(`${base}/bench/Group`, {
      method: 'POST', headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Group', type: 'person', actual: true, member: ids.map((id) => ({ entity: { reference: `Patient/${id}` } })) }),
    });
    if (created.status !== 201) throw new Error(`Group create ${created.status}: ${await created.text()}`);
    const group = (await created.json()).id as string;
    await rawCopy(pool, org, ids); // warm-up, as for the full export
    const raw = await rawCopy(pool, org, ids);
    const { manifest, seconds, statusUrl } = await runExport(`${base}/bench/Group/${group}/$export?_type=Patient,Encounter,Observation`, 5);
    const rows = manifest.output.reduce((n: number, o: any) => n + o.count, 0);
    if (rows !== raw.rows) throw new Error(`Group export of ${ids.length} has ${rows} resources, raw COPY ${raw.rows}`);
    await fetch(statusUrl, { method: 'DELETE' });
    console.log(`Group of ${ids.length}: ${rows} resources, export ${seconds.toFixed(3)} s (kick-off to manifest, polled every 5 ms), raw COPY of the same rows ${raw.seconds.toFixed(3)} s`);
    out.push({ members: ids.length, rows, seconds, rawSeconds: raw.seconds });
  }
  return out;
}

async function main() {
  const port = await freePort();
  const pgPort = await freePort();
  // BENCH_EXPORT_DATA_DIR: a data dir kept from an earlier run (KILN_BENCH_KEEP=1 prints it); its
  // filled tenant is reused, so comparing two versions of the server costs one fill.
  const reuse = process.env.BENCH_EXPORT_DATA_DIR;
  const dataDir = reuse ?? fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-export-'));
  const base = `http://127.0.0.1:${port}/fhir`;
  const nodeArgs = (process.env.BENCH_EXPORT_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '', HOST: '127.0.0.1',
      // The bench measures export throughput, not SMART: no token on its requests. The three
      // filled types are named, so AuditEvents the server records meanwhile stay out of the count.
      KILN_AUTH: 'off', KILN_EXPORT_TIMING: '1' },
    // BENCH_EXPORT_NODE_ARGS: e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile the server.
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  let pool: pg.Pool | undefined;
  try {
    const deadline = Date.now() + 120_000;
    while (!out.includes('listening') && Date.now() < deadline) await sleep(200);
    if (!out.includes('listening')) throw new Error(`server did not start:\n${out}`);
    const password = fs.readFileSync(path.join(dataDir, 'pg-superuser-password'), 'utf8').trim();
    pool = new pg.Pool({ host: '127.0.0.1', port: pgPort, user: 'postgres', password, database: 'kiln', max: 2 });
    const existing = (await pool.query(`SELECT id FROM organizations WHERE slug = 'bench'`)).rows[0]?.id as number | undefined;
    const org = existing !== undefined ? { id: existing } : await createOrg(pool, 'bench', 'Export bench');
    if (existing === undefined) {
      await fill(pool, org.id, new Date(Date.now() - 60_000).toISOString());
    } else {
      console.log(`reusing the filled tenant in ${dataDir}`);
      await pool.query(`DELETE FROM export_jobs WHERE org_id = $1`, [org.id]); // files of earlier runs go with the next sweep
      fs.rmSync(path.join(dataDir, 'exports'), { recursive: true, force: true });
    }

    await rawCopy(pool, org.id); // warm-up: both runs then read from the same cache state
    const mb = (b: number) => b / 1024 / 1024;
    const idle = rssKb(child.pid!);
    let peakRss = idle.rss;
    const rounds: Round[] = [];
    // The machine is shared: each round measures the raw COPY and then the export back to
    // back, so both see about the same load; the figures are the median round's.
    for (let r = 1; r <= ROUNDS; r++) {
      const pgBeforeRaw = pgCpu(dataDir);
      const clientBefore = process.cpuUsage();
      const raw = await rawCopy(pool, org.id);
      const clientUsage = process.cpuUsage(clientBefore);
      const pgRaw = pgCpuSince(dataDir, pgBeforeRaw);

      const pgBeforeExport = pgCpu(dataDir);
      const serverBefore = cpuSeconds(child.pid!);
      const threadsBefore = threadCpu(child.pid!);
      const { manifest, seconds: exportSeconds, statusUrl } = await runExport(`${base}/bench/$export?_type=Patient,Encounter,Observation`, POLL_MS,
        () => { peakRss = Math.max(peakRss, rssKb(child.pid!).rss); });
      const cpu = { rawPg: pgRaw, rawClient: (clientUsage.user + clientUsage.system) / 1e6,
        exportPg: pgCpuSince(dataDir, pgBeforeExport), exportServer: cpuSeconds(child.pid!) - serverBefore,
        exportServerThreads: {} as Record<string, number> };
      for (const [name, c] of threadCpu(child.pid!)) {
        const used = c - (threadsBefore.get(name) ?? 0);
        if (used >= 0.01) cpu.exportServerThreads[name] = Number(used.toFixed(2));
      }
      const id = statusUrl.split('/').pop()!;
      const dir = path.join(dataDir, 'exports', id);
      const exportBytes = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
      const exportRows = manifest.output.reduce((n: number, o: any) => n + o.count, 0);
      if (exportRows !== raw.rows) throw new Error(`export has ${exportRows} resources, raw COPY ${raw.rows}`);
      // Spot check: a line equals the read of its resource.
      const first = manifest.output.find((o: any) => o.type === 'Observation');
      const line = fs.readFileSync(path.join(dir, first.url.split('/').pop()), 'utf8').split('\n')[0];
      const read = await (await fetch(`${base}/bench/Observation/${JSON.parse(line).id}`)).text();
      if (read !== line) throw new Error('an exported line differs from the read body');
      const ratio = (exportRows / exportSeconds) / (raw.rows / raw.seconds);
      rounds.push({ raw, export: { rows: exportRows, bytes: exportBytes, seconds: exportSeconds, files: manifest.output.length }, ratio, cpuSeconds: cpu });
      console.log(`round ${r}: raw COPY ${raw.seconds.toFixed(2)} s, export ${exportSeconds.toFixed(2)} s, ratio ${ratio.toFixed(2)}; CPU s: raw COPY ` +
        `PostgreSQL ${cpu.rawPg.toFixed(2)} + reading client ${cpu.rawClient.toFixed(2)}; export PostgreSQL ${cpu.exportPg.toFixed(2)} + ` +
        `server ${cpu.exportServer.toFixed(2)} (${Object.entries(cpu.exportServerThreads).map(([n, v]) => `${n} ${v}`).join(', ')})`);
      if (r < ROUNDS) await fetch(statusUrl, { method: 'DELETE' }); // its files go; the last round's stay for a look
    }
    const groups = await groupExports(pool, org.id, base);
    const end = rssKb(child.pid!);
    const median = [...rounds].sort((a, b) => a.ratio - b.ratio)[Math.floor((rounds.length - 1) / 2)];
    const { raw, export: exp, ratio } = median;
    const rows = [
      ['raw COPY (stored json)', raw.rows, raw.seconds, raw.rows / raw.seconds, mb(raw.bytes) / raw.seconds],
      ['$export over HTTP', exp.rows, exp.seconds, exp.rows / exp.seconds, mb(exp.bytes) / exp.seconds],
    ] as const;
    console.log('');
    console.log(`median round of ${rounds.length} (by ratio):`);
    console.log(`| measure | resources | seconds | resources/s | MB/s |`);
    console.log(`| --- | ---: | ---: | ---: | ---: |`);
    for (const r of rows) console.log(`| ${r[0]} | ${r[1]} | ${r[2].toFixed(2)} | ${Math.round(r[3])} | ${r[4].toFixed(1)} |`);
    console.log('');
    console.log(`export / raw COPY: ${ratio.toFixed(2)} (goal >= 0.5); all rounds: ${rounds.map((r) => r.ratio.toFixed(2)).join(', ')}`);
    console.log(`server RSS: idle before the exports ${(idle.rss / 1024).toFixed(0)} MB; peak sampled during them ${(peakRss / 1024).toFixed(0)} MB (goal < 300 MB); ` +
      `VmHWM since start ${(end.hwm / 1024).toFixed(0)} MB`);
    console.log(`files: ${exp.files} (${mb(exp.bytes).toFixed(0)} MB); machine: ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    for (const l of out.split('\n').filter((x) => x.startsWith('export timing'))) console.log(`  server ${l}`);
    const results = {
      date: new Date().toISOString(), rows: ROWS, raw, export: exp, ratio, rounds, groups,
      rssKb: { idle: idle.rss, peakDuringExport: peakRss, hwm: end.hwm },
    };
    const resultsDir = path.join(HERE, 'results');
    fs.mkdirSync(resultsDir, { recursive: true });
    const file = path.join(resultsDir, `export-${results.date.replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
    console.log(`results: ${path.relative(ROOT, file)}`);
  } finally {
    await pool?.end();
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(30_000)]);
    if (!process.env.KILN_BENCH_KEEP && !reuse) fs.rmSync(dataDir, { recursive: true, force: true });
    else console.log(`data dir kept: ${dataDir}`);
  }
}

await main();
