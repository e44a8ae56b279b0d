// Splits a search request's parameters into criteria and result control
// (search.html: _sort, _count, _total, _summary, _elements, _include, _revinclude).
import { badRequest } from '../fhir/outcome.ts';
import { checkPairText, parseCriterion, paramDef, type Criterion } from './criteria.ts';
import { isResourceType } from '../../mappings/resourceTypes.ts';
import type { IncludeSpec, SortSpec } from '../store/searchRun.ts';

export interface ParsedSearch {
  criteria: Criterion[];
  /** Parameter names this server does not know (reported or refused by the caller). */
  unknown: string[];
  sort: SortSpec[];
  count?: string;
  page?: string;
  total: 'none' | 'estimate' | 'accurate';
  summary?: 'true' | 'text' | 'data' | 'count' | 'false';
  elements?: string[];
  include: IncludeSpec[];
  revinclude: IncludeSpec[];
}

const IGNORED = new Set(['_format', '_pretty']);

function includeSpec(value: string, iterate: boolean, name: string): IncludeSpec {
  if (value === '*') return { sourceType: '*', param: '*', iterate };
  const [sourceType, param, targetType] = value.split(':');
  if (!isResourceType(sourceType) || !param) throw badRequest(`${name} takes Type:parameter[:targetType], got '${value}'`, [name]);
  if (param !== '*') {
    const def = paramDef(sourceType, param);
    if (!def || def.type !== 'reference') throw badRequest(`${name}: '${param}' is not a reference parameter of ${sourceType}`, [name]);
  }
  if (targetType && !isResourceType(targetType)) throw badRequest(`${name}: target type ${targetType} is not stored`, [name]);
  return { sourceType, param, targetType, iterate };
}

const PARSED = Symbol('parsed criterion');

/**
 * A search pair that carries an already parsed criterion: enforcement's compartment,
 * which no request syntax expresses, travelling with a request's own pairs (conditional
 * writes, Bundle entries). Its text is a narrower public criterion, so a copy that
 * loses the criterion still confines.
 */
export function parsedPair(text: [string, string], criterion: Criterion): [string, string] {
  return Object.assign([text[0], text[1]] as [string, string], { [PARSED]: criterion });
}

/**
 * What a search may reach beyond its result type (chains, `_has`): for a type, the criteria
 * every reached resource of it must also match (the token's compartment and granular
 * filters); it throws to refuse a type the token may not search.
 */
export type Reach = (type: string) => Criterion[];

const REACH = Symbol('reach');

/**
 * A search pair that carries enforcement's Reach, travelling with the restriction pairs
 * into every search (conditional writes, Bundle entries). Its text names no parameter
 * Kiln knows, so a copy that loses the Reach is refused as unsupported, not run wider.
 */
export function reachPair(reach: Reach): [string, string] {
  return Object.assign(['_reach', 'restricted'] as [string, string], { [REACH]: reach });
}

/** The criterion with `reach` applied to every resource it reaches, at any depth. */
function confine(c: Criterion, reach: Reach): Criterion {
  if (c.chain) {
    const { targetType, criterion } = c.chain;
    return { ...c, chain: { targetType, criterion: confine(criterion, reach), restrict: reach(targetType) } };
  }
  if (c.has) return { ...c, has: { ...c.has, criterion: confine(c.has.criterion, reach), restrict: reach(c.has.sourceType) } };
  return c;
}

export function parseSearch(type: string, pairs: [string, string][]): ParsedSearch {
  // No total unless asked: counting every match costs what the page does not (bench/search.ts).
  const q: ParsedSearch = { criteria: [], unknown: [], sort: [], total: 'none', include: [], revinclude: [] };
  let reach: Reach | undefined;
  for (const pair of pairs) {
    const parsed = (pair as { [PARSED]?: Criterion })[PARSED];
    if (parsed) { q.criteria.push(parsed); continue; }
    const carried = (pair as { [REACH]?: Reach })[REACH];
    if (carried) { reach = carried; continue; }
    const [name, value] = pair;
    checkPairText(name, value);
    if (IGNORED.has(name)) continue;
    switch (name) {
      case '_count': q.count = value; continue;
      case '_page': q.page = value; continue;
      case '_total':
        if (!['none', 'estimate', 'accurate'].includes(value)) throw badRequest(`_total takes none, estimate or accurate`, ['_total']);
        q.total = value as ParsedSearch['total'];
        continue;
      case '_summary':
        if (!['true', 'text', 'data', 'count', 'false'].includes(value)) throw badRequest(`_summary takes true, text, data, count or false`, ['_summary']);
        q.summary = value as ParsedSearch['summary'];
        continue;
      case '_elements':
        q.elements = value.split(',').map((e) => e.trim()).filter(Boolean);
        continue;
      case '_sort':
        for (const key of value.split(',').filter(Boolean)) {
          const desc = key.startsWith('-');
          const def = paramDef(type, desc ? key.slice(1) : key);
          if (!def) throw badRequest(`Cannot sort by unknown parameter '${key}'`, ['_sort']);
          q.sort.push({ def, desc });
        }
        continue;
    }
    if (name === '_include' || name === '_include:iterate') {
      const spec = includeSpec(value, name.endsWith(':iterate'), name);
      q.include.push(spec.sourceType === '*' ? { ...spec, sourceType: type } : spec);
      continue;
    }
    if (name === '_revinclude' || name === '_revinclude:iterate') {
      const spec = includeSpec(value, name.endsWith(':iterate'), name);
      if (spec.sourceType === '*') throw badRequest('_revinclude=* is not supported; name Type:parameter', [name]);
      q.revinclude.push(spec);
      continue;
    }
    const criterion = parseCriterion(type, name, value);
    if (criterion) q.criteria.push(criterion);
    else q.unknown.push(name);
  }
  const r = reach;
  if (r) q.criteria = q.criteria.map((c) => confine(c, r));
  return q;
}
