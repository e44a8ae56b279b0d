// The running server's card: <dataDir>/kiln-runtime.json (0600), written when the server
// starts ('starting') and when it listens ('ready'), removed on a clean stop. The CLI reads
// it (cliConfig) so that `kiln auth token` beside a running server needs no environment, on
// any ports, and waits for a server still starting (a first start's initdb) instead of
// racing it. A card whose pid is gone (a crash, kill -9) is stale and ignored.
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig, type Config } from './config.ts';
import { log } from './log.ts';

export const RUNTIME_FILE = 'kiln-runtime.json';
/** How long the CLI waits for a server that is starting (initdb and migrations on a first start). */
export const START_WAIT_MS = 180_000;
const POLL_MS = 200;

export interface Runtime {
  state: 'starting' | 'ready';
  pid: number;
  dataDir: string;
  startedAt: string;
  /** Ready: the HTTP port and the address it is bound to. */
  port?: number;
  host?: string;
  /** Ready: the FHIR base URL clients on this machine use (BASE_URL when set). */
  baseUrl?: string;
  /** Whether baseUrl is the configured BASE_URL rather than derived from the listener. */
  baseUrlConfigured?: boolean;
  /** The embedded PostgreSQL's port, or 'external database' (DATABASE_URL, never written here). */
  postgres?: number | 'external database';
}

export const runtimePath = (dataDir: string) => path.join(dataDir, RUNTIME_FILE);

/**
 * Written whole (temporary file, then rename), so a reader never sees half a card. A data
 * dir that cannot take it costs the CLI its shortcut, not the server its start: a warning.
 */
export function writeRuntime(config: Pick<Config, 'dataDir' | 'databaseUrl' | 'embeddedPort'>, card: Pick<Runtime, 'state' | 'port' | 'host' | 'baseUrl' | 'baseUrlConfigured'>): void {
  const full: Runtime = {
    pid: process.pid, dataDir: config.dataDir, startedAt: new Date().toISOString(),
    postgres: config.databaseUrl ? 'external database' : config.embeddedPort, ...card,
  };
  // Another live server's card stays: this process is about to fail on the data dir's lock,
  // and the CLI must still find the server that holds it.
  const other = liveRuntime(config.dataDir);
  if (other && other.pid !== process.pid) return;
  const tmp = `${runtimePath(config.dataDir)}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(config.dataDir, { recursive: true });
    fs.writeFileSync(tmp, `${JSON.stringify(full, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, runtimePath(config.dataDir));
  } catch (err) {
    log.warn({ err }, `could not write ${runtimePath(config.dataDir)}: the CLI will need PORT and KILN_PG_PORT`);
  }
}

export function readRuntime(dataDir: string): Runtime | undefined {
  try {
    const card = JSON.parse(fs.readFileSync(runtimePath(dataDir), 'utf8')) as Runtime;
    return Number.isInteger(card.pid) && (card.state === 'starting' || card.state === 'ready') ? card : undefined;
  } catch {
    return undefined; // none, or unreadable: as if no server announced itself
  }
}

/** Removes the card if this process wrote it (another server on the data dir keeps its own). */
export function removeRuntime(dataDir: string, pid = process.pid): void {
  if (readRuntime(dataDir)?.pid !== pid) return;
  fs.rmSync(runtimePath(dataDir), { force: true });
}

/** Whether a process with this pid runs (a zombie, exited but not reaped, does not). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return !/^\d+ \(.*\) Z/s.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true; // no /proc (not Linux): kill(0) said it runs
  }
}

/** The card of a live server on this data dir, or undefined (none, or stale). */
export function liveRuntime(dataDir: string): Runtime | undefined {
  const card = readRuntime(dataDir);
  return card && pidAlive(card.pid) ? card : undefined;
}

/** The FHIR base a client on this machine reaches a listener at: localhost for a wildcard bind. */
export function listenerBaseUrl(host: string, port: number): string {
  const name = host === '' || host === '0.0.0.0' || host === '::' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return `http://${name}:${port}/fhir`;
}

/** The FHIR base of the default tenant as the CLI sees it: the server's, or BASE_URL, or localhost:PORT. */
export function serverBaseUrl(config: Config): string {
  return config.baseUrl ?? `http://localhost:${config.port}/fhir`;
}

export class ServerNotReady extends Error {}

/**
 * The live server's card once it is ready; undefined when no live server announced itself.
 * A server that is starting is waited for (onWait is told once); one that exits meanwhile,
 * or is not ready within timeoutMs, is a ServerNotReady.
 */
export async function waitForServer(dataDir: string, opts: { timeoutMs?: number; onWait?: (card: Runtime) => void } = {}): Promise<Runtime | undefined> {
  const deadline = Date.now() + (opts.timeoutMs ?? START_WAIT_MS);
  let told = false;
  for (;;) {
    const card = liveRuntime(dataDir);
    if (!card) {
      if (told) throw new ServerNotReady('the Kiln server exited before it was ready: see its output');
      return undefined;
    }
    if (card.state === 'ready') return card;
    if (!told) { opts.onWait?.(card); told = true; }
    if (Date.now() > deadline) throw new ServerNotReady(`the Kiln server (pid ${card.pid}) is still starting after ${Math.round((opts.timeoutMs ?? START_WAIT_MS) / 1000)} s`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** How long a CLI on a data dir without a database waits for a server starting beside it to write its card. */
const FIRST_START_GRACE_MS = 3000;

const tellWaiting = (c: Runtime) => console.error(`waiting for the Kiln server (pid ${c.pid}) to finish starting...`);

async function announced(dataDir: string): Promise<Runtime | undefined> {
  const until = Date.now() + FIRST_START_GRACE_MS;
  while (Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (liveRuntime(dataDir)) return waitForServer(dataDir, { onWait: tellWaiting });
  }
  return undefined;
}

/**
 * The configuration of a CLI command that opens the database: the running server's ports
 * and base URL (from its card, after waiting for it to be ready) under the explicit
 * environment, which always wins. Without a live server, plain loadConfig(). A failure to
 * find the server ready ends the process with one line on stderr.
 */
export async function cliConfig(env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const dataDir = loadConfig(env).dataDir;
  let card: Runtime | undefined;
  try {
    card = await waitForServer(dataDir, { onWait: tellWaiting });
    // A data dir without a database yet: a server started in the same breath (`npm start &`
    // then the CLI) may not have announced itself; a moment's wait beats racing its initdb.
    if (!card && !env.DATABASE_URL && !fs.existsSync(path.join(dataDir, 'pg', 'PG_VERSION'))) card = await announced(dataDir);
  } catch (e) {
    if (!(e instanceof ServerNotReady)) throw e;
    console.error(e.message);
    process.exit(1);
  }
  if (!card) return loadConfig(env);
  if (card.postgres === 'external database' && !env.DATABASE_URL) {
    console.error(`the Kiln server (pid ${card.pid}) uses an external database: set DATABASE_URL for the CLI too`);
    process.exit(2);
  }
  const fromServer: NodeJS.ProcessEnv = {
    ...(card.port !== undefined ? { PORT: String(card.port) } : {}),
    ...(typeof card.postgres === 'number' ? { KILN_PG_PORT: String(card.postgres) } : {}),
  };
  const config = loadConfig({ ...fromServer, ...env });
  // The server's base (its BASE_URL, or the listener's) unless the environment names another server.
  if (!env.BASE_URL && !env.PORT && card.baseUrl) config.baseUrl = card.baseUrl;
  return config;
}
