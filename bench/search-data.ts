// Synthetic clinical data for bench/search.ts, bulk-loaded straight into the tables
// with exactly the rows the server would store: each resource is built in JS, then
// toRow (mappings/postgres) gives its typed-table row and extractIndex
// (mappings/search/extract.ts) its search index rows, in worker threads; each batch's
// rows go in with one COPY per table on the owner pool.
import type pg from 'pg';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import type { Resource } from '@medplum/fhirtypes';
import { TABLES, TIME_PARTITIONED, toRow } from '../mappings/postgres/index.ts';
import { extractIndex, type IndexRows } from '../mappings/search/extract.ts';
import { SPECS } from '../src/store/searchIndex.ts';

// ------------------------------------------------------------ deterministic PRNG
export function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// US census surname frequency (top names, roughly weighted by frequency per 100k).
const FAMILY: [string, number][] = [
  ['Smith', 828], ['Johnson', 655], ['Williams', 550], ['Brown', 487], ['Jones', 483], ['Garcia', 395], ['Miller', 394],
  ['Davis', 378], ['Rodriguez', 366], ['Martinez', 355], ['Hernandez', 346], ['Lopez', 291], ['Gonzalez', 282],
  ['Wilson', 276], ['Anderson', 263], ['Thomas', 257], ['Taylor', 250], ['Moore', 240], ['Jackson', 235], ['Martin', 233],
  ['Lee', 229], ['Perez', 228], ['Thompson', 225], ['White', 224], ['Harris', 206], ['Sanchez', 205], ['Clark', 184],
  ['Ramirez', 183], ['Lewis', 177], ['Robinson', 176], ['Walker', 167], ['Young', 161], ['Allen', 160], ['King', 158],
  ['Wright', 155], ['Scott', 146], ['Torres', 144], ['Nguyen', 143], ['Hill', 142], ['Flores', 141], ['Green', 141],
  ['Adams', 140], ['Nelson', 139], ['Baker', 138], ['Hall', 134], ['Rivera', 132], ['Campbell', 131], ['Mitchell', 130],
  ['Carter', 126], ['Roberts', 125], ['Smithson', 8], ['Smithers', 5], ['Smiley', 12], ['Kowalski', 20], ['Müller', 15],
  ['O\'Brien', 40], ['Van der Berg', 10], ['Nakamura', 18], ['Okafor', 14], ['Ivanova', 12],
];
const FAMILY_TOTAL = FAMILY.reduce((a, [, w]) => a + w, 0);
const GIVEN_F = ['Mary', 'Patricia', 'Jennifer', 'Linda', 'Elizabeth', 'Barbara', 'Susan', 'Jessica', 'Sarah', 'Karen', 'Maria', 'Aisha'];
const GIVEN_M = ['James', 'Robert', 'John', 'Michael', 'David', 'William', 'Richard', 'Joseph', 'Thomas', 'Charles', 'José', 'Wei'];

function pickFamily(r: () => number): string {
  let x = r() * FAMILY_TOTAL;
  for (const [name, w] of FAMILY) { x -= w; if (x < 0) return name; }
  return FAMILY[0][0];
}

// Rare family names, each held by exactly 10 patients of a tenant at any tenant size (the
// odd patients of each run of 20), so a `family=` search has the same result size in every
// data set. Nine letters consonant-vowel: never a prefix of another name, census or rare.
const CONS = 'bdfgklmnprstvz';
const VOWELS = 'aeiou';
export const RARE_GROUP = 20;
export function rareFamily(tag: string, i: number): string {
  let n = tag.charCodeAt(0) * 10_000_000 + Math.floor(i / RARE_GROUP);
  let s = '';
  for (let k = 0; k < 9; k++) {
    const set = k % 2 === 0 ? CONS : VOWELS;
    s += set[n % set.length];
    n = Math.floor(n / set.length);
  }
  return s[0].toUpperCase() + s.slice(1);
}

export const MRN_SYSTEM = 'http://hospital.example.org/mrn';
const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const OBS_CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';
const DAY = 86_400_000;
const SPAN = 730 * DAY; // 24 months back from now

