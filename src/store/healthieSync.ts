// SQL of the Healthie sync (sql/009_healthie.sql, sql/034): watermarks, the push outbox,
// the webhook queue and the leases workers hold on them. Every function runs inside a tenant transaction (withTenant), so RLS
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

/** A worker's hold on queue rows: who holds them and for how long a claim or renewal lasts. */
export interface Lease { owner: string; seconds: number }

/**
 * Leases up to `limit` due outbox rows to `lease.owner` (rows in `skip` aside) and returns
 * them; the caller commits at once and calls Healthie outside any transaction. Older
 * pending versions of a resource than one also waiting are superseded first (only the
 * newest state is sent), and a resource one of whose rows is leased is left alone, so two
 * workers never send one resource at the same time. A row whose lease ran out (its worker
 * died) is due again.
 */
export async function claimOutbox(tx: Tx, lease: Lease, limit: number, skip: number[] = []): Promise<OutboxItem[]> {
  await tx.query(
    `UPDATE healthie_outbox SET status = 'superseded', lease_owner = NULL, leased_until = NULL, updated_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id IN (
        SELECT o.id FROM healthie_outbox o
         WHERE o.org_id = current_setting('app.org_id')::integer AND o.status = 'pending'
           AND (o.leased_until IS NULL OR o.leased_until <= now())
           AND EXISTS (SELECT 1 FROM healthie_outbox n WHERE n.org_id = o.org_id AND n.resource_type = o.resource_type
                         AND n.resource_id = o.resource_id AND n.status = 'pending' AND n.version_id > o.version_id)
         FOR UPDATE SKIP LOCKED)`);
  const { rows } = await tx.query(
    `WITH c AS (
       SELECT o.id FROM healthie_outbox o
        WHERE o.org_id = current_setting('app.org_id')::integer AND o.status = 'pending' AND o.next_attempt_at <= now()
          AND (o.leased_until IS NULL OR o.leased_until <= now()) AND o.id <> ALL($3::bigint[])
          AND NOT EXISTS (SELECT 1 FROM healthie_outbox l WHERE l.org_id = o.org_id AND l.resource_type = o.resource_type
                            AND l.resource_id = o.resource_id AND l.id <> o.id AND l.status = 'pending' AND l.leased_until > now())
        ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED)
     UPDATE healthie_outbox o SET lease_owner = $1, leased_until = now() + make_interval(secs => $4)
       FROM c, resource_history h
      WHERE o.org_id = current_setting('app.org_id')::integer AND o.id = c.id
        AND h.org_id = o.org_id AND h.resource_type = o.resource_type AND h.id = o.resource_id AND h.version_id = o.version_id
     RETURNING o.id, o.resource_type, o.resource_id, o.version_id, o.attempts, h.resource::text AS json,
            to_char(h.last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS last_updated`,
    [lease.owner, limit, skip, lease.seconds]);
  return rows.map((r) => ({ id: Number(r.id), resourceType: r.resource_type, resourceId: r.resource_id, versionId: r.version_id,
    attempts: r.attempts, json: r.json, lastUpdated: r.last_updated })).sort((a, b) => a.id - b.id);
}

/** Extends the lease on rows `owner` still holds (a send that takes long). */
export async function renewOutbox(tx: Tx, lease: Lease, ids: number[]): Promise<void> {
  await tx.query(
    `UPDATE healthie_outbox SET leased_until = now() + make_interval(secs => $3)
      WHERE org_id = current_setting('app.org_id')::integer AND id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'pending'`,
    [ids, lease.owner, lease.seconds]);
}

/** Records a row's outcome; false when `owner` no longer holds its lease (another worker took it over). */
export async function finishOutbox(tx: Tx, id: number, owner: string, status: 'done' | 'failed' | 'skipped' | 'superseded', note?: string, healthieId?: string): Promise<boolean> {
  const r = await tx.query(
    `UPDATE healthie_outbox SET status = $3, last_error = $4, healthie_id = coalesce($5, healthie_id), attempts = attempts + 1,
            lease_owner = NULL, leased_until = NULL, updated_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1 AND lease_owner = $2 AND status = 'pending'`,
    [id, owner, status, note ?? null, healthieId ?? null]);
  return r.rowCount === 1;
}

/** Puts a row back for a later attempt; false when `owner` no longer holds its lease. */
export async function retryOutbox(tx: Tx, id: number, owner: string, error: string, delaySeconds: number): Promise<boolean> {
  const r = await tx.query(
    `UPDATE healthie_outbox SET attempts = attempts + 1, last_error = $3, next_attempt_at = now() + make_interval(secs => $4),
            lease_owner = NULL, leased_until = NULL, updated_at = now()
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1 AND lease_owner = $2 AND status = 'pending'`,
    [id, owner, error, delaySeconds]);
  return r.rowCount === 1;
}

export interface QueueRow { id: number; resourceType: string; resourceId: string; status: string; attempts: number; lastError: string | null; healthieId?: string | null;
  /** The worker holding the row, while its lease stands. */
  leasedBy?: string | null }

