// Dispatches /fhir[/{tenant}]/... paths to FHIR interactions; everything else
// under the base is a 404 or 405 OperationOutcome.
import type { Request, Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import type { Ctx } from './context.ts';
import { queryPairs } from './context.ts';
import { responseType, sendJson } from './format.ts';
import { FhirError, notFound } from '../fhir/outcome.ts';
import { capabilityStatement } from '../fhir/capability.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { findOrg } from '../store/tenants.ts';
import { logFailure } from '../store/resources.ts';
import * as crud from './crud.ts';
import { historyInteraction } from './history.ts';
import { searchInteraction, systemSearchInteraction } from './search.ts';
import { bundleInteraction } from './bundles.ts';
import { everythingInteraction } from './everything.ts';
import { validateOperation } from '../operations/validate.ts';
import { exportInteraction, isExportFilePath, isExportPath } from './export.ts';
import { authenticate } from '../auth/enforce.ts';
import { AuditWriter } from '../audit/writer.ts';
import { RequestAudit } from '../audit/request.ts';
import { actionOf } from '../audit/event.ts';
import { requireSupported, type TypeInteraction } from '../interactions/supported.ts';
import { checkId } from '../interactions/write.ts';
import { compartmentPair } from '../auth/scopes.ts';

type Handler = () => Promise<void>;

const TENANT_SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const RESERVED = new Set(['metadata']);
const DEFAULT_SLUG = 'default';

const methodNotAllowed = (method: string, path: string) =>
  new FhirError(405, 'not-supported', `${method} is not supported on ${path || 'the base'}`);

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new FhirError(400, 'invalid', `Malformed percent-encoding in path segment '${segment}'`);
  }
}

/**
 * The client's address for the AuditEvent: req.ip, which without an X-Forwarded-For header
 * is the socket's peer whatever 'trust proxy' says; the shortcut skips proxy-addr's
 * parsing and trust checks (about 5 µs an audited read here).
 */
function clientAddress(req: Request): string | undefined {
  return req.headers['x-forwarded-for'] === undefined ? req.socket.remoteAddress : req.ip;
}

/** A failed request whose own AuditEvent could not be stored: during a database outage, one line per interval, not one per request. */
function logAuditFailure(err: unknown): void {
  logFailure('audit of a failed request not stored', err);
}

/** Names the interaction for the request's AuditEvent. (Module functions, not closures
 * made per request: tsx's keepNames gives each named closure an Object.defineProperty,
 * about 6 µs a request each on this machine.) */
function nameInteraction(ctx: Ctx, subtype: string | undefined, type?: string, query?: string): void {
  ctx.audit?.interaction(subtype, actionOf(subtype, ctx.req.method), query !== undefined ? { query, type } : {});
}

/** Names a type-level or instance interaction (for the audit) and refuses it with 405 when the type does not support it. */
function typeLevel(ctx: Ctx, type: string, interaction: TypeInteraction, query?: string): void {
  nameInteraction(ctx, interaction, type, query);
  requireSupported(type, interaction);
}

