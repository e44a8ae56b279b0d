// SMART scopes (App Launch 2.x, scopes-and-launch-context): v1 `patient/Observation.read`,
// `user/*.write`, and v2 `patient/Observation.rs`, `system/*.cruds`, granular
// `patient/Observation.rs?category=...`. Pure: parses scopes and decides what one
// interaction on one type may do.

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

/**
 * The search criterion that confines a type to one patient's compartment (R4
 * CompartmentDefinition patient). Observation's compartment is `subject` or `performer`;
 * a search criterion cannot OR two parameters, so searches confine to `subject` (the
 * narrower set: nothing outside the compartment is ever matched) while reads and writes
 * check both references. Types without an entry (Group) are refused to patient-only tokens.
 */
const COMPARTMENT_SEARCH: Record<string, (patient: string) => [string, string]> = {
  Patient: (p) => ['_id', p],
  Encounter: (p) => ['subject', `Patient/${p}`],
  Observation: (p) => ['subject', `Patient/${p}`],
  MedicationStatement: (p) => ['subject', `Patient/${p}`],
  AuditEvent: (p) => ['patient', `Patient/${p}`],
};

type Json = Record<string, any>;
const refsOf = (v: unknown): string[] => (Array.isArray(v) ? v : v === undefined ? [] : [v])
  .map((r: any) => r?.reference).filter((s): s is string => typeof s === 'string');

/** References that put a resource in a patient's compartment, per type. */
const COMPARTMENT_REFS: Record<string, (r: Json) => string[]> = {
  Encounter: (r) => refsOf(r.subject),
  Observation: (r) => [...refsOf(r.subject), ...refsOf(r.performer)],
  MedicationStatement: (r) => refsOf(r.subject),
  AuditEvent: (r) => [...refsOf((r.agent ?? []).map((a: Json) => a?.who)), ...refsOf((r.entity ?? []).map((e: Json) => e?.what))],
};

const PATIENT_REF = /(?:^|\/)Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/;

/** Patient ids whose compartment holds this resource (a Patient is in its own). */
export function compartmentPatients(type: string, resource: Json): string[] {
  if (type === 'Patient') return typeof resource.id === 'string' ? [resource.id] : [];
  const refs = COMPARTMENT_REFS[type]?.(resource) ?? [];
  return [...new Set(refs.map((r) => PATIENT_REF.exec(r)?.[1]).filter((id): id is string => Boolean(id)))];
}

export function inCompartment(type: string, resource: Json, patient: string): boolean {
  return compartmentPatients(type, resource).includes(patient);
}

/** Whether a patient-only grant can be confined to a compartment for this type. */
export function hasCompartment(type: string): boolean {
  return type in COMPARTMENT_SEARCH;
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
    const rule = COMPARTMENT_SEARCH[type];
    if (!rule || !patient) return undefined;
    out.push(rule(patient));
  }
  if (access.filters.length === 1) out.push(...access.filters[0]);
  else if (access.filters.length > 1) {
    const names = new Set(access.filters.map((f) => (f.length === 1 ? f[0][0] : '')));
    if (names.size !== 1 || names.has('')) return undefined;
    out.push([[...names][0], access.filters.map((f) => f[0][1]).join(',')]);
  }
  return out;
}
