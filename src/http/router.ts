// Dispatches /fhir[/{tenant}]/... paths to FHIR interactions through the route table
// (src/interactions/routes.ts, which Bundle entries share): one handler per route here;
// everything else under the base is a 404 or 405 OperationOutcome.
import type { Request, Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import type { Ctx } from './context.ts';
import { queryPairs } from './context.ts';
import { responseType, sendJson } from './format.ts';
import { FhirError, notFound } from '../fhir/outcome.ts';
import { capabilityStatement } from '../fhir/capability.ts';
import { findOrg } from '../store/tenants.ts';
import { logFailure } from '../store/resources.ts';
import * as crud from './crud.ts';
import { historyInteraction } from './history.ts';
import { searchInteraction, systemSearchInteraction } from './search.ts';
import { bundleInteraction } from './bundles.ts';
import { everythingInteraction } from '../operations/everything.ts';
import { validateOperation } from '../operations/validate.ts';
import { exportInteraction, isExportFilePath } from '../operations/export.ts';
import { isViewRunPath, viewRunOperation } from '../operations/viewRun.ts';
import { isViewExportFilePath, viewExportFile, viewExportOperation, viewExportResult, viewExportStatus } from '../operations/viewExport.ts';
import { matchRoute, pathSegments, type RouteMatch, type RouteName } from '../interactions/routes.ts';
import { authenticate } from '../auth/enforce.ts';
import { AuditWriter } from '../audit/writer.ts';
import { RequestAudit } from '../audit/request.ts';
import { actionOf } from '../audit/event.ts';
import { requireSupported, type TypeInteraction } from '../interactions/supported.ts';
import { checkId } from '../interactions/write.ts';
import { compartmentPair } from '../auth/scopes.ts';
import { Session } from './session.ts';
import { requestInfo } from './requestInfo.ts';
import { requestLog } from './accessLog.ts';

/** Runs the route's interaction in the request's session (made once the token is verified), with the path's parameters. */
type Handler = (s: Session, params: Record<string, string>) => Promise<void>;

const TENANT_SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const RESERVED = new Set(['metadata']);
const DEFAULT_SLUG = 'default';

/**
 * The client's address for the AuditEvent: req.ip, which without an X-Forwarded-For header
 * is the socket's peer whatever 'trust proxy' says; the shortcut skips proxy-addr's
 * parsing and trust checks (about 5 µs an audited read here).
 */
function clientAddress(req: Request): string | undefined {
  return req.headers['x-forwarded-for'] === undefined ? req.socket.remoteAddress : req.ip;
}

/** A failed request whose own AuditEvent could not be stored: during a database outage, one line per interval, not one per request. */
function logAuditFailure(res: Response, err: unknown): void {
  logFailure('audit of a failed request not stored', err, requestLog(res));
}

/** Names the interaction for the request's AuditEvent. */
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
    // 406 before any work (export files are NDJSON; $run negotiates its own JSON, NDJSON or CSV)
    if (!isExportFilePath(req.path) && !isViewRunPath(req.path) && !isViewExportFilePath(req.path)) responseType(req);
    const segments = pathSegments(req.path);
    let slug = DEFAULT_SLUG;
    if (segments.length && TENANT_SLUG.test(segments[0]) && !RESERVED.has(segments[0])) slug = segments.shift()!;
    const origin = config.baseUrl ?? `${req.protocol}://${req.get('host')}/fhir`;
    const base = slug === DEFAULT_SLUG ? origin : `${origin}/${slug}`;
    const info = requestInfo(res);
    info.tenant = slug;
    const ctx: Ctx = { req, res, db, config, orgId: await orgId(slug), base, tenant: slug };
    if (segments.length === 1 && segments[0] === 'metadata') {
      // Open to everyone, and no patient data: neither authorized nor audited.
      matchRoute(req.method, segments); // 405 for a method the capabilities route does not take
      info.interaction = 'capabilities';
      return sendJson(req, res, 200, capabilityStatement(base, version, { smart: config.authMode === 'smart' }));
    }
    // Read at each request, so a benchmark can compare auditing on and off in one run.
    if (config.audit === 'on') ctx.audit = new RequestAudit(auditor, ctx.orgId, base, clientAddress(req));
    try {
      const match = matchRoute(req.method, segments);
      // An operation is named by itself ('$everything'), so its latency is not mixed with others'.
      info.interaction = match.route.operation ? `$${match.route.operation}` : match.route.interaction;
      info.type = match.type;
      const handler = route(ctx, match, segments);
      await authenticate(ctx);
      info.client = ctx.access?.clientId;
      await handler(new Session(ctx, match), match.params);
    } catch (e) {
      // Refused and failed requests leave an AuditEvent too (outcome 4 or 8).
      await ctx.audit?.failure(e).catch((err: unknown) => logAuditFailure(res, err));
      throw e;
    }
  }

  /** Resolves the interaction through the route table (naming it for the audit) without running it. */
  function route(ctx: Ctx, match: RouteMatch, segments: string[]): Handler {
    const rawQuery = ctx.req.originalUrl.includes('?') ? ctx.req.originalUrl.slice(ctx.req.originalUrl.indexOf('?') + 1) : '';
    return PREPARE[match.route.name](ctx, match.params, rawQuery, segments);
  }

  return dispatch;
}

