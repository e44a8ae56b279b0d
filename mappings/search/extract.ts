// Search index rows for a resource: every R4 search parameter of its type
// (definitions.ts) evaluated with Medplum's FHIRPath and turned into typed rows a
// SQL engine can query (token / string / date / reference / quantity / number / uri /
// composite side tables). Pure: the only I/O is the one-time definition load.
//
// How expressions are run
//  - Each parameter's expression is split into its top-level union branches and each
//    branch is parsed once (parseFhirPath) and cached per resource type; evaluating the
//    branches separately and de-duplicating rows is the same as evaluating the union.
//  - Branches of the simple shapes nearly all R4 expressions have (`Type.a.b`, `(Type.a as T)`,
//    `Type.a.where(b='x')`, `a.ofType(T)`) also get a compiled JSON navigator (fastpath.ts) with
//    element and choice types resolved from the StructureDefinitions at compile time; it is
//    used instead of Medplum's evaluator (3-6x faster overall; the tests check both give the
//    same rows on every example). Everything else (e.g. Patient `deceased`'s
//    `Patient.deceased.exists() and Patient.deceased != false`) runs on Medplum's FHIRPath.
//    `extractIndex(r, { fastPath: false })` runs everything on Medplum.
//  - `.where(resolve() is X)` at the end of a branch (e.g. `Observation.subject.where(resolve() is Patient)`)
//    is NOT evaluated by FHIRPath: there is no repository, and Medplum's resolve() only
//    understands relative `Type/id`. The branch is evaluated without the where(), and only
//    references whose type is X are kept. The type of a reference is taken from (1) its
//    `Type/id` or absolute `.../Type/id[/_history/v]` URL, else (2) the contained resource a
//    `#id` reference points to, else (3) Reference.type. Unknown type: dropped.
//  - `.as(T)` (used by composite components, e.g. `value.as(Quantity)`) is rewritten to
//    `.ofType(T)`: Medplum's as() function does not filter, and FHIRPath system type names
//    are mapped to FHIR ones (DateTime -> dateTime, String -> string, ...).
//  - A branch that fails to parse, or throws while evaluating, is skipped and counted in
//    extractStats(); extraction never throws.
//  - Parameters whose rows are other parameters' rows (definitions.ts StoredAs: `patient` =
//    `subject` rows of type Patient, `combo-code` = `code` + `component-code` rows) give no
//    rows in extractIndex: each set of rows is stored once and the query side reads the
//    stored parameters. A target-type one still gives its `<param>:identifier` token rows
//    (rare: references by identifier), since token rows carry no target type to filter.
//    extractIndexWith evaluates the definitions it is given, aliases included.
//
// Conversions (by parameter type, then by the value's FHIR type)
//  token:     Coding (system, code, display as text); CodeableConcept (each coding, plus a
//             row {system: null, code: null, text} for its text); Identifier (system, value,
//             text = type.text) plus `<param>:of-type` rows {system: type coding system,
//             code: `<type code>|<value>`}; ContactPoint (system null, code = value);
//             boolean ('true'/'false'); other primitives (system null, code = value).
//  string:    primitives; HumanName (family, each given, prefix, suffix, text); Address
//             (each line, city, district, state, postalCode, country, text) - one row each,
//             value normalised by normalizeString(), raw kept.
//  date:      date/dateTime/instant (precision range, precision.ts); Period (start's lo ..
//             end's hi, open ends MIN_INSTANT / MAX_INSTANT); Timing (each event, and
//             repeat.boundsPeriod). Values without a timezone are taken as UTC.
//  reference: Reference -> {targetType, targetId} from `Type/id` or an absolute URL ending
//             in Type/id (history stripped); `#contained`, `urn:`, conditional and other
//             references have no targetId, and as targetType the type a `.where(resolve() is X)`
//             would see (the contained resource's, else Reference.type), so that such a
//             parameter's rows are its unfiltered twin's rows of type X (see below).
//             Reference.identifier -> TokenRows with param `<param>:identifier`.
//             canonical/uri values -> {null, null, reference: value}.
//  quantity:  Quantity, Age, Duration, Distance, Count, SimpleQuantity, MoneyQuantity with a
//             numeric value; lo/hi from its significant digits. Skipped: SampledData, Range,
//             Quantity.comparator (ignored: a '<5' is indexed as 5).
//  number:    integer/decimal primitives, lo/hi from significant digits.
//  uri:       uri/url/canonical/oid/uuid (any string).
//  composite: the context expression gives elements; for each element every component
//             expression is evaluated relative to it and converted by the component's type
//             into parts (param = component code). One CompositeRow per combination of parts
//             (cartesian product, capped at MAX_COMBINATIONS per element). Text-only token rows
//             and modifier rows (`:of-type`, `:identifier`) are not used as parts, since
//             composite search takes no modifiers.
//
// Known simplifications: `code`-typed primitives (status, gender, ...) get system null (the
// bound CodeSystem is not inferred); `phonetic` gets the same normalised name parts as `name`
// (no phonetic algorithm); decimals come from JSON numbers, so written trailing zeros ("5.40")
// are lost before the precision range is taken; dates without a timezone are UTC.
import {
  evalFhirPathTyped,
  isResourceType,
  parseFhirPath,
  toTypedValue,
  type FhirPathAtom,
  type TypedValue,
} from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { loadDefinitions } from '../../src/fhir/validate.ts';
import { ROW_COLUMN_PARAMS, resolveFilter, searchParamsFor, splitUnion, type SearchParamDef } from './definitions.ts';
import { compileFastPath, type FastPath } from './fastpath.ts';
import { MAX_INSTANT, MIN_INSTANT, dateRange, decimalRange, normalizeString } from './precision.ts';

