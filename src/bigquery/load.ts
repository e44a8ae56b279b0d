// Loads export output (NDJSON files) into BigQuery: one table per resource type with the
// generated schema, one load job per type, deterministic job ids (a re-run finds the job
// that already ran instead of appending again), and a `<Type>_latest` view per type.
import { GENERIC_TABLE, TABLES } from '../../mappings/postgres/index.ts';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { BigQuery, type Dataset } from '@google-cloud/bigquery';
import { BIGQUERY_TYPES, LOAD_COLUMNS, tableSchema, type BqField } from './schema.ts';
import { deletionRow, parseLossless, resourceToRow, type LoadMeta } from './rows.ts';
import { OWNER_ONLY_FILE, ownerOnlyDir } from '../export/ndjson.ts';

export interface BigQueryTarget {
  projectId: string;
  datasetId: string;
  location?: string;
  /** Tests: a local endpoint speaking the BigQuery REST API. */
  apiEndpoint?: string;
}

/** An export's output file; type `Bundle` files hold deletions (transaction Bundles of DELETE entries). */
export interface ExportFile { type: string; path: string; count: number }

/** A problem the operator must fix (configuration, credentials, dataset): reported as a message, not a stack. */
export class BigQuerySetupError extends Error {}

/** Settings from the environment; throws BigQuerySetupError naming what is missing. */
export function targetFromEnv(env: NodeJS.ProcessEnv = process.env): BigQueryTarget {
  const projectId = env.KILN_BIGQUERY_PROJECT || env.GOOGLE_CLOUD_PROJECT;
  const datasetId = env.KILN_BIGQUERY_DATASET;
  const missing = [!projectId && 'KILN_BIGQUERY_PROJECT', !datasetId && 'KILN_BIGQUERY_DATASET'].filter(Boolean);
  if (missing.length) throw new BigQuerySetupError(`BigQuery is not configured: set ${missing.join(' and ')}`);
  if (!/^[A-Za-z0-9_]{1,1024}$/.test(datasetId!)) throw new BigQuerySetupError(`KILN_BIGQUERY_DATASET '${datasetId}' is not a valid dataset id (letters, digits, underscores)`);
  return {
    projectId: projectId!, datasetId: datasetId!,
    location: env.KILN_BIGQUERY_LOCATION || undefined,
    apiEndpoint: env.KILN_BIGQUERY_API_ENDPOINT || undefined,
  };
}

/** A client on application-default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, or the metadata server). */
export function openBigQuery(target: BigQueryTarget): BigQuery {
  return new BigQuery({
    projectId: target.projectId,
    ...(target.location ? { location: target.location } : {}),
    ...(target.apiEndpoint ? { apiEndpoint: target.apiEndpoint } : {}),
  });
}

interface ApiError { code?: number; message?: string; errors?: { reason?: string; message?: string }[] }

/** Credential and permission failures as operator messages; anything else unchanged. */
export function explain(e: unknown, target: BigQueryTarget): unknown {
  const err = e as ApiError;
  const msg = err?.message ?? '';
  if (/Could not load the default credentials/.test(msg)) {
    return new BigQuerySetupError('No Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, '
      + 'run `gcloud auth application-default login`, or run on Google Cloud with a service account');
  }
  if (/GOOGLE_APPLICATION_CREDENTIALS/.test(msg)) return new BigQuerySetupError(`Google credentials could not be read: ${msg}`);
  if (err?.code === 401) return new BigQuerySetupError(`BigQuery refused the credentials (401): ${msg}`);
  if (err?.code === 403) return new BigQuerySetupError(`BigQuery denied access to ${target.projectId}:${target.datasetId} (403): ${msg}`);
  return e;
}

/** Fails with a clear message when the dataset does not exist (Kiln does not create datasets: location and access are the operator's). */
export async function checkDataset(bq: BigQuery, target: BigQueryTarget): Promise<Dataset> {
  const dataset = bq.dataset(target.datasetId, target.location ? { location: target.location } : {});
  try {
    await dataset.get();
  } catch (e) {
    if ((e as ApiError).code === 404) {
      throw new BigQuerySetupError(`BigQuery dataset ${target.projectId}:${target.datasetId} does not exist; create it `
        + `(bq mk --dataset ${target.location ? `--location=${target.location} ` : ''}${target.projectId}:${target.datasetId}) or set KILN_BIGQUERY_DATASET`);
    }
    throw explain(e, target);
  }
  return dataset;
}

