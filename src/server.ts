// Starts Kiln: database (embedded unless DATABASE_URL), validator, HTTP server;
// stops it cleanly: requests that arrive once the stop began get 503 (Connection: close),
// in-flight ones finish (even those whose client hung up, AuditEvents stored), then the
// database closes.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { loadConfig, type Config } from './config.ts';
import { VERSION } from './version.ts';
import { openDatabase, StartupError, type Database } from './store/database.ts';
import { log } from './log.ts';

export { StartupError } from './store/database.ts';
import { createApp } from './http/app.ts';
import { loadDefinitions } from './fhir/validate.ts';
import { ensureAllOrgPartitions } from './store/tenants.ts';
import { ExportWorker } from './export/worker.ts';
import { drainAuditQueue } from './store/auditQueue.ts';
import { InFlight } from './http/inFlight.ts';
import { transient } from './fhir/outcome.ts';
import { logFailure, RETRY_AFTER_SECONDS } from './store/resources.ts';
import { listenerBaseUrl, removeRuntime, writeRuntime } from './runtime.ts';
import { acceptLoopbackAudiences } from './auth/verify.ts';

// Partitions are made months ahead at start; a long-running server tops them up daily.
const PARTITION_MAINTENANCE_MS = 24 * 60 * 60 * 1000;
/** How long a stop still answers 503 on idle connections after the last request finished. */
const STOP_LINGER_MS = 250;


export interface RunningServer {
  url: string;
  port: number;
  db: Database;
  config: Config;
  stop(): Promise<void>;
}

export async function startServer(overrides: Partial<Config> = {}): Promise<RunningServer> {
  const config = { ...loadConfig(), ...overrides };
  // The CLI waits on this card (src/runtime.ts) rather than racing a first start's initdb.
  writeRuntime(config, { state: 'starting' });
  try {
    return await serve(config);
  } catch (e) {
    removeRuntime(config.dataDir);
    throw e;
  }
}