// The value helpers are part of this module's API (the query side normalises search values the same way).
export { MAX_INSTANT, MIN_INSTANT, dateRange, decimalRange, normalizeString } from './precision.ts';
export type { DateRange, DecimalRange, DatePrecision } from './precision.ts';

export interface TokenRow {
  param: string;
  system: string | null;
  code: string | null;
  text: string | null;
}

export interface StringRow {
  param: string;
  /** Normalised: NFD, combining marks removed, lower case, whitespace collapsed, trimmed. */
  value: string;
  raw: string;
}

export interface DateRow {
  param: string;
  /** Inclusive start, UTC ISO instant. */
  lo: string;
  /** Exclusive end, UTC ISO instant. */
  hi: string;
}

export interface RefRow {
  param: string;
  targetType: string | null;
  targetId: string | null;
  reference: string;
}

export interface QuantityRow {
  param: string;
  value: number;
  system: string | null;
  code: string | null;
  unit: string | null;
  /** Implicit precision range of `value`: lo inclusive, hi exclusive. */
  lo: number;
  hi: number;
}

export interface NumberRow {
  param: string;
  value: number;
  lo: number;
  hi: number;
}

export interface UriRow {
  param: string;
  value: string;
}

export type CompositePart = TokenRow | StringRow | DateRow | QuantityRow | RefRow;

export interface CompositeRow {
  param: string;
  /** One part per component, in component order; each part's `param` is the component's code. */
  parts: CompositePart[];
}

export interface IndexRows {
  tokens: TokenRow[];
  strings: StringRow[];
  dates: DateRow[];
  references: RefRow[];
  quantities: QuantityRow[];
  numbers: NumberRow[];
  uris: UriRow[];
  composites: CompositeRow[];
}

export interface ExtractStats {
  /** Expression branches that failed to parse (each counted once, when first compiled). */
  compileErrors: number;
  /** Branch evaluations that threw (counted per resource). */
  evalErrors: number;
  /** Values of a known parameter that could not be converted (bad shape, unparseable date, ...). */
  skippedValues: number;
  /** The most recent failure, for debugging. */
  lastError?: { resourceType: string; param: string; expression: string; message: string };
}

/** Composite rows produced per context element at most (guards against a cartesian blow-up). */
export const MAX_COMBINATIONS = 64;

const stats: ExtractStats = { compileErrors: 0, evalErrors: 0, skippedValues: 0 };

/** A snapshot of the debug counters since the last reset. */
export function extractStats(): ExtractStats {
  return { ...stats, lastError: stats.lastError && { ...stats.lastError } };
}