export function fhirRouter(db: Database, config: Config, version: string) {
  const orgIds = new Map<string, number>(); // slug -> id; tenants are never renamed
  const auditor = new AuditWriter(db.audit, config.auditWindowMs);

  async function orgId(slug: string): Promise<number> {
    let id = orgIds.get(slug);
    if (id === undefined) {
      const org = await findOrg(db.app, slug);
      if (!org) throw notFound(`Unknown tenant '${slug}'`);
      id = org.id;
      orgIds.set(slug, id);
    }
    return id;
  }

  async function dispatch(req: Request, res: Response): Promise<void> {
    // PostgreSQL text cannot hold NUL: refused once for the whole URL (path ids, every query parameter).
    if (/%00/i.test(req.originalUrl)) throw new FhirError(400, 'invalid', 'A NUL character (%00) is not allowed in a FHIR URL');
    if (!isExportFilePath(req.path)) responseType(req); // 406 before any work (export files are NDJSON)
    const segments = req.path.split('/').filter((s) => s !== '').map(decodeSegment);
    let slug = DEFAULT_SLUG;
    if (segments.length && TENANT_SLUG.test(segments[0]) && !RESERVED.has(segments[0])) slug = segments.shift()!;
    const origin = config.baseUrl ?? `${req.protocol}://${req.get('host')}/fhir`;
    const base = slug === DEFAULT_SLUG ? origin : `${origin}/${slug}`;
    const ctx: Ctx = { req, res, db, config, orgId: await orgId(slug), base, tenant: slug };
    if (segments.length === 1 && segments[0] === 'metadata') {
      // Open to everyone, and no patient data: neither authorized nor audited.
      if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed(req.method, 'metadata');
      return sendJson(req, res, 200, capabilityStatement(base, version, { smart: config.authMode === 'smart' }));
    }
    // Read at each request, so a benchmark can compare auditing on and off in one run.
    if (config.audit === 'on') ctx.audit = new RequestAudit(auditor, ctx.orgId, base, clientAddress(req));
    try {
      const handler = route(ctx, segments);
      await authenticate(ctx);
      await handler();
    } catch (e) {
      // Refused and failed requests leave an AuditEvent too (outcome 4 or 8).
      await ctx.audit?.failure(e).catch(logAuditFailure);
      throw e;
    }
  }

  /** Resolves the interaction (naming it for the audit) without running it. */
  function route(ctx: Ctx, segments: string[]): Handler {
    const { req } = ctx;
    const m = req.method;
    const [first, second, third, fourth] = segments;
    const path = segments.join('/');
    const rawQuery = req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?') + 1) : '';

    if (segments.length === 0) {
      if (m === 'POST') { nameInteraction(ctx, undefined); return () => bundleInteraction(ctx); }
      if (m === 'GET') { nameInteraction(ctx, 'search-system', undefined, rawQuery); return () => systemSearchInteraction(ctx, queryPairs(req)); }
      throw methodNotAllowed(m, '');
    }
    if (isExportPath(segments)) { nameInteraction(ctx, 'operation'); return () => exportInteraction(ctx, segments); }
    if (first === '_history' && segments.length === 1) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      nameInteraction(ctx, 'history-system', undefined, rawQuery);
      return () => historyInteraction(ctx);
    }
    if (!TABLES[first]) {
      if (/^[A-Z][A-Za-z]+$/.test(first)) throw new FhirError(404, 'not-supported', `Resource type ${first} is not supported`);
      throw notFound(`No route for /${path}`);
    }
    const type = first;
    if (segments.length === 1) {
      if (m === 'GET') { typeLevel(ctx, type, 'search-type', rawQuery); return () => searchInteraction(ctx, type, queryPairs(req)); }
      if (m === 'POST') { typeLevel(ctx, type, 'create'); return () => crud.create(ctx, type); }
      if (m === 'PUT') { typeLevel(ctx, type, 'update', rawQuery); return () => crud.conditionalUpdate(ctx, type); }
      if (m === 'DELETE') { typeLevel(ctx, type, 'delete', rawQuery); return () => crud.conditionalDelete(ctx, type); }
      throw methodNotAllowed(m, path);
    }
    if (segments.length === 2 && second === '_search') {
      if (m !== 'POST') throw methodNotAllowed(m, path);
      const form = Buffer.isBuffer(req.body) && /x-www-form-urlencoded/.test(req.get('content-type') ?? '') ? req.body.toString('utf8') : '';
      const pairs = [...queryPairs(req), ...new URLSearchParams(form).entries()];
      typeLevel(ctx, type, 'search-type', new URLSearchParams(pairs).toString());
      return () => searchInteraction(ctx, type, pairs);
    }
    if (type === 'Patient' && (second === '$everything' || (segments.length === 3 && third === '$everything'))) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      ctx.audit?.interaction('operation', 'E', { operation: 'everything', query: rawQuery, type: 'Patient' });
      if (segments.length === 2) return () => everythingInteraction(ctx);
      return () => everythingInteraction(ctx, second);
    }
    if (segments.length === 2 && second === '$validate') {
      if (m !== 'POST') throw methodNotAllowed(m, path);
      ctx.audit?.interaction('operation', 'E', { operation: 'validate', query: rawQuery, type });
      return () => validateOperation(ctx, type);
    }
    if (segments.length === 2 && second === '_history') {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      typeLevel(ctx, type, 'history-type', rawQuery);
      return () => historyInteraction(ctx, type);
    }
    // The resource is the audit's entity even when the request is refused before it runs.
    if (second && !second.startsWith('_') && !second.startsWith('$')) ctx.audit?.touch({ resources: [`${type}/${second}${third === '_history' && fourth ? `/_history/${fourth}` : ''}`] });
    if (segments.length === 3 && third === '$validate') {
      if (m !== 'POST' && m !== 'GET') throw methodNotAllowed(m, path);
      ctx.audit?.interaction('operation', 'E', { operation: 'validate', query: rawQuery, type });
      return () => validateOperation(ctx, type, second);
    }
    if (segments.length === 2) {
      if (m === 'GET' || m === 'HEAD') { typeLevel(ctx, type, 'read'); return () => crud.read(ctx, type, second); }
      if (m === 'PUT') { typeLevel(ctx, type, 'update'); return () => crud.update(ctx, type, second); }
      if (m === 'PATCH') { typeLevel(ctx, type, 'patch'); return () => crud.patch(ctx, type, second); }
      if (m === 'DELETE') { typeLevel(ctx, type, 'delete'); return () => crud.remove(ctx, type, second); }
      throw methodNotAllowed(m, path);
    }
    if (type === 'Patient' && segments.length === 3 && third !== '_history' && !third.startsWith('$')) {
      // Compartment search (http.html#search): GET [base]/Patient/[id]/[type]?...
      if (m !== 'GET') throw methodNotAllowed(m, path);
      if (!TABLES[third]) throw new FhirError(404, 'not-supported', `Resource type ${third} is not supported`);
      checkId(second);
      const pair = compartmentPair(third, second);
      if (!pair) throw new FhirError(400, 'invalid', `${third} is not in the Patient compartment (R4 CompartmentDefinition/patient)`);
      typeLevel(ctx, third, 'search-type', rawQuery);
      return () => searchInteraction(ctx, third, queryPairs(req), { pair, path: `Patient/${second}/${third}` });
    }
    if (third === '_history' && segments.length === 3) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      typeLevel(ctx, type, 'history-instance');
      return () => historyInteraction(ctx, type, second);
    }
    if (third === '_history' && segments.length === 4) {
      if (m !== 'GET' && m !== 'HEAD') throw methodNotAllowed(m, path);
      typeLevel(ctx, type, 'vread');
      return () => crud.vread(ctx, type, second, fourth);
    }
    throw notFound(`No route for /${path}`);
  }

  return dispatch;
}
