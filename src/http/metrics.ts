// Prometheus metrics (GET /metrics) and the health probes: /healthz says the process is up
// and serving, /readyz that the database answers and every migration in sql/ is applied.
// Each app has a registry of its own, so several servers in one process (the tests) do not
// share counters; Node's process metrics are registered once per process and merged in.
// Labels are bounded and carry no PHI: an interaction from a fixed set, a stored resource
// type, a status code, a pool name, a tenant slug of an existing tenant; never a path or id.
// Documented in docs/operations.md.
import { Router, type NextFunction, type Request, type Response } from 'express';
import client from 'prom-client';
import type pg from 'pg';
import type { Database } from '../store/database.ts';
import { queueFigures, unappliedMigrations } from '../store/metrics.ts';
import { RETRY_AFTER_SECONDS } from '../store/resources.ts';
import { auditWriterOf } from '../audit/writer.ts';
import { ROUTES } from '../interactions/routes.ts';
import { isResourceType } from '../../mappings/resourceTypes.ts';
import { WEBHOOK_ROUTE } from '../healthie/webhooks.ts';
import { requestInfo } from './requestInfo.ts';

/** How long a scrape or a readiness probe waits for the database (connection, then each statement). */
const DATABASE_WAIT_MS = 2000;

/** The interactions the route table names, its operations, and the requests outside it. */
const INTERACTIONS = new Set<string>([
  ...ROUTES.map((r) => ('operation' in r && r.operation ? `$${r.operation}` : r.interaction)),
  'healthz', 'readyz', 'metrics', 'healthie-webhook', 'not-found', 'other',
]);
/** Names set elsewhere (an authorization endpoint's) are code literals; this caps them all the same. */
const MAX_INTERACTIONS = INTERACTIONS.size + 32;
const INTERACTION_NAME = /^\$?[a-z][a-z0-9-]{0,39}$/;

function interactionLabel(res: Response, path: string): string {
  const named = requestInfo(res).interaction;
  if (named && INTERACTIONS.has(named)) return named;
  if (named && INTERACTION_NAME.test(named) && INTERACTIONS.size < MAX_INTERACTIONS) {
    INTERACTIONS.add(named);
    return named;
  }
  if (!named && WEBHOOK_ROUTE.test(path)) return 'healthie-webhook';
  return res.statusCode === 404 ? 'not-found' : 'other';
}