export function resetExtractStats(): void {
  stats.compileErrors = 0;
  stats.evalErrors = 0;
  stats.skippedValues = 0;
  stats.lastError = undefined;
}

// ---------------------------------------------------------------------------------------------
// Compilation

interface Branch {
  source: string;
  atom?: FhirPathAtom; // undefined when it failed to parse
  /** The same branch as plain JSON navigation, when its shape allows (fastpath.ts). */
  fast?: FastPath;
  /** Keep only references to this resource type (from a trailing `.where(resolve() is X)`). */
  resolveIs?: string;
}

interface CompiledComponent {
  code: string;
  type: string;
  /** `<composite>.<component>`, for error reports. */
  label: string;
  branches: Branch[];
}

interface CompiledContext {
  branch: Branch;
  components: CompiledComponent[];
}

interface CompiledParam {
  def: SearchParamDef;
  branches: Branch[];
  /** Composite parameters: one entry per context branch, components compiled for that context's type. */
  contexts?: CompiledContext[];
  /** Write only the `:identifier` token rows (its references are stored as other parameters': definitions.ts StoredAs). */
  identifiersOnly?: boolean;
}

export interface ExtractOptions {
  /**
   * Evaluate simple expressions by direct JSON navigation instead of Medplum's FHIRPath engine
   * (default true; same rows, several times faster). false runs everything through Medplum.
   */
  fastPath?: boolean;
  /** Parameters to leave out as well (a row-keyed type's row time: mappings/search/rowKeys.ts). */
  skip?: readonly string[];
}

const SYSTEM_TYPES: Record<string, string> = {
  Boolean: 'boolean', String: 'string', Integer: 'integer', Decimal: 'decimal',
  Date: 'date', DateTime: 'dateTime', Time: 'time',
};

interface CompileScope {
  resourceType: string;
  param: string;
  fast: boolean;
  /** Type of the input items; when `rooted` the branch starts with it (`Observation.code`). */
  contextType?: string;
  rooted: boolean;
}

function compileBranch(source: string, scope: CompileScope): Branch {
  const { resourceType, param } = scope;
  let expr = source.trim();
  let resolveIs: string | undefined;
  // Parentheses around the whole branch do not change its meaning; drop them so a trailing where() is seen.
  while (expr.startsWith('(') && expr.endsWith(')') && splitUnion(expr.slice(1, -1)).length === 1 && balanced(expr.slice(1, -1))) {
    expr = expr.slice(1, -1).trim();
  }
  const filter = resolveFilter(expr);
  if (filter.targetType) {
    resolveIs = filter.targetType;
    expr = filter.base;
  }
  expr = expr.replace(/\.as\(\s*(?:(?:FHIR|System)\.)?([A-Za-z]+)\s*\)/g, (_, t: string) => `.ofType(${SYSTEM_TYPES[t] ?? t})`);
  try {
    const atom = parseFhirPath(expr); // also validates the expression the fast path would run
    const fast = scope.fast && scope.contextType ? compileFastPath(expr, scope.contextType, scope.rooted) : undefined;
    return { source, atom, fast, resolveIs };
  } catch (e) {
    stats.compileErrors++;
    stats.lastError = { resourceType, param, expression: source, message: (e as Error)?.message ?? String(e) };
    return { source, resolveIs };
  }
}

function balanced(s: string): boolean {
  let depth = 0;
  for (const ch of s) {
    if (ch === '(') depth++;
    else if (ch === ')' && --depth < 0) return false;
  }
  return depth === 0;
}

function compileExpression(expression: string, scope: CompileScope): Branch[] {
  return splitUnion(expression).map((b) => compileBranch(b, scope));
}

