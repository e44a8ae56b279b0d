// SMART enforcement on the FHIR API: the bearer token of each request, the access its
// scopes give per interaction (src/auth/scopes.ts decides; this module applies it to a
// request), the patient compartment of patient-level grants and granular scope filters
// on searches, reads, writes, includes and operations.
import { inTenant, type Ctx } from '../http/context.ts';
import type { Tx } from '../store/resources.ts';
import { FhirError, notFound } from '../fhir/outcome.ts';
import { parseSearch, reachPair, type Reach } from '../search/query.ts';
import { RESOURCE_TYPES } from '../../mappings/resourceTypes.ts';
import { runSearch } from '../store/searchRun.ts';
import type { WriteGuard } from '../interactions/write.ts';
import { AuthError, verifyAccessToken } from './verify.ts';
import { patientUser } from './scopeGrant.ts';
import { accessFor, hasCompartment, inCompartment, ownedBy, parseScopes, searchRestriction, type Access, type Permission, type ResourceScope } from './scopes.ts';

export type { Access, Permission } from './scopes.ts';

const PERM_WORD: Record<Permission, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };
const UNRESTRICTED: Access = { compartment: false, filters: [] };

export const forbidden = (message: string) => new FhirError(403, 'forbidden', message);

/** Verifies the request's bearer token (KILN_AUTH=smart) and keeps its access context on ctx. */
export async function authenticate(ctx: Ctx): Promise<void> {
  if (ctx.config.authMode === 'off') return;
  try {
    ctx.access = await verifyAccessToken(ctx.req.get('authorization'), { audience: ctx.base, tenant: ctx.tenant });
  } catch (e) {
    if (!(e instanceof AuthError)) throw e;
    ctx.res.set('WWW-Authenticate', e.wwwAuthenticate);
    throw new FhirError(e.status, e.status === 401 ? 'login' : 'forbidden', e.message);
  }
  ctx.grants = parseScopes(ctx.access.scopes);
  // A Patient user acts in their own compartment whatever the scopes say (the authorization
  // server grants such users patient/ scopes; this also holds for other issuers' tokens).
  const own = patientUser(ctx.access.fhirUser);
  if (own) {
    if (ctx.access.patient && ctx.access.patient !== own) throw forbidden(`The token's patient context is not its user's own record (${ctx.access.fhirUser})`);
    ctx.access = { ...ctx.access, patient: own };
    ctx.grants = ctx.grants.map((g) => ({ ...g, level: 'patient' }));
  }
  if (ctx.audit) ctx.audit.access = ctx.access;
}

function grantsOf(ctx: Ctx): ResourceScope[] | undefined {
  return ctx.config.authMode === 'off' ? undefined : ctx.grants ?? [];
}

/** What the token may do with `perm` on `type`, or undefined (auth off: everything). */
export function accessOf(ctx: Ctx, type: string, perm: Permission): Access | undefined {
  const grants = grantsOf(ctx);
  if (!grants) return UNRESTRICTED;
  const access = accessFor(grants, type, perm);
  if (access?.compartment && (!ctx.access?.patient || !hasCompartment(type))) return undefined;
  return access;
}

/** The access for an interaction, or 403 naming what is missing. */
export function permit(ctx: Ctx, type: string, perm: Permission): Access {
  const access = accessOf(ctx, type, perm);
  if (access) return access;
  if (accessFor(grantsOf(ctx) ?? [], type, perm)?.compartment) {
    throw forbidden(ctx.access?.patient
      ? `Patient-level scopes cannot ${PERM_WORD[perm]} ${type}: it has no patient compartment here`
      : `Patient-level scopes need a patient context, and this token has none`);
  }
  throw forbidden(`The access token's scopes do not allow ${PERM_WORD[perm]} on ${type}`);
}

/**
 * Search pairs every search of `type` under `access` must also match: the compartment and
 * granular filters on the result type and, when the token is restricted on any type a
 * search can reach, the Reach that confines every chained and `_has` resource too
 * (src/search/query.ts reachPair). A search is parsed with these pairs among its own.
 */
export function restriction(ctx: Ctx, type: string, access: Access): [string, string][] {
  const pairs = restrictionPairs(ctx, type, access);
  return needsReach(ctx) ? [...pairs, reachPair(reachOf(ctx))] : pairs;
}

function restrictionPairs(ctx: Ctx, type: string, access: Access): [string, string][] {
  const pairs = searchRestriction(access, type, ctx.access?.patient);
  if (!pairs) throw forbidden(`The access token's granular scopes on ${type} cannot be combined into one search; ask for one of them`);
  return pairs;
}

/** Parsed restriction criteria of the result type alone (what a resource itself must match). */
export function restrictionCriteria(ctx: Ctx, type: string, access: Access) {
  return criteriaOf(type, restrictionPairs(ctx, type, access));
}

/**
 * Every restriction pair must become a criterion: one that did not (an unknown parameter)
 * would widen access. A granular filter is on the resource's own elements: a chain or
 * `_has` in it would reach resources the token may not see.
 */
function criteriaOf(type: string, pairs: [string, string][]) {
  const q = parseSearch(type, pairs);
  if (q.criteria.length !== pairs.length || q.criteria.some((c) => c.chain || c.has)) {
    throw forbidden(`A granular scope on ${type} names a search parameter Kiln cannot apply`);
  }
  return q.criteria;
}

const isRestricted = (a: Access) => a.compartment || a.filters.length > 0;

