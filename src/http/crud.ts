// REST handlers for instance-level interactions: they parse the HTTP request, run the
// interaction through the request's session (src/http/session.ts: its policy, tenant
// transaction and AuditEvent) and answer per Prefer / conditional headers.
import type { Resource } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { criteriaPairs, queryPairs } from './context.ts';
import type { Session } from './session.ts';
import {
  readJsonBody, requireBodyType, sendJson, sendOutcome, preferReturn, parseETag, etag, httpDate,
} from './format.ts';
import { FhirError, badRequest, informational } from '../fhir/outcome.ts';
import { readById, readVersion, requireLive } from '../store/resources.ts';
import * as write from '../interactions/write.ts';
import { isFhirPathPatch } from '../fhir/fhirpathPatch.ts';
import { touchedResource } from '../audit/request.ts';

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

const ofWritten = (w: write.Written) => ({ id: w.id, json: w.json, versionId: w.versionId });

type Params = Record<string, string>;

export async function create(s: Session, { type }: Params) {
  const { guard, restrict } = s.policy;
  const { body, text } = await resourceBody(s.ctx, type);
  const raw = write.ifNoneExistCriteria(s.req.get('if-none-exist'));
  const ifNoneExist = raw ? [...raw, ...restrict] : undefined;
  sendWrite(s.ctx, type, await s.audited((tx) => write.create(tx, type, body, text, { ifNoneExist }, guard), ofWritten));
}

export async function update(s: Session, { type, id }: Params) {
  checkId(id);
  const { guard } = s.policy;
  const { body, text } = await resourceBody(s.ctx, type);
  const ifMatch = parseETag(s.req.get('if-match'));
  sendWrite(s.ctx, type, await s.audited((tx) => write.update(tx, type, id, body, text, ifMatch, guard), ofWritten));
}

export async function conditionalUpdate(s: Session, { type }: Params) {
  const { guard, restrict } = s.policy;
  const { body, text } = await resourceBody(s.ctx, type);
  const criteria = [...criteriaPairs(queryPairs(s.req)), ...restrict];
  const ifMatch = parseETag(s.req.get('if-match'));
  sendWrite(s.ctx, type, await s.audited((tx) => write.conditionalUpdate(tx, type, criteria, body, text, ifMatch, guard), ofWritten));
}

export async function patch(s: Session, { type, id }: Params) {
  checkId(id);
  const { guard } = s.policy;
  // The Content-Type says which patch: JSON Patch, or a FHIRPath Patch Parameters as FHIR JSON.
  const format = requireBodyType(s.req, true);
  const ops = (await readJsonBody(s.req, { kind: 'json' })).value;
  if (format === 'json-patch' && !Array.isArray(ops)) throw badRequest('A JSON Patch document (application/json-patch+json) is an array of operations');
  // FHIR JSON that is not a Parameters (a JSON Patch array, say) is a body this media type does not carry.
  if (format === 'resource' && !isFhirPathPatch(ops)) {
    throw new FhirError(415, 'not-supported', 'PATCH with a FHIR JSON body takes a FHIRPath Patch (a Parameters resource); send a JSON Patch as application/json-patch+json');
  }
  const ifMatch = parseETag(s.req.get('if-match'));
  sendWrite(s.ctx, type, await s.audited((tx) => write.patch(tx, type, id, ops, ifMatch, guard), ofWritten));
}

export async function remove(s: Session, { type, id }: Params) {
  checkId(id);
  const { guard } = s.policy;
  const ifMatch = parseETag(s.req.get('if-match'));
  sendDeleted(s.ctx, type, await s.audited((tx) => write.remove(tx, type, id, ifMatch, guard), (v) => ({ id, versionId: v })));
}

export async function conditionalDelete(s: Session, { type }: Params) {
  const { guard, restrict } = s.policy;
  const criteria = [...criteriaPairs(queryPairs(s.req)), ...restrict];
  let matched: string | undefined;
  const v = await s.audited(async (tx) => {
    const m = await write.matchOne(tx, type, criteria, 'Conditional delete');
    matched = m;
    return m ? write.remove(tx, type, m, undefined, guard) : undefined;
  }, (version) => ({ id: matched, versionId: version }));
  sendDeleted(s.ctx, type, v);
}

export async function read(s: Session, { type, id }: Params) {
  checkId(id);
  s.authorize();
  const stored = requireLive(await readById(s.ctx.db.app, s.orgId, type, id), type, id);
  await s.requireVisible(undefined, id, stored.json);
  await s.succeed(touchedResource(type, id, stored.json));
  sendStored(s.ctx, stored);
}

export async function vread(s: Session, { type, id, vid }: Params) {
  checkId(id);
  const version = write.parseVersionId(vid);
  s.authorize();
  const stored = await s.inTenant(async (tx) => {
    const v = await readVersion(tx, type, id, version);
    // A version is visible when it was in the token's compartment (filters: the current version must match).
    if (v && !v.deleted) await s.requireVisible(tx, id, v.json!);
    return v;
  });
  if (!stored) throw new FhirError(404, 'not-found', `${type}/${id}/_history/${vid} not found`);
  if (stored.deleted) {
    s.res.set('ETag', etag(stored.versionId));
    throw new FhirError(410, 'deleted', `${type}/${id} version ${vid} is a delete`);
  }
  await s.succeed(touchedResource(type, id, stored.json, stored.versionId));
  sendStored(s.ctx, stored as typeof stored & { json: string });
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