function compile(defs: readonly SearchParamDef[], resourceType: string, fast: boolean, stored = false): CompiledParam[] {
  return defs.map((def) => {
    const scope: CompileScope = { resourceType, param: def.code, fast, contextType: resourceType, rooted: true };
    const cp: CompiledParam = { def, branches: compileExpression(def.expression, scope) };
    if (stored && def.storedAs) cp.identifiersOnly = true;
    if (def.type === 'composite') {
      cp.contexts = cp.branches.map((branch) => ({
        branch,
        components: (def.components ?? []).map((c) => ({
          code: c.code,
          type: c.type,
          label: `${def.code}.${c.code}`,
          branches: compileExpression(c.expression, {
            resourceType, param: `${def.code}.${c.code}`, fast, contextType: branch.fast?.resultType, rooted: false,
          }),
        })),
      }));
    }
    return cp;
  });
}

const compiledByType = new Map<string, CompiledParam[]>();
const compiledByDefs = new WeakMap<readonly SearchParamDef[], Map<boolean, CompiledParam[]>>();

let ready = false;
function ensureReady(): void {
  if (ready) return;
  ready = true;
  try {
    // Typed FHIRPath (choice types, element types) needs the StructureDefinitions; idempotent.
    loadDefinitions();
  } catch (e) {
    // Still usable: Medplum evaluates untyped and complexKind() infers types from shapes.
    stats.compileErrors++;
    stats.lastError = { resourceType: '', param: '', expression: 'loadDefinitions()', message: (e as Error)?.message ?? String(e) };
  }
}

// ---------------------------------------------------------------------------------------------
// Row collection with de-duplication

type Kind = keyof IndexRows;

/** Shallow equality of two rows (composite rows: part by part). */
function sameRow(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  for (const k in a) {
    const x = a[k];
    const y = b[k];
    if (x === y) continue;
    if (k === 'parts' && Array.isArray(x) && Array.isArray(y) && x.length === y.length) {
      for (let i = 0; i < x.length; i++) if (!sameRow(x[i], y[i])) return false;
      continue;
    }
    return false;
  }
  return true;
}

/** Segment size up to which duplicates are found by a linear scan. */
const LINEAR_DEDUP_MAX = 32;

class Sink {
  readonly rows: IndexRows = {
    tokens: [], strings: [], dates: [], references: [], quantities: [], numbers: [], uris: [], composites: [],
  };
  /**
   * Where the current parameter's rows start in each list. Every parameter is evaluated in one go
   * (begin() ... rows), and its rows can only repeat its own, so de-duplication is a short
   * linear scan of that segment instead of hashing a key per row.
   */
  private readonly mark: Record<Kind, number> = {
    tokens: 0, strings: 0, dates: 0, references: 0, quantities: 0, numbers: 0, uris: 0, composites: 0,
  };

  /** Keys of the current segment's rows per kind, once a segment outgrows a linear scan. */
  private keys?: Map<Kind, Set<string>>;

  /** Starts a new parameter's segment. */
  begin(): void {
    this.keys = undefined;
    const r = this.rows;
    const m = this.mark;
    m.tokens = r.tokens.length; m.strings = r.strings.length; m.dates = r.dates.length;
    m.references = r.references.length; m.quantities = r.quantities.length; m.numbers = r.numbers.length;
    m.uris = r.uris.length; m.composites = r.composites.length;
  }

  /** Empties a scratch sink for reuse (rows already copied out stay valid). */
  reset(): void {
    const r = this.rows;
    r.tokens = []; r.strings = []; r.dates = []; r.references = [];
    r.quantities = []; r.numbers = []; r.uris = []; r.composites = [];
    this.begin();
  }

  private add<K extends Kind>(kind: K, row: IndexRows[K][number]): void {
    const list = this.rows[kind] as IndexRows[K][number][];
    const start = this.mark[kind];
    if (list.length - start > LINEAR_DEDUP_MAX) {
      // Large segment (a resource with hundreds of identifiers, say): hash instead of O(n^2).
      this.keys ??= new Map();
      let keys = this.keys.get(kind);
      if (!keys) {
        keys = new Set();
        for (let i = start; i < list.length; i++) keys.add(JSON.stringify(list[i]));
        this.keys.set(kind, keys);
      }
      const key = JSON.stringify(row);
      if (keys.has(key)) return;
      keys.add(key);
      list.push(row);
      return;
    }
    const r = row as unknown as Record<string, unknown>;
    for (let i = start; i < list.length; i++) {
      if (sameRow(list[i] as unknown as Record<string, unknown>, r)) return;
    }
    list.push(row);
  }