async function serve(config: Config): Promise<RunningServer> {
  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65535) {
    throw new StartupError(`PORT must be a TCP port (0-65535), not '${Number.isNaN(config.port) ? process.env.PORT : config.port}'`, 2);
  }
  let app: ReturnType<typeof createApp> | undefined;
  let draining = false;
  // Responses not yet finished: once a stop begins they close their connection, so a client
  // sends its next request on a new one (answered 503) rather than on a socket being closed.
  const open = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    if (draining) return refuseWhileStopping(res);
    if (!app) return refuseWhileStarting(res);
    open.add(res);
    res.once('close', () => open.delete(res));
    app(req, res);
  });
  // Every connection, also one that never sent a request (a client's preconnect), which
  // Node's closeIdleConnections leaves open: the stop closes it.
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.keepAliveTimeout = 65_000;
  // The port before the database: a busy one fails the start before PostgreSQL starts or migrates.
  await listen(server, config);
  const port = (server.address() as AddressInfo).port;
  loadDefinitions();
  const abandon = async (e: unknown, db?: Database): Promise<never> => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await db?.close().catch(() => {});
    throw e;
  };
  const db = await openDatabase(config, { serving: true }).catch((e) => abandon(e));
  // AuditEvents an older version queued but had not stored yet (write-behind log, before sql/021).
  const drained = await drainAuditQueue(db.owner).catch((e) => abandon(e, db));
  if (drained) log.info(`stored ${drained} AuditEvents left in the old audit queue`);
  const inFlight = new InFlight();
  app = createApp(db, config, VERSION, inFlight);
  const maintenance = setInterval(() => {
    ensureAllOrgPartitions(db.owner).catch((e) => logFailure('partition maintenance failed', e));
  }, PARTITION_MAINTENANCE_MS);
  maintenance.unref();
  // Healthie push + webhook queue loop: opt-in (KILN_HEALTHIE_SYNC_SECONDS) and only when a tenant has Healthie settings.
  const healthieEvery = Number(process.env.KILN_HEALTHIE_SYNC_SECONDS ?? 0);
  const healthie = healthieEvery > 0 ? await import('./healthie/push.ts') : undefined;
  // KILN_HEALTHIE_PULL_MINUTES adds a scheduled incremental pull to that loop.
  const pullEveryMs = Number(process.env.KILN_HEALTHIE_PULL_MINUTES ?? 0) * 60_000;
  const stopHealthie = healthie && await healthie.anyHealthieTenant(db) ? healthie.startHealthieLoop(db, healthieEvery * 1000, (msg) => log.warn(msg), pullEveryMs) : undefined;
  // Bulk $export jobs run here unless a separate `kiln export-worker` process runs them.
  const exportWorker = config.exportWorker === 'inline' ? new ExportWorker(db, config) : undefined;
  exportWorker?.start();
  const url = listenerBaseUrl(config.host, port);
  const forgetLoopback = config.baseUrl ? undefined : acceptLoopbackAudiences(port);
  writeRuntime(config, { state: 'ready', port, host: config.host, baseUrl: config.baseUrl ?? url, baseUrlConfigured: !!config.baseUrl });
  let stopping: Promise<void> | undefined;
  return {
    url,
    port,
    db,
    config,
    stop() {
      stopping ??= (async () => {
        // Until the requests in flight are done, the listener stays open and every new
        // request (on a new or a kept-alive connection) is answered 503 + Connection: close.
        draining = true;
        for (const res of open) if (!res.headersSent) res.setHeader('connection', 'close');
        clearInterval(maintenance);
        await stopHealthie?.();
        await exportWorker?.stop();
        // Handlers still running, those of clients that hung up too (a read storing its
        // AuditEvent, a write committing): the database stays open for them.
        const settled = await inFlight.settled(config.stopGraceMs);
        if (!settled) log.warn(`stopping with ${inFlight.size} requests still running after ${config.stopGraceMs} ms`);
        // A client whose answer just came may have its next request on the wire on a kept-alive
        // connection: for a moment more that is answered 503, rather than cut off by the close.
        if (settled && sockets.size > open.size) await new Promise((resolve) => setTimeout(resolve, STOP_LINGER_MS));
        // The listener and idle connections close now; one still writing a response closes
        // when it ends (past the grace, at once).
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        const sweep = setInterval(() => server.closeIdleConnections(), 50);
        if (settled) {
          const busy = new Set([...open].map((res) => res.socket));
          for (const socket of sockets) if (!busy.has(socket)) socket.destroy();
        } else {
          server.closeAllConnections();
        }
        await closed;
        clearInterval(sweep);
        await db.close();
        forgetLoopback?.();
        removeRuntime(config.dataDir);
      })();
      return stopping;
    },
  };
}

/** Listens on PORT and HOST, or fails in one line naming the setting to change. */
async function listen(server: http.Server, config: Config): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(
      e.code === 'EADDRINUSE' ? new StartupError(`port ${config.port} is in use by another process: stop it or set PORT`)
        : e.code === 'EACCES' ? new StartupError(`port ${config.port} needs privileges this process lacks: set PORT to 1024 or above`, 2)
          : e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN' ? new StartupError(`HOST ${config.host} is not an address of this machine: set HOST (0.0.0.0: every interface, 127.0.0.1: this machine only)`, 2)
            : e));
    server.listen(config.port, config.host, () => resolve());
  });
}

/** A request that arrives before the database is open (migrations can take a while). */
function refuseWhileStarting(res: http.ServerResponse): void {
  res.writeHead(503, { 'content-type': 'application/fhir+json; charset=utf-8', 'retry-after': String(RETRY_AFTER_SECONDS) });
  res.end(JSON.stringify(transient('The server is starting; retry shortly')));
}

/** A request that arrives while the server stops: 503, and the connection closes after it. */
function refuseWhileStopping(res: http.ServerResponse): void {
  res.writeHead(503, { 'content-type': 'application/fhir+json; charset=utf-8', 'retry-after': String(RETRY_AFTER_SECONDS), connection: 'close' });
  res.end(JSON.stringify(transient('The server is stopping; retry shortly')));
}
