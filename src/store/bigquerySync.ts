// SQL of the BigQuery sync: per-type watermarks and sync runs (sql/010_bigquery.sql).
// Operator work: these run on the owner pool, and the rows are keyed by org_id.
import type pg from 'pg';

const INSTANT = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const SYNC_LOCK = 7_201_010; // advisory lock class: one sync per tenant at a time

export interface SyncFile { type: string; path: string; count: number }

export interface SyncRun {
  id: number;
  since?: string;
  transactionTime: string;
  exportJobId: string;
  files: SyncFile[];
  afterByType: Record<string, string>;
  stagingDir: string;
  status: 'loading' | 'done' | 'abandoned';
  loaded: Record<string, { jobId?: string; rows: number; state: string }>;
  /** The ViewDefinitions this run loads and their full-export backfill (src/bigquery/views.ts owns the shape). */
  views: Record<string, unknown>;
}

const RUN_COLUMNS = `id, ${INSTANT('since')} AS since, ${INSTANT('transaction_time')} AS transaction_time, export_job_id, files,
  after_by_type, staging_dir, status, loaded, views`;

function toRun(r: any): SyncRun {
  return {
    id: Number(r.id), since: r.since ?? undefined, transactionTime: r.transaction_time, exportJobId: r.export_job_id,
    files: r.files, afterByType: r.after_by_type, stagingDir: r.staging_dir, status: r.status, loaded: r.loaded,
    views: r.views ?? {},
  };
}

/** Takes the tenant's sync lock on a dedicated connection; undefined when another sync holds it. */
export async function lockSync(owner: pg.Pool, orgId: number): Promise<(() => Promise<void>) | undefined> {
  const client = await owner.connect();
  const { rows } = await client.query('SELECT pg_try_advisory_lock($1, $2) AS ok', [SYNC_LOCK, orgId]);
  if (!rows[0].ok) {
    client.release();
    return undefined;
  }
  return async () => {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [SYNC_LOCK, orgId]).catch(() => {});
    client.release();
  };
}

export async function watermarks(owner: pg.Pool, orgId: number, target: string): Promise<Record<string, string>> {
  const { rows } = await owner.query(
    `SELECT resource_type, ${INSTANT('loaded_through')} AS t FROM bigquery_sync_watermarks WHERE org_id = $1 AND target = $2`,
    [orgId, target]);
  return Object.fromEntries(rows.map((r) => [r.resource_type, r.t]));
}

export async function pendingRun(owner: pg.Pool, orgId: number, target: string): Promise<SyncRun | undefined> {
  const { rows } = await owner.query(
    `SELECT ${RUN_COLUMNS} FROM bigquery_sync_runs WHERE org_id = $1 AND target = $2 AND status = 'loading'`, [orgId, target]);
  return rows[0] ? toRun(rows[0]) : undefined;
}

export async function insertRun(owner: pg.Pool, orgId: number, target: string,
  run: { since?: string; transactionTime: string; exportJobId: string; files: SyncFile[]; afterByType: Record<string, string>; stagingDir: string;
    views?: Record<string, unknown> }): Promise<SyncRun> {
  const { rows } = await owner.query(
    `INSERT INTO bigquery_sync_runs (org_id, target, since, transaction_time, export_job_id, files, after_by_type, staging_dir, views)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ${RUN_COLUMNS}`,
    [orgId, target, run.since ?? null, run.transactionTime, run.exportJobId, JSON.stringify(run.files), JSON.stringify(run.afterByType), run.stagingDir,
      JSON.stringify(run.views ?? {})]);
  return toRun(rows[0]);
}

/**
 * Records one type's (or view's) load and advances its watermark to the run's transaction time,
 * or to `through` (a view loaded from the run's later full export), atomically.
 */
export async function markTypeLoaded(owner: pg.Pool, orgId: number, target: string, runId: number, type: string,
  result: { jobId?: string; rows: number; state: string }, through?: string): Promise<void> {
  const client = await owner.connect();
  try {
    await client.query('BEGIN');
    const { rows } = await client.query(
      `UPDATE bigquery_sync_runs SET loaded = loaded || jsonb_build_object($2::text, $3::jsonb)
        WHERE id = $1 AND status = 'loading' RETURNING transaction_time`, [runId, type, JSON.stringify(result)]);
    if (!rows[0]) throw new Error(`BigQuery sync run ${runId} is no longer loading`);
    await client.query(
      `INSERT INTO bigquery_sync_watermarks (org_id, target, resource_type, loaded_through) VALUES ($1, $2, $3, $4)
       ON CONFLICT (org_id, target, resource_type) DO UPDATE SET loaded_through = GREATEST(bigquery_sync_watermarks.loaded_through, EXCLUDED.loaded_through)`,
      [orgId, target, type, through ?? rows[0].transaction_time]);
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw e;
  } finally {
    client.release();
  }
}

export async function finishRun(owner: pg.Pool, runId: number, status: 'done' | 'abandoned', error?: string): Promise<void> {
  await owner.query(`UPDATE bigquery_sync_runs SET status = $2, error = $3, finished_at = now() WHERE id = $1`, [runId, status, error ?? null]);
}

export async function recordRunError(owner: pg.Pool, runId: number, error: string): Promise<void> {
  await owner.query('UPDATE bigquery_sync_runs SET error = $2 WHERE id = $1', [runId, error]);
}