  token(param: string, system: unknown, code: unknown, text: unknown): void {
    const c = str(code) ?? null;
    const t = str(text) ?? null;
    if (c === null && t === null) return;
    this.add('tokens', { param, system: str(system) ?? null, code: c, text: t });
  }

  string(param: string, raw: unknown): void {
    if (typeof raw !== 'string') return;
    const value = normalizeString(raw);
    if (value !== '') this.add('strings', { param, value, raw });
  }

  date(param: string, lo: string, hi: string): void {
    this.add('dates', { param, lo, hi });
  }

  reference(param: string, targetType: string | null, targetId: string | null, reference: string): void {
    this.add('references', { param, targetType, targetId, reference });
  }

  quantity(param: string, row: Omit<QuantityRow, 'param'>): void {
    this.add('quantities', { param, ...row });
  }

  number(param: string, value: number, lo: number, hi: number): void {
    this.add('numbers', { param, value, lo, hi });
  }

  uri(param: string, value: unknown): void {
    const v = str(value);
    if (v !== undefined) this.add('uris', { param, value: v });
  }

  composite(param: string, parts: CompositePart[]): void {
    this.add('composites', { param, parts });
  }
}

/** A non-empty string, or undefined. */
function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : v === undefined || v === null ? [] : [v];
}

function skipped(): void {
  stats.skippedValues++;
}

// ---------------------------------------------------------------------------------------------
// Value kinds

const QUANTITY_TYPES = new Set(['Quantity', 'Age', 'Duration', 'Distance', 'Count', 'SimpleQuantity', 'MoneyQuantity']);
const COMPLEX_KNOWN = new Set([
  'Coding', 'CodeableConcept', 'Identifier', 'ContactPoint', 'Reference', 'Period', 'Timing', 'HumanName', 'Address',
  'SampledData', 'Range', 'Money', 'Ratio', ...QUANTITY_TYPES,
]);
const CONTACT_SYSTEMS = new Set(['phone', 'fax', 'email', 'pager', 'url', 'sms', 'other']);

/** The FHIR type of a complex value: Medplum's when it is one we know, else guessed from the shape. */
function complexKind(tv: TypedValue): string | undefined {
  if (COMPLEX_KNOWN.has(tv.type)) return tv.type;
  const v = tv.value as Record<string, unknown>;
  if ('reference' in v || ('identifier' in v && !('value' in v)) || ('display' in v && 'type' in v)) return 'Reference';
  if ('coding' in v) return 'CodeableConcept';
  if (typeof v.value === 'number') return 'Quantity';
  if ('start' in v || 'end' in v) return 'Period';
  if ('event' in v || 'repeat' in v) return 'Timing';
  if ('family' in v || 'given' in v) return 'HumanName';
  if ('line' in v || 'city' in v || 'postalCode' in v || 'country' in v) return 'Address';
  if ('value' in v && typeof v.system === 'string' && CONTACT_SYSTEMS.has(v.system)) return 'ContactPoint';
  if ('value' in v) return 'Identifier';
  if ('code' in v || 'system' in v) return 'Coding';
  if ('text' in v) return 'CodeableConcept';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Converters: one typed value of one parameter -> rows

interface EvalContext {
  resource: Record<string, unknown>;
  resolveIs?: string;
  identifiersOnly?: boolean;
}

function addCoding(sink: Sink, param: string, c: unknown): void {
  if (!isObject(c)) return;
  sink.token(param, c.system, c.code, c.display);
}

function addIdentifier(sink: Sink, param: string, id: Record<string, unknown>): void {
  const value = str(id.value);
  if (value === undefined) return;
  const type = isObject(id.type) ? id.type : undefined;
  sink.token(param, id.system, value, type?.text);
  for (const c of arr(type?.coding)) {
    if (isObject(c) && str(c.code) !== undefined) sink.token(`${param}:of-type`, c.system, `${c.code}|${value}`, null);
  }
}

function toToken(sink: Sink, param: string, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'boolean') return sink.token(param, null, v ? 'true' : 'false', null);
  if (typeof v === 'string' || typeof v === 'number') return sink.token(param, null, String(v), null);
  if (!isObject(v)) return skipped();
  switch (complexKind(tv)) {
    case 'Coding':
      return addCoding(sink, param, v);
    case 'CodeableConcept':
      for (const c of arr(v.coding)) addCoding(sink, param, c);
      return sink.token(param, null, null, v.text);
    case 'Identifier':
      return addIdentifier(sink, param, v);
    case 'ContactPoint':
      return sink.token(param, null, v.value, null);
    default:
      return skipped();
  }
}