/** Names one route's interaction for the audit, checks what must be refused before authentication, and returns its handler. */
type Prepare = (ctx: Ctx, p: Record<string, string>, rawQuery: string, segments: string[]) => Handler;

/** The resource is the audit's entity even when the request is refused before it runs. */
function touchInstance(ctx: Ctx, type: string, id: string, vid?: string): void {
  if (!/^[_$]/.test(id)) ctx.audit?.touch({ resources: [`${type}/${id}${vid ? `/_history/${vid}` : ''}`] });
}

function exportRoute(ctx: Ctx, _p: Record<string, string>, _q: string, segments: string[]): Handler {
  nameInteraction(ctx, 'operation');
  return (s) => exportInteraction(s.ctx, segments);
}

function validateRoute(ctx: Ctx, p: Record<string, string>, rawQuery: string): Handler {
  if (p.id !== undefined) touchInstance(ctx, p.type, p.id);
  ctx.audit?.interaction('operation', 'E', { operation: 'validate', query: rawQuery, type: p.type });
  return (s) => validateOperation(s.ctx, p.type, p.id);
}

function everythingRoute(ctx: Ctx, _p: Record<string, string>, rawQuery: string): Handler {
  ctx.audit?.interaction('operation', 'E', { operation: 'everything', query: rawQuery, type: 'Patient' });
  return everythingInteraction;
}

function viewRunRoute(ctx: Ctx, p: Record<string, string>, rawQuery: string): Handler {
  if (p.id !== undefined) touchInstance(ctx, 'ViewDefinition', p.id);
  ctx.audit?.interaction('operation', 'E', { operation: 'run', query: rawQuery, type: 'ViewDefinition' });
  return viewRunOperation;
}

function viewExportRoute(ctx: Ctx, _p: Record<string, string>, rawQuery: string): Handler {
  ctx.audit?.interaction('operation', 'E', { operation: 'viewdefinition-export', query: rawQuery, type: 'ViewDefinition' });
  return viewExportOperation;
}

/** The status (poll or cancel), result and files of a view export. */
function viewExportJobRoute(ctx: Ctx, p: Record<string, string>): Handler {
  const m = ctx.req.method;
  const operation = p.file !== undefined ? 'viewdefinition-export-file' : m === 'DELETE' ? 'viewdefinition-export-cancel'
    : ctx.req.path.includes('/$viewdefinition-export-result/') ? 'viewdefinition-export-result' : 'viewdefinition-export-status';
  ctx.audit?.interaction('operation', m === 'DELETE' ? 'D' : 'R', { operation });
  if (p.file !== undefined) return (s) => viewExportFile(s.ctx, p.job, p.file);
  return operation === 'viewdefinition-export-result' ? (s) => viewExportResult(s.ctx, p.job) : (s) => viewExportStatus(s.ctx, p.job);
}

