// SQL of the Healthie sync (sql/009_healthie.sql): watermarks, the push outbox and the
// webhook queue. Every function runs inside a tenant transaction (withTenant), so RLS
// scopes it to one organization.
import type { Tx } from './resources.ts';

/** Marks the transaction's writes as made by the sync, so the outbox trigger skips them. */
export async function markSyncWrite(tx: Tx): Promise<void> {
  await tx.query("SELECT set_config('kiln.healthie_sync', 'on', true)");
}

export async function readWatermark(tx: Tx, kind: string): Promise<string | undefined> {
  const { rows } = await tx.query(
    `SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at FROM healthie_watermarks
      WHERE org_id = current_setting('app.org_id')::integer AND kind = $1`, [kind]);
  return rows[0]?.at;
}

export async function writeWatermark(tx: Tx, kind: string, at: string): Promise<void> {
  await tx.query(
    `INSERT INTO healthie_watermarks (org_id, kind, updated_at) VALUES (current_setting('app.org_id')::integer, $1, $2)
     ON CONFLICT (org_id, kind) DO UPDATE SET updated_at = greatest(healthie_watermarks.updated_at, EXCLUDED.updated_at), pulled_at = now()`,
    [kind, at]);
}

/** Whether a FHIR-side change of the resource, newer than `at`, still waits to be pushed. */
export async function pendingPushNewerThan(tx: Tx, type: string, id: string, at: string): Promise<boolean> {
  const { rows } = await tx.query(
    `SELECT 1 FROM healthie_outbox o JOIN resource_history h
        ON h.org_id = o.org_id AND h.resource_type = o.resource_type AND h.id = o.resource_id AND h.version_id = o.version_id
      WHERE o.org_id = current_setting('app.org_id')::integer AND o.resource_type = $1 AND o.resource_id = $2
        AND o.status = 'pending' AND h.last_updated > $3::timestamptz LIMIT 1`, [type, id, at]);
  return rows.length > 0;
}

export interface OutboxItem {
  id: number;
  resourceType: string;
  resourceId: string;
  versionId: number;
  attempts: number;
  /** The version's JSON and write time, from history (null json: a delete). */
  json: string | null;
  lastUpdated: string;
}

/** Due outbox rows, locked for this worker (others skip them). Older versions of a resource
 * than one also waiting are superseded first: only the newest state is sent. */
export async function claimOutbox(tx: Tx, limit: number): Promise<OutboxItem[]> {
  await tx.query(
    `UPDATE healthie_outbox o SET status = 'superseded', updated_at = now()
      WHERE o.org_id = current_setting('app.org_id')::integer AND o.status = 'pending'
        AND EXISTS (SELECT 1 FROM healthie_outbox n WHERE n.org_id = o.org_id AND n.resource_type = o.resource_type
                      AND n.resource_id = o.resource_id AND n.status = 'pending' AND n.version_id > o.version_id)`);
  const { rows } = await tx.query(
    `SELECT o.id, o.resource_type, o.resource_id, o.version_id, o.attempts, h.resource::text AS json,
            to_char(h.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS last_updated
       FROM healthie_outbox o
       JOIN resource_history h ON h.org_id = o.org_id AND h.resource_type = o.resource_type AND h.id = o.resource_id AND h.version_id = o.version_id
      WHERE o.org_id = current_setting('app.org_id')::integer AND o.status = 'pending' AND o.next_attempt_at <= now()
      ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED`, [limit]);
  return rows.map((r) => ({ id: Number(r.id), resourceType: r.resource_type, resourceId: r.resource_id, versionId: r.version_id,
    attempts: r.attempts, json: r.json, lastUpdated: r.last_updated }));
}

export async function finishOutbox(tx: Tx, id: number, status: 'done' | 'failed' | 'skipped' | 'superseded', note?: string, healthieId?: string): Promise<void> {
  await tx.query(
    `UPDATE healthie_outbox SET status = $2, last_error = $3, healthie_id = coalesce($4, healthie_id), attempts = attempts + 1, updated_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1`, [id, status, note ?? null, healthieId ?? null]);
}