function toString(sink: Sink, param: string, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') return sink.string(param, v);
  if (!isObject(v)) return skipped();
  switch (complexKind(tv)) {
    case 'HumanName':
      sink.string(param, v.family);
      for (const g of arr(v.given)) sink.string(param, g);
      for (const p of arr(v.prefix)) sink.string(param, p);
      for (const s of arr(v.suffix)) sink.string(param, s);
      return sink.string(param, v.text);
    case 'Address':
      for (const l of arr(v.line)) sink.string(param, l);
      for (const k of ['city', 'district', 'state', 'postalCode', 'country', 'text']) sink.string(param, v[k]);
      return;
    default:
      return skipped();
  }
}

function addPeriod(sink: Sink, param: string, p: Record<string, unknown>): void {
  const start = p.start === undefined ? undefined : dateRange(p.start);
  const end = p.end === undefined ? undefined : dateRange(p.end);
  if ((p.start !== undefined && !start) || (p.end !== undefined && !end) || (!start && !end)) return skipped();
  sink.date(param, start?.lo ?? MIN_INSTANT, end?.hi ?? MAX_INSTANT);
}

function toDate(sink: Sink, param: string, tv: TypedValue): void {
  const v = tv.value;
  if (typeof v === 'string') {
    const r = dateRange(v);
    return r ? sink.date(param, r.lo, r.hi) : skipped();
  }
  if (!isObject(v)) return skipped();
  switch (complexKind(tv)) {
    case 'Period':
      return addPeriod(sink, param, v);
    case 'Timing': {
      for (const e of arr(v.event)) {
        const r = dateRange(e);
        if (r) sink.date(param, r.lo, r.hi);
        else skipped();
      }
      const bounds = isObject(v.repeat) ? v.repeat.boundsPeriod : undefined;
      if (isObject(bounds)) addPeriod(sink, param, bounds);
      return;
    }
    default:
      return skipped();
  }
}

const ID = '[A-Za-z0-9\\-.]{1,64}';
const RELATIVE_REF = new RegExp(`^([A-Z][A-Za-z]+)/(${ID})(?:/_history/${ID})?$`);
const ABSOLUTE_REF = new RegExp(`^[A-Za-z][A-Za-z0-9+.-]*://[^?#]*?/([A-Z][A-Za-z]+)/(${ID})(?:/_history/${ID})?$`);

/** Type and id of a `Type/id` or `http(s)://.../Type/id[/_history/v]` reference; undefined otherwise. */
export function parseReference(reference: string): { type: string; id: string } | undefined {
  ensureReady(); // isResourceType knows the types once the definitions are loaded
  const m = RELATIVE_REF.exec(reference) ?? ABSOLUTE_REF.exec(reference);
  if (!m || !isResourceType(m[1])) return undefined;
  return { type: m[1], id: m[2] };
}

function containedType(resource: Record<string, unknown>, reference: string): string | undefined {
  const id = reference.slice(1);
  for (const c of arr(resource.contained)) {
    if (isObject(c) && c.id === id && typeof c.resourceType === 'string') return c.resourceType;
  }
  return undefined;
}

