// A tenant's active ViewDefinitions as flat BigQuery tables, loaded by the same sync run as the
// per-type tables and kept in step the same way: rows made by the in-memory runner (src/views)
// from the run's export NDJSON, appended by load jobs with deterministic ids, a watermark per
// view advanced only with its load, and a `view_<name>_latest` BigQuery view giving each
// resource's rows from its latest export (a changed resource's old rows and a deleted one's drop
// out), as `<Type>_latest` does for the per-type tables.
//
// A view's table is named after its name and a hash of its definition (`view_<name>_<hash>`), so
// a changed definition gets a new table, filled from a full export of its type, and the
// `_latest` view moves to it once it is loaded; the old table stays for the operator to drop.
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import readline from 'node:readline';
import type { BigQuery, Dataset } from '@google-cloud/bigquery';
import type { Resource } from '@medplum/fhirtypes';
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { runSearch } from '../store/searchRun.ts';
import { parseSearch } from '../search/query.ts';
import { prepareView, ViewError, type ViewColumn, type ViewDefinition } from '../views/index.ts';
import { OWNER_ONLY_FILE } from '../export/ndjson.ts';
import { timestamp, type Row } from './rows.ts';
import type { BqField, BqType } from './schema.ts';
import { countLines, ensureFields, ensureQueryView, loadJobId, runLoadJob, type BigQueryTarget, type ExportFile } from './load.ts';

/** Bumped when the way rows or columns are made changes: every view then gets a new table. */
const FORMAT = 1;

/** Bookkeeping columns of a view table; view column names cannot start with `_`. */
export const VIEW_COLUMNS = {
  tenant: '_kiln_tenant',
  resourceType: '_kiln_resource_type',
  resourceId: '_kiln_resource_id',
  versionId: '_kiln_version_id',
  lastUpdated: '_kiln_last_updated',
  transactionTime: '_kiln_transaction_time',
  deleted: '_kiln_deleted',
  row: '_kiln_row',
  unfit: '_kiln_unfit',
  error: '_kiln_error',
} as const;

/** One view as a run loads it (stored in the run, so a resumed run loads the same). */
export interface ViewSpec {
  id: string;
  /** The view's `name` (else its id with other characters as `_`). */
  name: string;
  resource: string;
  hash: string;
  /** Watermark key: `ViewDefinition/<id>#<hash>`. */
  key: string;
  table: string;
  latest: string;
  definition: ViewDefinition;
  /** Rows come from the run's full export of the view's type (a new or changed view). */
  backfill: boolean;
  /** Only resources changed after this instant (rows up to it were loaded before). */
  after?: string;
}

/** What a run records about its views (bigquery_sync_runs.views). */
export interface RunViews {
  views?: ViewSpec[];
  /** The full export new or changed views are loaded from. */
  backfill?: { jobId: string; transactionTime: string; files: ExportFile[] };
}

export interface ViewLoad {
  view: string;
  table: string;
  jobId?: string;
  rows: number;
  /** Resources the view could not turn into rows (each a row with `_kiln_error`). */
  errors: number;
  state: 'loaded' | 'already-loaded' | 'empty' | 'skipped';
  /** Why a view was skipped. */
  reason?: string;
}

const SQL_NAME = /^[A-Za-z][A-Za-z0-9_]*$/;

/** JSON with object keys sorted, so the hash does not depend on key order. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The hash of what decides a view's rows and columns (not its name, status or narrative). */
export function definitionHash(view: ViewDefinition): string {
  const { resource, select, where, constant } = view;
  return crypto.createHash('sha256').update(canonical({ FORMAT, resource, select, where, constant })).digest('hex').slice(0, 8);
}

/** Turns a stored view into a spec, without its load filter (the sync sets backfill and after). */
export function viewSpec(id: string, definition: ViewDefinition): ViewSpec {
  const name = typeof definition.name === 'string' && SQL_NAME.test(definition.name) ? definition.name : id.replace(/[^A-Za-z0-9_]/g, '_');
  const hash = definitionHash(definition);
  return {
    id, name, resource: definition.resource, hash, key: `ViewDefinition/${id}#${hash}`,
    table: `view_${name}_${hash}`, latest: `view_${name}_latest`, definition, backfill: false,
  };
}

/**
 * The tenant's active ViewDefinitions over `types` (the types the sync exports), read through
 * the store's search in the tenant's transaction. Views that cannot be loaded are returned as
 * skipped: an invalid stored view, one over a type not synced, two with the same name.
 */
