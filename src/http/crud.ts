// REST handlers for instance-level interactions: they parse the HTTP request, run
// the interaction in a tenant transaction and answer per Prefer / conditional headers.
import type { Resource } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { inTenant, criteriaPairs, queryPairs } from './context.ts';
import {
  readJsonBody, requireBodyType, sendJson, sendOutcome, preferReturn, parseETag, etag, httpDate,
} from './format.ts';
import { FhirError, badRequest, informational } from '../fhir/outcome.ts';
import { readById, readVersion, requireLive } from '../store/resources.ts';
import * as write from '../interactions/write.ts';
import { isFhirPathPatch } from '../fhir/fhirpathPatch.ts';
import { requireVisible } from '../auth/enforce.ts';
import { policyOf } from './policy.ts';
import { touchedResource } from '../audit/request.ts';
import type { Tx } from '../store/resources.ts';

export const checkId = write.checkId;

/** Parses and validates a resource body of the given type (400 on any problem), a big one off the main thread. */
async function resourceBody(ctx: Ctx, type: string): Promise<{ body: Resource; text: string }> {
  requireBodyType(ctx.req);
  const { value, text } = await readJsonBody(ctx.req, { kind: 'resource', type });
  return { body: value as Resource, text };
}

/** Answers a successful write per the Prefer header. */
function sendWrite(ctx: Ctx, type: string, r: write.Written) {
  ctx.res.set('ETag', etag(r.versionId));
  ctx.res.set('Last-Modified', httpDate(r.lastUpdated));
  ctx.res.set('Location', `${ctx.base}/${type}/${r.id}/_history/${r.versionId}`);
  const status = r.created ? 201 : 200;
  const prefer = preferReturn(ctx.req);
  if (prefer === 'minimal') {
    ctx.res.status(status).end();
  } else if (prefer === 'OperationOutcome') {
    sendOutcome(ctx.req, ctx.res, status, informational(`${type}/${r.id} ${r.created ? 'created' : 'updated'} as version ${r.versionId}`));
  } else {
    sendJson(ctx.req, ctx.res, status, r.json);
  }
}

function sendDeleted(ctx: Ctx, type: string, versionId: number | undefined) {
  if (versionId !== undefined) ctx.res.set('ETag', etag(versionId));
  if (preferReturn(ctx.req) === 'OperationOutcome') {
    sendOutcome(ctx.req, ctx.res, 200, informational(versionId ? `${type} deleted (version ${versionId})` : `No ${type} matched; nothing deleted`));
  } else {
    ctx.res.status(204).end();
  }
}

/** Runs a write and records its AuditEvent in the same transaction. */
function audited<T>(ctx: Ctx, type: string, fn: (tx: Tx) => Promise<T>, touched: (r: T) => { id?: string; json?: string; versionId?: number }): Promise<T> {
  return inTenant(ctx, async (tx) => {
    const r = await fn(tx);
    const t = touched(r);
    if (ctx.audit) await ctx.audit.inTx(tx, t.id ? touchedResource(type, t.id, t.json, t.versionId) : {});
    return r;
  });
}

const ofWritten = (w: write.Written) => ({ id: w.id, json: w.json, versionId: w.versionId });

export async function create(ctx: Ctx, type: string) {
  const { guard, restrict } = policyOf(ctx, type, 'create', !!ctx.req.get('if-none-exist'));
  const { body, text } = await resourceBody(ctx, type);
  const raw = write.ifNoneExistCriteria(ctx.req.get('if-none-exist'));
  const ifNoneExist = raw ? [...raw, ...restrict] : undefined;
  sendWrite(ctx, type, await audited(ctx, type, (tx) => write.create(tx, type, body, text, { ifNoneExist }, guard), ofWritten));
}

export async function update(ctx: Ctx, type: string, id: string) {
  checkId(id);
  ctx.audit?.touch({ resources: [`${type}/${id}`] });
  const { guard } = policyOf(ctx, type, 'update', false);
  const { body, text } = await resourceBody(ctx, type);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await audited(ctx, type, (tx) => write.update(tx, type, id, body, text, ifMatch, guard), ofWritten));
}

export async function conditionalUpdate(ctx: Ctx, type: string) {
  const { guard, restrict } = policyOf(ctx, type, 'update', true);
  const { body, text } = await resourceBody(ctx, type);
  const criteria = [...criteriaPairs(queryPairs(ctx.req)), ...restrict];
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await audited(ctx, type, (tx) => write.conditionalUpdate(tx, type, criteria, body, text, ifMatch, guard), ofWritten));
}