export async function listOutbox(tx: Tx, limit = 100): Promise<QueueRow[]> {
  const { rows } = await tx.query(
    `SELECT id, resource_type, resource_id, version_id, status, attempts, last_error, healthie_id,
            CASE WHEN leased_until > now() THEN lease_owner END AS leased_by FROM healthie_outbox
      WHERE org_id = current_setting('app.org_id')::integer ORDER BY id DESC LIMIT $1`, [limit]);
  return rows.map((r) => ({ id: Number(r.id), resourceType: r.resource_type, resourceId: `${r.resource_id}/_history/${r.version_id}`,
    status: r.status, attempts: r.attempts, lastError: r.last_error, healthieId: r.healthie_id, leasedBy: r.leased_by }));
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

/** Leases due deliveries, as claimOutbox does: never two deliveries about one object to two workers at once. */
export async function claimWebhooks(tx: Tx, lease: Lease, limit: number, skip: number[] = []): Promise<ClaimedWebhook[]> {
  const { rows } = await tx.query(
    `WITH c AS (
       SELECT w.id FROM healthie_webhook_events w
        WHERE w.org_id = current_setting('app.org_id')::integer AND w.status = 'pending' AND w.next_attempt_at <= now()
          AND (w.leased_until IS NULL OR w.leased_until <= now()) AND w.id <> ALL($3::bigint[])
          AND NOT EXISTS (SELECT 1 FROM healthie_webhook_events l WHERE l.org_id = w.org_id AND l.resource_type = w.resource_type
                            AND l.resource_id = w.resource_id AND l.id <> w.id AND l.status = 'pending' AND l.leased_until > now())
        ORDER BY w.id LIMIT $2 FOR UPDATE SKIP LOCKED)
     UPDATE healthie_webhook_events w SET lease_owner = $1, leased_until = now() + make_interval(secs => $4)
       FROM c WHERE w.org_id = current_setting('app.org_id')::integer AND w.id = c.id
     RETURNING w.id, w.event_type, w.resource_type, w.resource_id, w.attempts`, [lease.owner, limit, skip, lease.seconds]);
  return rows.map((r) => ({ id: Number(r.id), eventType: r.event_type, resourceType: r.resource_type, resourceId: r.resource_id, attempts: r.attempts }))
    .sort((a, b) => a.id - b.id);
}

export async function renewWebhooks(tx: Tx, lease: Lease, ids: number[]): Promise<void> {
  await tx.query(
    `UPDATE healthie_webhook_events SET leased_until = now() + make_interval(secs => $3)
      WHERE org_id = current_setting('app.org_id')::integer AND id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'pending'`,
    [ids, lease.owner, lease.seconds]);
}

/** False when `owner` no longer holds the delivery's lease. */
export async function finishWebhook(tx: Tx, id: number, owner: string, status: 'done' | 'failed' | 'ignored', note?: string): Promise<boolean> {
  const r = await tx.query(
    `UPDATE healthie_webhook_events SET status = $3, last_error = $4, attempts = attempts + 1, processed_at = now(), lease_owner = NULL, leased_until = NULL
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1 AND lease_owner = $2 AND status = 'pending'`, [id, owner, status, note ?? null]);
  return r.rowCount === 1;
}

export async function retryWebhook(tx: Tx, id: number, owner: string, error: string, delaySeconds: number): Promise<boolean> {
  const r = await tx.query(
    `UPDATE healthie_webhook_events SET attempts = attempts + 1, last_error = $3, next_attempt_at = now() + make_interval(secs => $4),
            lease_owner = NULL, leased_until = NULL
      WHERE org_id = current_setting('app.org_id')::integer AND id = $1 AND lease_owner = $2 AND status = 'pending'`, [id, owner, error, delaySeconds]);
  return r.rowCount === 1;
}

/** Who holds the tenant's pull lease, when none could be taken. */
export interface PullHolder { owner: string; startedAt: string }

/**
 * Takes the tenant's pull lease for `lease.owner` when nobody holds it or its holder's
 * lease ran out; otherwise returns the holder (one INSERT ... ON CONFLICT, so two
 * processes asking at once cannot both get it).
 */
export async function takePullLease(tx: Tx, lease: Lease): Promise<PullHolder | undefined> {
  const { rows } = await tx.query(
    `INSERT INTO healthie_pull_leases (org_id, lease_owner, leased_until)
     VALUES (current_setting('app.org_id')::integer, $1, now() + make_interval(secs => $2))
     ON CONFLICT (org_id) DO UPDATE SET lease_owner = EXCLUDED.lease_owner, leased_until = EXCLUDED.leased_until, started_at = now()
      WHERE healthie_pull_leases.leased_until <= now()
     RETURNING lease_owner`, [lease.owner, lease.seconds]);
  if (rows.length) return undefined;
  const held = await tx.query(
    `SELECT lease_owner, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS started_at FROM healthie_pull_leases
      WHERE org_id = current_setting('app.org_id')::integer`);
  return { owner: held.rows[0]?.lease_owner ?? 'another process', startedAt: held.rows[0]?.started_at ?? '' };
}

/** Extends the pull lease; false when `owner` lost it (it ran out and another pull took it). */
export async function renewPullLease(tx: Tx, lease: Lease): Promise<boolean> {
  const r = await tx.query(
    `UPDATE healthie_pull_leases SET leased_until = now() + make_interval(secs => $2)
      WHERE org_id = current_setting('app.org_id')::integer AND lease_owner = $1`, [lease.owner, lease.seconds]);
  return r.rowCount === 1;
}

export async function releasePullLease(tx: Tx, owner: string): Promise<void> {
  await tx.query(`DELETE FROM healthie_pull_leases WHERE org_id = current_setting('app.org_id')::integer AND lease_owner = $1`, [owner]);
}

export async function countWebhooks(tx: Tx): Promise<Record<string, number>> {
  const { rows } = await tx.query(
    `SELECT status, count(*)::integer AS n FROM healthie_webhook_events WHERE org_id = current_setting('app.org_id')::integer GROUP BY status`);
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}