export async function activeViews(db: Database, orgId: number, types: readonly string[]): Promise<{ views: ViewSpec[]; skipped: ViewLoad[] }> {
  const found: { id: string; json: string }[] = [];
  await withTenant(db.app, orgId, async (tx) => {
    const criteria = parseSearch('ViewDefinition', [['status', 'active']]).criteria;
    let after: string[] | undefined;
    do {
      const page = await runSearch(tx, { orgId, type: 'ViewDefinition', criteria, sort: [], count: 500, after, total: 'none' });
      found.push(...page.rows);
      after = page.next;
    } while (after);
  });
  const views: ViewSpec[] = [];
  const skipped: ViewLoad[] = [];
  for (const row of found) {
    const definition = JSON.parse(row.json) as ViewDefinition;
    const spec = viewSpec(row.id, definition);
    const skip = (reason: string) => skipped.push({ view: `ViewDefinition/${row.id}`, table: spec.table, rows: 0, errors: 0, state: 'skipped', reason });
    try {
      prepareView(definition);
    } catch (e) {
      if (!(e instanceof ViewError)) throw e;
      skip(`not a valid view: ${e.message}`);
      continue;
    }
    if (!types.includes(spec.resource)) skip(`${spec.resource} is not loaded into BigQuery`);
    else views.push(spec);
  }
  // Two views with one name would share a `_latest` view: neither is loaded until one is renamed.
  const counts = new Map<string, number>();
  for (const v of views) counts.set(v.name, (counts.get(v.name) ?? 0) + 1);
  for (const v of views.filter((x) => counts.get(x.name)! > 1)) {
    skipped.push({ view: `ViewDefinition/${v.id}`, table: v.table, rows: 0, errors: 0, state: 'skipped', reason: `another active view is also named ${v.name}` });
  }
  return { views: views.filter((v) => counts.get(v.name) === 1), skipped };
}

interface ColumnPlan { name: string; type: BqType; repeated: boolean }

const FHIR_TYPE_PREFIX = 'http://hl7.org/fhir/StructureDefinition/';

// Why these column types:
// - decimal -> FLOAT64: the runner's values are JSON numbers (doubles) already, so NUMERIC would
//   promise an exactness the rows do not carry, and one value beyond its 9 decimals would fail the load.
// - date -> DATE, dateTime and instant -> TIMESTAMP: analysts filter and group by them. FHIR also
//   allows partial values ('2024', '2024-05', a dateTime without a time); those load as NULL with
//   their text in `_kiln_unfit`, so every row loads and nothing is lost.
// - time stays STRING (FHIR allows more fractional digits than TIME keeps); complex types are JSON text;
//   a column without a declared type is STRING (its value's text).
const COLUMN_TYPES: Record<string, BqType> = {
  boolean: 'BOOLEAN',
  integer: 'INTEGER', positiveInt: 'INTEGER', unsignedInt: 'INTEGER', integer64: 'INTEGER',
  decimal: 'FLOAT',
  date: 'DATE',
  dateTime: 'TIMESTAMP', instant: 'TIMESTAMP',
};

function columnPlan(c: ViewColumn): ColumnPlan {
  const type = c.type?.startsWith(FHIR_TYPE_PREFIX) ? c.type.slice(FHIR_TYPE_PREFIX.length) : c.type;
  return { name: c.name, type: (type ? COLUMN_TYPES[type] : undefined) ?? 'STRING', repeated: c.collection === true };
}

/** The view table's schema: the view's columns in order, then the bookkeeping columns. */
export function viewFields(view: ViewDefinition): BqField[] {
  const cols = prepareView(view).columns.map(columnPlan);
  const f = (name: string, type: BqType, mode: BqField['mode'], description: string): BqField => ({ name, type, mode, description });
  const c = VIEW_COLUMNS;
  return [
    ...cols.map((p) => ({ name: p.name, type: p.type, mode: p.repeated ? 'REPEATED' as const : 'NULLABLE' as const })),
    f(c.tenant, 'STRING', 'REQUIRED', 'tenant slug'),
    f(c.resourceType, 'STRING', 'REQUIRED', 'type of the resource the row comes from'),
    f(c.resourceId, 'STRING', 'REQUIRED', 'id of the resource the row comes from'),
    f(c.versionId, 'INTEGER', 'NULLABLE', 'its meta.versionId (NULL on a deletion row)'),
    f(c.lastUpdated, 'TIMESTAMP', 'NULLABLE', 'its meta.lastUpdated (NULL on a deletion row)'),
    f(c.transactionTime, 'TIMESTAMP', 'REQUIRED', 'transactionTime of the export the row was loaded from'),
    f(c.deleted, 'BOOLEAN', 'NULLABLE', 'true: the resource was deleted'),
    f(c.row, 'INTEGER', 'NULLABLE', 'index of the row among its resource version\'s rows; NULL: the version gives no rows (or was deleted)'),
    f(c.unfit, 'STRING', 'NULLABLE', 'JSON object of the values that do not fit their column (partial dates), which is NULL'),
    f(c.error, 'STRING', 'NULLABLE', 'why the view could not make rows of this resource version'),
  ];
}

