// Healthie webhooks: `POST /fhir/{tenant}/$healthie-webhook`. The delivery's HMAC
// signature (HEALTHIE_API.md §4) is checked against the raw bytes in constant time; an
// unsigned or wrongly signed delivery gets 401 and stores nothing. A good one is stored in
// healthie_webhook_events and acknowledged with 202 at once; processWebhooks() later leases
// it (sql/034), re-fetches the object from Healthie and mirrors it with upsert(), so replays write nothing,
// and a replay within REPLAY_WINDOW_SECONDS of an identical delivery waits out the window.
import crypto from 'node:crypto';
import type { Request, Response } from 'express';
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { findOrg } from '../store/tenants.ts';
import { enqueueWebhook, claimWebhooks, renewWebhooks, finishWebhook, retryWebhook, type ClaimedWebhook } from '../store/healthieSync.ts';
import { outcome, informational, FhirError } from '../fhir/outcome.ts';
import { parseJson } from '../fhir/body.ts';
import { HealthieError } from './client.ts';
import { healthieSettings } from './settings.ts';
import { fetchObject, mirrorObject, type HealthieKind } from './refetch.ts';
import type { PushOptions } from './push.ts';
import { leaseSeconds, workerName, drainLeased, type Lease } from './lease.ts';
import { loadMaps } from '../../mappings/healthie/index.ts';

/** /fhir/$healthie-webhook (default tenant) or /fhir/{tenant}/$healthie-webhook. */
export const WEBHOOK_ROUTE = /^\/fhir(?:\/([a-z0-9][a-z0-9-]{0,62}))?\/\$healthie-webhook$/;

const afterFirstEquals = (v: string) => { const i = v.indexOf('='); return i < 0 ? undefined : v.slice(i + 1).trim(); };

/** The string Healthie signs: method, path, query, Content-Digest value, content type, body length. */
export function signingString(method: string, path: string, query: string, digestValue: string, contentLength: number): string {
  return `${method.toLowerCase()} ${path} ${query} ${digestValue} application/json ${contentLength}`;
}

/** Whether the Content-Digest value is the body's SHA-256, as hex or RFC 9530 `:base64:`. */
function digestMatches(value: string, body: Buffer): boolean {
  const hash = crypto.createHash('sha256').update(body).digest();
  const given = /^:[A-Za-z0-9+/=]+:$/.test(value) ? Buffer.from(value.slice(1, -1), 'base64')
    : /^[0-9a-fA-F]{64}$/.test(value) ? Buffer.from(value, 'hex') : undefined;
  return !!given && given.length === hash.length && crypto.timingSafeEqual(given, hash);
}

export interface SignedRequest { method: string; path: string; query: string; contentDigest?: string; signature?: string; body: Buffer }

/** Why a delivery is refused, or undefined when its signature is good. */
export function checkSignature(r: SignedRequest, secret: string): string | undefined {
  if (!r.signature || !r.contentDigest) return 'Missing Signature or Content-Digest header';
  const digest = /^sha-256=/i.test(r.contentDigest.trim()) ? afterFirstEquals(r.contentDigest) : undefined;
  if (!digest || !digestMatches(digest, r.body)) return 'Content-Digest does not match the body';
  const given = afterFirstEquals(r.signature) ?? '';
  const expected = crypto.createHmac('sha256', secret).update(signingString(r.method, r.path, r.query, digest, r.body.length)).digest();
  const givenBytes = /^[0-9a-fA-F]+$/.test(given) ? Buffer.from(given, 'hex') : Buffer.alloc(0);
  if (givenBytes.length !== expected.length || !crypto.timingSafeEqual(givenBytes, expected)) return 'Signature does not match';
  return undefined;
}

/** Headers Healthie would send for `body` (used by tests and for replaying deliveries). */
export function signDelivery(secret: string, path: string, body: Buffer | string, query = ''): { 'content-digest': string; signature: string } {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const digest = crypto.createHash('sha256').update(bytes).digest('hex');
  const sig = crypto.createHmac('sha256', secret).update(signingString('POST', path, query, digest, bytes.length)).digest('hex');
  return { 'content-digest': `sha-256=${digest}`, signature: `sig1=${sig}` };
}

/**
 * Healthie signs no time or delivery id, so signed bytes can be sent again at any time: a
 * delivery identical to one due less than this long ago waits until this long after it
 * (sql/029). Not refused: a thin payload carries ids only, so a real second change of
 * the same fields of one object looks the same, and is re-fetched, late but not lost.
 */
export const REPLAY_WINDOW_SECONDS = 300;

function send(res: Response, status: number, oo: unknown): void {
  res.status(status).type('application/fhir+json').send(JSON.stringify(oo));
}
const refuse = (res: Response, status: number, code: 'security' | 'invalid' | 'not-found', msg: string) =>
  send(res, status, outcome([{ severity: 'error', code, diagnostics: msg }]));

