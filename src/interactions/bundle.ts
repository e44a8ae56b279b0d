// Batch and transaction Bundles (bundle.html, http.html#transaction). A transaction
// runs in one database transaction: ids are settled first (conditional creates and
// updates, urn:uuid fullUrls), references are rewritten, then entries run in the
// spec's order (DELETE, POST, PUT/PATCH, GET), except that a POST or PUT referenced by
// another POST or PUT runs before it whatever their methods. A urn:uuid: reference no
// entry resolves is refused (src/store/resources.ts). A batch runs every entry on its own.
import crypto from 'node:crypto';
import type { Bundle, BundleEntry, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { FhirError, badRequest, outcome } from '../fhir/outcome.ts';
import { parseJson, type Refusal } from '../fhir/body.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { readCurrent, readVersion, requireLive, type Tx } from '../store/resources.ts';
import { parseSearch } from '../search/query.ts';
import { runSearch } from '../store/searchRun.ts';
import * as write from './write.ts';
import { isFhirPathPatch, parseFhirPathPatch } from '../fhir/fhirpathPatch.ts';
import { matchRoute, pathSegments, entryInteraction, type Method, type RouteMatch } from './routes.ts';
import type { TypeInteraction } from './supported.ts';
import type { Permission } from '../auth/scopes.ts';

export type { Method };
const ORDER: Record<Method, number> = { DELETE: 0, POST: 1, PUT: 2, PATCH: 2, GET: 3, HEAD: 3 };

export interface EntryResult {
  status: string;
  location?: string;
  etag?: string;
  lastModified?: string;
  /** Resource JSON text (or a searchset Bundle) to return in the response entry. */
  json?: string;
  outcome?: OperationOutcome;
}

/** What authorization sees of an entry's request. */
export type EntryRequest = Pick<Parsed, 'index' | 'method' | 'interaction' | 'permission' | 'type' | 'id' | 'vid' | 'query' | 'ifNoneExist'>;

/** What an entry may do (src/http/bundles.ts builds it from the token's scopes). */
export interface EntryPolicy {
  /** Checks on the versions a write replaces and writes. */
  guard?: write.WriteGuard;
  /** Search pairs appended to the entry's search or conditional criteria. */
  restrict: [string, string][];
  /** Whether a read's resource is visible (false: 404). */
  visible?: (tx: Tx, type: string, id: string, json: string) => Promise<boolean>;
}

interface Parsed {
  index: number;
  method: Method;
  /** From the route table (routes.ts), as the same request over HTTP would be named. */
  interaction: TypeInteraction;
  /** The route's scope permission (routes.ts), as the same request over HTTP needs. */
  permission: Permission;
  type: string;
  id?: string;
  vid?: string;
  query: [string, string][];
  fullUrl?: string;
  resource?: Resource;
  /** For PATCH: the JSON Patch operations (from a Binary or Parameters-free body). */
  patch?: unknown;
  ifMatch?: number;
  ifNoneExist?: [string, string][];
  policy?: EntryPolicy;
}

/** Marks an error with the entry it came from, so the OperationOutcome can say which. */
function atEntry(index: number, e: unknown): FhirError {
  if (!(e instanceof FhirError)) throw e;
  const issues = e.issues.map((i) => ({
    ...i,
    diagnostics: `Bundle.entry[${index}]: ${i.diagnostics ?? i.details?.text ?? ''}`,
    expression: (i.expression ?? []).map((x) => `Bundle.entry[${index}].resource.${x.replace(/^[A-Za-z]+\./, '')}`),
  }));
  return FhirError.withIssues(e.status, issues, `Bundle.entry[${index}] failed`);
}

function parseETagValue(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(?:W\/)?"(\d+)"$/.exec(v.trim());
  if (!m) throw badRequest(`Malformed ifMatch '${v}'`);
  return Number(m[1]);
}

/**
 * Parses one entry's request; the URL is relative to the base (an absolute URL on this base is accepted).
 * `validated`: the outcome of its resource's validation when that already ran (BundleOptions.validated).
 */
function parseEntry(entry: BundleEntry, index: number, base: string, validated?: Refusal | null): Parsed {
  const method = entry.request?.method as Method | undefined;
  if (!method || !Object.hasOwn(ORDER, method)) throw badRequest(`Bundle.entry[${index}].request.method is missing or not supported`);
  let url = entry.request?.url;
  if (!url) throw badRequest(`Bundle.entry[${index}].request.url is missing`);
  if (url.startsWith(base + '/')) url = url.slice(base.length + 1);
  const [path, query = ''] = url.split('?', 2);
  // The same route, 404 and 405 as the request on its own (src/http/router.ts).
  let route: RouteMatch;
  try {
    route = matchRoute(method, pathSegments(path));
  } catch (e) {
    throw atEntry(index, e);
  }
  const interaction = entryInteraction(route, index, method, url);
  const { type, id, vid } = route.params;
  if (id) write.checkId(id);
  const parsed: Parsed = {
    index, method, interaction, permission: route.route.permission!, type, id, vid, query: [...new URLSearchParams(query).entries()], fullUrl: entry.fullUrl,
    ifMatch: parseETagValue(entry.request?.ifMatch),
    ifNoneExist: write.ifNoneExistCriteria(entry.request?.ifNoneExist),
  };
  if (method === 'POST' || method === 'PUT') {
    if (!entry.resource) throw badRequest(`Bundle.entry[${index}] (${method}) has no resource`);
    if (method === 'POST' && parsed.query.length) throw badRequest(`Bundle.entry[${index}]: POST goes to the type URL`);
    if (method === 'PUT' && !id && parsed.query.length === 0) throw badRequest(`Bundle.entry[${index}]: PUT needs an id or search criteria`);
    try {
      parsed.resource = write.checkResource(entry.resource, type, validated);
    } catch (e) {
      throw atEntry(index, e);
    }
  }
  if (method === 'PATCH') {
    // A FHIRPath Patch is the entry's Parameters resource; as `resource` too, so that its
    // references to other entries are rewritten like any entry resource's.
    if (isFhirPathPatch(entry.resource)) {
      try {
        parseFhirPathPatch(entry.resource);
      } catch (e) {
        throw atEntry(index, e);
      }
      parsed.patch = parsed.resource = entry.resource;
      return parsed;
    }
    // JSON Patch travels as a Binary whose data is the base64 patch document.
    const binary = entry.resource as { resourceType?: string; data?: string } | undefined;
    if (binary?.resourceType !== 'Binary' || !binary.data) throw badRequest(`Bundle.entry[${index}]: PATCH needs a Parameters resource (FHIRPath Patch) or a Binary holding a JSON Patch`);
    // The same parse as a PATCH body of its own (UTF-8, depth, duplicate keys, forbidden characters).
    try {
      parsed.patch = parseJson(Buffer.from(binary.data, 'base64'), 'The Binary').value;
    } catch (e) {
      if (!(e instanceof FhirError)) throw e;
      throw badRequest(`Bundle.entry[${index}]: the Binary does not hold a JSON Patch: ${e.message}`);
    }
    if (!Array.isArray(parsed.patch)) throw badRequest(`Bundle.entry[${index}]: the Binary does not hold a JSON Patch (an array of operations)`);
  }
  if (method === 'DELETE' && !id && parsed.query.length === 0) throw badRequest(`Bundle.entry[${index}]: DELETE needs an id or search criteria`);
  return parsed;
}

/** Replaces references found in `map` (and conditional references) throughout a resource. */
async function rewriteReferences(tx: Tx, node: unknown, map: Map<string, string>): Promise<void> {
  if (Array.isArray(node)) {
    for (const item of node) await rewriteReferences(tx, item, map);
    return;
  }
  if (!node || typeof node !== 'object') return;
  const obj = node as Record<string, unknown>;
  for (const [key, value] of Object.entries(obj)) {
    if (key === 'reference' && typeof value === 'string') {
      const mapped = map.get(value);
      if (mapped) obj.reference = mapped;
      else {
        const cond = /^([A-Z][A-Za-z]+)\?(.+)$/.exec(value);
        if (cond && TABLES[cond[1]]) {
          const id = await write.matchOne(tx, cond[1], [...new URLSearchParams(cond[2]).entries()], `Conditional reference ${value}:`);
          if (!id) throw new FhirError(412, 'not-found', `Conditional reference '${value}' matched no resource`);
          obj.reference = `${cond[1]}/${id}`;
          map.set(value, obj.reference as string);
        }
      }
    } else if (typeof value === 'object') {
      await rewriteReferences(tx, value, map);
    }
  }
}

const WRITES = new Set<Method>(['POST', 'PUT']);

/** Orders entries (already in spec order) so that a POST/PUT referenced by another in the bundle goes first. */
function dependencyOrder(entries: Parsed[], target: Map<Parsed, string>): Parsed[] {
  const byTarget = new Map<string, Parsed>();
  for (const [e, t] of target) byTarget.set(t, e);
  const done = new Set<Parsed>();
  const visiting = new Set<Parsed>();
  const out: Parsed[] = [];
  const visit = (e: Parsed) => {
    if (done.has(e) || visiting.has(e)) return; // a cycle is left in bundle order
    visiting.add(e);
    if (e.method === 'POST' || e.method === 'PUT') {
      for (const ref of referencesOf(e.resource)) {
        const dep = byTarget.get(ref);
        // Across POST and PUT alike: every id is settled already, so a POST may need the
        // conditional PUT of its patient to run first (the spec's method order is kept otherwise).
        if (dep && dep !== e && WRITES.has(dep.method)) visit(dep);
      }
    }
    visiting.delete(e);
    done.add(e);
    out.push(e);
  };
  for (const e of entries) visit(e);
  return out;
}

function referencesOf(node: unknown, acc: string[] = []): string[] {
  if (Array.isArray(node)) node.forEach((n) => referencesOf(n, acc));
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'reference' && typeof v === 'string') acc.push(v.replace(/\/_history\/.*$/, ''));
      else if (typeof v === 'object') referencesOf(v, acc);
    }
  }
  return acc;
}

