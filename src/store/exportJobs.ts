// Durable $export jobs (sql/008_export.sql). Request handlers reach a job through
// the app pool inside its tenant (RLS); the worker claims, leases and finishes jobs
// across tenants through the owner pool, as maintenance work.
import type pg from 'pg';
import type { Tx } from './resources.ts';
import type { ExportParams } from '../export/params.ts';

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed';

export interface ExportProgress {
  /** Resources expected (null while unknown, e.g. with _typeFilter). */
  total?: number | null;
  exported?: number;
  unitsTotal?: number;
  unitsDone?: number;
  current?: string;
}

export interface ExportJob {
  orgId: number;
  id: string;
  status: JobStatus;
  request: string;
  params: ExportParams;
  /** FHIR instant, fixed at first start. */
  transactionTime?: string;
  progress: ExportProgress;
  doneUnits: string[];
  attempts: number;
  error?: string;
  expiresAt?: string;
  createdAt?: string;
  completedAt?: string;
}

export interface ExportFile {
  kind: 'output' | 'deleted' | 'error';
  type: string;
  seq: number;
  name: string;
  count: number;
  bytes: number;
}

const INSTANT = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const JOB_COLUMNS = `org_id, id::text, status, request, params, ${INSTANT('transaction_time')} AS transaction_time, progress,
  done_units, attempts, error, ${INSTANT('expires_at')} AS expires_at, ${INSTANT('created_at')} AS created_at,
  ${INSTANT('completed_at')} AS completed_at`;

function toJob(r: any): ExportJob {
  return {
    orgId: r.org_id, id: r.id, status: r.status, request: r.request, params: r.params,
    transactionTime: r.transaction_time ?? undefined, progress: r.progress ?? {}, doneUnits: r.done_units ?? [],
    attempts: r.attempts, error: r.error ?? undefined, expiresAt: r.expires_at ?? undefined,
    createdAt: r.created_at ?? undefined, completedAt: r.completed_at ?? undefined,
  };
}

/**
 * Queues a job in the current tenant transaction; with `lease`, the job starts out
 * running and held by that worker (an in-process export no other worker may take).
 */
export async function insertJob(tx: Tx, id: string, request: string, params: ExportParams,
  lease?: { worker: string; seconds: number }): Promise<void> {
  await tx.query(
    `INSERT INTO export_jobs (org_id, id, status, request, params, lease_owner, lease_until, attempts)
     VALUES (current_setting('app.org_id')::integer, $1, CASE WHEN $4::text IS NULL THEN 'queued' ELSE 'running' END, $2, $3,
             $4, CASE WHEN $4::text IS NULL THEN NULL ELSE now() + make_interval(secs => $5) END,
             CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END)`,
    [id, request, JSON.stringify(params), lease?.worker ?? null, lease?.seconds ?? 0]);
}

/**
 * A job of the current tenant that has not expired, of one kind: a $export status URL does
 * not answer for a $viewdefinition-export job (params.views), nor the other way round.
 */
export async function findJob(tx: Tx, id: string, kind: 'bulk' | 'views' = 'bulk'): Promise<ExportJob | undefined> {
  const { rows } = await tx.query(
    `SELECT ${JOB_COLUMNS} FROM export_jobs
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1 AND (expires_at IS NULL OR expires_at > now())
        AND (params ? 'views') = ($2 = 'views')`, [id, kind]);
  return rows[0] ? toJob(rows[0]) : undefined;
}

export async function listFiles(tx: Tx | pg.Pool, orgId: number, id: string): Promise<ExportFile[]> {
  const { rows } = await tx.query(
    `SELECT kind, type, seq, name, count, bytes FROM export_files WHERE org_id = $1 AND job_id = $2
      ORDER BY kind, type, seq, name`, [orgId, id]);
  return rows.map((r) => ({ ...r, bytes: Number(r.bytes) }));
}

/** Removes a job of the current tenant (cancel); its files rows go with it. */
export async function deleteJob(tx: Tx, id: string): Promise<boolean> {
  const { rowCount } = await tx.query(
    `DELETE FROM export_jobs WHERE org_id = current_setting('app.org_id')::integer AND id = $1`, [id]);
  return (rowCount ?? 0) > 0;
}

/**
 * Claims the oldest queued job, or a running one whose worker stopped renewing its
 * lease (the process died): that is how a job survives kill -9.
 */
export async function claimJob(owner: pg.Pool, worker: string, leaseSeconds: number, id?: string): Promise<ExportJob | undefined> {
  const { rows } = await owner.query(
    `UPDATE export_jobs SET status = 'running', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
            attempts = attempts + 1
      WHERE (org_id, id) = (SELECT org_id, id FROM export_jobs
                             WHERE (status = 'queued' OR (status = 'running' AND lease_until < now()))
                               AND ($3::uuid IS NULL OR id = $3::uuid)
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING ${JOB_COLUMNS}`,
    [worker, leaseSeconds, id ?? null]);
  return rows[0] ? toJob(rows[0]) : undefined;
}

