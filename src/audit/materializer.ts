// The background half of the write-behind audit log: turns queued AuditEvents
// (audit_log_queue) into FHIR AuditEvents, a tenant at a time, a few hundred per
// transaction. Several servers on one database can each run one: claims skip rows
// another holds. Events left queued at a stop or crash are picked up at the next start.
import type { Database } from '../store/database.ts';
import { dueOrgs, materializeBatch } from '../store/auditQueue.ts';

export interface MaterializerOptions {
  /** Events per transaction. */
  batch?: number;
  /** Pause between looks at the queue when no batch is due. */
  idleMs?: number;
  /** A tenant's queue is materialized once it holds a full batch or its oldest event is this old. */
  maxLagMs?: number;
}

export class AuditMaterializer {
  private running = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly batch: number;
  private readonly idleMs: number;
  private readonly maxLagMs: number;
  /** Events materialized and time spent in materializing transactions (for the bench). */
  readonly stats = { events: 0, batches: 0, busyMs: 0 };

  constructor(private readonly db: Pick<Database, 'owner'>, opts: MaterializerOptions = {}) {
    this.batch = opts.batch ?? 500;
    this.idleMs = opts.idleMs ?? 100;
    this.maxLagMs = opts.maxLagMs ?? 1000;
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
        for (const org of await dueOrgs(this.db.owner, this.batch, this.maxLagMs)) {
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
