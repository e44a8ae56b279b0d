// The write-behind audit log: AuditEvents of reads are appended to audit_log_queue (a
// light, durable insert in the read's group commit) and later materialized into FHIR
// AuditEvents (audit_events row, locator, history, search index rows) by
// insertAuditEvents. Claim and insert run in one transaction: an event is either still
// queued or materialized, never both and never neither.
import type pg from 'pg';
import type { AuditEvent } from '@medplum/fhirtypes';
import type { Database } from './database.ts';
import { insertAuditEvents, prepareAuditEvent } from './auditWrite.ts';
import { auditEventOf, type QueuedAudit } from '../audit/event.ts';

/**
 * Appends a tenant's events (each with its id and `recorded` already set) to its queue in
 * one round trip that commits by itself (sql/020): call it on a pool, not in a transaction.
 */
export async function enqueueAuditEvents(pool: pg.Pool, orgId: number, events: QueuedAudit[]): Promise<void> {
  if (!events.length) return;
  await pool.query('SELECT kiln_enqueue_audit($1, $2::text[])', [orgId, events.map((e) => JSON.stringify(e))]);
}

/** Tenants with queued events (owner pool: RLS would hide other tenants' rows). */
export async function queuedOrgs(owner: pg.Pool): Promise<number[]> {
  const { rows } = await owner.query(
    `SELECT o.id FROM organizations o WHERE EXISTS (SELECT 1 FROM audit_log_queue q WHERE q.org_id = o.id) ORDER BY o.id`);
  return rows.map((r) => r.id as number);
}

/**
 * Tenants whose queue is worth a claim now: its oldest event is older than `maxLagMs`, or
 * (unless `minBatch` is undefined) it holds at least `minBatch` events. Waiting for full
 * batches makes materialization far cheaper per event than keeping up event by event (one
 * statement per batch, not per few events). Probes each tenant's queue head and counts at
 * most `minBatch` rows through the primary key, so a long queue costs a poll nothing more.
 */
export async function dueOrgs(owner: pg.Pool, minBatch: number | undefined, maxLagMs: number): Promise<number[]> {
  const { rows } = await owner.query(
    `SELECT o.id FROM organizations o
      WHERE (SELECT q.queued_at FROM audit_log_queue q WHERE q.org_id = o.id ORDER BY q.seq LIMIT 1) < now() - $2 * interval '1 millisecond'
         OR ($1::integer IS NOT NULL AND (SELECT count(*) FROM (SELECT 1 FROM audit_log_queue q WHERE q.org_id = o.id LIMIT $1) h) >= $1)
      ORDER BY o.id`, [minBatch ?? null, maxLagMs]);
  return rows.map((r) => r.id as number);
}

export async function auditQueueLength(owner: pg.Pool): Promise<number> {
  return (await owner.query('SELECT count(*)::integer AS n FROM audit_log_queue')).rows[0].n as number;
}

/**
 * Claims up to `limit` of a tenant's oldest queued events and writes them as FHIR
 * AuditEvents, in one transaction. `wait`: block on rows another materializer holds
 * (so that a flush returns only once they are committed) instead of skipping them.
 * Returns how many events were materialized.
 */
export async function materializeBatch(owner: pg.Pool, orgId: number, limit: number, wait = false): Promise<number> {
  const client = await owner.connect();
  // A connection lost mid-transaction (backend killed, database restart) fails the query
  // below; without a listener its 'error' event would also crash the process.
  let broken: Error | undefined;
  const onError = (e: Error) => { broken = e; };
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    // insertAuditEvents writes into the tenant named by app.org_id.
    await client.query("SELECT set_config('app.org_id', $1, true)", [String(orgId)]);
    const { rows } = await client.query(
      `DELETE FROM audit_log_queue WHERE (org_id, seq) IN (
         SELECT org_id, seq FROM audit_log_queue WHERE org_id = $1 ORDER BY seq LIMIT $2 FOR UPDATE ${wait ? '' : 'SKIP LOCKED'})
       RETURNING event::text AS event`, [orgId, limit]);
    // Rows queued before the compact form held the whole AuditEvent.
    const events = rows.map((r) => {
      const q = JSON.parse(r.event as string) as QueuedAudit | AuditEvent;
      return 'resourceType' in q ? q : auditEventOf(q);
    });
    await insertAuditEvents(client, events.map((e) => prepareAuditEvent(e, e.recorded!, e.id)));
    await client.query('COMMIT');
    return events.length;
  } catch (e) {
    broken ??= await client.query('ROLLBACK').then(() => undefined, (err: Error) => err);
    throw e;
  } finally {
    client.off('error', onError);
    client.release(broken); // a broken connection is discarded, not pooled
  }
}

const FLUSH_BATCH = 500;

/** Materializes everything queued now (tests, server stop, operators); returns the count. */
export async function flushAuditQueue(db: Pick<Database, 'owner'>): Promise<number> {
  let total = 0;
  for (const org of await queuedOrgs(db.owner)) {
    for (;;) {
      const n = await materializeBatch(db.owner, org, FLUSH_BATCH, true);
      total += n;
      if (n === 0) break;
    }
  }
  return total;
}
