// What /metrics and /readyz ask the database (src/http/metrics.ts): the state of the
// background queues across all tenants, and whether the schema is migrated. A scrape or a
// probe must answer quickly whatever the database does, so each runs on the owner pool
// (it sees every tenant's rows) in one read-only transaction with a short statement
// timeout, after a bounded wait for a connection, and gives up on the first error.
import type pg from 'pg';
import { DatabaseUnavailable } from './resources.ts';
import { pendingMigrations } from './migrate.ts';

export interface QueueFigures {
  /** Export jobs per status (queued, running, completed, failed). */
  exportJobs: { status: string; count: number }[];
  /** Healthie outbox entries per tenant and status; `oldestPendingSeconds` on the pending ones. */
  healthieOutbox: { tenant: string; status: string; count: number; oldestPendingSeconds?: number }[];
  /** Per tenant and BigQuery target, seconds since the transaction time its stalest type is loaded through. */
  bigquerySync: { tenant: string; target: string; ageSeconds: number }[];
}

export async function queueFigures(owner: pg.Pool, timeoutMs: number): Promise<QueueFigures> {
  return briefly(owner, timeoutMs, async (q) => {
    const jobs = await q('SELECT status, count(*)::integer AS n FROM export_jobs GROUP BY status');
    const outbox = await q(
      `SELECT o.slug, h.status, count(*)::integer AS n,
              extract(epoch FROM now() - min(h.created_at))::float8 AS oldest
         FROM healthie_outbox h JOIN organizations o ON o.id = h.org_id
        GROUP BY o.slug, h.status`);
    // A sync advances every type's watermark; the oldest is where the next one exports from.
    const bigquery = await q(
      `SELECT o.slug, w.target, extract(epoch FROM now() - min(w.loaded_through))::float8 AS age
         FROM bigquery_sync_watermarks w JOIN organizations o ON o.id = w.org_id
        GROUP BY o.slug, w.target`);
    return {
      exportJobs: jobs.map((r) => ({ status: r.status, count: r.n })),
      healthieOutbox: outbox.map((r) => ({ tenant: r.slug, status: r.status, count: r.n,
        ...(r.status === 'pending' ? { oldestPendingSeconds: Math.max(0, r.oldest) } : {}) })),
      bigquerySync: bigquery.map((r) => ({ tenant: r.slug, target: r.target, ageSeconds: Math.max(0, r.age) })),
    };
  });
}

/** The migration files in sql/ the database has not applied; rejects when the database does not answer in time. */
export async function unappliedMigrations(owner: pg.Pool, timeoutMs: number): Promise<string[]> {
  return briefly(owner, timeoutMs, async (_q, client) => pendingMigrations(client));
}

type Query = (text: string) => Promise<any[]>;

/**
 * Runs fn in a read-only transaction on a pooled connection, within about `timeoutMs` for
 * the connection and for each statement (server side, and client side for a database that
 * stopped answering altogether).
 */
async function briefly<T>(pool: pg.Pool, timeoutMs: number, fn: (q: Query, client: pg.PoolClient) => Promise<T>): Promise<T> {
  const connecting = pool.connect();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DatabaseUnavailable('no database connection within the probe timeout')), timeoutMs);
  });
  let client: pg.PoolClient;
  try {
    client = await Promise.race([connecting, late]);
  } catch (e) {
    connecting.then((c) => c.release(), () => {}); // a connection that comes after all goes back
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const q: Query = async (text) => (await client.query({ text, query_timeout: timeoutMs } as pg.QueryConfig)).rows;
  try {
    await q('BEGIN READ ONLY');
    await client.query({ text: "SELECT set_config('statement_timeout', $1, true)", values: [`${Math.floor(timeoutMs)}ms`], query_timeout: timeoutMs } as pg.QueryConfig);
    const result = await fn(q, client);
    await q('COMMIT');
    client.release();
    return result;
  } catch (e) {
    // A connection whose statement timed out client side is in an unknown state: dropped, not reused.
    await q('ROLLBACK').then(() => client.release(), (err: Error) => client.release(err));
    throw e;
  }
}
