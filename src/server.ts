// Starts Kiln: database (embedded unless DATABASE_URL), validator, HTTP server;
// stops it cleanly: requests that arrive once the stop began get 503 (Connection: close),
// in-flight ones finish (even those whose client hung up, AuditEvents stored), then the
// database closes.
import http from 'node:http';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import { loadConfig, type Config } from './config.ts';
import { openDatabase, type Database } from './store/database.ts';
import { createApp } from './http/app.ts';
import { loadDefinitions } from './fhir/validate.ts';
import { ensureAllOrgPartitions } from './store/tenants.ts';
import { ExportWorker } from './export/worker.ts';
import { drainAuditQueue } from './store/auditQueue.ts';
import { InFlight } from './http/inFlight.ts';
import { transient } from './fhir/outcome.ts';
import { RETRY_AFTER_SECONDS } from './store/resources.ts';

// Partitions are made months ahead at start; a long-running server tops them up daily.
const PARTITION_MAINTENANCE_MS = 24 * 60 * 60 * 1000;

const VERSION: string = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;

export interface RunningServer {
  url: string;
  port: number;
  db: Database;
  config: Config;
  stop(): Promise<void>;
}

export async function startServer(overrides: Partial<Config> = {}): Promise<RunningServer> {
  const config = { ...loadConfig(), ...overrides };
  loadDefinitions();
  const db = await openDatabase(config, { serving: true });
  // AuditEvents an older version queued but had not stored yet (write-behind log, before sql/021).
  const drained = await drainAuditQueue(db.owner);
  if (drained) console.log(`stored ${drained} AuditEvents left in the old audit queue`);
  const inFlight = new InFlight();
  const app = createApp(db, config, VERSION, inFlight);
  let draining = false;
  const server = http.createServer((req, res) => {
    if (draining) refuseWhileStopping(res);
    else app(req, res);
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const maintenance = setInterval(() => {
    ensureAllOrgPartitions(db.owner).catch((e) => console.error('partition maintenance failed', e));
  }, PARTITION_MAINTENANCE_MS);
  maintenance.unref();
  // Healthie push + webhook queue loop: opt-in (KILN_HEALTHIE_SYNC_SECONDS) and only when a tenant has Healthie settings.
  const healthieEvery = Number(process.env.KILN_HEALTHIE_SYNC_SECONDS ?? 0);
  const healthie = healthieEvery > 0 ? await import('./healthie/push.ts') : undefined;
  // KILN_HEALTHIE_PULL_MINUTES adds a scheduled incremental pull to that loop.
  const pullEveryMs = Number(process.env.KILN_HEALTHIE_PULL_MINUTES ?? 0) * 60_000;
  const stopHealthie = healthie && await healthie.anyHealthieTenant(db) ? healthie.startHealthieLoop(db, healthieEvery * 1000, console.error, pullEveryMs) : undefined;
  // Bulk $export jobs run here unless a separate `kiln export-worker` process runs them.
  const exportWorker = config.exportWorker === 'inline' ? new ExportWorker(db, config) : undefined;
  exportWorker?.start();
  let stopping: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}/fhir`,
    port,
    db,
    config,
    stop() {
      stopping ??= (async () => {
        draining = true;
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        clearInterval(maintenance);
        await stopHealthie?.();
        await exportWorker?.stop();
        // Handlers still running, those of clients that hung up too (a read storing its
        // AuditEvent, a write committing): the database stays open for them. Idle keep-alive
        // connections stay open meanwhile, so a request already on its way gets a 503, not a reset.
        const settled = await inFlight.settled(config.stopGraceMs);
        if (!settled) console.error(`stopping with ${inFlight.size} requests still running after ${config.stopGraceMs} ms`);
        // Idle connections close now; one still writing a response closes when it ends
        // (past the grace, at once).
        const sweep = setInterval(() => server.closeIdleConnections(), 50);
        if (settled) server.closeIdleConnections();
        else server.closeAllConnections();
        await closed;
        clearInterval(sweep);
        await db.close();
      })();
      return stopping;
    },
  };
}

/** A request that arrives while the server stops: 503, and the connection closes after it. */
function refuseWhileStopping(res: http.ServerResponse): void {
  res.writeHead(503, { 'content-type': 'application/fhir+json; charset=utf-8', 'retry-after': String(RETRY_AFTER_SECONDS), connection: 'close' });
  res.end(JSON.stringify(transient('The server is stopping; retry shortly')));
}
