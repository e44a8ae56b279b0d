// Parses FHIR search parameters (search.html) into criteria the SQL builder can
// turn into conditions: names, modifiers, prefixes, chains and _has. Pure: no I/O.
import { RESOURCE_TYPES, isResourceType } from '../../mappings/resourceTypes.ts';
import { badRequest } from '../fhir/outcome.ts';
import { searchParamsFor, type SearchParamDef } from '../../mappings/search/definitions.ts';
import { dateRange } from '../../mappings/search/precision.ts';

export type Prefix = 'eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le' | 'sa' | 'eb' | 'ap';
const PREFIXES = new Set<Prefix>(['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap']);

export interface Criterion {
  def: SearchParamDef;
  modifier?: string;
  /** Comma-separated alternatives (OR). */
  values: string[];
  /** `subject:Patient.name=x`: the criterion applies to the referenced resource, which must
   * also match `restrict` (the token's restriction for its type, src/search/query.ts Reach). */
  chain?: { targetType: string; criterion: Criterion; restrict?: Criterion[] };
  /** `_has:Observation:patient:code=x`: resources referenced by a matching other resource
   * (which must also match `restrict`, as for chains). */
  has?: { sourceType: string; refParam: SearchParamDef; criterion: Criterion; restrict?: Criterion[] };
  /** `:missing` */
  missing?: boolean;
  /** Internal, never parsed from a request (src/search/compartment.ts): any of these
   * reference parameters names the target, or with `self` the resource is the target. */
  anyRef?: { params: string[]; targetType: string; targetId: string; self: boolean };
}


const MODIFIERS: Record<string, string[]> = {
  string: ['exact', 'contains', 'missing'],
  token: ['not', 'text', 'of-type', 'missing'],
  reference: ['missing', 'identifier', ...RESOURCE_TYPES],
  date: ['missing'],
  quantity: ['missing'],
  number: ['missing'],
  uri: ['missing', 'below', 'above'],
  composite: ['missing'],
};

export function paramDef(type: string, code: string): SearchParamDef | undefined {
  return searchParamsFor(type).find((d) => d.code === code);
}

/**
 * A search pair's name and value, from any source (URL, form body, header, Bundle entry,
 * _typeFilter): PostgreSQL text cannot hold a NUL character, so one is refused here (400)
 * rather than failing in the database.
 */
export function checkPairText(name: string, value: string): void {
  if (!name.includes('\0') && !value.includes('\0')) return;
  const shown = name.replace(/\0/g, '\\0');
  throw badRequest(`Search parameter '${shown}' contains a NUL character (%00)`, [shown]);
}

/** Splits a value on unescaped commas; `\,` stays a literal comma. */
export function splitValues(raw: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === '\\' && i + 1 < raw.length) { cur += raw[++i]; continue; }
    if (raw[i] === ',') { out.push(cur); cur = ''; continue; }
    cur += raw[i];
  }
  out.push(cur);
  return out.filter((v) => v !== '');
}

/**
 * The target a reference search value names: `Type/id` (relative, absolute or versioned), a
 * bare id (typed by a `:Type` modifier), or a URL. An absolute URL ending in Type/id is also
 * `text`: a canonical, or a reference whose type Kiln does not know, is indexed by its text
 * only (mappings/search/extract.ts), so the value matches such rows as written too.
 */
export function referenceTarget(value: string, modifier: string | undefined): { type?: string; id?: string; url?: string; text?: string } {
  const m = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/\d+)?$/.exec(value);
  if (m) return /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(value) ? { type: m[1], id: m[2], text: value } : { type: m[1], id: m[2] };
  if (/^[A-Za-z0-9\-.]{1,64}$/.test(value)) return { type: modifier, id: value };
  return { url: value };
}

/** Splits a prefixed value (date/number/quantity) into prefix and rest. */
export function prefixed(value: string): { prefix: Prefix; rest: string } {
  const p = value.slice(0, 2) as Prefix;
  if (PREFIXES.has(p) && /^[a-z]{2}[-+\d]/.test(value)) return { prefix: p, rest: value.slice(2) };
  return { prefix: 'eq', rest: value };
}

/**
 * One criterion from a `name[:modifier][.chain]=value` pair; undefined when the name is
 * not a search parameter of the type (the caller reports or refuses it).
 */