function toReference(sink: Sink, param: string, tv: TypedValue, ctx: EvalContext): void {
  const v = tv.value;
  if (typeof v === 'string') {
    // canonical / uri targets: no type or id to speak of; not resolvable for a resolve() filter.
    if (ctx.resolveIs) return;
    return v ? sink.reference(param, null, null, v) : undefined;
  }
  if (!isObject(v) || complexKind(tv) !== 'Reference') return skipped();
  const reference = str(v.reference);
  const parsed = reference ? parseReference(reference) : undefined;
  const type =
    parsed?.type ??
    (reference?.startsWith('#') ? containedType(ctx.resource, reference) : undefined) ??
    str(v.type);
  if (ctx.resolveIs && type !== ctx.resolveIs) return;
  if (reference && !ctx.identifiersOnly) sink.reference(param, type ?? null, parsed?.id ?? null, reference);
  if (isObject(v.identifier)) {
    const id = v.identifier;
    const isType = isObject(id.type) ? id.type : undefined;
    if (str(id.value) !== undefined) sink.token(`${param}:identifier`, id.system, id.value, isType?.text);
  }
}

function toQuantity(sink: Sink, param: string, tv: TypedValue): void {
  const v = tv.value;
  if (!isObject(v)) return skipped();
  const kind = complexKind(tv);
  if (kind === 'SampledData' || kind === 'Range') return; // not indexed (see header)
  if (!kind || !QUANTITY_TYPES.has(kind) || typeof v.value !== 'number') return skipped();
  const range = decimalRange(v.value);
  if (!range) return skipped();
  sink.quantity(param, {
    value: v.value,
    system: str(v.system) ?? null,
    code: str(v.code) ?? null,
    unit: str(v.unit) ?? null,
    lo: range.lo,
    hi: range.hi,
  });
}

function toNumber(sink: Sink, param: string, tv: TypedValue): void {
  const v = tv.value;
  const range = typeof v === 'number' ? decimalRange(v) : undefined;
  if (!range) return skipped();
  sink.number(param, v as number, range.lo, range.hi);
}

function toUri(sink: Sink, param: string, tv: TypedValue): void {
  if (typeof tv.value === 'string') sink.uri(param, tv.value);
  else skipped();
}

const PRIMITIVE_TYPES = new Set([
  'boolean', 'integer', 'integer64', 'string', 'decimal', 'uri', 'url', 'canonical', 'base64Binary', 'instant', 'date',
  'dateTime', 'time', 'code', 'oid', 'id', 'markdown', 'unsignedInt', 'positiveInt', 'uuid', 'xhtml',
]);