/** The fields of `wanted` added to `have` (recursively), keeping what `have` already holds. */
export function mergeFields(have: BqField[], wanted: BqField[]): { fields: BqField[]; grew: boolean } {
  let grew = false;
  const fields = have.map((h) => {
    const w = wanted.find((f) => f.name.toLowerCase() === h.name.toLowerCase());
    if (!h.fields || !w?.fields) return h;
    const inner = mergeFields(h.fields, w.fields);
    grew ||= inner.grew;
    return { ...h, fields: inner.fields };
  });
  for (const w of wanted) {
    if (!have.some((h) => h.name.toLowerCase() === w.name.toLowerCase())) {
      // BigQuery can only add NULLABLE or REPEATED columns to a table.
      fields.push(w.mode === 'REQUIRED' ? { ...w, mode: 'NULLABLE' } : w);
      grew = true;
    }
  }
  return { fields, grew };
}

/** Creates the type's table, or adds the columns a newer schema has; returns the table's schema. */
export async function ensureTable(dataset: Dataset, type: string): Promise<BqField[]> {
  return ensureFields(dataset, type, tableSchema(type),
    `FHIR R4 ${type} versions loaded by Kiln (one row per exported version; see ${type}_latest)`);
}

/** Creates a table with `wanted` columns, or adds those it lacks; returns the table's schema. */
export async function ensureFields(dataset: Dataset, tableId: string, wanted: BqField[], description: string): Promise<BqField[]> {
  const table = dataset.table(tableId);
  try {
    const [meta] = await table.getMetadata();
    const { fields, grew } = mergeFields((meta.schema?.fields ?? []) as BqField[], wanted);
    if (grew) await table.setMetadata({ schema: { fields } });
    return fields;
  } catch (e) {
    if ((e as ApiError).code !== 404) throw e;
  }
  try {
    await dataset.createTable(tableId, { schema: { fields: wanted }, description });
  } catch (e) {
    if ((e as ApiError).code !== 409) throw e; // created meanwhile by another sync
    return ensureFields(dataset, tableId, wanted, description);
  }
  return wanted;
}

/** The latest loaded version of each resource; deleted resources drop out. */
export function latestViewSql(target: BigQueryTarget, type: string): string {
  const t = LOAD_COLUMNS;
  // Each export holds a resource at most once (current, or deleted), so the latest export
  // that holds it is decisive; lastUpdated and versionId break ties should a version repeat.
  return `SELECT * EXCEPT (_kiln_rank)
FROM (
  SELECT v.*, ROW_NUMBER() OVER (
    PARTITION BY v.${t.tenant}, v.id
    ORDER BY v.${t.transactionTime} DESC, v.meta.lastUpdated DESC, SAFE_CAST(v.meta.versionId AS INT64) DESC
  ) AS _kiln_rank
  FROM \`${target.projectId}.${target.datasetId}.${type}\` AS v
)
WHERE _kiln_rank = 1 AND NOT IFNULL(${t.deleted}, FALSE)`;
}

export async function ensureView(dataset: Dataset, target: BigQueryTarget, type: string): Promise<void> {
  await ensureQueryView(dataset, `${type}_latest`, latestViewSql(target, type), `Latest version of each ${type} (Kiln)`);
}

/** Creates a BigQuery view, or sets its query when it differs. */
export async function ensureQueryView(dataset: Dataset, name: string, query: string, description: string): Promise<void> {
  const view = dataset.table(name);
  try {
    const [meta] = await view.getMetadata();
    if (meta.view?.query !== query) await view.setMetadata({ view: { query, useLegacySql: false }, description });
    return;
  } catch (e) {
    if ((e as ApiError).code !== 404) throw e;
  }
  try {
    await dataset.createTable(name, { view: { query, useLegacySql: false }, description });
  } catch (e) {
    if ((e as ApiError).code !== 409) throw e;
  }
}

