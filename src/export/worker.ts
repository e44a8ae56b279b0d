// The export worker: claims queued jobs (or jobs whose worker died), runs them one
// at a time, and removes expired jobs with their files. Runs inside the server by
// default, or alone as `kiln export-worker`.
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { claimJob, deleteExpiredJobs, existingJobIds, failJob, releaseJob } from '../store/exportJobs.ts';
import { exportRoot, jobDir, runJob } from './runner.ts';
import { databaseUnavailable, logFailure, logUnavailable } from '../store/resources.ts';
import { log } from '../log.ts';

/** Kick-offs in this process wake the worker at once instead of at its next poll. */
export const exportSignal = new EventEmitter();

const POLL_MS = 1000;
const MAX_ATTEMPTS = 5;

export function workerName(): string {
  return `${os.hostname()}:${process.pid}:${crypto.randomBytes(3).toString('hex')}`;
}

export class ExportWorker {
  readonly name = workerName();
  private stopping = false;
  private loop: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  private current = new AbortController();
  private onSignal = () => this.wakeUp?.();

  constructor(private db: Database, private config: Config, private log: (msg: string) => void = () => {}) {}

  start(): void {
    exportSignal.on('job', this.onSignal);
    this.loop = this.run();
  }

  /** Stops after handing the running job back (it resumes on the next start). */
  async stop(): Promise<void> {
    this.stopping = true;
    exportSignal.off('job', this.onSignal);
    this.current.abort();
    this.wakeUp?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      let worked = false;
      try {
        await this.sweep();
        worked = await this.once();
      } catch (e) {
        if (this.stopping) continue;
        logFailure('export worker', e); // polls on until the database is back
      }
      if (!worked && !this.stopping) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, POLL_MS);
          this.wakeUp = () => { clearTimeout(t); resolve(); };
        });
        this.wakeUp = undefined;
      }
    }
  }

  /** Runs one job if there is one; true when it did. */
  async once(): Promise<boolean> {
    const job = await claimJob(this.db.owner, this.name, this.config.exportLeaseSeconds);
    if (!job) return false;
    if (job.attempts > MAX_ATTEMPTS) {
      await failJob(this.db.owner, job, this.name, this.config.exportTtlSeconds, `gave up after ${MAX_ATTEMPTS} attempts`);
      return true;
    }
    this.current = new AbortController();
    if (this.stopping) this.current.abort();
    this.log(`export ${job.id}: attempt ${job.attempts}`);
    try {
      // On the jobs pool: a long COPY has no statement timeout and takes no request connection.
      const result = await runJob({ db: { ...this.db, app: this.db.jobs }, config: this.config, worker: this.name, signal: this.current.signal }, job);
      if (result === 'aborted' && this.stopping) await releaseJob(this.db.owner, job, this.name);
      this.log(`export ${job.id}: ${result}`);
    } catch (e) {
      if (this.stopping || databaseUnavailable(e)) {
        // Not the job's fault: it runs again (from its last committed unit) once the database is back.
        if (!this.stopping) logUnavailable(`export ${job.id}: database unavailable, will retry`, e);
        await releaseJob(this.db.owner, job, this.name).catch(() => {});
      } else {
        log.error({ err: e, job: job.id }, 'export failed');
        await failJob(this.db.owner, job, this.name, this.config.exportTtlSeconds, (e as Error).message ?? String(e));
        fs.rmSync(jobDir(this.config, job.id), { recursive: true, force: true }); // a failed job has no manifest
      }
    }
    // A job cancelled while it ran may have left files behind after the cancel removed its directory.
    if ((await existingJobIds(this.db.owner, [job.id])).size === 0) fs.rmSync(jobDir(this.config, job.id), { recursive: true, force: true });
    return true;
  }

  /** Expired jobs go with their files; directories without a job (a cancel during a crash) too. */
  async sweep(): Promise<void> {
    for (const id of await deleteExpiredJobs(this.db.owner)) {
      fs.rmSync(jobDir(this.config, id), { recursive: true, force: true });
    }
    const root = exportRoot(this.config);
    if (!fs.existsSync(root)) return;
    const dirs = fs.readdirSync(root).filter((d) => /^[0-9a-f-]{36}$/.test(d));
    if (!dirs.length) return;
    const live = await existingJobIds(this.db.owner, dirs);
    for (const d of dirs) if (!live.has(d)) fs.rmSync(path.join(root, d), { recursive: true, force: true });
  }
}
