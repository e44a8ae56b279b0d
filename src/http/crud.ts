// REST handlers for instance-level interactions: they parse the HTTP request, run
// the interaction in a tenant transaction and answer per Prefer / conditional headers.
import type { Resource } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { inTenant, criteriaPairs, queryPairs } from './context.ts';
import {
  jsonBody, requireBodyType, sendJson, sendOutcome, preferReturn, parseETag, etag, httpDate,
} from './format.ts';
import { FhirError, badRequest, informational } from '../fhir/outcome.ts';
import { readById, readVersion, requireLive } from '../store/resources.ts';
import * as write from '../interactions/write.ts';

export const checkId = write.checkId;

/** Parses and validates a resource body of the given type (400 on any problem). */
function resourceBody(ctx: Ctx, type: string): { body: Resource; text: string } {
  requireBodyType(ctx.req);
  const body = write.checkResource(jsonBody(ctx.req), type);
  return { body, text: (ctx.req.body as Buffer).toString('utf8') };
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

export async function create(ctx: Ctx, type: string) {
  const { body, text } = resourceBody(ctx, type);
  const ifNoneExist = write.ifNoneExistCriteria(ctx.req.get('if-none-exist'));
  sendWrite(ctx, type, await inTenant(ctx, (tx) => write.create(tx, type, body, text, { ifNoneExist })));
}

export async function update(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const { body, text } = resourceBody(ctx, type);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await inTenant(ctx, (tx) => write.update(tx, type, id, body, text, ifMatch)));
}

export async function conditionalUpdate(ctx: Ctx, type: string) {
  const { body, text } = resourceBody(ctx, type);
  const criteria = criteriaPairs(queryPairs(ctx.req));
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await inTenant(ctx, (tx) => write.conditionalUpdate(tx, type, criteria, body, text, ifMatch)));
}

export async function patch(ctx: Ctx, type: string, id: string) {
  checkId(id);
  if (requireBodyType(ctx.req, true) !== 'json-patch') {
    throw new FhirError(415, 'not-supported', 'PATCH takes application/json-patch+json');
  }
  const ops = jsonBody(ctx.req);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendWrite(ctx, type, await inTenant(ctx, (tx) => write.patch(tx, type, id, ops, ifMatch)));
}

export async function remove(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  sendDeleted(ctx, type, await inTenant(ctx, (tx) => write.remove(tx, type, id, ifMatch)));
}

export async function conditionalDelete(ctx: Ctx, type: string) {
  const criteria = criteriaPairs(queryPairs(ctx.req));
  sendDeleted(ctx, type, await inTenant(ctx, (tx) => write.conditionalDelete(tx, type, criteria)));
}

export async function read(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const stored = requireLive(await readById(ctx.db.app, ctx.orgId, type, id), type, id);
  sendStored(ctx, stored);
}

export async function vread(ctx: Ctx, type: string, id: string, vid: string) {
  checkId(id);
  if (!/^\d+$/.test(vid)) throw badRequest(`Invalid version id '${vid}'`);
  const stored = await inTenant(ctx, (tx) => readVersion(tx, type, id, Number(vid)));
  if (!stored) throw new FhirError(404, 'not-found', `${type}/${id}/_history/${vid} not found`);
  if (stored.deleted) {
    ctx.res.set('ETag', etag(stored.versionId));
    throw new FhirError(410, 'deleted', `${type}/${id} version ${vid} is a delete`);
  }
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