/** Rows of one type out of the export files: resources (optionally only those changed after `after`) and deletions. */
export async function stageRows(files: ExportFile[], type: string, out: string, meta: LoadMeta, after?: string): Promise<number> {
  const tmp = `${out}.partial`;
  fs.rmSync(tmp, { force: true }); // made anew, so with the mode below (staged rows are PHI)
  const sink = fs.createWriteStream(tmp, { mode: OWNER_ONLY_FILE });
  const afterMs = after ? Date.parse(after) : undefined;
  let rows = 0;
  const write = async (line: string) => { if (!sink.write(line)) await once(sink, 'drain'); };
  for (const file of files) {
    const lines = readline.createInterface({ input: fs.createReadStream(file.path), crlfDelay: Infinity });
    for await (const line of lines) {
      if (!line.trim()) continue;
      const resource = parseLossless(line) as Record<string, any>;
      if (file.type === 'Bundle') {
        for (const entry of resource.entry ?? []) {
          const [t, id] = String(entry.request?.url ?? '').split('/');
          if (entry.request?.method !== 'DELETE' || t !== type || !id) continue;
          await write(`${JSON.stringify(deletionRow(type, id, meta))}\n`);
          rows++;
        }
        continue;
      }
      if (afterMs !== undefined && Date.parse(resource.meta?.lastUpdated) <= afterMs) continue;
      await write(`${JSON.stringify(resourceToRow(resource, meta))}\n`);
      rows++;
    }
  }
  await new Promise<void>((resolve, reject) => sink.end((e?: Error | null) => (e ? reject(e) : resolve())));
  fs.renameSync(tmp, out); // a staged file is complete or absent
  return rows;
}

/** Deterministic job id: the same load (target, tenant, type, export, filter) always gets the same ids. */
export function loadJobId(target: BigQueryTarget, tenant: string, type: string, transactionTime: string, after: string | undefined, attempt: number): string {
  const key = [target.projectId, target.datasetId, tenant, type, transactionTime, after ?? ''].join('|');
  const hash = crypto.createHash('sha256').update(key).digest('hex').slice(0, 16);
  const stamp = transactionTime.replace(/[^0-9]/g, '');
  return `kiln_${tenant.replace(/[^A-Za-z0-9_-]/g, '_')}_${type}_${stamp}_${hash}_${attempt}`;
}

const MAX_ATTEMPTS = 20;

type JobMeta = { status?: { state?: string; errorResult?: { reason?: string; message?: string }; errors?: { message?: string }[] }; statistics?: { load?: { outputRows?: string } } };

async function waitForJob(bq: BigQuery, id: string, location: string | undefined): Promise<JobMeta> {
  const job = bq.job(id, location ? { location } : {});
  for (let wait = 200; ; wait = Math.min(wait * 2, 5000)) {
    const [meta] = (await job.getMetadata()) as unknown as [JobMeta];
    if (meta.status?.state === 'DONE') return meta;
    await new Promise((r) => setTimeout(r, wait));
  }
}

export class LoadJobError extends Error {
  constructor(public jobId: string, public type: string, public reason: string | undefined, message: string) { super(message); }
}

export interface TypeLoad {
  type: string;
  jobId?: string;
  rows: number;
  /** loaded: this call ran the job; already-loaded: an earlier run's job with this id succeeded; empty: nothing to load. */
  state: 'loaded' | 'already-loaded' | 'empty';
}

/**
 * Runs the load job for a staged file. Attempts are numbered: an id whose job succeeded
 * means the load is done (a re-run after a crash or a lost response appends nothing); an id
 * whose job failed (BigQuery loads are all-or-nothing, and a job id can never be reused) moves
 * on to the next number.
 */