/** Renews the lease and records progress; false when the job was cancelled or taken over. */
export async function renewLease(owner: pg.Pool, job: ExportJob, worker: string, leaseSeconds: number, progress: ExportProgress): Promise<boolean> {
  const { rowCount } = await owner.query(
    `UPDATE export_jobs SET lease_until = now() + make_interval(secs => $4), progress = $5
      WHERE org_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running'`,
    [job.orgId, job.id, worker, leaseSeconds, JSON.stringify(progress)]);
  return (rowCount ?? 0) > 0;
}

/** Fixes the job's transaction time (first start only) and its expected totals. */
export async function setTransactionTime(owner: pg.Pool, job: ExportJob, worker: string, instant: string, progress: ExportProgress): Promise<boolean> {
  const { rowCount } = await owner.query(
    `UPDATE export_jobs SET transaction_time = $4, progress = $5
      WHERE org_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running'`,
    [job.orgId, job.id, worker, instant, JSON.stringify(progress)]);
  return (rowCount ?? 0) > 0;
}

/**
 * Registers a unit's files and marks the unit done, atomically; false (nothing
 * registered) when the job was cancelled or another worker holds it now.
 */
export async function commitUnit(owner: pg.Pool, job: ExportJob, worker: string, unit: string, files: ExportFile[], progress: ExportProgress): Promise<boolean> {
  const client = await owner.connect();
  try {
    await client.query('BEGIN');
    const { rowCount } = await client.query(
      `UPDATE export_jobs SET done_units = array_append(done_units, $4), progress = $5
        WHERE org_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running' AND NOT ($4 = ANY(done_units))`,
      [job.orgId, job.id, worker, unit, JSON.stringify(progress)]);
    if (!rowCount) {
      await client.query('ROLLBACK');
      return false;
    }
    if (files.length) {
      await client.query(
        `INSERT INTO export_files (org_id, job_id, kind, type, seq, name, count, bytes)
         SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::integer[], $6::text[], $7::integer[], $8::bigint[])`,
        [job.orgId, job.id, files.map((f) => f.kind), files.map((f) => f.type), files.map((f) => f.seq),
          files.map((f) => f.name), files.map((f) => f.count), files.map((f) => f.bytes)]);
    }
    await client.query('COMMIT');
    return true;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw e;
  } finally {
    client.release();
  }
}

export async function completeJob(owner: pg.Pool, job: ExportJob, worker: string, ttlSeconds: number, progress: ExportProgress): Promise<boolean> {
  const { rowCount } = await owner.query(
    `UPDATE export_jobs SET status = 'completed', completed_at = now(), expires_at = now() + make_interval(secs => $4),
            lease_owner = NULL, lease_until = NULL, progress = $5
      WHERE org_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running'`,
    [job.orgId, job.id, worker, ttlSeconds, JSON.stringify(progress)]);
  return (rowCount ?? 0) > 0;
}

export async function failJob(owner: pg.Pool, job: ExportJob, worker: string, ttlSeconds: number, error: string): Promise<void> {
  await owner.query(
    `UPDATE export_jobs SET status = 'failed', error = $4, completed_at = now(), expires_at = now() + make_interval(secs => $5),
            lease_owner = NULL, lease_until = NULL
      WHERE org_id = $1 AND id = $2 AND lease_owner = $3`,
    [job.orgId, job.id, worker, error, ttlSeconds]);
}

/** Hands a job back (graceful stop) so the next worker resumes it without waiting for the lease. */
export async function releaseJob(owner: pg.Pool, job: ExportJob, worker: string): Promise<void> {
  await owner.query(
    `UPDATE export_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL
      WHERE org_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running'`,
    [job.orgId, job.id, worker]);
}

/** Deletes expired jobs; returns their ids so their directories can be removed. */
export async function deleteExpiredJobs(owner: pg.Pool): Promise<string[]> {
  const { rows } = await owner.query(`DELETE FROM export_jobs WHERE expires_at <= now() RETURNING id::text`);
  return rows.map((r) => r.id);
}

/** Which of these job ids still exist (to tell orphaned directories apart). */
export async function existingJobIds(owner: pg.Pool, ids: string[]): Promise<Set<string>> {
  const { rows } = await owner.query(`SELECT id::text FROM export_jobs WHERE id = ANY($1::uuid[])`, [ids]);
  return new Set(rows.map((r) => r.id));
}
