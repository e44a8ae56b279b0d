// Instance-level interactions: create, read, vread, update, patch, delete,
// and their conditional forms.
import type { Resource } from '@medplum/fhirtypes';
import { applyPatch, type Operation } from 'rfc6902';
import type { Ctx } from './context.ts';
import { inTenant, criteriaPairs, queryPairs } from './context.ts';
import {
  jsonBody, requireBodyType, sendJson, sendOutcome, preferReturn, parseETag, etag, httpDate,
} from './format.ts';
import { FhirError, badRequest, informational, preconditionFailed } from '../fhir/outcome.ts';
import { validate } from '../fhir/validate.ts';
import {
  readById, readCurrent, readVersion, requireLive, writeResource, deleteResource, lockCriteria,
  type Tx, type WriteResult, type WriteMethod,
} from '../store/resources.ts';
import { searchIds, unsupportedParams } from '../store/search.ts';

export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;

export function checkId(id: string): void {
  if (!ID_PATTERN.test(id)) throw badRequest(`Invalid id '${id}': 1-64 of A-Z a-z 0-9 - .`);
}

/** Parses and validates a resource body of the given type (400 on any problem). */
function resourceBody(ctx: Ctx, type: string): { body: Resource; text: string } {
  requireBodyType(ctx.req);
  const body = jsonBody(ctx.req) as Resource;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('Body must be a JSON object');
  if (body.resourceType !== type) {
    throw badRequest(`resourceType '${String(body.resourceType)}' does not match the URL type ${type}`, ['resourceType']);
  }
  validate(body);
  return { body, text: (ctx.req.body as Buffer).toString('utf8') };
}

function setVersionHeaders(ctx: Ctx, type: string, id: string, versionId: number, lastUpdated: string) {
  ctx.res.set('ETag', etag(versionId));
  ctx.res.set('Last-Modified', httpDate(lastUpdated));
  ctx.res.set('Location', `${ctx.base}/${type}/${id}/_history/${versionId}`);
}