/** Whether the token is restricted on a type a chain or `_has` can reach (auth off, system/*: no). */
function needsReach(ctx: Ctx): boolean {
  if (!grantsOf(ctx)) return false;
  return RESOURCE_TYPES.some((t) => { const a = accessOf(ctx, t, 's'); return !a || isRestricted(a); });
}

/**
 * A resource a search reaches is searched too: it needs the token's search access to its
 * type (else 403: the answer depends on the token alone, never on data) and must match the
 * token's restriction there, as a result of that type would.
 */
function reachOf(ctx: Ctx): Reach {
  return (type) => {
    const access = accessOf(ctx, type, 's');
    if (!access) throw forbidden(`The search reaches ${type} resources (a chain or _has), which the access token's scopes do not allow searching`);
    return restrictionCriteria(ctx, type, access);
  };
}

/** Whether a stored resource is visible under `access` (the compartment checked on the resource with the parameters searches use, filters by a search in `tx`). */
export async function visible(ctx: Ctx, tx: Tx | undefined, type: string, id: string, json: string, access: Access): Promise<boolean> {
  if (!isRestricted(access)) return true;
  if (access.compartment && !inCompartment(type, JSON.parse(json), ctx.access!.patient!)) return false;
  if (!access.filters.length) return true;
  if (!tx) return inTenant(ctx, (t) => matchesFilters(ctx, t, type, id, access));
  return matchesFilters(ctx, tx, type, id, access);
}

async function matchesFilters(ctx: Ctx, tx: Tx, type: string, id: string, access: Access): Promise<boolean> {
  const criteria = criteriaOf(type, [['_id', id], ...restrictionPairs(ctx, type, { compartment: false, filters: access.filters })]);
  const { rows } = await runSearch(tx, { orgId: ctx.orgId, type, criteria, sort: [], count: 1, total: 'none' });
  return rows.length > 0;
}

/** A read outside the token's reach is a 404: it does not tell another patient's data exists. */
export async function requireVisible(ctx: Ctx, tx: Tx | undefined, type: string, id: string, json: string, access: Access): Promise<void> {
  if (!await visible(ctx, tx, type, id, json, access)) throw notFound(`${type}/${id} not found`);
}

/** Keeps the resources (of any type) the token may `perm` (includes, $everything, batch results). */
export async function filterVisible<T extends { type: string; id: string; json: string }>(ctx: Ctx, tx: Tx, rows: T[], perm: Permission): Promise<T[]> {
  if (!grantsOf(ctx)) return rows;
  const out: T[] = [];
  for (const r of rows) {
    const access = accessOf(ctx, r.type, perm);
    if (access && await visible(ctx, tx, r.type, r.id, r.json, access)) out.push(r);
  }
  return out;
}

/**
 * Checks for a write under `access`: the stored version it replaces or deletes and the
 * new version (in the same transaction, so a refused write rolls back; after a PATCH the
 * patched result) must both be about the token's patient and match its granular filters.
 * Every write path (create, update, patch, delete, conditional, Bundle entries) passes
 * through here. Undefined when unrestricted.
 */
export function writeGuard(ctx: Ctx, type: string, access: Access): WriteGuard | undefined {
  if (!isRestricted(access)) return undefined;
  const patient = ctx.access?.patient;
  const check = (what: string) => async (tx: Tx, t: string, id: string, json: string) => {
    // Writes take the resource's own patient (subject/patient; a Patient's id), not the
    // whole compartment: naming the patient as performer writes no one else's chart, and
    // naming another patient (performer, link) puts nothing in theirs.
    if (access.compartment && !(patient && ownedBy(t, JSON.parse(json), patient))) {
      throw forbidden(`${what} ${t}/${id} is not about Patient/${patient} alone: a patient-level write needs the resource's patient (its subject or patient; a Patient's own id) to be the token's patient, and names no other patient`);
    }
    if (access.filters.length && !await visible(ctx, tx, t, id, json, { compartment: false, filters: access.filters })) {
      throw forbidden(`${what} ${t}/${id} is outside what the access token's granular scopes allow`);
    }
  };
  return { stored: check('The stored'), written: check('The written') };
}

/** $export: system/ scopes (user/ too with KILN_EXPORT_USER_SCOPES=on), unfiltered read on each type. */
export function exportAccess(ctx: Ctx, types: string[]): void {
  const grants = grantsOf(ctx);
  if (!grants) return;
  const levels = ctx.config.exportUserScopes ? ['system', 'user'] : ['system'];
  const usable = grants.filter((g) => levels.includes(g.level));
  if (!usable.length) throw forbidden(`$export needs ${levels.map((l) => `${l}/`).join(' or ')} scopes`);
  for (const type of types) {
    const a = accessFor(usable, type, 'r');
    if (!a) throw forbidden(`The access token's scopes do not allow reading ${type}, which this export includes (limit it with _type)`);
    if (a.filters.length) throw forbidden(`Granular scopes on ${type} cannot be used for $export`);
  }
}

/** Types of `candidates` the token may export (the default _type). */
export function exportableTypes(ctx: Ctx, candidates: string[]): string[] {
  const grants = grantsOf(ctx);
  if (!grants) return candidates;
  const levels = ctx.config.exportUserScopes ? ['system', 'user'] : ['system'];
  const usable = grants.filter((g) => levels.includes(g.level));
  return candidates.filter((t) => { const a = accessFor(usable, t, 'r'); return a && !a.filters.length; });
}