let processRegistry: client.Registry | undefined;
/** Node's default metrics (CPU, memory, event loop lag, GC), collected once however many apps the process runs. */
function processMetrics(): client.Registry {
  if (!processRegistry) {
    processRegistry = new client.Registry();
    client.collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** The tracking middleware and the /metrics, /healthz, /readyz routes; /metrics is left out when KILN_METRICS=off. */
export function observability(db: Database, opts: { metrics?: boolean } = {}): Router {
  const enabled = opts.metrics ?? process.env.KILN_METRICS !== 'off';
  const registry = new client.Registry();
  const gauge = (name: string, help: string, labelNames: string[] = [], collect?: (this: client.Gauge) => void) =>
    new client.Gauge({ name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });

  const requests = new client.Counter({
    name: 'kiln_http_requests_total', help: 'HTTP requests answered, by interaction, resource type and status code',
    labelNames: ['interaction', 'type', 'status'], registers: [registry],
  });
  const duration = new client.Histogram({
    name: 'kiln_http_request_duration_seconds', help: 'Time from a request\'s arrival to the end of its response, by interaction and resource type',
    labelNames: ['interaction', 'type'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });

  const pools: Record<string, pg.Pool> = { app: db.app, owner: db.owner, audit: db.audit, jobs: db.jobs };
  const eachPool = (g: client.Gauge, value: (p: pg.Pool) => number) => {
    for (const [name, pool] of Object.entries(pools)) g.set({ pool: name }, value(pool));
  };
  gauge('kiln_db_pool_in_use', 'Database connections checked out of the pool', ['pool'], function () { eachPool(this, (p) => p.totalCount - p.idleCount); });
  gauge('kiln_db_pool_idle', 'Open database connections idle in the pool', ['pool'], function () { eachPool(this, (p) => p.idleCount); });
  gauge('kiln_db_pool_waiting', 'Callers waiting for a connection of the pool', ['pool'], function () { eachPool(this, (p) => p.waitingCount); });
  gauge('kiln_db_pool_max', 'Most connections the pool opens', ['pool'], function () { eachPool(this, (p) => p.options.max ?? 10); });
  gauge('kiln_audit_queue_events', 'AuditEvents waiting for their group commit (their requests wait too)', [], function () {
    this.set(auditWriterOf(db.audit)?.backlog ?? 0);
  });
  gauge('kiln_audit_queue_lag_seconds', 'How long the oldest AuditEvent still waiting for its commit has waited', [], function () {
    this.set((auditWriterOf(db.audit)?.lagMs ?? 0) / 1000);
  });

  const databaseUp = gauge('kiln_database_up', '1 when the scrape\'s database queries answered, else 0 (the figures read from the database are then absent)');
  const exportJobs = gauge('kiln_export_jobs', 'Bulk export jobs by state', ['state']);
  const outbox = gauge('kiln_healthie_outbox_entries', 'Healthie outbox entries by tenant and status', ['tenant', 'status']);
  const outboxAge = gauge('kiln_healthie_outbox_oldest_pending_seconds', 'Age of the oldest pending Healthie outbox entry, by tenant', ['tenant']);
  const bigqueryAge = gauge('kiln_bigquery_sync_watermark_age_seconds',
    'Seconds since the transaction time a tenant\'s BigQuery target is fully loaded through (its last successful sync)', ['tenant', 'target']);

  /** Reads the database's figures into the gauges; on failure they are left out and kiln_database_up is 0. */
  async function readDatabase(): Promise<void> {
    for (const g of [exportJobs, outbox, outboxAge, bigqueryAge]) g.reset();
    try {
      const f = await queueFigures(db.owner, DATABASE_WAIT_MS);
      for (const state of ['queued', 'running', 'completed', 'failed']) exportJobs.set({ state }, 0);
      for (const j of f.exportJobs) exportJobs.set({ state: j.status }, j.count);
      for (const o of f.healthieOutbox) {
        outbox.set({ tenant: o.tenant, status: o.status }, o.count);
        if (o.oldestPendingSeconds !== undefined) outboxAge.set({ tenant: o.tenant }, o.oldestPendingSeconds);
      }
      for (const b of f.bigquerySync) bigqueryAge.set({ tenant: b.tenant, target: b.target }, b.ageSeconds);
      databaseUp.set(1);
    } catch {
      for (const g of [exportJobs, outbox, outboxAge, bigqueryAge]) g.reset();
      databaseUp.set(0);
    }
  }
  /** Scrapes at the same moment share one round of queries. */
  let reading: Promise<void> | undefined;
  const exposed = client.Registry.merge([processMetrics(), registry]);

  const router = Router();
  // Counted when the response is sent, once the router has named the interaction.
  router.use((req: Request, res: Response, next: NextFunction) => {
    const start = performance.now();
    res.once('finish', () => {
      const info = requestInfo(res);
      const interaction = interactionLabel(res, req.originalUrl.split('?')[0]);
      const type = isResourceType(info.type) ? info.type : '';
      requests.inc({ interaction, type, status: String(res.statusCode) });
      duration.observe({ interaction, type }, (performance.now() - start) / 1000);
    });
    next();
  });
  // Alive: answers while the process serves requests, whatever the database does.
  router.get('/healthz', (_req, res) => {
    requestInfo(res).interaction = 'healthz';
    res.json({ status: 'ok' });
  });
  // Ready: the database answers and the schema is this version's.
  router.get('/readyz', async (_req, res) => {
    requestInfo(res).interaction = 'readyz';
    let pending: string[];
    try {
      pending = await unappliedMigrations(db.owner, DATABASE_WAIT_MS);
    } catch {
      res.status(503).set('Retry-After', String(RETRY_AFTER_SECONDS)).json({ status: 'not ready', database: 'unreachable' });
      return;
    }
    if (pending.length) {
      res.status(503).set('Retry-After', String(RETRY_AFTER_SECONDS)).json({ status: 'not ready', database: 'reachable', pendingMigrations: pending });
      return;
    }
    res.json({ status: 'ready' });
  });
  if (enabled) {
    router.get('/metrics', async (_req, res) => {
      requestInfo(res).interaction = 'metrics';
      reading ??= readDatabase().finally(() => { reading = undefined; });
      await reading;
      res.set('Content-Type', exposed.contentType).send(await exposed.metrics());
    });
  }
  return router;
}