/** Answers a successful write per the Prefer header. */
function sendWrite(ctx: Ctx, type: string, result: WriteResult | { existing: { id: string; versionId: number; lastUpdated: string; json: string } }) {
  const r = 'existing' in result
    ? { id: result.existing.id, versionId: result.existing.versionId, lastUpdated: result.existing.lastUpdated, json: result.existing.json, created: false }
    : { id: result.resource.id!, versionId: result.versionId, lastUpdated: result.lastUpdated, json: result.json, created: result.created };
  setVersionHeaders(ctx, type, r.id, r.versionId, r.lastUpdated);
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

/** Finds resources matching conditional criteria; unsupported criteria are a 400 (never guessed). */
async function matchCriteria(tx: Tx, type: string, criteria: [string, string][]): Promise<{ id: string; json: string }[]> {
  if (criteria.length === 0) throw badRequest('Conditional interaction without search criteria');
  const empty = criteria.filter(([, v]) => v.trim() === '').map(([n]) => n);
  if (empty.length) throw badRequest(`Conditional criteria need a value: ${empty.join(', ')}`);
  const unknown = unsupportedParams(type, criteria);
  if (unknown.length) throw badRequest(`Unsupported search parameter(s) in conditional criteria: ${unknown.join(', ')}`);
  await lockCriteria(tx, `${type}?${criteria.map(([n, v]) => `${n}=${v}`).sort().join('&')}`);
  return searchIds(tx, { type, params: criteria, count: 2 });
}

export async function create(ctx: Ctx, type: string) {
  const { body, text } = resourceBody(ctx, type);
  const ifNoneExist = ctx.req.get('if-none-exist');
  const result = await inTenant(ctx, async (tx) => {
    if (ifNoneExist !== undefined) {
      const criteria = [...new URLSearchParams(ifNoneExist.replace(/^.*\?/, '')).entries()];
      const found = await matchCriteria(tx, type, criteria);
      if (found.length > 1) throw preconditionFailed(`If-None-Exist matched ${found.length}+ ${type} resources`);
      if (found.length === 1) {
        const stored = requireLive(await readCurrent(tx, type, found[0].id), type, found[0].id);
        return { existing: { ...stored } };
      }
    }
    const { id: _ignored, ...rest } = body; // the server assigns ids on create
    return writeResource(tx, { type, resource: rest as Resource, text, method: 'POST' });
  });
  sendWrite(ctx, type, result);
}

export async function read(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const stored = requireLive(await readById(ctx.db.app, ctx.orgId, type, id), type, id);
  sendStored(ctx, type, stored);
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
  sendStored(ctx, type, stored as typeof stored & { json: string });
}

/** Sends a stored version, honouring If-None-Match / If-Modified-Since (304). */
function sendStored(ctx: Ctx, type: string, stored: { id: string; versionId: number; lastUpdated: string; json: string }) {
  ctx.res.set('ETag', etag(stored.versionId));
  ctx.res.set('Last-Modified', httpDate(stored.lastUpdated));
  const inm = ctx.req.get('if-none-match');
  if (inm && inm.split(',').some((t) => t.trim() === etag(stored.versionId) || t.trim() === `"${stored.versionId}"` || t.trim() === '*')) {
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

export async function update(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const { body, text } = resourceBody(ctx, type);
  if (body.id === undefined) throw badRequest('Resource id is required on update', ['id']);
  if (body.id !== id) throw badRequest(`Resource id '${body.id}' does not match the URL id '${id}'`, ['id']);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  const result = await inTenant(ctx, (tx) => writeResource(tx, { type, id, resource: body, text, method: 'PUT', ifMatch }));
  sendWrite(ctx, type, result);
}

export async function conditionalUpdate(ctx: Ctx, type: string) {
  const { body, text } = resourceBody(ctx, type);
  const criteria = criteriaPairs(queryPairs(ctx.req));
  const ifMatch = parseETag(ctx.req.get('if-match'));
  const result = await inTenant(ctx, async (tx) => {
    const found = await matchCriteria(tx, type, criteria);
    if (found.length > 1) throw preconditionFailed(`Conditional update criteria matched more than one ${type}`);
    if (found.length === 1) {
      if (body.id !== undefined && body.id !== found[0].id) {
        throw badRequest(`Resource id '${body.id}' does not match the matched resource ${type}/${found[0].id}`, ['id']);
      }
      return writeResource(tx, { type, id: found[0].id, resource: body, text, method: 'PUT', ifMatch });
    }
    if (body.id !== undefined) checkId(body.id);
    return writeResource(tx, { type, id: body.id, resource: body, text, method: body.id ? 'PUT' : 'POST', ifMatch });
  });
  sendWrite(ctx, type, result);
}

export async function patch(ctx: Ctx, type: string, id: string) {
  checkId(id);
  if (requireBodyType(ctx.req, true) !== 'json-patch') {
    throw new FhirError(415, 'not-supported', 'PATCH takes application/json-patch+json');
  }
  const ops = jsonBody(ctx.req);
  if (!Array.isArray(ops)) throw badRequest('A JSON Patch document is an array of operations');
  const ifMatch = parseETag(ctx.req.get('if-match'));
  const result = await inTenant(ctx, async (tx) => {
    const current = requireLive(await readCurrent(tx, type, id, true), type, id);
    const patched = applyJsonPatch(JSON.parse(current.json), ops as Operation[]);
    if (patched.resourceType !== type || patched.id !== id) throw badRequest('A patch may not change resourceType or id');
    validate(patched);
    return writeResource(tx, { type, id, resource: patched, method: 'PATCH' as WriteMethod, ifMatch, mustExist: true });
  });
  sendWrite(ctx, type, result);
}

function applyJsonPatch(doc: Resource, ops: Operation[]): Resource {
  for (const op of ops) {
    if (typeof op !== 'object' || op === null || typeof op.op !== 'string' || typeof op.path !== 'string') {
      throw badRequest('Each JSON Patch operation needs "op" and "path"');
    }
  }
  const errors = applyPatch(doc, ops);
  const failed = errors.findIndex((e) => e !== null);
  if (failed >= 0) {
    const err = errors[failed] as Error;
    // A failed "test" op is a precondition, anything else a bad patch.
    const status = ops[failed].op === 'test' ? 422 : 400;
    throw new FhirError(status, 'processing', `JSON Patch operation ${failed} (${ops[failed].op} ${ops[failed].path}) failed: ${err.name}`);
  }
  return doc;
}

export async function remove(ctx: Ctx, type: string, id: string) {
  checkId(id);
  const ifMatch = parseETag(ctx.req.get('if-match'));
  const result = await inTenant(ctx, (tx) => deleteResource(tx, type, id, ifMatch));
  if (!result.existed) throw new FhirError(404, 'not-found', `${type}/${id} not found`);
  sendDeleted(ctx, type, result.versionId);
}

export async function conditionalDelete(ctx: Ctx, type: string) {
  const criteria = criteriaPairs(queryPairs(ctx.req));
  const result = await inTenant(ctx, async (tx) => {
    const found = await matchCriteria(tx, type, criteria);
    if (found.length > 1) throw preconditionFailed(`Conditional delete criteria matched more than one ${type}`);
    if (found.length === 0) return undefined;
    return deleteResource(tx, type, found[0].id);
  });
  sendDeleted(ctx, type, result?.versionId);
}

function sendDeleted(ctx: Ctx, type: string, versionId: number | undefined) {
  if (versionId !== undefined) ctx.res.set('ETag', etag(versionId));
  if (preferReturn(ctx.req) === 'OperationOutcome') {
    sendOutcome(ctx.req, ctx.res, 200, informational(versionId ? `${type} deleted (version ${versionId})` : `No ${type} matched; nothing deleted`));
  } else {
    ctx.res.status(204).end();
  }
}
