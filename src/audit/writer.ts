// Group commit for the AuditEvents of reads (and of refused or failed requests): each
// request waits until its AuditEvent is stored and committed, but events that arrive
// while earlier batches are being written share one statement (one per tenant) and its
// commit, so the audit costs a read a short wait rather than a transaction of its own.
import type pg from 'pg';
import { insertAuditEvents, partsOf, type AuditRow } from '../store/auditWrite.ts';
import { databaseUnavailable, logUnavailable } from '../store/resources.ts';
import { log } from '../log.ts';
import type { AuditPart } from './eventText.ts';

interface Pending {
  orgId: number;
  row: AuditRow;
  /** performance.now() when it was queued. */
  at: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

const MAX_BATCH = 500;
/** Parts remembered as stored (all tenants together); past this many the memory starts again. */
const MAX_STORED_PARTS = 10_000;
/** Batches written at once. One: events that arrive while a batch commits all wait for the
 * next batch, so under load batches grow by themselves; each batch costs a statement,
 * its executor set-up and a WAL flush (on this VM about 110 µs of the backend's CPU and as
 * much again in the kernel's I/O path), and more batches in flight only split the same
 * events into smaller ones (measured: 1.2 commits per audited read with one in flight,
 * 1.3 with four, and less database CPU per read). */
const MAX_IN_FLIGHT = 1;

/** The writer on each audit pool: the metrics (src/http/metrics.ts) find a server's writer by its Database. */
const writers = new WeakMap<pg.Pool, AuditWriter>();
export function auditWriterOf(pool: pg.Pool): AuditWriter | undefined {
  return writers.get(pool);
}

export class AuditWriter {
  private queue: Pending[] = [];
  /** The flush scheduled next (a timer, or the next turn of the event loop). */
  private next?: () => void;
  private inFlight = 0;
  /** Batches being written: their events still wait for the commit. */
  private readonly writing = new Set<Pending[]>();
  /**
   * `org id` of parts (sql/027) this writer has committed over its current connection: a
   * batch sends only the others, and the database does not check that an event's part is
   * there. A new connection starts the memory again (it may reach another server, after a
   * failover or a restore, that lacks what the old one had). Only this writer stores
   * parts, each in a statement that commits at once, so a part another statement is
   * inserting is never held by a long transaction.
   */
  private readonly storedParts = new Set<string>();
  /** The connection storedParts holds for; unset when the pool drops it. */
  private partsConnection?: pg.PoolClient;

  /**
   * `pool`: the writer's own connection (one backend, whose caches hold the insert path).
   * `windowMs`: how long the oldest queued event waits for others before its batch is
   * written. Even at 0 the batch waits for the next turn of the event loop, also right
   * after a batch committed, so that query results and requests already received are
   * handled first and their events join it: writing the next batch inside the commit's
   * callback gave batches of about 4.5 events under bench:audit's load, this about 8.
   */
  constructor(private readonly pool: pg.Pool, private readonly windowMs: number) {
    writers.set(pool, this);
    pool.on('remove', (c) => {
      if (c === this.partsConnection) this.partsConnection = undefined;
    });
  }

  /** Events waiting for their group commit: queued, or in a batch being written. */
  get backlog(): number {
    let n = this.queue.length;
    for (const b of this.writing) n += b.length;
    return n;
  }

  /** How long the oldest event still waiting for its commit has waited, in ms (0 when none waits). */
  get lagMs(): number {
    let oldest = this.queue[0]?.at ?? Infinity;
    for (const b of this.writing) oldest = Math.min(oldest, b[0].at);
    return oldest === Infinity ? 0 : performance.now() - oldest;
  }

  /** Resolves once the event is stored; rejects when it could not be (the caller answers 503 when the database is unavailable, else 500). */
  record(orgId: number, row: AuditRow): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ orgId, row, at: performance.now(), resolve, reject });
      this.schedule();
    });
  }

  /**
   * Stores parts not yet known to be stored, at once, on this writer's connection: a write's
   * event names its part inside the write's transaction, and the part must be there, and
   * committed, whatever becomes of that transaction.
   */
  async storeParts(orgId: number, parts: AuditPart[]): Promise<void> {
    if (this.partsConnection && !this.unstored(orgId, parts).length) return;
    await this.insert(orgId, [], false, parts);
  }

  /**
   * Inserts rows and the parts not yet stored over the writer's connection, in one
   * statement that commits by itself; `extra`: parts wanted whether rows name them or not.
   */
  private async insert(orgId: number, rows: AuditRow[], stamp: boolean, extra: AuditPart[] = []): Promise<void> {
    const c = await this.pool.connect();
    try {
      if (c !== this.partsConnection) {
        this.storedParts.clear();
        this.partsConnection = c;
      }
      const parts = this.unstored(orgId, [...partsOf(rows), ...extra]);
      await insertAuditEvents(c, orgId, rows, { stamp, parts });
      this.remember(orgId, parts);
      c.release();
    } catch (e) {
      c.release(e as Error); // a broken connection is not reused
      throw e;
    }
  }

  private unstored(orgId: number, parts: AuditPart[]): AuditPart[] {
    return parts.filter((p) => !this.storedParts.has(`${orgId} ${p.id}`));
  }

  private remember(orgId: number, parts: AuditPart[]): void {
    if (this.storedParts.size + parts.length > MAX_STORED_PARTS) this.storedParts.clear();
    for (const p of parts) this.storedParts.add(`${orgId} ${p.id}`);
  }

  /** Flushes once the oldest queued event has waited its window (at once when the batch is full). */
  private schedule(): void {
    if (this.inFlight >= MAX_IN_FLIGHT || !this.queue.length) return;
    if (this.queue.length >= MAX_BATCH) return this.flushNow();
    if (this.next) return;
    const wait = this.queue[0].at + this.windowMs - performance.now();
    if (wait <= 0) {
      const i = setImmediate(() => this.flushNow());
      this.next = () => clearImmediate(i);
    } else {
      const t = setTimeout(() => this.flushNow(), wait);
      this.next = () => clearTimeout(t);
    }
  }

  private flushNow(): void {
    this.next?.();
    this.next = undefined;
    const batch = this.queue.splice(0, MAX_BATCH);
    if (!batch.length) return;
    this.inFlight++;
    this.writing.add(batch);
    void this.write(batch);
  }

  private async write(batch: Pending[]): Promise<void> {
    const byOrg = new Map<number, Pending[]>();
    for (const b of batch) {
      const list = byOrg.get(b.orgId);
      if (list) list.push(b);
      else byOrg.set(b.orgId, [b]);
    }
    // One statement per tenant, each its own transaction: a tenant's events are durable
    // (or failed) together, whatever happens to another tenant's.
    await Promise.all([...byOrg].map(async ([orgId, pending]) => {
      try {
        await this.insert(orgId, pending.map((p) => p.row), true);
      } catch (e) {
        // The requests waiting fail now (503 when the database is away); the next batch connects afresh.
        const unavailable = databaseUnavailable(e);
        if (unavailable) logUnavailable('audit write failed, database unavailable', e);
        else log.error({ err: e }, 'audit write failed');
        for (const p of pending) p.reject(unavailable ?? e);
        return;
      }
      for (const p of pending) p.resolve();
    }));
    this.writing.delete(batch);
    this.inFlight--;
    this.schedule();
  }
}