export async function runLoadJob(bq: BigQuery, dataset: Dataset, target: BigQueryTarget, type: string, staged: string,
  fields: BqField[], ids: (attempt: number) => string): Promise<{ jobId: string; state: 'loaded' | 'already-loaded'; rows: number }> {
  const table = dataset.table(type);
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const jobId = ids(attempt);
    let meta: JobMeta | undefined;
    try {
      meta = await waitForJob(bq, jobId, target.location);
    } catch (e) {
      if ((e as ApiError).code !== 404) throw e;
    }
    if (!meta) {
      try {
        await table.createLoadJob(staged, {
          sourceFormat: 'NEWLINE_DELIMITED_JSON',
          writeDisposition: 'WRITE_APPEND',
          createDisposition: 'CREATE_NEVER',
          schema: { fields },
          jobId,
          ...(target.location ? { location: target.location } : {}),
        } as never);
      } catch (e) {
        // 409: the job exists after all (a concurrent run, or a response lost on the way): look at it.
        if ((e as ApiError).code !== 409) throw e;
      }
      meta = await waitForJob(bq, jobId, target.location);
      if (meta.status?.errorResult) {
        const detail = meta.status.errors?.map((x) => x.message).filter(Boolean).join('; ') || meta.status.errorResult.message;
        throw new LoadJobError(jobId, type, meta.status.errorResult.reason, `BigQuery load job ${jobId} into ${type} failed: ${detail}`);
      }
      return { jobId, state: 'loaded', rows: Number(meta.statistics?.load?.outputRows ?? 0) };
    }
    if (!meta.status?.errorResult) return { jobId, state: 'already-loaded', rows: Number(meta.statistics?.load?.outputRows ?? 0) };
  }
  throw new LoadJobError(ids(MAX_ATTEMPTS), type, undefined, `BigQuery load into ${type} failed ${MAX_ATTEMPTS} times; see the jobs ${ids(1)}..`);
}

export interface LoadOptions {
  tenant: string;
  transactionTime: string;
  /** Where transformed rows are staged (kept until the caller removes them: a re-run reloads the same bytes). */
  stagingDir: string;
  /** Per type: load only resources changed after this instant (they were loaded by an earlier export). */
  after?: Record<string, string>;
  /** Types already done (by an earlier attempt of this run): skipped. */
  done?: Set<string>;
  onTypeLoaded?: (result: TypeLoad) => Promise<void> | void;
}

/**
 * The types a load handles: the first-class types always (their tables exist from the
 * first sync on), any other type once it has rows: this export's, or a table from an
 * earlier load (which may have deletions to record). 145 empty tables and views per
 * dataset would only be noise.
 */
async function typesToLoad(dataset: Dataset, files: ExportFile[]): Promise<Set<string>> {
  const [tables] = await dataset.getTables();
  const present = new Set([...files.map((f) => f.type), ...tables.map((t) => t.id ?? '')]);
  return new Set(BIGQUERY_TYPES.filter((t) => TABLES[t] !== GENERIC_TABLE || present.has(t)));
}

/** Loads one export: tables and views for every type it concerns, one load job per type with rows. */
export async function loadExport(target: BigQueryTarget, files: ExportFile[], opts: LoadOptions): Promise<TypeLoad[]> {
  const bq = openBigQuery(target);
  try {
    const dataset = await checkDataset(bq, target);
    ownerOnlyDir(opts.stagingDir);
    const results: TypeLoad[] = [];
    const meta: LoadMeta = { tenant: opts.tenant, transactionTime: opts.transactionTime };
    const tabled = await typesToLoad(dataset, files);
    for (const type of BIGQUERY_TYPES) {
      if (!tabled.has(type)) {
        // Nothing to load and no table: still loaded through this export (its watermark moves).
        if (opts.done?.has(type)) continue;
        const result: TypeLoad = { type, rows: 0, state: 'empty' };
        results.push(result);
        await opts.onTypeLoaded?.(result);
        continue;
      }
      const fields = await ensureTable(dataset, type);
      await ensureView(dataset, target, type);
      if (opts.done?.has(type)) continue;
      const mine = files.filter((f) => f.type === type || f.type === 'Bundle');
      const staged = path.join(opts.stagingDir, `${type}.ndjson`);
      const after = opts.after?.[type];
      const rows = fs.existsSync(staged) ? await countLines(staged) : await stageRows(mine, type, staged, meta, after);
      let result: TypeLoad;
      if (rows === 0) {
        result = { type, rows: 0, state: 'empty' };
      } else {
        const ids = (attempt: number) => loadJobId(target, opts.tenant, type, opts.transactionTime, after, attempt);
        result = { type, ...(await runLoadJob(bq, dataset, target, type, staged, fields, ids)) };
      }
      results.push(result);
      await opts.onTypeLoaded?.(result);
    }
    return results;
  } catch (e) {
    throw explain(e, target);
  }
}

export async function countLines(file: string): Promise<number> {
  let n = 0;
  for await (const chunk of fs.createReadStream(file)) {
    for (let i = (chunk as Buffer).indexOf(10); i !== -1; i = (chunk as Buffer).indexOf(10, i + 1)) n++;
  }
  return n;
}