export const patientId = (tag: string, i: number) => `pat-${tag}-${i}`;
export const encounterId = (tag: string, p: number, k: number) => `enc-${tag}-${p}-${k}`;
export const mrnOf = (tag: string, i: number) => `MRN-${tag}-${String(i).padStart(7, '0')}`;

function cc(system: string, code: string, display: string) {
  return { coding: [{ system, code, display }], text: display };
}

export function patient(tag: string, i: number): Resource {
  const r = rng(i * 7919 + tag.length);
  const female = r() < 0.5;
  const given = (female ? GIVEN_F : GIVEN_M)[Math.floor(r() * 12)];
  const year = 1930 + Math.floor(r() * 90);
  return {
    resourceType: 'Patient',
    id: patientId(tag, i),
    identifier: [
      { use: 'usual', type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: MRN_SYSTEM, value: mrnOf(tag, i) },
      { system: 'http://hl7.org/fhir/sid/us-ssn', value: `${100 + (i % 800)}-${10 + (i % 89)}-${1000 + (i % 8999)}` },
    ],
    active: true,
    name: [{ use: 'official', family: i % 2 === 1 ? rareFamily(tag, i) : pickFamily(r), given: [given, String.fromCharCode(65 + Math.floor(r() * 26))] }],
    gender: female ? 'female' : 'male',
    birthDate: `${year}-${String(1 + Math.floor(r() * 12)).padStart(2, '0')}-${String(1 + Math.floor(r() * 28)).padStart(2, '0')}`,
    telecom: [{ system: 'phone', value: `555-${String(i % 10000).padStart(4, '0')}`, use: 'home' }],
    address: [{ line: [`${1 + (i % 999)} Main St`], city: 'Springfield', state: 'IL', postalCode: '62701' }],
  } as Resource;
}

export const ENCOUNTERS_PER_PATIENT = 4;

function encStart(tag: string, p: number, k: number, now: number): number {
  // Encounter k of a patient lies in the k-th quarter... of the 24 months, jittered.
  const r = rng(p * 131 + k * 17 + tag.length * 3);
  return now - SPAN + (k + r() * 0.9) * (SPAN / ENCOUNTERS_PER_PATIENT);
}

export function encounter(tag: string, p: number, k: number, now: number): Resource {
  const start = encStart(tag, p, k, now);
  return {
    resourceType: 'Encounter',
    id: encounterId(tag, p, k),
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: k % 3 === 0 ? 'IMP' : 'AMB', display: k % 3 === 0 ? 'inpatient encounter' : 'ambulatory' },
    type: [cc('http://snomed.info/sct', '185349003', 'Encounter for check up')],
    subject: { reference: `Patient/${patientId(tag, p)}` },
    period: { start: new Date(start).toISOString(), end: new Date(start + 3_600_000).toISOString() },
  } as Resource;
}

export function medicationStatement(tag: string, p: number, k: number, now: number): Resource {
  const meds = [['197361', 'Amlodipine 5 MG Oral Tablet'], ['860975', 'Metformin 500 MG Oral Tablet'], ['314076', 'Lisinopril 10 MG Oral Tablet'], ['617312', 'Atorvastatin 20 MG Oral Tablet']];
  const [code, display] = meds[(p + k) % meds.length];
  const start = encStart(tag, p, k, now);
  return {
    resourceType: 'MedicationStatement',
    id: `med-${tag}-${p}-${k}`,
    status: 'active',
    medicationCodeableConcept: cc('http://www.nlm.nih.gov/research/umls/rxnorm', code, display),
    subject: { reference: `Patient/${patientId(tag, p)}` },
    context: { reference: `Encounter/${encounterId(tag, p, k)}` },
    effectiveDateTime: new Date(start).toISOString(),
    dateAsserted: new Date(start).toISOString(),
  } as Resource;
}

