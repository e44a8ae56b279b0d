// Leases let several Kiln processes run the Healthie workers at once without a database
// transaction held while Healthie answers: a worker writes its name and an expiry on what
// it works on (outbox rows, webhook deliveries, a tenant's pull) in a short transaction,
// renews it while it works, and a worker that died loses it when it runs out (sql/034).
import crypto from 'node:crypto';
import os from 'node:os';
import type { Database } from '../store/database.ts';
import { withTenant, type Tx } from '../store/resources.ts';
import { takePullLease, renewPullLease, releasePullLease, type Lease, type PullHolder } from '../store/healthieSync.ts';
import { log } from '../log.ts';

export type { Lease, PullHolder };

export const DEFAULT_LEASE_SECONDS = 300;

/** KILN_HEALTHIE_LEASE_SECONDS: how long a claim lasts without renewal (how late a dead worker's rows come due again). */
export function leaseSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.KILN_HEALTHIE_LEASE_SECONDS ?? DEFAULT_LEASE_SECONDS);
  return Number.isFinite(v) && v > 0 ? v : DEFAULT_LEASE_SECONDS;
}

/** A name for one worker run, unique across processes and hosts, shown as a lease's holder. */
export function workerName(role: string): string {
  return `${role}@${os.hostname()}:${process.pid}:${crypto.randomBytes(3).toString('hex')}`;
}

/**
 * Calls `renew` every third of the lease until the returned stop function is called, so
 * a lease never runs out under a live worker. A failed renewal is logged and retried on the
 * next beat (the database may be away for a moment; the lease has two more beats left).
 */
export function keepRenewed(seconds: number, renew: () => Promise<unknown>, what: string): () => Promise<void> {
  let pending: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    pending ??= renew().catch((e) => log.warn({ err: (e as Error).message }, `renewing the lease of ${what} failed`))
      .finally(() => { pending = undefined; });
  }, Math.max(200, (seconds * 1000) / 3));
  timer.unref();
  return async () => { clearInterval(timer); await pending; };
}

/**
 * Drains a lease-claimed queue: claims a batch in one short transaction, hands each item
 * to `work` with no transaction open (renewing the leases of the items not finished yet),
 * and stops when a claim finds nothing new. Shared by the push and webhook workers.
 */
export async function drainLeased<T extends { id: number }>(db: Database, orgId: number, lease: Lease, what: string,
  claim: (tx: Tx, skip: number[]) => Promise<T[]>, renew: (tx: Tx, ids: number[]) => Promise<void>,
  work: (item: T) => Promise<void>): Promise<void> {
  const seen: number[] = [];
  for (;;) {
    const items = await withTenant(db.app, orgId, (tx) => claim(tx, seen));
    if (!items.length) return;
    const held = new Set(items.map((i) => i.id));
    const stop = keepRenewed(lease.seconds, () => withTenant(db.app, orgId, (tx) => renew(tx, [...held])), what);
    try {
      for (const item of items) {
        seen.push(item.id);
        await work(item);
        held.delete(item.id);
      }
    } finally {
      await stop();
    }
  }
}

export type PullLeaseResult<T> = { ran: true; result: T } | { ran: false; holder: PullHolder };

/**
 * Runs `fn` (a pull of the tenant) while holding the tenant's pull lease; when another
 * process holds it, does not run `fn` and says who holds it. The lease is a row, renewed
 * while `fn` runs and deleted after it: no connection is kept for the pull's duration.
 */
export async function withPullLease<T>(db: Database, orgId: number, fn: () => Promise<T>, seconds = leaseSeconds()): Promise<PullLeaseResult<T>> {
  const lease: Lease = { owner: workerName('pull'), seconds };
  const holder = await withTenant(db.app, orgId, (tx) => takePullLease(tx, lease));
  if (holder) return { ran: false, holder };
  const stop = keepRenewed(seconds, async () => {
    if (!await withTenant(db.app, orgId, (tx) => renewPullLease(tx, lease))) log.warn({ orgId }, 'the Healthie pull lease was taken over while this pull ran');
  }, 'a Healthie pull');
  try {
    return { ran: true, result: await fn() };
  } finally {
    await stop();
    await withTenant(db.app, orgId, (tx) => releasePullLease(tx, lease.owner)).catch((e) =>
      log.warn({ err: (e as Error).message }, 'releasing the Healthie pull lease failed (it runs out by itself)'));
  }
}

/** One line naming the pull that holds the lease, for the CLI and the loop's log. */
export function describeHolder(slug: string, h: PullHolder): string {
  return `healthie pull '${slug}' skipped: a pull is already running (${h.owner}, since ${h.startedAt})`;
}
