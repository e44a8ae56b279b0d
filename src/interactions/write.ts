// Write interactions inside a tenant transaction, shared by the REST handlers and
// by batch/transaction Bundle entries: create, update, patch, delete and their
// conditional forms, with the spec's 0/1/many outcomes.
import type { Resource } from '@medplum/fhirtypes';
import { applyPatch, type Operation } from 'rfc6902';
import { FhirError, badRequest, notFound, preconditionFailed } from '../fhir/outcome.ts';
import { checkResource as checkValid } from '../fhir/validate.ts';
import { errorOf, type Refusal } from '../fhir/body.ts';
import { validateSized } from '../fhir/bodyPool.ts';
import { applyFhirPathOps, isFhirPathPatch, parseFhirPathPatch } from '../fhir/fhirpathPatch.ts';
import { isInheritedName } from '../fhir/duplicateKeys.ts';
import {
  readCurrent, requireLive, writeResource, deleteResource, lockCriteria, type Tx, type WriteRequest, type WriteResult,
} from '../store/resources.ts';
import { parseSearch } from '../search/query.ts';
import { checkPairText, prefixed, referenceTarget, type Criterion } from '../search/criteria.ts';
import { normalizeString } from '../../mappings/search/precision.ts';
import { runSearch } from '../store/searchRun.ts';
import { requireClaimedProfiles } from './profiles.ts';

export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;

export function checkId(id: string): void {
  if (!ID_PATTERN.test(id)) throw badRequest(`Invalid id '${id}': 1-64 of A-Z a-z 0-9 - .`);
}

/** Version ids are PostgreSQL integers from 1: anything else cannot name a version (400);
 * an integer in range that names none is the caller's 404. */
export function parseVersionId(vid: string): number {
  const n = /^\d{1,10}$/.test(vid) ? Number(vid) : NaN;
  if (!(n <= 2_147_483_647)) throw badRequest(`Invalid version id '${vid.replace(/\0/g, '\\0')}': an integer up to 2147483647`);
  return n;
}

/**
 * A parsed body must be a valid resource of the given type (400 otherwise). `validated` is
 * the outcome when validation already ran (src/fhir/body.ts, off the main thread): null
 * for valid, else the refusal to throw.
 */
export function checkResource(body: unknown, type: string, validated?: Refusal | null): Resource {
  if (validated === undefined) return checkValid(body, type);
  if (typeof body !== 'object' || body === null || Array.isArray(body) || (body as Resource).resourceType !== type) return checkValid(body, type);
  if (validated) throw errorOf(validated);
  return body as Resource;
}

/** Criteria of an If-None-Exist header or Bundle ifNoneExist ("identifier=x" or "Patient?identifier=x"). */
export function ifNoneExistCriteria(value: string | undefined): [string, string][] | undefined {
  if (value === undefined) return undefined;
  return [...new URLSearchParams(value.replace(/^[^?]*\?/, '')).entries()];
}

/**
 * Authorization checks on a write (src/auth/enforce.ts writeGuard): each throws to refuse.
 * `written` runs after the write in the same transaction, so a refusal rolls it back.
 */
export interface WriteGuard {
  stored(tx: Tx, type: string, id: string, json: string): Promise<void>;
  written(tx: Tx, type: string, id: string, json: string): Promise<void>;
}

/** Runs the guard's stored-version check on the live current version, if any. */
async function guardStored(tx: Tx, type: string, id: string, guard: WriteGuard | undefined): Promise<void> {
  if (!guard) return;
  const current = await readCurrent(tx, type, id, true);
  if (current && !current.deleted && current.json) await guard.stored(tx, type, id, current.json);
}

async function guardWritten(tx: Tx, type: string, w: Written, guard: WriteGuard | undefined): Promise<Written> {
  if (guard) await guard.written(tx, type, w.id, w.json);
  return w;
}

/** The state of a resource after a write. */
export interface Written {
  id: string;
  versionId: number;
  lastUpdated: string;
  json: string;
  created: boolean;
}

/**
 * The lock key of conditional criteria: one text for every spelling of the same criteria
 * (parameter order, repeated parameters, repeated or reordered OR values, control parameters,
 * percent-encoding, date prefixes `eq`, string case, reference forms). Merging criteria that
 * are not equivalent would only make their writers wait for each other.
 */
export function criteriaLockKey(type: string, criteria: Criterion[]): string {
  return JSON.stringify([type, [...new Set(criteria.map(criterionKey))].sort()]);
}