function convert(sink: Sink, param: string, type: string, tv: TypedValue, ctx: EvalContext): void {
  if (tv.value === undefined || tv.value === null) return;
  // A primitive that only carries extensions (`"_active": {"extension": [...]}`) has no value to index.
  if (PRIMITIVE_TYPES.has(tv.type) && typeof tv.value === 'object') return;
  switch (type) {
    case 'token': return toToken(sink, param, tv);
    case 'string': return toString(sink, param, tv);
    case 'date': return toDate(sink, param, tv);
    case 'reference': return toReference(sink, param, tv, ctx);
    case 'quantity': return toQuantity(sink, param, tv);
    case 'number': return toNumber(sink, param, tv);
    case 'uri': return toUri(sink, param, tv);
    default: return skipped();
  }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

function evaluate(branch: Branch, input: TypedValue[], resourceType: string, param: string): TypedValue[] {
  if (!branch.atom) return [];
  try {
    return branch.fast ? branch.fast.eval(input) : evalFhirPathTyped(branch.atom, input);
  } catch (e) {
    stats.evalErrors++;
    stats.lastError = { resourceType, param, expression: branch.source, message: (e as Error)?.message ?? String(e) };
    return [];
  }
}

/** Scratch sink for one composite component's parts (extraction is synchronous and not re-entrant). */
const partSink = new Sink();

function partsOf(sink: Sink): CompositePart[] {
  const r = sink.rows;
  const parts: CompositePart[] = [];
  for (const t of r.tokens) if (t.code !== null && !t.param.includes(':')) parts.push(t);
  parts.push(...r.strings, ...r.dates, ...r.quantities, ...r.references);
  return parts;
}

function addComposite(
  sink: Sink, cp: CompiledParam, root: TypedValue[], resourceType: string, ctx: EvalContext,
): void {
  for (const { branch, components } of cp.contexts ?? []) {
    if (!components.length) continue;
    for (const element of evaluate(branch, root, resourceType, cp.def.code)) {
      const perComponent: CompositePart[][] = [];
      for (const comp of components) {
        partSink.reset();
        for (const cb of comp.branches) {
          for (const tv of evaluate(cb, [element], resourceType, comp.label)) {
            try {
              convert(partSink, comp.code, comp.type, tv, ctx);
            } catch {
              skipped();
            }
          }
        }
        const parts = partsOf(partSink);
        if (!parts.length) break;
        perComponent.push(parts);
      }
      if (perComponent.length !== components.length) continue;
      let combos: CompositePart[][] = [[]];
      for (const parts of perComponent) {
        const next: CompositePart[][] = [];
        for (const prefix of combos) {
          for (const p of parts) {
            if (next.length >= MAX_COMBINATIONS) break;
            next.push([...prefix, p]);
          }
        }
        combos = next;
      }
      for (const parts of combos) sink.composite(cp.def.code, parts);
    }
  }
}

function run(resource: Resource, compiled: CompiledParam[]): IndexRows {
  const sink = new Sink();
  const resourceType = resource.resourceType;
  let root: TypedValue[];
  try {
    root = [toTypedValue(resource)];
  } catch {
    skipped();
    return sink.rows;
  }
  const base: EvalContext = { resource: resource as unknown as Record<string, unknown> };
  for (const cp of compiled) {
    const { code, type } = cp.def;
    sink.begin();
    if (type === 'composite') {
      addComposite(sink, cp, root, resourceType, base);
      continue;
    }
    for (const branch of cp.branches) {
      const ctx = branch.resolveIs || cp.identifiersOnly
        ? { ...base, resolveIs: branch.resolveIs, identifiersOnly: cp.identifiersOnly } : base;
      for (const tv of evaluate(branch, root, resourceType, code)) {
        try {
          convert(sink, code, type, tv, ctx);
        } catch {
          skipped(); // defensive: converters check shapes, but never let odd input escape
        }
      }
    }
  }
  return sink.rows;
}

function emptyRows(): IndexRows {
  return new Sink().rows;
}

function isResource(r: unknown): r is Resource {
  return isObject(r) && typeof r.resourceType === 'string' && /^[A-Z][A-Za-z]+$/.test(r.resourceType);
}

/**
 * Search index rows for every R4 search parameter of the resource's type (searchParamsFor)
 * except those searched on the resource row itself (ROW_COLUMN_PARAMS) and those stored as
 * other parameters' rows (StoredAs; a reference one still gives its `:identifier` rows when
 * its rows are filtered by target type, which token rows do not carry), de-duplicated.
 * Never throws: anything that is not a resource gives empty rows; expressions that fail
 * are skipped and counted (extractStats()).
 */
export function extractIndex(resource: Resource, options?: ExtractOptions): IndexRows {
  if (!isResource(resource)) return emptyRows();
  ensureReady();
  const fast = options?.fastPath !== false;
  const skip = options?.skip ?? [];
  const key = `${resource.resourceType}|${fast}|${skip.join(',')}`;
  let compiled = compiledByType.get(key);
  if (!compiled) {
    const defs = searchParamsFor(resource.resourceType)
      .filter((d) => !ROW_COLUMN_PARAMS.has(d.code) && !skip.includes(d.code)
        && (!d.storedAs || (d.type === 'reference' && d.storedAs.targetType)));
    compiled = compile(defs, resource.resourceType, fast, true);
    compiledByType.set(key, compiled);
  }
  return run(resource, compiled);
}

/**
 * As extractIndex, with an explicit list of parameter definitions (compiled once per array
 * identity). For custom SearchParameters and for tests.
 */
export function extractIndexWith(
  resource: Resource, defs: readonly SearchParamDef[], options?: ExtractOptions,
): IndexRows {
  if (!isResource(resource)) return emptyRows();
  ensureReady();
  const fast = options?.fastPath !== false;
  let byMode = compiledByDefs.get(defs);
  if (!byMode) compiledByDefs.set(defs, (byMode = new Map()));
  let compiled = byMode.get(fast);
  if (!compiled) {
    compiled = compile(defs, resource.resourceType, fast);
    byMode.set(fast, compiled);
  }
  return run(resource, compiled);
}