/** Observation j (global index within the tenant) of patient p. */
export function observation(tag: string, j: number, p: number, now: number): Resource {
  const r = rng(j * 2654435761 + tag.length);
  const t = now - r() * SPAN;
  const k = Math.min(ENCOUNTERS_PER_PATIENT - 1, Math.floor((t - (now - SPAN)) / (SPAN / ENCOUNTERS_PER_PATIENT)));
  const kind = r();
  const vital = { category: [cc(OBS_CAT, 'vital-signs', 'Vital Signs')] };
  const lab = { category: [cc(OBS_CAT, 'laboratory', 'Laboratory')] };
  const base = {
    resourceType: 'Observation',
    id: `obs-${tag}-${j}`,
    status: 'final',
    subject: { reference: `Patient/${patientId(tag, p)}` },
    encounter: { reference: `Encounter/${encounterId(tag, p, k)}` },
    effectiveDateTime: new Date(t).toISOString(),
    issued: new Date(t + 600_000).toISOString(),
  };
  const q = (value: number, unit: string, code: string) => ({ value: Math.round(value * 10) / 10, unit, system: UCUM, code });
  if (kind < 0.35) {
    return { ...base, ...vital, code: cc(LOINC, '8867-4', 'Heart rate'), valueQuantity: q(55 + r() * 60, 'beats/minute', '/min') } as Resource;
  }
  if (kind < 0.55) {
    return { ...base, ...vital, code: cc(LOINC, '29463-7', 'Body weight'), valueQuantity: q(45 + r() * 80, 'kg', 'kg') } as Resource;
  }
  if (kind < 0.8) {
    return {
      ...base, ...vital, code: cc(LOINC, '85354-9', 'Blood pressure panel with all children optional'),
      component: [
        { code: cc(LOINC, '8480-6', 'Systolic blood pressure'), valueQuantity: q(100 + r() * 60, 'mmHg', 'mm[Hg]') },
        { code: cc(LOINC, '8462-4', 'Diastolic blood pressure'), valueQuantity: q(60 + r() * 35, 'mmHg', 'mm[Hg]') },
      ],
    } as Resource;
  }
  return { ...base, ...lab, code: cc(LOINC, '2339-0', 'Glucose [Mass/volume] in Blood'), valueQuantity: q(70 + r() * 120, 'mg/dL', 'mg/dL') } as Resource;
}

// ------------------------------------------------------------ bulk insert

// The server's own description of the index tables, so the load writes what a write would.
const INDEX_SPECS = SPECS;