export async function patch(ctx: Ctx, type: string, id: string) {
  checkId(id);
  ctx.audit?.touch({ resources: [`${type}/${id}`] });
  const { guard } = policyOf(ctx, type, 'patch', false);
  // The Content-Type says which patch: JSON Patch, or a FHIRPath Patch Parameters as FHIR JSON.
  const format = requireBodyType(ctx.req, true);
  const ops = (await readJsonBody(ctx.req, { kind: 'json' })).value;
  if (format === 'json-patch' && !Array.isArray(ops)) throw badRequest('A JSON Patch document (application/json-patch+json) is an array of operations');
  // FHIR JSON that is not a Parameters (a JSON Patch array, say) is a body this media type does not carry.
  if (format === 'resource' && !isFhirPathPatch(ops)) {
    throw new FhirError(415, 'not-supported', 'PATCH with a FHIR JSON body takes a FHIRPath Patch (a Parameters resource); send a JSON Patch as application/json-patch+json');
  }
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await audited(ctx, type, (tx) => write.patch(tx, type, id, ops, ifMatch, guard), ofWritten));
}

export async function remove(ctx: Ctx, type: string, id: string) {
  checkId(id);
  ctx.audit?.touch({ resources: [`${type}/${id}`] });
  const { guard } = policyOf(ctx, type, 'delete', false);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendDeleted(ctx, type, await audited(ctx, type, (tx) => write.remove(tx, type, id, ifMatch, guard), (v) => ({ id, versionId: v })));
}

export async function conditionalDelete(ctx: Ctx, type: string) {
  const { guard, restrict } = policyOf(ctx, type, 'delete', true);
  const criteria = [...criteriaPairs(queryPairs(ctx.req)), ...restrict];
  let matched: string | undefined;
  const v = await audited(ctx, type, async (tx) => {
    const m = await write.matchOne(tx, type, criteria, 'Conditional delete');
    matched = m;
    return m ? write.remove(tx, type, m, undefined, guard) : undefined;
  }, (version) => ({ id: matched, versionId: version }));
  sendDeleted(ctx, type, v);
}

export async function read(ctx: Ctx, type: string, id: string) {
  checkId(id);
  ctx.audit?.touch({ resources: [`${type}/${id}`] });
  const { access } = policyOf(ctx, type, 'read', false);
  const stored = requireLive(await readById(ctx.db.app, ctx.orgId, type, id), type, id);
  await requireVisible(ctx, undefined, type, id, stored.json, access);
  await ctx.audit?.success(touchedResource(type, id, stored.json));
  sendStored(ctx, stored);
}

export async function vread(ctx: Ctx, type: string, id: string, vid: string) {
  checkId(id);
  const version = write.parseVersionId(vid);
  ctx.audit?.touch({ resources: [`${type}/${id}/_history/${vid}`] });
  const { access } = policyOf(ctx, type, 'vread', false);
  const stored = await inTenant(ctx, async (tx) => {
    const v = await readVersion(tx, type, id, version);
    // A version is visible when it was in the token's compartment (filters: the current version must match).
    if (v && !v.deleted) await requireVisible(ctx, tx, type, id, v.json!, access);
    return v;
  });
  if (!stored) throw new FhirError(404, 'not-found', `${type}/${id}/_history/${vid} not found`);
  if (stored.deleted) {
    ctx.res.set('ETag', etag(stored.versionId));
    throw new FhirError(410, 'deleted', `${type}/${id} version ${vid} is a delete`);
  }
  await ctx.audit?.success(touchedResource(type, id, stored.json, stored.versionId));
  sendStored(ctx, stored as typeof stored & { json: string });
}

/** Sends a stored version, honouring If-None-Match / If-Modified-Since (304). */
function sendStored(ctx: Ctx, stored: { versionId: number; lastUpdated: string; json: string }) {
  ctx.res.set('ETag', etag(stored.versionId));
  ctx.res.set('Last-Modified', httpDate(stored.lastUpdated));
  const inm = ctx.req.get('if-none-match');
  if (inm && inm.split(',').some((t) => [etag(stored.versionId), `"${stored.versionId}"`, '*'].includes(t.trim()))) {
    ctx.res.status(304).end();
    return;
  }
  const ims = ctx.req.get('if-modified-since');
  if (ims && !inm && Date.parse(ims) >= Math.floor(Date.parse(stored.lastUpdated) / 1000) * 1000) {
    ctx.res.status(304).end();
    return;
  }
  sendJson(ctx.req, ctx.res, 200, stored.json);
}