const statusText: Record<number, string> = { 200: '200 OK', 201: '201 Created', 204: '204 No Content' };

function writtenResult(type: string, w: write.Written): EntryResult {
  return {
    status: statusText[w.created ? 201 : 200],
    location: `${type}/${w.id}/_history/${w.versionId}`,
    etag: `W/"${w.versionId}"`,
    lastModified: w.lastUpdated,
    json: w.json,
  };
}

/** Runs one entry whose ids and references are settled. */
async function runEntry(tx: Tx, e: Parsed, assignedId: string | undefined, base: string, maxCount: number): Promise<EntryResult> {
  const guard = e.policy?.guard;
  const hidden = async (id: string, json: string) => e.policy?.visible && !await e.policy.visible(tx, e.type, id, json);
  switch (e.method) {
    case 'POST':
      return writtenResult(e.type, await write.create(tx, e.type, e.resource!, undefined, { ifNoneExist: e.ifNoneExist, id: assignedId }, guard));
    case 'PUT':
      if (e.id) return writtenResult(e.type, await write.update(tx, e.type, e.id, e.resource!, undefined, e.ifMatch, guard));
      return writtenResult(e.type, await write.conditionalUpdate(tx, e.type, e.query, { ...e.resource!, ...(assignedId && !e.resource!.id ? { id: assignedId } : {}) } as Resource, undefined, e.ifMatch, guard));
    case 'PATCH':
      return writtenResult(e.type, await write.patch(tx, e.type, e.id!, e.patch, e.ifMatch, guard));
    case 'DELETE': {
      const v = e.id ? await write.remove(tx, e.type, e.id, e.ifMatch, guard) : await write.conditionalDelete(tx, e.type, e.query, guard);
      return { status: statusText[204], ...(v ? { etag: `W/"${v}"` } : {}) };
    }
    default: {
      if (e.id && e.vid) {
        const v = await readVersion(tx, e.type, e.id, write.parseVersionId(e.vid));
        if (v && !v.deleted && await hidden(e.id, v.json!)) throw new FhirError(404, 'not-found', `${e.type}/${e.id}/_history/${e.vid} not available`);
        if (!v || v.deleted) throw new FhirError(v ? 410 : 404, v ? 'deleted' : 'not-found', `${e.type}/${e.id}/_history/${e.vid} not available`);
        return { status: statusText[200], etag: `W/"${v.versionId}"`, lastModified: v.lastUpdated, json: v.json };
      }
      if (e.id) {
        const r = requireLive(await readCurrent(tx, e.type, e.id), e.type, e.id);
        if (await hidden(e.id, r.json)) throw new FhirError(404, 'not-found', `${e.type}/${e.id} not found`);
        return { status: statusText[200], etag: `W/"${r.versionId}"`, lastModified: r.lastUpdated, json: r.json };
      }
      const q = parseSearch(e.type, e.query);
      if (q.unknown.length) throw badRequest(`Unsupported search parameter(s): ${q.unknown.join(', ')}`);
      const { rows } = await runSearch(tx, { type: e.type, criteria: q.criteria, sort: q.sort, count: Math.min(Number(q.count ?? maxCount) || maxCount, maxCount), total: 'none' });
      const entries = rows.map((r) => `{"fullUrl":${JSON.stringify(`${base}/${e.type}/${r.id}`)},"resource":${r.json},"search":{"mode":"match"}}`);
      return { status: statusText[200], json: `{"resourceType":"Bundle","type":"searchset","entry":[${entries.join(',')}]}` };
    }
  }
}

