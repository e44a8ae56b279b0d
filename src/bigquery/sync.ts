// Incremental BigQuery sync of one tenant: export what changed since the watermark, load
// it, and advance each type's watermark only once its load job succeeded. A run that fails
// stays pending and the next sync resumes it with the same staged rows and job ids, so no
// resource version is lost or loaded twice. The tenant's active ViewDefinitions are loaded by
// the same run as flat tables (views.ts), each with a watermark of its own.
import fs from 'node:fs';
import path from 'node:path';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { exportNow } from '../export/run.ts';
import { listFiles } from '../store/exportJobs.ts';
import { jobDir } from '../export/runner.ts';
import { finishRun, insertRun, lockSync, markTypeLoaded, pendingRun, recordRunError, watermarks, type SyncRun } from '../store/bigquerySync.ts';
import { BIGQUERY_TYPES } from './schema.ts';
import { BigQuerySetupError, checkDataset, explain, loadExport, openBigQuery, type BigQueryTarget, type ExportFile, type TypeLoad } from './load.ts';
import { activeViews, loadViews, type RunViews, type ViewLoad } from './views.ts';

export interface SyncOptions {
  orgId: number;
  /** Tenant slug, written into every row (_kiln_tenant). */
  tenant: string;
  target: BigQueryTarget;
}

export interface SyncResult {
  runId: number;
  since?: string;
  transactionTime: string;
  resumed: boolean;
  loads: TypeLoad[];
  /** The tenant's active ViewDefinitions: loaded, empty, or skipped (with the reason). */
  views: ViewLoad[];
}

const targetKey = (t: BigQueryTarget) => `${t.projectId}:${t.datasetId}`;

/** Types loaded into BigQuery that this Kiln stores (Group once the export work stores it). */
export function syncTypes(): string[] {
  return BIGQUERY_TYPES.filter((t) => TABLES[t]);
}

/** A run can resume when every type and view still to load has its staged rows or its export files. */
function resumable(run: SyncRun): boolean {
  const deletions = run.files.filter((f) => f.type === 'Bundle');
  const { views = [], backfill } = run.views as RunViews;
  return syncTypes().filter((t) => !run.loaded[t]).every((t) => fs.existsSync(path.join(run.stagingDir, `${t}.ndjson`))
    || run.files.filter((f) => f.type === t).concat(deletions).every((f) => fs.existsSync(f.path)))
    && views.filter((v) => !run.loaded[v.key]).every((v) => fs.existsSync(path.join(run.stagingDir, `${v.table}.ndjson`))
      || (v.backfill ? backfill?.files ?? [] : run.files).filter((f) => f.type === v.resource || f.type === 'Bundle').every((f) => fs.existsSync(f.path)));
}

async function loadRun(db: Database, opts: SyncOptions, run: SyncRun, resumed: boolean, skipped: ViewLoad[]): Promise<SyncResult> {
  const key = targetKey(opts.target);
  try {
    const loads = await loadExport(opts.target, run.files as ExportFile[], {
      tenant: opts.tenant,
      transactionTime: run.transactionTime,
      stagingDir: run.stagingDir,
      after: run.afterByType,
      done: new Set(Object.keys(run.loaded)),
      onTypeLoaded: (r) => markTypeLoaded(db.owner, opts.orgId, key, run.id, r.type, { jobId: r.jobId, rows: r.rows, state: r.state }),
    });
    const { views = [], backfill } = run.views as RunViews;
    const bq = openBigQuery(opts.target);
    const viewLoads = views.length === 0 ? [] : await loadViews(bq, await checkDataset(bq, opts.target), opts.target, views, {
      tenant: opts.tenant,
      files: run.files as ExportFile[],
      transactionTime: run.transactionTime,
      backfill,
      stagingDir: run.stagingDir,
      done: new Set(Object.keys(run.loaded)),
      onViewLoaded: (spec, r, through) => markTypeLoaded(db.owner, opts.orgId, key, run.id, spec.key, { jobId: r.jobId, rows: r.rows, state: r.state }, through),
    }).catch((e) => { throw explain(e, opts.target); });
    await finishRun(db.owner, run.id, 'done');
    fs.rmSync(run.stagingDir, { recursive: true, force: true });
    return { runId: run.id, since: run.since, transactionTime: run.transactionTime, resumed, loads, views: [...viewLoads, ...skipped] };
  } catch (e) {
    await recordRunError(db.owner, run.id, (e as Error).message ?? String(e)).catch(() => {});
    throw e;
  }
}