/** Express handler for WEBHOOK_ROUTE; needs the raw body (express.raw) as req.body. */
export function healthieWebhook(db: Database, onQueued?: (orgId: number) => void) {
  return async (req: Request, res: Response): Promise<void> => {
    const slug = (req.params as Record<string, string | undefined>)[0] ?? 'default';
    const org = await findOrg(db.app, slug);
    if (!org) return refuse(res, 404, 'not-found', `Unknown tenant '${slug}'`);
    const secret = healthieSettings(slug).webhookSecret;
    if (!secret) return refuse(res, 401, 'security', 'No Healthie webhook secret is configured for this tenant');
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const [path, query = ''] = req.originalUrl.split(/\?(.*)/s);
    const reason = checkSignature({ method: req.method, path, query, contentDigest: req.get('content-digest'), signature: req.get('signature'), body }, secret);
    if (reason) return refuse(res, 401, 'security', reason);
    // The request bodies' one parse: not UTF-8, not JSON, or a NUL (PostgreSQL text cannot hold one) is a 400, stored nowhere.
    let parsed: { value: unknown; text: string };
    try { parsed = parseJson(body, 'Webhook body'); } catch (e) {
      if (!(e instanceof FhirError)) throw e;
      return refuse(res, 400, 'invalid', e.message);
    }
    const { text } = parsed;
    const event = parsed.value as { resource_id?: unknown; resource_id_type?: unknown; event_type?: unknown } | null;
    const str = (v: unknown) => (typeof v === 'string' || typeof v === 'number') && String(v) !== '' ? String(v) : undefined;
    const eventType = str(event?.event_type);
    const resourceId = str(event?.resource_id);
    const resourceType = str(event?.resource_id_type);
    if (!eventType || !resourceId || !resourceType) return refuse(res, 400, 'invalid', 'Webhook body needs event_type, resource_id and resource_id_type');
    const bodyHash = crypto.createHash('sha256').update(body).digest('hex');
    const queued = await withTenant(db.app, org.id, (tx) => enqueueWebhook(tx, { eventType, resourceType, resourceId, body: text, bodyHash }, REPLAY_WINDOW_SECONDS));
    if (queued && !queued.deferred) onQueued?.(org.id);
    send(res, 202, informational(!queued ? 'Identical delivery already queued'
      : queued.deferred ? `Repeat of a recent identical delivery: ${eventType} ${resourceType} ${resourceId} is re-fetched at ${queued.due}`
      : `Queued ${eventType} ${resourceType} ${resourceId}`));
  };
}

const BY_EVENT: Record<string, HealthieKind> = { patient: 'user', appointment: 'appointment', metric_entry: 'entry', entry: 'entry', medication: 'medication' };
const BY_TYPE: Record<string, HealthieKind> = { User: 'user', Patient: 'user', Appointment: 'appointment', Entry: 'entry', MetricEntry: 'entry', Medication: 'medication', MedicationType: 'medication' };

/** The Healthie object kind a delivery is about, or undefined when Kiln does not mirror it. */
export function kindOfEvent(eventType: string, resourceType: string): HealthieKind | undefined {
  return BY_EVENT[eventType.split('.')[0]] ?? BY_TYPE[resourceType];
}

/** Same knobs as the push worker: both drain a durable per-tenant queue with retries. */
export type WebhookOptions = PushOptions;
export interface WebhookSummary { claimed: number; done: number; ignored: number; failed: number; retried: number; lost: number; outcomes: Record<string, number> }

/**
 * Processes the tenant's due webhook deliveries once. Deliveries are leased in a short
 * transaction and re-fetched and mirrored with no transaction open; each outcome is
 * recorded only while this worker still holds the delivery's lease.
 */
export async function processWebhooks(opts: WebhookOptions): Promise<WebhookSummary> {
  const { db, orgId, client } = opts;
  const maps = opts.maps ?? loadMaps();
  const lease: Lease = { owner: workerName('webhooks'), seconds: opts.leaseSeconds ?? leaseSeconds() };
  const summary: WebhookSummary = { claimed: 0, done: 0, ignored: 0, failed: 0, retried: 0, lost: 0, outcomes: {} };
  const finish = async (w: ClaimedWebhook, status: 'done' | 'failed' | 'ignored', note?: string) => {
    if (await withTenant(db.app, orgId, (tx) => finishWebhook(tx, w.id, lease.owner, status, note))) summary[status]++;
    else summary.lost++;
  };
  await drainLeased(db, orgId, lease, 'Healthie webhook deliveries',
    (tx, skip) => claimWebhooks(tx, lease, opts.batchSize ?? 5, skip),
    (tx, ids) => renewWebhooks(tx, lease, ids),
    async (w) => {
      summary.claimed++;
      const kind = kindOfEvent(w.eventType, w.resourceType);
      if (!kind) return finish(w, 'ignored', `${w.eventType} is not mirrored`);
      try {
        const obj = await fetchObject(client, kind, w.resourceId);
        if (!obj && !w.eventType.endsWith('.deleted')) return await finish(w, 'ignored', `Healthie ${kind} ${w.resourceId} not found`);
        const r = await mirrorObject({ db, orgId, client, maps }, kind, w.resourceId, obj);
        summary.outcomes[r.outcome] = (summary.outcomes[r.outcome] ?? 0) + 1;
        await finish(w, 'done', r.reason);
      } catch (e) {
        const message = (e as Error).message;
        const permanent = e instanceof FhirError || e instanceof TypeError || (e instanceof HealthieError && !e.retryable && e.code !== 'UNAUTHORIZED');
        if (!permanent && w.attempts + 1 < (opts.maxAttempts ?? 10)) {
          const delay = (opts.backoffSeconds ?? ((n) => Math.min(3600, 15 * 2 ** (n - 1))))(w.attempts + 1);
          if (await withTenant(db.app, orgId, (tx) => retryWebhook(tx, w.id, lease.owner, message, delay))) summary.retried++;
          else summary.lost++;
        } else {
          await finish(w, 'failed', message);
        }
      }
    });
  return summary;
}
