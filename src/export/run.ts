// Creating export jobs, and running one to completion in this process (for the CLI
// and for the BigQuery loader), without the HTTP kick-off.
import crypto from 'node:crypto';
import path from 'node:path';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { failJob, findJob, insertJob, listFiles, type ExportJob, type ExportProgress } from '../store/exportJobs.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import type { ExportParams } from './params.ts';
import { jobDir, runJob } from './runner.ts';
import { exportSignal, workerName } from './worker.ts';

/** Queues a job in a tenant; returns its id. The worker picks it up (woken at once in this process). */
export async function createJob(db: Database, orgId: number, request: string, params: ExportParams): Promise<string> {
  const id = crypto.randomUUID();
  await withTenant(db.app, orgId, (tx) => insertJob(tx, id, request, params));
  exportSignal.emit('job', id);
  return id;
}

export interface ExportNowResult {
  jobId: string;
  transactionTime: string;
  files: { type: string; path: string; count: number }[];
}

/**
 * Exports a tenant (all stored types, or `types`; changes after `since` only) into
 * NDJSON files and returns them. The job is a durable row like any kick-off; it runs
 * here, in this process, until complete. Files are `<exportDir>/<jobId>/<Type>-*.ndjson`
 * and expire like any export's (KILN_EXPORT_TTL).
 */
export async function exportNow(db: Database, config: Config, opts: { orgId: number; since?: string; types?: string[] }): Promise<{ jobId: string; transactionTime: string; files: { type: string; path: string; count: number }[] }> {
  return exportWithProgress(db, config, opts);
}

/** exportNow, reporting progress as it goes (the CLI's progress bar). */
export async function exportWithProgress(db: Database, config: Config, opts: { orgId: number; since?: string; types?: string[] },
  onProgress?: (p: ExportProgress) => void): Promise<ExportNowResult> {
  const types = opts.types ?? Object.keys(TABLES);
  const unknown = types.filter((t) => !TABLES[t]);
  if (unknown.length) throw new Error(`exportNow: Kiln does not store ${unknown.join(', ')}`);
  let since: string | undefined;
  if (opts.since !== undefined) {
    if (Number.isNaN(Date.parse(opts.since))) throw new Error(`exportNow: since '${opts.since}' is not an instant`);
    since = new Date(opts.since).toISOString();
  }
  const params: ExportParams = { level: 'system', types, typeFilters: {}, ...(since ? { since } : {}) };
  const query = new URLSearchParams({ _type: types.join(','), ...(since ? { _since: since } : {}) });
  const id = crypto.randomUUID();
  const worker = `${workerName()}:now`;
  const request = `${config.baseUrl ?? 'kiln:'}/$export?${query}`;
  // Created already held by this process, so a background worker never takes it.
  await withTenant(db.app, opts.orgId, (tx) => insertJob(tx, id, request, params, { worker, seconds: config.exportLeaseSeconds }));
  const job: ExportJob = { orgId: opts.orgId, id, status: 'running', request, params, progress: {}, doneUnits: [], attempts: 1 };
  try {
    const result = await runJob({ db, config, worker, onProgress }, job);
    if (result !== 'completed') throw new Error(`export ${id} was cancelled`);
  } catch (e) {
    await failJob(db.owner, job, worker, config.exportTtlSeconds, (e as Error).message ?? String(e)).catch(() => {});
    throw e;
  }
  const done = await withTenant(db.app, opts.orgId, (tx) => findJob(tx, id));
  const dir = jobDir(config, id);
  const files = (await listFiles(db.owner, opts.orgId, id)).filter((f) => f.kind === 'output')
    .map((f) => ({ type: f.type, path: path.join(dir, f.name), count: f.count }));
  return { jobId: id, transactionTime: done!.transactionTime!, files };
}