/** The rows of the latest export holding each resource; resources deleted or giving no rows drop out. */
export function viewLatestSql(target: BigQueryTarget, table: string): string {
  const c = VIEW_COLUMNS;
  // RANK, not ROW_NUMBER: every row of the latest version ties at 1.
  return `SELECT * EXCEPT (_kiln_rank)
FROM (
  SELECT v.*, RANK() OVER (
    PARTITION BY v.${c.tenant}, v.${c.resourceId}
    ORDER BY v.${c.transactionTime} DESC, v.${c.lastUpdated} DESC, v.${c.versionId} DESC
  ) AS _kiln_rank
  FROM \`${target.projectId}.${target.datasetId}.${table}\` AS v
)
WHERE _kiln_rank = 1 AND ${c.row} IS NOT NULL`;
}

const FULL_DATE = /^\d{4}-\d{2}-\d{2}$/;

/** A value as its column takes it, or undefined when it does not fit. */
function fit(type: BqType, v: unknown): unknown {
  switch (type) {
    case 'BOOLEAN': return typeof v === 'boolean' ? v : undefined;
    case 'INTEGER':
      if (typeof v === 'number') return Number.isSafeInteger(v) ? v : undefined;
      return typeof v === 'string' && /^-?\d{1,18}$/.test(v) ? v : undefined;
    case 'FLOAT': return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
    case 'DATE': return typeof v === 'string' && FULL_DATE.test(v) ? v : undefined;
    case 'TIMESTAMP': return typeof v === 'string' ? timestamp(v) : undefined;
    default:
      if (typeof v === 'string') return v;
      if (typeof v === 'number' || typeof v === 'boolean') return String(v);
      return v === undefined ? undefined : JSON.stringify(v);
  }
}

/** One view row as a BigQuery row: values that do not fit their column are NULL there and kept in `_kiln_unfit`. */
export function viewRowToBq(row: Row, plans: ColumnPlan[]): Row {
  const out: Row = {};
  let unfit: Record<string, unknown> | undefined;
  for (const p of plans) {
    const v = row[p.name];
    if (v === null || v === undefined) continue;
    if (p.repeated) {
      const items = (Array.isArray(v) ? v : [v]).map((x) => fit(p.type, x));
      const kept = items.filter((x) => x !== undefined);
      if (kept.length) out[p.name] = kept;
      if (kept.length !== items.length || !Array.isArray(v)) (unfit ??= {})[p.name] = v;
    } else {
      const x = fit(p.type, v);
      if (x === undefined) (unfit ??= {})[p.name] = v;
      else out[p.name] = x;
    }
  }
  if (unfit) out[VIEW_COLUMNS.unfit] = JSON.stringify(unfit);
  return out;
}

interface StageMeta { tenant: string; transactionTime: string }

/**
 * A view's rows out of export files: per resource version its rows (numbered in `_kiln_row`),
 * or one row with `_kiln_row` NULL when it gives none (the `_latest` view must drop its older
 * rows) or the view fails on it (`_kiln_error`); per deletion one row with `_kiln_deleted`.
 */