export async function retryOutbox(tx: Tx, id: number, error: string, delaySeconds: number): Promise<void> {
  await tx.query(
    `UPDATE healthie_outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1`, [id, error, delaySeconds]);
}

export interface QueueRow { id: number; resourceType: string; resourceId: string; status: string; attempts: number; lastError: string | null; healthieId?: string | null }

export async function listOutbox(tx: Tx, limit = 100): Promise<QueueRow[]> {
  const { rows } = await tx.query(
    `SELECT id, resource_type, resource_id, version_id, status, attempts, last_error, healthie_id FROM healthie_outbox
      WHERE org_id = current_setting('app.org_id')::integer ORDER BY id DESC LIMIT $1`, [limit]);
  return rows.map((r) => ({ id: Number(r.id), resourceType: r.resource_type, resourceId: `${r.resource_id}/_history/${r.version_id}`,
    status: r.status, attempts: r.attempts, lastError: r.last_error, healthieId: r.healthie_id }));
}

export interface WebhookEvent { eventType: string; resourceType: string; resourceId: string; body: string; bodyHash: string }

/**
 * Stores a delivery, due at once, or when an identical one was due less than
 * `windowSeconds` ago, due that long after it (sql/029: a replay waits out the window).
 * Undefined when an identical one is already waiting; else when it is due (an instant).
 */
export async function enqueueWebhook(tx: Tx, e: WebhookEvent, windowSeconds: number): Promise<{ due: string; deferred: boolean } | undefined> {
  const { rows } = await tx.query(
    `INSERT INTO healthie_webhook_events (org_id, event_type, resource_type, resource_id, body, body_hash, next_attempt_at)
     SELECT o.id, $1, $2, $3, $4, $5,
            greatest(now(), (SELECT max(w.next_attempt_at) FROM healthie_webhook_events w WHERE w.org_id = o.id AND w.body_hash = $5) + make_interval(secs => $6))
       FROM (SELECT current_setting('app.org_id')::integer AS id) o
     ON CONFLICT (org_id, body_hash) WHERE status = 'pending' DO NOTHING
     RETURNING to_char(next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS due, next_attempt_at > now() AS deferred`,
    [e.eventType, e.resourceType, e.resourceId, e.body, e.bodyHash, windowSeconds]);
  return rows[0];
}

export interface ClaimedWebhook { id: number; eventType: string; resourceType: string; resourceId: string; attempts: number }

export async function claimWebhooks(tx: Tx, limit: number): Promise<ClaimedWebhook[]> {
  const { rows } = await tx.query(
    `SELECT id, event_type, resource_type, resource_id, attempts FROM healthie_webhook_events
      WHERE org_id = current_setting('app.org_id')::integer AND status = 'pending' AND next_attempt_at <= now()
      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, [limit]);
  return rows.map((r) => ({ id: Number(r.id), eventType: r.event_type, resourceType: r.resource_type, resourceId: r.resource_id, attempts: r.attempts }));
}

export async function finishWebhook(tx: Tx, id: number, status: 'done' | 'failed' | 'ignored', note?: string): Promise<void> {
  await tx.query(
    `UPDATE healthie_webhook_events SET status = $2, last_error = $3, attempts = attempts + 1, processed_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1`, [id, status, note ?? null]);
}

export async function retryWebhook(tx: Tx, id: number, error: string, delaySeconds: number): Promise<void> {
  await tx.query(
    `UPDATE healthie_webhook_events SET attempts = attempts + 1, last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1`, [id, error, delaySeconds]);
}

export async function countWebhooks(tx: Tx): Promise<Record<string, number>> {
  const { rows } = await tx.query(
    `SELECT status, count(*)::integer AS n FROM healthie_webhook_events WHERE org_id = current_setting('app.org_id')::integer GROUP BY status`);
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}