function criterionKey(c: Criterion): string {
  if (c.chain) return JSON.stringify(['chain', c.def.code, c.chain.targetType, criterionKey(c.chain.criterion)]);
  if (c.has) return JSON.stringify(['has', c.has.sourceType, c.has.refParam.code, criterionKey(c.has.criterion)]);
  if (c.anyRef) return JSON.stringify(['anyRef', c.anyRef.params, c.anyRef.targetType, c.anyRef.targetId, c.anyRef.self]);
  if (c.missing !== undefined) return JSON.stringify(['missing', c.def.code, c.missing]);
  // A type modifier on a reference only types a bare id: `subject:Patient=1` is `subject=Patient/1`.
  const typed = c.def.type === 'reference' && c.modifier !== undefined && /^[A-Z]/.test(c.modifier);
  const values = [...new Set(c.values.map((v) => valueKey(c, v)))].sort();
  return JSON.stringify([c.def.code, typed ? '' : c.modifier ?? '', values]);
}

function valueKey(c: Criterion, v: string): string {
  switch (c.def.type) {
    case 'string': return c.modifier === 'exact' ? v : normalizeString(v);
    case 'token': return c.modifier === 'text' ? normalizeString(v) : v;
    case 'date': { const { prefix, rest } = prefixed(v); return prefix + rest; }
    case 'reference': {
      const t = referenceTarget(v, c.modifier);
      return c.modifier === 'identifier' || t.url !== undefined ? v : `${t.type ?? ''}/${t.id}`;
    }
    default: return v;
  }
}

/** Resources matching conditional criteria (at most 2: enough to tell 0/1/many). */
export async function matchCriteria(tx: Tx, type: string, criteria: [string, string][]): Promise<{ id: string; json: string }[]> {
  if (criteria.length === 0) throw badRequest('Conditional interaction without search criteria');
  for (const [n, v] of criteria) checkPairText(n, v);
  const empty = criteria.filter(([, v]) => v.trim() === '').map(([n]) => n);
  if (empty.length) throw badRequest(`Conditional criteria need a value: ${empty.join(', ')}`);
  const q = parseSearch(type, criteria);
  // Criteria Kiln cannot evaluate are refused rather than guessed.
  if (q.unknown.length) throw badRequest(`Unsupported search parameter(s) in conditional criteria: ${q.unknown.join(', ')}`);
  await lockCriteria(tx, criteriaLockKey(type, q.criteria));
  return (await runSearch(tx, { type, criteria: q.criteria, sort: [], count: 2, total: 'none' })).rows;
}

/** The one resource criteria match, or undefined for none; 412 for several. */
export async function matchOne(tx: Tx, type: string, criteria: [string, string][], what: string): Promise<string | undefined> {
  const found = await matchCriteria(tx, type, criteria);
  if (found.length > 1) throw preconditionFailed(`${what} criteria matched more than one ${type}`);
  return found[0]?.id;
}

/** Every write path stores through here: the tenant profiles the resource claims are checked in its transaction (422). */
async function writeConforming(tx: Tx, req: WriteRequest): Promise<WriteResult> {
  await requireClaimedProfiles(tx, req.resource);
  return writeResource(tx, req);
}

const written = (r: { resource: Resource; versionId: number; lastUpdated: string; json: string; created: boolean }): Written =>
  ({ id: r.resource.id!, versionId: r.versionId, lastUpdated: r.lastUpdated, json: r.json, created: r.created });

/**
 * Create; with ifNoneExist criteria an existing match is returned instead (created
 * false). `id` pre-assigns the new id (transactions rewrite references to it first).
 */
export async function create(tx: Tx, type: string, resource: Resource, text: string | undefined,
  opts: { ifNoneExist?: [string, string][]; id?: string } = {}, guard?: WriteGuard): Promise<Written> {
  if (opts.ifNoneExist) {
    const existing = await matchOne(tx, type, opts.ifNoneExist, 'If-None-Exist');
    if (existing) {
      const stored = requireLive(await readCurrent(tx, type, existing), type, existing);
      if (guard) await guard.stored(tx, type, existing, stored.json);
      return { id: existing, versionId: stored.versionId, lastUpdated: stored.lastUpdated, json: stored.json, created: false };
    }
  }
  const { id: _ignored, ...rest } = resource; // the server assigns ids on create
  return guardWritten(tx, type, written(await writeConforming(tx, { type, id: opts.id, resource: rest as Resource, text, method: 'POST' })), guard);
}