/** Column SQL types of a table (array types noted), read once from the catalog. */
async function columnTypes(owner: pg.Pool, table: string): Promise<Map<string, string>> {
  const { rows } = await owner.query(
    `SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute
      WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, [table]);
  return new Map(rows.map((r) => [r.attname, r.t]));
}

const toText = (v: unknown): string | null =>
  v === null || v === undefined ? null : Array.isArray(v) || typeof v === 'object' ? JSON.stringify(v) : String(v);

/** An array column's value as a PostgreSQL array literal (COPY's text form of an array). */
const arrayLiteral = (v: unknown[]): string =>
  `{${v.map((x) => (x === null || x === undefined ? 'NULL' : `"${String(x).replace(/[\\"]/g, '\\$&')}"`)).join(',')}}`;

/** A value as text for a column of SQL type `t`. */
const encode = (v: unknown, t: string | undefined): string | null => (Array.isArray(v) && t?.endsWith('[]') ? arrayLiteral(v) : toText(v));

/** COPY text format: backslash, tab, newline and carriage return escaped; NULL as \N. */
const copyField = (v: string) => v.replace(/[\\\t\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r'));

/** The rows (one array per column) as COPY text, for `COPY table (cols) FROM STDIN`; a NULL array is an empty one. */
function copyText(table: string, cols: string[], types: Map<string, string>, columns: (string | null)[][]): string {
  const arrays = cols.map((c) => {
    const t = types.get(c);
    if (!t) throw new Error(`${table}.${c}: no such column`);
    return t.endsWith('[]');
  });
  const out: string[] = [];
  for (let i = 0; i < columns[0].length; i++) {
    out.push(columns.map((col, k) => { const v = col[i]; return v === null ? (arrays[k] ? '{}' : '\\N') : copyField(v); }).join('\t'));
  }
  return out.join('\n') + '\n';
}

export interface LoadCounters { resources: number; indexRows: number; byTable: Record<string, number> }

/** One batch of a tenant's load: resources [from, to) of one kind, stamped from `seq` on. */
export interface LoadJob {
  kind: 'Patient' | 'Encounter' | 'MedicationStatement' | 'Observation';
  tag: string; from: number; to: number; patients: number; now: number; orgId: number; loadTime: number; seq: number;
}

/** Observation j's patient: the golden-ratio sequence gives every patient the mean count, give or take one. */
export const observationPatient = (j: number, patients: number) => Math.floor(patients * ((j * 0.6180339887498949) % 1)) % patients;

function jobResources(j: LoadJob): Resource[] {
  const out: Resource[] = [];
  for (let i = j.from; i < j.to; i++) {
    const p = Math.floor(i / ENCOUNTERS_PER_PATIENT);
    const k = i % ENCOUNTERS_PER_PATIENT;
    out.push(j.kind === 'Patient' ? patient(j.tag, i) : j.kind === 'Encounter' ? encounter(j.tag, p, k, j.now)
      : j.kind === 'MedicationStatement' ? medicationStatement(j.tag, p, k, j.now) : observation(j.tag, i, observationPatient(i, j.patients), j.now));
  }
  return out;
}

/** The jobs of one tenant: patients, 4 encounters and 4 medication statements each, then the observations. */
export function tenantJobs(base: Omit<LoadJob, 'kind' | 'from' | 'to' | 'seq'>, observations: number, batch: number, seq0 = 0): LoadJob[] {
  const jobs: LoadJob[] = [];
  let seq = seq0;
  const kinds: [LoadJob['kind'], number][] = [['Patient', base.patients], ['Encounter', base.patients * ENCOUNTERS_PER_PATIENT],
    ['MedicationStatement', base.patients * ENCOUNTERS_PER_PATIENT], ['Observation', observations]];
  for (const [kind, n] of kinds) {
    for (let from = 0; from < n; from += batch) {
      const to = Math.min(n, from + batch);
      jobs.push({ ...base, kind, from, to, seq });
      seq += to - from;
    }
  }
  return jobs;
}

/** A COPY of rows into one table: its statement, its data as COPY text, and how many rows. */
type Stmt = [table: string, sql: string, text: string, rows: number];

function copyStmt(table: string, cols: string[], types: Map<string, string>, columns: (string | null)[][]): Stmt {
  return [table, `COPY ${table} (${cols.join(', ')}) FROM STDIN`, copyText(table, cols, types, columns), columns[0].length];
}
type ColumnTypes = Record<string, Record<string, string>>;

/** Every row of a job's resources (typed, locator, history, hub, index rows) as INSERT statements. */
function buildJob(job: LoadJob, types: ColumnTypes): { resources: number; hub?: Stmt; rest: Stmt[] } {
  const resources = jobResources(job);
  const type = job.kind;
  const table = TABLES[type];
  const org = String(job.orgId);
  const typed: Record<string, (string | null)[]> = {};
  let typedCols: string[] | undefined;
  const ids: (string | null)[][] = [[], [], [], [], [], [], []]; // resource_ids
  const hist: (string | null)[][] = [[], [], [], [], [], [], []];
  const hub: (string | null)[][] = [[], [], []];
  const T = (t: string) => new Map(Object.entries(types[t]));
  const typedTypes = T(table);
  const idx = INDEX_SPECS.map((s) => ({ spec: s, types: T(s.table), cols: [[], [], [], [], ...s.columns.map(() => [])] as (string | null)[][] }));
  let seq = job.seq;
  for (const res0 of resources) {
    const at = new Date(job.loadTime + seq++).toISOString();
    const resource = { ...res0, meta: { ...res0.meta, versionId: '1', lastUpdated: at } } as Resource;
    const row = toRow(resource);
    const clinicalTime = TIME_PARTITIONED.has(type) ? (row.clinicalTime ?? at) : null;
    const json = JSON.stringify(resource);
    const cols: Record<string, unknown> = {
      org_id: org, id: resource.id, ...row.columns, version_id: 1, last_updated: at, resource: json,
      ...(clinicalTime ? { clinical_time: clinicalTime } : {}),
    };
    if (!typedCols) { typedCols = Object.keys(cols); for (const c of typedCols) typed[c] = []; }
    for (const c of typedCols) typed[c].push(encode(cols[c], typedTypes.get(c)));
    [org, type, resource.id!, '1', at, 'false', clinicalTime].forEach((v, i) => ids[i].push(v));
    [org, type, resource.id!, '1', at, 'POST', json].forEach((v, i) => hist[i].push(v));
    if (type === 'Encounter') [org, resource.id!, toText(row.columns.patient_id)].forEach((v, i) => hub[i].push(v));
    const index = extractIndex(resource);
    for (const { spec, types: it, cols: ic } of idx) {
      for (const r of index[spec.key] as unknown[]) {
        ic[0].push(org); ic[1].push(type); ic[2].push(resource.id!); ic[3].push(clinicalTime);
        spec.columns.forEach(([c, , get], k) => ic[4 + k].push(encode(get(r), it.get(c))));
      }
    }
  }
  const rest: Stmt[] = [
    copyStmt(table, typedCols!, typedTypes, typedCols!.map((c) => typed[c])),
    copyStmt('resource_ids', ['org_id', 'resource_type', 'id', 'version_id', 'last_updated', 'deleted', 'clinical_time'], T('resource_ids'), ids),
    copyStmt('resource_history', ['org_id', 'resource_type', 'id', 'version_id', 'last_updated', 'method', 'resource'], T('resource_history'), hist),
  ];
  for (const { spec, types: it, cols } of idx) {
    if (cols[0].length) rest.push(copyStmt(spec.table, ['org_id', 'resource_type', 'id', 'clinical_time', ...spec.columns.map(([c]) => c)], it, cols));
  }
  const hubStmt: Stmt | undefined = type === 'Encounter' ? copyStmt('clinical_events', ['org_id', 'encounter_id', 'patient_id'], T('clinical_events'), hub) : undefined;
  return { resources: resources.length, hub: hubStmt, rest };
}

// A load worker: builds the rows of the jobs it is sent (toRow and extractIndex cost most of the load's CPU).
if (!isMainThread && workerData?.kilnSearchLoad) {
  parentPort!.on('message', (job: LoadJob) => parentPort!.postMessage(buildJob(job, workerData.types)));
}

/**
 * Loads jobs with `workers` threads building rows (none: in this thread), each thread's
 * batch inserted while it builds the next.
 */
export class BulkLoader {
  private types: ColumnTypes = {};
  counters: LoadCounters = { resources: 0, indexRows: 0, byTable: {} };

  constructor(private owner: pg.Pool, private workers: number) {}

  async init() {
    for (const t of [...Object.values(TABLES), 'resource_ids', 'resource_history', 'clinical_events', ...INDEX_SPECS.map((s) => s.table)]) {
      this.types[t] = Object.fromEntries(await columnTypes(this.owner, t));
    }
  }

  private async insert(built: ReturnType<typeof buildJob>) {
    const run = async ([t, sql, text, rows]: Stmt) => {
      const c = await this.owner.connect();
      try { await pipeline(Readable.from([text]), c.query(copyFrom(sql))); } finally { c.release(); }
      this.counters.byTable[t] = (this.counters.byTable[t] ?? 0) + rows;
      if (t.startsWith('search_')) this.counters.indexRows += rows;
    };
    // The hub row first (the typed encounter row references it), then everything else in parallel.
    if (built.hub) await run(built.hub);
    await Promise.all(built.rest.map(run));
    this.counters.resources += built.resources;
  }

  async run(jobs: LoadJob[], progress?: (done: number) => void) {
    const threads = Array.from({ length: this.workers }, () => new Worker(
      // A worker does not get tsx's hooks from the command line: it registers them, then imports this file.
      `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`,
      { eval: true, workerData: { kilnSearchLoad: true, types: this.types } }));
    const build = (w: Worker | undefined, job: LoadJob) => !w ? Promise.resolve(buildJob(job, this.types))
      : new Promise<ReturnType<typeof buildJob>>((resolve, reject) => {
        const fail = (e: unknown) => reject(e);
        w.once('error', fail);
        w.once('message', (m) => { w.off('error', fail); resolve(m); });
        w.postMessage(job);
      });
    let next = 0;
    let done = 0;
    try {
      await Promise.all((threads.length ? threads : [undefined]).map(async (w) => {
        let inserting: Promise<void> = Promise.resolve();
        for (let i = next++; i < jobs.length; i = next++) {
          const built = await build(w, jobs[i]);
          await inserting;
          inserting = this.insert(built).then(() => { done++; progress?.(done); });
        }
        await inserting;
      }));
    } finally {
      await Promise.all(threads.map((w) => w.terminate()));
    }
  }
}