export function parseCriterion(type: string, name: string, raw: string): Criterion | undefined {
  if (name.startsWith('_has:')) return parseHas(type, name, raw);
  const dot = name.indexOf('.');
  const head = dot < 0 ? name : name.slice(0, dot);
  const [code, modifier] = head.split(':', 2);
  const def = paramDef(type, code);
  if (!def) return undefined;
  if (dot >= 0) {
    if (def.type !== 'reference') throw badRequest(`Chaining needs a reference parameter; '${code}' is a ${def.type}`, [name]);
    // Without a type modifier, the one target type that has the chained parameter
    // (Observation `encounter.subject`: Encounter, not EpisodeOfCare); several need the modifier.
    const innerCode = name.slice(dot + 1).split(/[.:]/, 1)[0];
    const targets = (def.target ?? []).filter((t) => isResourceType(t) && (innerCode.startsWith('_') || paramDef(t, innerCode)));
    const targetType = modifier ?? (targets.length === 1 ? targets[0] : undefined);
    if (!isResourceType(targetType)) {
      throw badRequest(`Chained parameter '${name}' needs a target type Kiln stores (e.g. ${code}:Patient.name)`, [name]);
    }
    const inner = parseCriterion(targetType, name.slice(dot + 1), raw);
    if (!inner) throw badRequest(`Unknown parameter '${name.slice(dot + 1)}' for ${targetType} in chain '${name}'`, [name]);
    return { def, values: [], chain: { targetType, criterion: inner } };
  }
  if (modifier !== undefined && !(MODIFIERS[def.type] ?? ['missing']).includes(modifier)) {
    throw badRequest(`Modifier ':${modifier}' is not supported on ${def.type} parameter '${code}'`, [name]);
  }
  if (modifier === 'missing') {
    if (raw !== 'true' && raw !== 'false') throw badRequest(`:missing takes true or false, got '${raw}'`, [name]);
    return { def, values: [], missing: raw === 'true' };
  }
  const values = splitValues(raw);
  if (values.length === 0) throw badRequest(`Search parameter '${name}' has no value`, [name]);
  for (const v of values) checkValue(def, modifier, v, name);
  return { def, modifier, values };
}

function parseHas(type: string, name: string, raw: string): Criterion {
  // _has:Observation:patient:code=1234-5
  const m = /^_has:([A-Za-z]+):([a-z0-9-]+):(.+)$/.exec(name);
  if (!m) throw badRequest(`Malformed _has parameter '${name}'`, [name]);
  const [, sourceType, refCode, rest] = m;
  if (!isResourceType(sourceType)) throw badRequest(`_has: type ${sourceType} is not stored`, [name]);
  const refParam = paramDef(sourceType, refCode);
  if (!refParam || refParam.type !== 'reference') throw badRequest(`_has: '${refCode}' is not a reference parameter of ${sourceType}`, [name]);
  const inner = parseCriterion(sourceType, rest, raw);
  if (!inner) throw badRequest(`_has: unknown parameter '${rest}' for ${sourceType}`, [name]);
  const self = paramDef(type, '_id')!;
  return { def: self, values: [], has: { sourceType, refParam, criterion: inner } };
}

const NUMBER = /^[-+]?\d+(\.\d+)?([eE][-+]?\d+)?$/;

/**
 * Values are checked here against the ranges PostgreSQL and the SQL builder take, so that a
 * query parsed now (an export's _typeFilter runs later) cannot fail later: a date is a real
 * calendar time from year 1 (dateRange), a number finite. A composite checks each part by its
 * component's type.
 */
function checkValue(def: SearchParamDef, modifier: string | undefined, value: string, name: string): void {
  if (def.type === 'composite') {
    const parts = value.split('$');
    if (parts.length !== (def.components?.length ?? 2)) throw badRequest(`Composite '${name}' takes ${def.components?.length ?? 2} parts joined by $`, [name]);
    (def.components ?? []).forEach((c, i) => checkTyped(c.type, parts[i], value, name));
    return;
  }
  checkTyped(def.type, value, value, name);
  void modifier;
}

function checkTyped(type: string, value: string, whole: string, name: string): void {
  if (type === 'date') {
    const { rest } = prefixed(value);
    if (!dateRange(rest)) throw badRequest(`Invalid date '${whole}' for parameter '${name}'`, [name]);
  } else if (type === 'number' || type === 'quantity') {
    const { rest } = prefixed(value);
    const num = type === 'quantity' ? rest.split('|')[0] : rest;
    if (!NUMBER.test(num) || !Number.isFinite(Number(num))) throw badRequest(`Invalid ${type} '${whole}' for parameter '${name}'`, [name]);
  }
}