/**
 * One sync: resumes the pending run if there is one (and returns), else exports from the
 * oldest type watermark and loads. Types whose watermark is later than that export's
 * `_since` (an earlier run loaded them, then its files were lost) skip what they already hold.
 */
export async function syncTenant(db: Database, config: Config, opts: SyncOptions): Promise<SyncResult> {
  const key = targetKey(opts.target);
  // Settings, credentials and dataset first: a clear message before any export work.
  const bq = openBigQuery(opts.target);
  await checkDataset(bq, opts.target).catch((e) => { throw explain(e, opts.target); });
  const release = await lockSync(db.owner, opts.orgId);
  if (!release) throw new BigQuerySetupError(`another BigQuery sync of tenant '${opts.tenant}' is running`);
  try {
    const pending = await pendingRun(db.owner, opts.orgId, key);
    if (pending) {
      if (resumable(pending)) return await loadRun(db, opts, pending, true, []);
      // Its files are gone: the types it loaded advanced their watermarks; the rest export again.
      await finishRun(db.owner, pending.id, 'abandoned', 'export files and staged rows no longer exist');
    }
    const types = syncTypes();
    const marks = await watermarks(db.owner, opts.orgId, key);
    const { views, skipped } = await activeViews(db, opts.orgId, types);
    // A view loaded before continues from its watermark; a new one, or one whose definition
    // changed (another hash, so no watermark), is filled from a full export of its type.
    const loadedViews = views.filter((v) => marks[v.key]);
    const since = types.every((t) => marks[t]) ? [...types, ...loadedViews.map((v) => v.key)].map((t) => marks[t]).sort()[0] : undefined;
    const afterByType = Object.fromEntries(types.filter((t) => marks[t] && (!since || marks[t] > since)).map((t) => [t, marks[t]]));
    for (const v of views) {
      v.backfill = since !== undefined && !marks[v.key];
      if (marks[v.key] && (!since || marks[v.key] > since)) v.after = marks[v.key];
    }
    const exported = await exportNow(db, config, { orgId: opts.orgId, ...(since ? { since } : {}), types });
    const runViews: RunViews = { views };
    const backfillTypes = [...new Set(views.filter((v) => v.backfill).map((v) => v.resource))];
    if (backfillTypes.length) {
      const full = await exportNow(db, config, { orgId: opts.orgId, types: backfillTypes });
      runViews.backfill = { jobId: full.jobId, transactionTime: full.transactionTime, files: full.files };
    }
    // Deletions are listed beside the output files: transaction Bundles of DELETE entries.
    const deletions = (await listFiles(db.owner, opts.orgId, exported.jobId)).filter((f) => f.kind === 'deleted')
      .map((f) => ({ type: 'Bundle', path: path.join(jobDir(config, exported.jobId), f.name), count: f.count }));
    const run = await insertRun(db.owner, opts.orgId, key, {
      since, transactionTime: exported.transactionTime, exportJobId: exported.jobId,
      files: [...exported.files, ...deletions], afterByType,
      stagingDir: path.join(config.dataDir, 'bigquery-staging', String(opts.orgId), exported.jobId),
      views: runViews as unknown as Record<string, unknown>,
    });
    return await loadRun(db, opts, run, false, skipped);
  } finally {
    await release();
  }
}
