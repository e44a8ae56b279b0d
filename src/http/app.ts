// The Express application: security headers, raw body with a size limit, the FHIR
// router, and one error handler that turns everything into an OperationOutcome.
import express, { type NextFunction, type Request, type Response } from 'express';
import helmet from 'helmet';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { fhirRouter } from './router.ts';
import { healthieWebhook, WEBHOOK_ROUTE } from '../healthie/webhooks.ts';
import { sendOutcome } from './format.ts';
import { authRoutes } from '../auth/routes.ts';
import { cors } from './cors.ts';
import { FhirError, outcome, transient } from '../fhir/outcome.ts';
import type { InFlight } from './inFlight.ts';
import { BodyPoolBusy, warmBodyPool } from '../fhir/bodyPool.ts';
import { databaseUnavailable } from '../store/resources.ts';
import { observability } from './metrics.ts';
import { accessLog, requestLog, withRequestId } from './accessLog.ts';

/** `inFlight` counts the requests being handled (FHIR and authorization), so the server can stop after them. */
export function createApp(db: Database, config: Config, version: string, inFlight: InFlight) {
  const app = express();
  app.disable('x-powered-by');
  // An ETag is a resource's version (W/"3"), set where one is sent; Express's body hashes
  // would put one on errors and search Bundles, where it means nothing a client may use.
  app.set('etag', false);
  // Without a configured proxy, X-Forwarded-For is the client's say-so (the login limit keys on req.ip).
  app.set('trust proxy', config.trustProxy);
  app.use(accessLog); // first: every path, the errors and 404s too, gets its line and request id
  app.use(helmet({ contentSecurityPolicy: false }));
  // Request counts and latencies; /healthz (alive), /readyz (database, migrations), /metrics.
  app.use(observability(db));
  app.use('/fhir', cors(config.corsOrigins));
  // Bodies are parsed by the handlers so malformed JSON gets a FHIR answer.
  app.use('/fhir', express.raw({ type: () => true, limit: config.bodyLimit }));
  warmBodyPool(); // big bodies are parsed and validated in worker threads, started now rather than by the first one
  // Healthie deliveries: signature checked over the raw bytes kept by express.raw above.
  app.post(WEBHOOK_ROUTE, healthieWebhook(db));
  // SMART discovery and the built-in authorization server (src/auth/routes.ts).
  app.use('/fhir', authRoutes(db, config, inFlight));
  const dispatch = fhirRouter(db, config, version);
  app.use('/fhir', (req, res, next) => { inFlight.track(dispatch(req, res)).catch(next); });
  app.use((req, res) => {
    sendOutcome(req, res, 404, outcome([{ severity: 'error', code: 'not-found', diagnostics: `No route for ${req.path}; the FHIR base is /fhir` }]));
  });
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (res.headersSent) return;
    if (err instanceof FhirError) {
      if (err instanceof BodyPoolBusy) res.set('Retry-After', String(err.retryAfter));
      sendOutcome(req, res, err.status, withRequestId(res, err.status, outcome(err.issues)));
      return;
    }
    const e = err as { type?: string; status?: number; message?: string };
    if (e.type === 'entity.too.large') {
      sendOutcome(req, res, 413, outcome([{ severity: 'error', code: 'too-costly', diagnostics: `Request body exceeds the ${config.bodyLimit} limit` }]));
      return;
    }
    if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
      sendOutcome(req, res, e.status, outcome([{ severity: 'error', code: 'invalid', diagnostics: e.message ?? 'Bad request' }]));
      return;
    }
    const unavailable = databaseUnavailable(err);
    if (unavailable) {
      res.set('Retry-After', String(unavailable.retryAfter));
      sendOutcome(req, res, 503, withRequestId(res, 503, transient(unavailable.message)));
      return;
    }
    // A bug: log it, tell the client nothing about internals but the request id to find the
    // line by. The path only (a query string can carry PHI); the err serializer (src/log.ts)
    // keeps the stack, not a PostgreSQL error's detail (which can quote a row).
    requestLog(res).error({ err, method: req.method, path: req.path }, 'internal error');
    sendOutcome(req, res, 500, withRequestId(res, 500, outcome([{ severity: 'error', code: 'exception', diagnostics: 'Internal server error' }])));
  });
  return app;
}
