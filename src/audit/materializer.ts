// The background half of the write-behind audit log: turns queued AuditEvents
// (audit_log_queue) into FHIR AuditEvents, a tenant at a time, a few hundred per
// transaction. Several servers on one database can each run one: claims skip rows
// another holds. Events left queued at a stop or crash are picked up at the next start.
//
// It yields to request traffic: the queued row is already the durable audit record, so
// while the server is busy it materializes only what has waited longer than
// `busyMaxLagMs`, and catches up when requests pause. Under sustained saturation the lag
// settles at that bound and materializing costs what it costs; in bursts it costs the
// requests nothing.
import type { Database } from '../store/database.ts';
import { dueOrgs, materializeBatch } from '../store/auditQueue.ts';

export interface MaterializerOptions {
  /** Events per transaction. */
  batch?: number;
  /** Pause between looks at the queue when no batch is due. */
  idleMs?: number;
  /** A tenant's queue is materialized once it holds a full batch or its oldest event is this old. */
  maxLagMs?: number;
  /** True while requests are being served: then only events older than busyMaxLagMs are materialized. */
  busy?: () => boolean;
  /** The longest an event waits while the server stays busy (read at each look: the bench changes it). */
  busyMaxLagMs?: () => number;
}

export class AuditMaterializer {
  private running = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly batch: number;
  private readonly idleMs: number;
  private readonly maxLagMs: number;
  private readonly busy: () => boolean;
  private readonly busyMaxLagMs: () => number;
  /** Events materialized and time spent in materializing transactions (for the bench). */
  readonly stats = { events: 0, batches: 0, busyMs: 0 };

  constructor(private readonly db: Pick<Database, 'owner'>, opts: MaterializerOptions = {}) {
    this.batch = opts.batch ?? 500;
    this.idleMs = opts.idleMs ?? 100;
    this.maxLagMs = opts.maxLagMs ?? 1000;
    this.busy = opts.busy ?? (() => false);
    this.busyMaxLagMs = opts.busyMaxLagMs ?? (() => 30_000);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /** Finishes the transaction in progress, then stops (what is still queued stays queued). */
  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (this.running) {
      let full = false;
      try {
        const due = this.busy()
          ? await dueOrgs(this.db.owner, undefined, this.busyMaxLagMs())
          : await dueOrgs(this.db.owner, this.batch, this.maxLagMs);
        for (const org of due) {
          if (!this.running) break;
          const t0 = performance.now();
          const n = await materializeBatch(this.db.owner, org, this.batch);
          this.stats.busyMs += performance.now() - t0;
          if (n) { this.stats.events += n; this.stats.batches++; }
          if (n === this.batch) full = true;
        }
      } catch (e) {
        // Nothing is lost: the failed transaction left its events queued.
        if (this.running) console.error('audit materializer failed; retrying', e);
      }
      // A full batch means more is waiting: go on at once; otherwise poll.
      if (!full && this.running) await new Promise<void>((resolve) => { this.wake = resolve; setTimeout(resolve, this.idleMs).unref(); });
    }
  }
}