export interface BundleOptions {
  base: string;
  maxEntries: number;
  maxCount: number;
  inTenant: <T>(fn: (tx: Tx) => Promise<T>) => Promise<T>;
  /** Authorizes one entry; throws (a FhirError, 403) to refuse it. */
  authorize?: (e: EntryRequest) => EntryPolicy;
  /** Records the AuditEvent of a batch entry or of a whole transaction, in its database transaction. */
  auditInTx?: (tx: Tx, done: { request: EntryRequest; result: EntryResult }[]) => Promise<void>;
  /** Per entry, the validation of its resource when it already ran (src/fhir/body.ts readBody, for big Bundles). */
  validated?: readonly (Refusal | null | undefined)[];
  /** Records a batch entry that failed or was refused (request undefined when it did not parse). */
  auditFailed?: (index: number, request: EntryRequest | undefined, err: FhirError) => Promise<void>;
}

/** Applies the entry's policy: restriction pairs join its search or conditional criteria. */
function authorizeEntry(e: Parsed, opts: BundleOptions): void {
  if (!opts.authorize) return;
  const policy = opts.authorize(e);
  e.policy = policy;
  if (!policy.restrict.length) return;
  if (!e.id && (e.method === 'GET' || e.method === 'HEAD' || e.method === 'PUT' || e.method === 'DELETE')) e.query = [...e.query, ...policy.restrict];
  if (e.ifNoneExist) e.ifNoneExist = [...e.ifNoneExist, ...policy.restrict];
}