export async function stageViewRows(files: ExportFile[], spec: ViewSpec, out: string, meta: StageMeta, after?: string): Promise<{ rows: number; errors: number }> {
  const prepared = prepareView(spec.definition);
  const plans = prepared.columns.map(columnPlan);
  const c = VIEW_COLUMNS;
  const tmp = `${out}.partial`;
  fs.rmSync(tmp, { force: true });
  const sink = fs.createWriteStream(tmp, { mode: OWNER_ONLY_FILE }); // view rows are PHI
  const afterMs = after ? Date.parse(after) : undefined;
  const transactionTime = timestamp(meta.transactionTime) ?? meta.transactionTime;
  let rows = 0;
  let errors = 0;
  const write = async (row: Row) => {
    rows++;
    if (!sink.write(`${JSON.stringify(row)}\n`)) await once(sink, 'drain');
  };
  const base = (id: string, extra: Row): Row => ({
    [c.tenant]: meta.tenant, [c.resourceType]: spec.resource, [c.resourceId]: id, ...extra, [c.transactionTime]: transactionTime,
  });
  for (const file of files) {
    if (file.type !== spec.resource && file.type !== 'Bundle') continue;
    const lines = readline.createInterface({ input: fs.createReadStream(file.path), crlfDelay: Infinity });
    for await (const line of lines) {
      if (!line.trim()) continue;
      const resource = JSON.parse(line) as Resource & { entry?: { request?: { method?: string; url?: string } }[] };
      if (file.type === 'Bundle') {
        for (const entry of resource.entry ?? []) {
          const [t, id] = String(entry.request?.url ?? '').split('/');
          if (entry.request?.method === 'DELETE' && t === spec.resource && id) await write(base(id, { [c.deleted]: true }));
        }
        continue;
      }
      const lastUpdated = resource.meta?.lastUpdated;
      if (afterMs !== undefined && Date.parse(lastUpdated ?? '') <= afterMs) continue;
      const version: Row = {
        ...(/^\d{1,15}$/.test(resource.meta?.versionId ?? '') ? { [c.versionId]: Number(resource.meta!.versionId) } : {}),
        ...(lastUpdated && timestamp(lastUpdated) ? { [c.lastUpdated]: timestamp(lastUpdated) } : {}),
        [c.deleted]: false,
      };
      let made: Row[];
      try {
        made = [...prepared.rowsOf(resource)];
      } catch (e) {
        if (!(e instanceof ViewError)) throw e;
        errors++;
        await write(base(resource.id!, { ...version, [c.error]: e.message }));
        continue;
      }
      if (made.length === 0) await write(base(resource.id!, version));
      for (const [i, r] of made.entries()) await write({ ...viewRowToBq(r, plans), ...base(resource.id!, { ...version, [c.row]: i }) });
    }
  }
  await new Promise<void>((resolve, reject) => sink.end((e?: Error | null) => (e ? reject(e) : resolve())));
  fs.renameSync(tmp, out); // a staged file is complete or absent
  return { rows, errors };
}

export interface ViewLoadOptions {
  tenant: string;
  /** The run's export and its transactionTime (views loaded incrementally). */
  files: ExportFile[];
  transactionTime: string;
  backfill?: RunViews['backfill'];
  stagingDir: string;
  done?: Set<string>;
  onViewLoaded?: (spec: ViewSpec, result: ViewLoad, through: string) => Promise<void> | void;
}

/** Loads each view's rows into its table (one load job each), then points its `_latest` view at that table. */
export async function loadViews(bq: BigQuery, dataset: Dataset, target: BigQueryTarget, specs: ViewSpec[], opts: ViewLoadOptions): Promise<ViewLoad[]> {
  const results: ViewLoad[] = [];
  for (const spec of specs) {
    const fields = await ensureFields(dataset, spec.table, viewFields(spec.definition),
      `Rows of ViewDefinition/${spec.id} (${spec.name}) loaded by Kiln, one load per sync; see ${spec.latest}`);
    const source = spec.backfill ? opts.backfill! : { files: opts.files, transactionTime: opts.transactionTime };
    if (!opts.done?.has(spec.key)) {
      const staged = `${opts.stagingDir}/${spec.table}.ndjson`;
      const errorsFile = `${staged}.errors`;
      let rows: number;
      let errors: number;
      if (fs.existsSync(staged)) {
        rows = await countLines(staged);
        errors = fs.existsSync(errorsFile) ? Number(fs.readFileSync(errorsFile, 'utf8')) : 0;
      } else {
        ({ rows, errors } = await stageViewRows(source.files, spec, staged, { tenant: opts.tenant, transactionTime: source.transactionTime }, spec.after));
        fs.writeFileSync(errorsFile, String(errors), { mode: OWNER_ONLY_FILE });
      }
      let result: ViewLoad;
      if (rows === 0) {
        result = { view: `ViewDefinition/${spec.id}`, table: spec.table, rows: 0, errors, state: 'empty' };
      } else {
        const ids = (attempt: number) => loadJobId(target, opts.tenant, spec.table, source.transactionTime, spec.after, attempt);
        const job = await runLoadJob(bq, dataset, target, spec.table, staged, fields, ids);
        result = { view: `ViewDefinition/${spec.id}`, table: spec.table, errors, ...job };
      }
      results.push(result);
      await opts.onViewLoaded?.(spec, result, source.transactionTime);
    }
    // Only now: a changed view's `_latest` keeps showing the old table until the new one is loaded.
    await ensureQueryView(dataset, spec.latest, viewLatestSql(target, spec.table),
      `Current rows of ViewDefinition/${spec.id} (${spec.name}): the latest loaded version of each resource (Kiln)`);
  }
  return results;
}