export async function update(tx: Tx, type: string, id: string, resource: Resource, text: string | undefined, ifMatch?: number, guard?: WriteGuard): Promise<Written> {
  checkId(id);
  if (resource.id === undefined) throw badRequest('Resource id is required on update', ['id']);
  if (resource.id !== id) throw badRequest(`Resource id '${resource.id}' does not match the URL id '${id}'`, ['id']);
  await guardStored(tx, type, id, guard);
  return guardWritten(tx, type, written(await writeConforming(tx, { type, id, resource, text, method: 'PUT', ifMatch })), guard);
}

export async function conditionalUpdate(tx: Tx, type: string, criteria: [string, string][], resource: Resource,
  text: string | undefined, ifMatch?: number, guard?: WriteGuard): Promise<Written> {
  const match = await matchOne(tx, type, criteria, 'Conditional update');
  if (match) {
    if (resource.id !== undefined && resource.id !== match) {
      throw badRequest(`Resource id '${resource.id}' does not match the matched resource ${type}/${match}`, ['id']);
    }
    await guardStored(tx, type, match, guard);
    return guardWritten(tx, type, written(await writeConforming(tx, { type, id: match, resource, text, method: 'PUT', ifMatch })), guard);
  }
  if (resource.id !== undefined) checkId(resource.id);
  // An id the criteria did not match may still name a stored resource (of another patient).
  if (resource.id !== undefined) await guardStored(tx, type, resource.id, guard);
  return guardWritten(tx, type, written(await writeConforming(tx, { type, id: resource.id, resource, text, method: resource.id ? 'PUT' : 'POST', ifMatch })), guard);
}

/**
 * Patch with either format, told apart by shape: a JSON Patch (RFC 6902) is an array of
 * operations, a FHIRPath Patch (fhirpatch.html) a Parameters resource. The patched resource
 * is validated and written like an update.
 */
export async function patch(tx: Tx, type: string, id: string, doc: unknown, ifMatch?: number, guard?: WriteGuard): Promise<Written> {
  checkId(id);
  const fhirpath = isFhirPathPatch(doc);
  if (!fhirpath && !Array.isArray(doc)) throw badRequest('A patch is a JSON Patch document (an array of operations) or a FHIRPath Patch Parameters resource');
  // A malformed FHIRPath Patch is refused before the resource is read, like a malformed JSON Patch.
  const ops = fhirpath ? parseFhirPathPatch(doc) : undefined;
  const current = requireLive(await readCurrent(tx, type, id, true), type, id);
  if (guard) await guard.stored(tx, type, id, current.json);
  const stored = JSON.parse(current.json) as Resource;
  const patched = ops ? applyFhirPathOps(stored, ops) : applyJsonPatch(stored, doc as Operation[]);
  if (patched.resourceType !== type || patched.id !== id) throw badRequest('A patch may not change resourceType or id');
  await validateSized(patched, current.json.length);
  return guardWritten(tx, type, written(await writeConforming(tx, { type, id, resource: patched, method: 'PATCH', ifMatch, mustExist: true })), guard);
}

function applyJsonPatch(doc: Resource, ops: Operation[]): Resource {
  for (const op of ops) {
    if (typeof op !== 'object' || op === null || typeof op.op !== 'string' || typeof op.path !== 'string') {
      throw badRequest('Each JSON Patch operation needs "op" and "path"');
    }
    // rfc6902 assigns through the path: a `__proto__` segment would replace an object's
    // prototype (values then read through it but never stored), `constructor` reach a class.
    for (const pointer of [op.path, (op as { from?: unknown }).from]) {
      if (typeof pointer !== 'string') continue;
      const bad = pointer.split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~')).find(isInheritedName);
      if (bad !== undefined) throw badRequest(`JSON Patch operation path '${pointer}' names "${bad}", which no FHIR element has`);
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

/** Delete: the version id of the delete (the existing one if already deleted); 404 when it never existed. */
export async function remove(tx: Tx, type: string, id: string, ifMatch?: number, guard?: WriteGuard): Promise<number | undefined> {
  checkId(id);
  await guardStored(tx, type, id, guard);
  const result = await deleteResource(tx, type, id, ifMatch);
  if (!result.existed) throw notFound(`${type}/${id} not found`);
  return result.versionId;
}

/** Conditional delete: one match is deleted, none is a no-op (undefined), several 412. */
export async function conditionalDelete(tx: Tx, type: string, criteria: [string, string][], guard?: WriteGuard): Promise<number | undefined> {
  const match = await matchOne(tx, type, criteria, 'Conditional delete');
  if (match) await guardStored(tx, type, match, guard);
  return match ? (await deleteResource(tx, type, match)).versionId : undefined;
}