/** One per route of src/interactions/routes.ts (the compiler checks none is missing). */
const PREPARE: Record<RouteName, Prepare> = {
  // Answered by dispatch before the audit and authentication, so never prepared here.
  capabilities: () => { throw new FhirError(500, 'exception', 'metadata is answered before routing'); },
  bundle: (ctx) => { nameInteraction(ctx, undefined); return bundleInteraction; },
  'search-system': (ctx, _p, q) => { nameInteraction(ctx, 'search-system', undefined, q); return (s) => systemSearchInteraction(s, queryPairs(ctx.req)); },
  'history-system': (ctx, _p, q) => { nameInteraction(ctx, 'history-system', undefined, q); return historyInteraction; },
  export: exportRoute,
  'export-patient': exportRoute,
  'export-group': exportRoute,
  'export-status': exportRoute,
  'export-file': exportRoute,
  'view-export': viewExportRoute,
  'view-export-type': viewExportRoute,
  'view-export-status': viewExportJobRoute,
  'view-export-result': viewExportJobRoute,
  'view-export-file': viewExportJobRoute,
  'search-type': (ctx, { type }, q) => { typeLevel(ctx, type, 'search-type', q); return (s) => searchInteraction(s, queryPairs(ctx.req)); },
  create: (ctx, { type }) => { typeLevel(ctx, type, 'create'); return crud.create; },
  'conditional-update': (ctx, { type }, q) => { typeLevel(ctx, type, 'update', q); return crud.conditionalUpdate; },
  'conditional-delete': (ctx, { type }, q) => { typeLevel(ctx, type, 'delete', q); return crud.conditionalDelete; },
  'search-post': (ctx, { type }) => {
    const { req } = ctx;
    const form = Buffer.isBuffer(req.body) && /x-www-form-urlencoded/.test(req.get('content-type') ?? '') ? req.body.toString('utf8') : '';
    const pairs = [...queryPairs(req), ...new URLSearchParams(form).entries()];
    typeLevel(ctx, type, 'search-type', new URLSearchParams(pairs).toString());
    return (s) => searchInteraction(s, pairs);
  },
  'history-type': (ctx, { type }, q) => { typeLevel(ctx, type, 'history-type', q); return historyInteraction; },
  'validate-type': validateRoute,
  'everything-all': everythingRoute,
  read: (ctx, { type, id }) => { touchInstance(ctx, type, id); typeLevel(ctx, type, 'read'); return crud.read; },
  update: (ctx, { type, id }) => { touchInstance(ctx, type, id); typeLevel(ctx, type, 'update'); return crud.update; },
  patch: (ctx, { type, id }) => { touchInstance(ctx, type, id); typeLevel(ctx, type, 'patch'); return crud.patch; },
  delete: (ctx, { type, id }) => { touchInstance(ctx, type, id); typeLevel(ctx, type, 'delete'); return crud.remove; },
  validate: validateRoute,
  everything: everythingRoute,
  'view-run-type': viewRunRoute,
  'view-run': viewRunRoute,
  'search-compartment': (ctx, { id, compartmentType: type }, q) => {
    touchInstance(ctx, 'Patient', id);
    checkId(id);
    const pair = compartmentPair(type, id);
    if (!pair) throw new FhirError(400, 'invalid', `${type} is not in the Patient compartment (R4 CompartmentDefinition/patient)`);
    typeLevel(ctx, type, 'search-type', q);
    return (s) => searchInteraction(s, queryPairs(ctx.req), { pair, path: `Patient/${id}/${type}` });
  },
  'history-instance': (ctx, { type, id }) => { touchInstance(ctx, type, id); typeLevel(ctx, type, 'history-instance'); return historyInteraction; },
  vread: (ctx, { type, id, vid }) => { touchInstance(ctx, type, id, vid); typeLevel(ctx, type, 'vread'); return crud.vread; },
};
