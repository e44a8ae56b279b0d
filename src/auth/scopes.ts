// SMART scopes (App Launch 2.x, scopes-and-launch-context): v1 `patient/Observation.read`,
// `user/*.write`, and v2 `patient/Observation.rs`, `system/*.cruds`, granular
// `patient/Observation.rs?category=...`. Pure: parses scopes and decides what one
// interaction on one type may do.
import { compartmentCriterion, PATIENT_COMPARTMENT } from '../search/compartment.ts';
import { parsedPair } from '../search/query.ts';

export type Level = 'patient' | 'user' | 'system';
/** v2 permissions: create, read, update, delete, search. */
export type Permission = 'c' | 'r' | 'u' | 'd' | 's';

export interface ResourceScope {
  level: Level;
  /** A resource type, or '*' */
  type: string;
  perms: Set<Permission>;
  /** Granular scope: search parameters every granted resource must match. */
  filter?: [string, string][];
}

const V1: Record<string, Permission[]> = { read: ['r', 's'], write: ['c', 'u', 'd'], '*': ['c', 'r', 'u', 'd', 's'] };
const SCOPE = /^(patient|user|system)\/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.+))?$/;

/** The resource scopes among a token's scopes (others such as `openid` or `launch` are skipped). */
export function parseScopes(scopes: string[]): ResourceScope[] {
  const out: ResourceScope[] = [];
  for (const scope of scopes) {
    const m = SCOPE.exec(scope);
    if (!m) continue;
    const [, level, type, action, query] = m;
    let perms: Permission[] | undefined = V1[action];
    if (!perms && /^c?r?u?d?s?$/.test(action) && action !== '') perms = action.split('') as Permission[];
    if (!perms) continue; // e.g. `.rc` (letters out of order) is not a scope
    out.push({
      level: level as Level, type, perms: new Set(perms),
      ...(query ? { filter: [...new URLSearchParams(query).entries()] } : {}),
    });
  }
  return out;
}

export interface Access {
  /** Only patient-level scopes grant it: the request is confined to the token's patient compartment. */
  compartment: boolean;
  /** Granular filters, one of which a resource must match (none: unrestricted). */
  filters: [string, string][][];
}

/**
 * What the scopes allow for `perm` on `type`: undefined when nothing grants it. A grant
 * at user or system level lifts the compartment limit; any unfiltered grant at the
 * deciding level lifts the granular filters.
 */
export function accessFor(scopes: ResourceScope[], type: string, perm: Permission): Access | undefined {
  const granting = scopes.filter((s) => (s.type === '*' || s.type === type) && s.perms.has(perm));
  if (!granting.length) return undefined;
  const wide = granting.filter((s) => s.level !== 'patient');
  const deciding = wide.length ? wide : granting;
  const unfiltered = deciding.some((s) => !s.filter);
  return { compartment: !wide.length, filters: unfiltered ? [] : deciding.map((s) => s.filter!) };
}

/** Whether any resource scope at all mentions this level (e.g. Bulk export needs `system/`). */
export function hasLevel(scopes: ResourceScope[], level: Level): boolean {
  return scopes.some((s) => s.level === level);
}

// ---------------------------------------------------------------- patient compartment
// Defined once, in src/search/compartment.ts (reads, writes, searches and $everything use it).
export { compartmentPatients, hasCompartment, inCompartment, ownedBy } from '../search/compartment.ts';

/**
 * The compartment as a search pair: its text is the narrower public criterion (the first
 * compartment parameter, or `_id` for Patient); it carries the criterion that ORs every
 * compartment parameter (search syntax cannot), see parsedPair.
 */
export function compartmentPair(type: string, patient: string): [string, string] | undefined {
  const criterion = compartmentCriterion(type, patient);
  if (!criterion) return undefined;
  const text: [string, string] = type === 'Patient' ? ['_id', patient] : [PATIENT_COMPARTMENT[type][0], `Patient/${patient}`];
  return parsedPair(text, criterion);
}

/**
 * Search pairs that every search under this access must also match: the compartment
 * criterion (when `access.compartment`) and the granular filters. Several granular
 * scopes OR together; that is expressible only when each is one value of the same
 * parameter (merged into one comma list, which search reads as OR). `undefined` means it cannot be expressed
 * (a patient-only grant on a type without compartment, no patient context, or
 * granular scopes that cannot be merged): the caller refuses the request.
 */
export function searchRestriction(access: Access, type: string, patient: string | undefined): [string, string][] | undefined {
  const out: [string, string][] = [];
  if (access.compartment) {
    const pair = patient ? compartmentPair(type, patient) : undefined;
    if (!pair) return undefined;
    out.push(pair);
  }
  if (access.filters.length === 1) out.push(...access.filters[0]);
  else if (access.filters.length > 1) {
    const names = new Set(access.filters.map((f) => (f.length === 1 ? f[0][0] : '')));
    if (names.size !== 1 || names.has('')) return undefined;
    out.push([[...names][0], access.filters.map((f) => f[0][1]).join(',')]);
  }
  return out;
}