function checkBundle(body: unknown, maxEntries: number): Bundle {
  const bundle = body as Bundle;
  if (!bundle || typeof bundle !== 'object' || bundle.resourceType !== 'Bundle') throw badRequest('POST to the base takes a Bundle');
  if (bundle.type !== 'batch' && bundle.type !== 'transaction') {
    throw badRequest(`Bundle.type must be batch or transaction, not '${String(bundle.type)}'`, ['Bundle.type']);
  }
  if (bundle.entry !== undefined && !Array.isArray(bundle.entry)) throw badRequest('Bundle.entry must be an array', ['Bundle.entry']);
  if ((bundle.entry?.length ?? 0) > maxEntries) {
    throw new FhirError(413, 'too-costly', `Bundle has ${bundle.entry!.length} entries; the limit is ${maxEntries}`);
  }
  return bundle;
}

/** A transaction: all entries or nothing. Returns results in the request's entry order. */
export async function transaction(body: unknown, opts: BundleOptions): Promise<EntryResult[]> {
  const bundle = checkBundle(body, opts.maxEntries);
  if (bundle.type !== 'transaction') throw badRequest('not a transaction');
  const parsed = (bundle.entry ?? []).map((e, i) => parseEntry(e, i, opts.base, opts.validated?.[i]));
  // Every entry is authorized before anything runs: one refused entry fails the transaction.
  for (const e of parsed) {
    try {
      authorizeEntry(e, opts);
    } catch (err) {
      throw atEntry(e.index, err);
    }
  }
  const seenFullUrls = new Set<string>();
  for (const e of parsed) {
    if (e.fullUrl && seenFullUrls.has(e.fullUrl)) throw badRequest(`Bundle.entry[${e.index}]: fullUrl ${e.fullUrl} appears twice`);
    if (e.fullUrl) seenFullUrls.add(e.fullUrl);
  }
  return opts.inTenant(async (tx) => {
    // 1. Settle identities: fullUrl -> Type/id for everything this transaction writes.
    const map = new Map<string, string>();
    const assigned = new Map<Parsed, string>();
    const target = new Map<Parsed, string>();
    for (const e of parsed) {
      try {
        let id: string | undefined;
        if (e.method === 'POST') {
          id = (e.ifNoneExist && await write.matchOne(tx, e.type, e.ifNoneExist, 'ifNoneExist')) || crypto.randomUUID();
          assigned.set(e, id);
        } else if (e.method === 'PUT') {
          id = e.id ?? (await write.matchOne(tx, e.type, e.query, 'Conditional update')) ?? e.resource!.id ?? crypto.randomUUID();
          if (!e.id) assigned.set(e, id);
        }
        if (id) {
          target.set(e, `${e.type}/${id}`);
          if (e.fullUrl) map.set(e.fullUrl, `${e.type}/${id}`);
          map.set(`${opts.base}/${e.type}/${id}`, `${e.type}/${id}`);
        }
      } catch (err) {
        throw atEntry(e.index, err);
      }
    }
    // 2. Rewrite references to bundle entries and conditional references.
    for (const e of parsed) {
      try {
        if (e.resource) await rewriteReferences(tx, e.resource, map);
      } catch (err) {
        throw atEntry(e.index, err);
      }
    }
    // 3. Run in the spec's order, dependencies first.
    const ordered = dependencyOrder([...parsed].sort((a, b) => ORDER[a.method] - ORDER[b.method] || a.index - b.index), target);
    const results: EntryResult[] = new Array(parsed.length);
    for (const e of ordered) {
      try {
        results[e.index] = await runEntry(tx, e, assigned.get(e), opts.base, opts.maxCount);
      } catch (err) {
        throw atEntry(e.index, err);
      }
    }
    await opts.auditInTx?.(tx, parsed.map((e) => ({ request: e, result: results[e.index] })));
    return results;
  });
}

/** A batch: every entry on its own; failures become that entry's response. */
export async function batch(body: unknown, opts: BundleOptions): Promise<EntryResult[]> {
  const bundle = checkBundle(body, opts.maxEntries);
  const results: EntryResult[] = [];
  for (const [i, entry] of (bundle.entry ?? []).entries()) {
    let e: Parsed | undefined;
    try {
      e = parseEntry(entry, i, opts.base, opts.validated?.[i]);
      authorizeEntry(e, opts);
      const parsed = e;
      results.push(await opts.inTenant(async (tx) => {
        const result = await runEntry(tx, parsed, undefined, opts.base, opts.maxCount);
        await opts.auditInTx?.(tx, [{ request: parsed, result }]);
        return result;
      }));
    } catch (err) {
      if (!(err instanceof FhirError)) throw err;
      await opts.auditFailed?.(i, e, err);
      results.push({ status: `${err.status}`, outcome: outcome(err.issues) });
    }
  }
  return results;
}
