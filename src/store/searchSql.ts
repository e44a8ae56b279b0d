// Turns parsed search criteria into SQL over the resource tables and the search
// index side tables (sql/005_search_index.sql), and runs paged searches with
// stable keyset cursors, _sort, totals, _include and _revinclude.
import type { Tx } from './resources.ts';
import { READ_FROM, TABLES, TIME_PARTITIONED } from '../../mappings/postgres/index.ts';
import { normalizeString, dateRange, decimalRange, MIN_INSTANT, MAX_INSTANT } from '../../mappings/search/extract.ts';
import { prefixed, referenceTarget, type Criterion, type Prefix } from '../search/criteria.ts';
import { storedParams, type SearchParamDef, type StoredAs } from '../../mappings/search/definitions.ts';
import { badRequest } from '../fhir/outcome.ts';
import { ROW_KEYED_TYPES, ROW_TIME_PARAM } from '../../mappings/search/rowKeys.ts';
import { keySortValue, keysNaming, presentCond, referencedIds, referenceKeysCond, refersToCond, rowsWithKeys, tokenKeysCond } from './rowKeySearch.ts';

/** Bind parameters; with `orgId`, the statement's tenant (sameTenant). */
type P = ((v: unknown) => string) & { orgId?: number };

/**
 * Rows `s` of row `r`'s tenant, and when the statement's tenant is known, of that tenant as
 * a value too, so that the planner keeps that tenant's partitions of a subquery's table.
 * Correlated with `r.org_id`, every tenant's partition was planned in each subquery
 * (a search with three criteria at 100 tenants: 60 ms of planning).
 */
function sameTenant(s: string, r: string, p: P): string {
  return `${s}.org_id = ${r}.org_id${p.orgId !== undefined ? ` AND ${s}.org_id = ${p(p.orgId)}::integer` : ''}`;
}

/** The transaction's tenant: as a value when the statement's tenant is known (sameTenant). */
function txTenant(p: P): string {
  return p.orgId !== undefined ? `${p(p.orgId)}::integer` : `current_setting('app.org_id')::integer`;
}

const INDEX_TABLE: Record<string, string> = {
  token: 'search_tokens', string: 'search_strings', date: 'search_dates', reference: 'search_references',
  quantity: 'search_quantities', number: 'search_numbers', uri: 'search_uris', composite: 'search_composites',
};

/** [lo, hi) of a date search value at its precision (400 when it is not a real date). */
function searchDateRange(value: string): [string, string] {
  const r = dateRange(value);
  if (!r) throw badRequest(`Invalid date '${value}'`);
  return [r.lo, r.hi];
}

/** The implicit range of a decimal search value at its precision: 5.4 -> [5.35, 5.45). */
function searchNumberRange(value: string): [number, number] {
  const r = decimalRange(Number(value), value);
  if (!r) throw badRequest(`Invalid number '${value}'`);
  return [r.lo, r.hi];
}

/** An `ap` window's edge as an instant PostgreSQL takes: cut at years 1 and 9999 (else 0000 or +10000 would be sent). */
function instantWithin(ms: number): string {
  return new Date(Math.min(Math.max(ms, Date.parse(MIN_INSTANT)), Date.parse(MAX_INSTANT))).toISOString();
}

function dateCond(prefix: Prefix, lo: string, hi: string, loCol: string, hiCol: string, p: P): string {
  // Parameters are registered only when used: PostgreSQL cannot type an unused one.
  const L = () => `${p(lo)}::timestamptz`;
  const H = () => `${p(hi)}::timestamptz`;
  switch (prefix) {
    // `lo <= H` follows from lo <= hi: it bounds the index range on lo, which alone ran to the
    // end of the parameter's rows (the planner then walked every row in id order instead).
    case 'eq': { const h = H(); return `(${loCol} >= ${L()} AND ${loCol} <= ${h} AND ${hiCol} <= ${h})`; }
    case 'ne': return `NOT (${loCol} >= ${L()} AND ${hiCol} <= ${H()})`;
    case 'gt': return `${hiCol} > ${H()}`;
    case 'lt': return `${loCol} < ${L()}`;
    case 'ge': { const l = L(); const h = H(); return `(${hiCol} > ${h} OR (${loCol} >= ${l} AND ${hiCol} <= ${h}))`; }
    case 'le': { const l = L(); const h = H(); return `(${loCol} < ${l} OR (${loCol} >= ${l} AND ${hiCol} <= ${h}))`; }
    case 'sa': return `${loCol} >= ${H()}`;
    case 'eb': return `${hiCol} <= ${L()}`;
    case 'ap': {
      // Approximately: within 10% of the distance from now, at least a day.
      const span = Math.max(86_400_000, Math.abs(Date.now() - Date.parse(lo)) * 0.1);
      return `(${loCol} < ${p(instantWithin(Date.parse(hi) + span))}::timestamptz AND ${hiCol} > ${p(instantWithin(Date.parse(lo) - span))}::timestamptz)`;
    }
  }
}

/**
 * dateCond for an instant column (a point in time, not a range), as plain comparisons of
 * the column so that a partition key column still prunes partitions.
 */
function instantCond(prefix: Prefix, lo: string, hi: string, col: string, p: P): string {
  const L = () => `${p(lo)}::timestamptz`;
  const H = () => `${p(hi)}::timestamptz`;
  switch (prefix) {
    case 'eq': return `(${col} >= ${L()} AND ${col} < ${H()})`;
    case 'ne': return `NOT (${col} >= ${L()} AND ${col} < ${H()})`;
    case 'gt': case 'sa': return `${col} >= ${H()}`;
    case 'lt': case 'eb': return `${col} < ${L()}`;
    case 'ge': return `${col} >= ${L()}`;
    case 'le': return `${col} < ${H()}`;
    case 'ap': {
      const span = Math.max(86_400_000, Math.abs(Date.now() - Date.parse(lo)) * 0.1);
      return `(${col} < ${p(instantWithin(Date.parse(hi) + span))}::timestamptz AND ${col} >= ${p(instantWithin(Date.parse(lo) - span))}::timestamptz)`;
    }
  }
}

/**
 * A number compared with `col` (numeric). Index rows also hold their value as float8
 * (`floatCol`, sql/033), compared instead: float8 comparisons are leakproof, so under RLS they
 * are the index condition (numeric ones are not, and filtered every row of the parameter in
 * the tenant). Both the stored values and the bounds here are JS numbers, whose decimal forms
 * sort as the numbers do, so the float8 comparison is the numeric one.
 */
function numberCond(prefix: Prefix, raw: string, col: string, p: P, floatCol?: string): string {
  const n = Number(raw);
  const [lo, hi] = searchNumberRange(raw);
  const cmp = (op: string, x: number) => (floatCol ? `${floatCol} ${op} ${p(x)}::float8` : `${col} ${op} ${p(x)}::numeric`);
  switch (prefix) {
    case 'eq': return `(${cmp('>=', lo)} AND ${cmp('<', hi)})`;
    case 'ne': return `NOT (${cmp('>=', lo)} AND ${cmp('<', hi)})`;
    case 'gt': case 'sa': return cmp('>', n);
    case 'lt': case 'eb': return cmp('<', n);
    case 'ge': return cmp('>=', n);
    case 'le': return cmp('<=', n);
    case 'ap': return `(${cmp('>=', n - Math.abs(n) * 0.1)} AND ${cmp('<=', n + Math.abs(n) * 0.1)})`;
  }
}

/**
 * The least string above every string that starts with `prefix`, in the byte order of the
 * pattern operators (UTF-8 bytes sort as code points): its last code point incremented
 * (past the surrogates), dropping a last U+10FFFF; undefined when there is none.
 */
export function prefixUpperBound(prefix: string): string | undefined {
  const cps = Array.from(prefix);
  while (cps.length) {
    const cp = cps.pop()!.codePointAt(0)! + 1;
    if (cp <= 0x10ffff) return cps.join('') + String.fromCodePoint(cp === 0xd800 ? 0xe000 : cp);
  }
  return undefined;
}

/**
 * `col` starts with `prefix`. Under row-level security PostgreSQL does not turn LIKE (not
 * leakproof) into an index range, and filtered every row of the parameter in the tenant.
 * The range [prefix, next) in the leakproof pattern operators (~>=~, ~<~: byte order, which
 * the text_pattern_ops value indexes serve) holds exactly the strings with that prefix, so it
 * replaces LIKE: with both, the planner counted the same condition twice, underestimated a
 * common prefix's matches and collected them all instead of walking in id order.
 */
function prefixCond(col: string, prefix: string, p: P): string {
  // Parameters are registered only when used: PostgreSQL cannot type an unused one.
  const like = () => `${col} LIKE ${p(prefix.replace(/[\\%_]/g, '\\$&') + '%')}`;
  if (prefix === '') return like();
  const upper = prefixUpperBound(prefix);
  return upper === undefined ? `(${col} ~>=~ ${p(prefix)} AND ${like()})` : `(${col} ~>=~ ${p(prefix)} AND ${col} ~<~ ${p(upper)})`;
}

function tokenCond(value: string, s: string, p: P): string {
  const bar = value.indexOf('|');
  if (bar < 0) return `${s}.code = ${p(value)}`;
  const system = value.slice(0, bar);
  const code = value.slice(bar + 1);
  if (system === '') return `(${s}.system IS NULL AND ${s}.code = ${p(code)})`;
  if (code === '') return `${s}.system = ${p(system)}`;
  return `(${s}.system = ${p(system)} AND ${s}.code = ${p(code)})`;
}

/** The condition one value of a parameter puts on index rows aliased `s`. */
function valueCond(def: SearchParamDef, modifier: string | undefined, value: string, s: string, p: P): string {
  switch (def.type) {
    case 'token':
      if (modifier === 'text') return `lower(${s}.text) LIKE ${p(normalizeString(value).replace(/[\\%_]/g, '\\$&') + '%')}`;
      return tokenCond(value, s, p);
    case 'string': {
      // value is normalizeString(raw) (extract.ts): its equality is the index condition of :exact.
      if (modifier === 'exact') return `(${s}.value = ${p(normalizeString(value))} AND ${s}.raw = ${p(value)})`;
      // :contains has no btree range: it checks the parameter's rows of the tenant (an index range of param).
      if (modifier === 'contains') return `${s}.value LIKE ${p(`%${normalizeString(value).replace(/[\\%_]/g, '\\$&')}%`)}`;
      return prefixCond(`${s}.value`, normalizeString(value), p);
    }
    case 'date': {
      const { prefix, rest } = prefixed(value);
      const [lo, hi] = searchDateRange(rest);
      return dateCond(prefix, lo, hi, `${s}.lo`, `${s}.hi`, p);
    }
    case 'reference':
      return `(${referenceAlternatives(value, modifier).map((a) => `(${a(s, p)})`).join(' OR ')})`;
    case 'number': {
      const { prefix, rest } = prefixed(value);
      return numberCond(prefix, rest, `${s}.value`, p, `${s}.value_f`);
    }
    case 'quantity': {
      const { prefix, rest } = prefixed(value);
      const [num, system, code] = rest.split('|');
      const conds = [numberCond(prefix, num, `${s}.value`, p, `${s}.value_f`)];
      if (system) conds.push(`${s}.system = ${p(system)}`);
      if (code) conds.push(system ? `${s}.code = ${p(code)}` : `(${s}.code = ${p(code)} OR ${s}.unit = ${p(code)})`);
      return `(${conds.join(' AND ')})`;
    }
    case 'uri':
      if (modifier === 'below') return prefixCond(`${s}.value`, value, p);
      if (modifier === 'above') return `${p(value)} LIKE replace(replace(${s}.value, '%', '\\%'), '_', '\\_') || '%'`;
      return `${s}.value = ${p(value)}`;
    case 'composite': {
      const parts = value.split('$');
      return `(${(def.components ?? []).map((c, i) => compositePartCond(c.type, parts[i], `${s}.parts->${i}`, p)).join(' AND ')})`;
    }
    default:
      throw badRequest(`Search parameter '${def.code}' of type ${def.type} is not supported`);
  }
}

/**
 * The conditions (OR'd) one reference value puts on index rows `s`: its target, and for an
 * absolute URL ending in Type/id also rows that hold it as text with no target (a canonical;
 * extract.ts). Each is a range of an index in id order (search_references_value for a
 * target, search_references_url for text), so a driving walk takes them one by one (driverRows).
 */
function referenceAlternatives(value: string, modifier: string | undefined): ((s: string, p: P) => string)[] {
  const t = referenceTarget(value, modifier);
  // A URL that names no Type/id is stored with no target: the partial index sql/032 serves both text forms.
  if (t.url) return [(s, p) => `${s}.target_id IS NULL AND ${s}.reference = ${p(t.url)}`];
  const target = (s: string, p: P) => `${s}.target_id = ${p(t.id)}${t.type ? ` AND ${s}.target_type = ${p(t.type)}` : ''}`;
  if (!t.text) return [target];
  return [target, (s, p) => `${s}.target_id IS NULL AND ${s}.reference = ${p(t.text)}`];
}

function compositePartCond(type: string, value: string, part: string, p: P): string {
  switch (type) {
    case 'token': {
      const bar = value.indexOf('|');
      if (bar < 0) return `${part}->>'code' = ${p(value)}`;
      return `(${part}->>'system' = ${p(value.slice(0, bar))} AND ${part}->>'code' = ${p(value.slice(bar + 1))})`;
    }
    case 'quantity': {
      const { prefix, rest } = prefixed(value);
      const [num, system, code] = rest.split('|');
      const conds = [numberCond(prefix, num, `(${part}->>'value')::numeric`, p)];
      if (system) conds.push(`${part}->>'system' = ${p(system)}`);
      if (code) conds.push(`(${part}->>'code' = ${p(code)} OR ${part}->>'unit' = ${p(code)})`);
      return `(${conds.join(' AND ')})`;
    }
    case 'date': {
      const { prefix, rest } = prefixed(value);
      const [lo, hi] = searchDateRange(rest);
      return dateCond(prefix, lo, hi, `(${part}->>'lo')::timestamptz`, `(${part}->>'hi')::timestamptz`, p);
    }
    case 'string':
      return `${part}->>'value' LIKE ${p(normalizeString(value).replace(/[\\%_]/g, '\\$&') + '%')}`;
    default:
      throw badRequest(`Composite part of type ${type} is not supported`);
  }
}

/**
 * Where the token rows a modifier reads (`:identifier`, `:of-type`) of a parameter are:
 * under the parameters it is stored as (definitions.ts StoredAs). Token rows carry no
 * target type, so a parameter filtered by target type keeps its own (extract.ts).
 */
function modifierRows(def: SearchParamDef, suffix: string): StoredAs {
  const stored = storedParams(def);
  return stored.targetType ? { params: [def.code + suffix] } : { params: stored.params.map((x) => x + suffix) };
}

/**
 * The condition that index rows aliased `s` are rows of `stored` (a parameter's own rows,
 * or those it is stored as, of its target type: storedParams()).
 */
function storedCond(stored: StoredAs, s: string, p: P): string {
  const { params, targetType } = stored;
  const param = params.length === 1 ? `${s}.param = ${p(params[0])}` : `${s}.param = ANY(${p(params)}::text[])`;
  return targetType ? `${param} AND ${s}.target_type = ${p(targetType)}` : param;
}

/** The columns of a row `r` (of a type's table or locator) a page keeps to read its body (bodyOf) once it is cut to size. */
export function bodyKey(type: string, r: string): string {
  return ROW_KEYED_TYPES.has(type) ? `${r}.resource::text AS json` : `${r}.org_id, ${r}.version_id`;
}

/**
 * The JSON text of the row `q` (bodyKey's columns and `id`): the current version's text,
 * which the history holds as written to the type's table (one statement writes both:
 * resources.ts versionCtes, batchWrite.ts). The history is not partitioned by time: read
 * from a time-partitioned table, the body made the statement plan every monthly partition
 * of the tenant that no value rules out (3-8 ms for Observation two years in, ten times
 * the execution), and the sorted page read every match's body before cutting the page.
 */
export function bodyOf(type: string, q: string, p: P): string {
  return `(SELECT h.resource::text FROM resource_history h
      WHERE h.org_id = ${q}.org_id AND h.resource_type = ${p(type)} AND h.id = ${q}.id AND h.version_id = ${q}.version_id)`;
}

/**
 * Index rows aliased `s` that belong to the resource row `r` of `type`. Index rows carry
 * the row's partition key, so the join probes one time partition, not all of them.
 */
export function indexRowOf(s: string, r: string, type: string, p: P): string {
  return `${sameTenant(s, r, p)} AND ${s}.resource_type = ${p(type)} AND ${s}.id = ${r}.id`
    + (TIME_PARTITIONED.has(type) ? ` AND ${s}.clinical_time = ${r}.clinical_time` : '');
}

/**
 * How well a criterion can drive an unsorted search: its index rows come out of the
 * value index in id order (one token code or one reference target), so a page can stop
 * after `_count` matches instead of collecting and sorting them all, or they are one
 * range of it (a string). Lower is better (references and identifiers are usually
 * selective); undefined when it cannot drive.
 */
export function driverRank(c: Criterion): number | undefined {
  if (c.anyRef) return c.anyRef.self ? undefined : 0;
  if (c.chain || c.has || c.missing !== undefined || c.values.length !== 1 || c.def.code === '_id') return undefined;
  const value = c.values[0];
  if (c.def.type === 'token' && !c.modifier) {
    const bar = value.indexOf('|');
    if (bar >= 0 && value.slice(bar + 1) === '') return undefined; // `system|` names no code
    return c.def.code.includes('identifier') ? 1 : 2;
  }
  if (c.def.type === 'reference' && (!c.modifier || TABLES[c.modifier])) {
    return referenceTarget(value, c.modifier).id ? 0 : undefined;
  }
  // A name's rows are a range of the value index, not in id order: they are collected and
  // sorted, a few for most names (a common prefix costs its matches).
  if (c.def.type === 'string' && (!c.modifier || c.modifier === 'exact') && normalizeString(value) !== '') return 3;
  return undefined;
}

/**
 * The driving criterion's index rows of one tenant and type (see driverRank) as a FROM
 * item aliased `d` (columns org_id, id, clinical_time) with the conditions: its own, then
 * `others` (the other criteria) and `extra` (the page's keyset, order and limit).
 * Rows of several parameters (anyRef; a parameter stored as several, like combo-code)
 * are one id-ordered walk per parameter (and per alternative of a reference value,
 * referenceAlternatives), every walk filtered, de-duplicated and limited
 * on its own, then merged: the first n ids of the union are among the first n of each
 * walk. (One scan with `param = ANY(...)` returns rows parameter by parameter, and over a
 * UNION ALL the planner sorted every row of every walk instead of merging.)
 */
export function driverRows(c: Criterion, type: string, orgId: number, p: P,
  others: (d: string) => string, extra: (d: string) => string): string {
  const mine = (d: string) => `${d}.org_id = ${p(orgId)}::integer AND ${d}.resource_type = ${p(type)}`;
  let table: string;
  let params: string[];
  let conds: ((d: string) => string)[];
  if (c.anyRef) {
    const { targetType, targetId } = c.anyRef;
    table = 'search_references';
    params = c.anyRef.params;
    conds = [(d) => `${d}.target_id = ${p(targetId)} AND ${d}.target_type = ${p(targetType)}`];
  } else {
    const stored = storedParams(c.def);
    const { targetType } = stored;
    table = INDEX_TABLE[c.def.type];
    params = stored.params;
    const typed = (d: string) => (targetType ? ` AND ${d}.target_type = ${p(targetType)}` : '');
    // A reference's alternatives are walks of their own: under an OR no index walk is in id order.
    conds = c.def.type === 'reference'
      ? referenceAlternatives(c.values[0], c.modifier).map((a) => (d: string) => `${a(d, p)}${typed(d)}`)
      : [(d) => `${valueCond(c.def, c.modifier, c.values[0], d, p)}${typed(d)}`];
  }
  if (params.length === 1 && conds.length === 1) {
    return `${table} d WHERE d.param = ${p(params[0])} AND ${mine('d')} AND ${conds[0]('d')}${others('d')}${extra('d')}`;
  }
  const walks = params.flatMap((param) => conds.map((cond) => ({ param, cond }))).map(({ param, cond }, i) => `(SELECT DISTINCT ON (w${i}.id) w${i}.org_id, w${i}.id, w${i}.clinical_time FROM ${table} w${i}
      WHERE w${i}.param = ${p(param)} AND ${mine(`w${i}`)} AND ${cond(`w${i}`)}${others(`w${i}`)}${extra(`w${i}`)})`);
  return `(${walks.join(' UNION ALL ')}) d WHERE true${extra('d')}`;
}

/**
 * anyRef on the resource row `r`: an index row of one of the parameters naming the
 * target. With `self` (Patient) as an id list computed once (so uncorrelated: the
 * transaction's tenant), so rows are found by their key: an OR of the id and a per-row
 * EXISTS would read every row of the tenant.
 */
function anyRefSql(a: NonNullable<Criterion['anyRef']>, type: string, r: string, p: P, depth: number, tail: string): string {
  const s = `a${depth}`;
  const target = `${s}.param = ANY(${p(a.params)}::text[]) AND ${s}.target_id = ${p(a.targetId)} AND ${s}.target_type = ${p(a.targetType)}`;
  if (!a.self) return `EXISTS (SELECT 1 FROM search_references ${s} WHERE ${indexRowOf(s, r, type, p)} AND ${target}${tail})`;
  return `${r}.id = ANY(array_append(ARRAY(SELECT ${s}.id FROM search_references ${s}
      WHERE ${s}.org_id = ${txTenant(p)} AND ${s}.resource_type = ${p(type)} AND ${target}), ${p(a.targetId)}::text))`;
}

/**
 * The conditions on a resource row `t` that a chain or `_has` reaches: the criterion, and
 * the token's restriction for that type (Criterion `restrict`; none when unrestricted, so
 * such searches are unchanged), one level deeper.
 */
function reachedSql(criterion: Criterion, restrict: Criterion[] | undefined, type: string, t: string, p: P, depth: number): string {
  return [criterion, ...restrict ?? []].map((x) => criterionSql(x, type, t, p, depth + 1)).join(' AND ');
}

/**
 * SQL condition for one criterion on the resource row aliased `r` of `type`. With
 * `perRow` its index lookups stay per-row probes (OFFSET 0 keeps PostgreSQL from turning
 * them into a join that may hash every matching row of the tenant): for rows that a
 * driving criterion has already narrowed down.
 */
export function criterionSql(c: Criterion, type: string, r: string, p: P, depth = 0, perRow = false): string {
  if (depth > 3) throw badRequest('Search nests chains too deeply');
  const def = c.def;
  const tail = perRow ? ' OFFSET 0' : '';
  const keyed = ROW_KEYED_TYPES.has(type);
  if (c.anyRef) {
    return keyed ? refersToCond(type, c.anyRef.params, [`${c.anyRef.targetType}/${c.anyRef.targetId}`], r, p)
      : anyRefSql(c.anyRef, type, r, p, depth, tail);
  }
  const rowsOf = (cond?: string) => {
    const s = `s${depth}`;
    return `EXISTS (SELECT 1 FROM ${INDEX_TABLE[def.type]} ${s} WHERE ${indexRowOf(s, r, type, p)}
      AND ${storedCond(storedParams(def), s, p)}${cond ? ` AND ${cond.replaceAll('§', s)}` : ''}${tail})`;
  };
  if (c.has) {
    const { sourceType, refParam, criterion } = c.has;
    const s = `h${depth}`;
    const t = `ht${depth}`;
    const reached = reachedSql(criterion, c.has.restrict, sourceType, t, p, depth);
    if (ROW_KEYED_TYPES.has(sourceType)) {
      // Source rows whose keys name this row: a GIN probe per row.
      const stored = storedParams(refParam);
      if (stored.targetType && stored.targetType !== type) return 'false';
      return `EXISTS (SELECT 1 FROM ${rowsWithKeys(sourceType, keysNaming(stored.params, type, `${r}.id`, p))} ${s}
        JOIN ${READ_FROM[sourceType]} ${t} ON ${sameTenant(t, r, p)} AND ${t}.id = ${s}.id AND ${t}.clinical_time = ${s}.clinical_time
        WHERE ${reached}${tail})`;
    }
    return `EXISTS (SELECT 1 FROM search_references ${s} JOIN ${READ_FROM[sourceType]} ${t} ON ${indexRowOf(s, t, sourceType, p)}
      WHERE ${s}.org_id = ${txTenant(p)} AND ${s}.resource_type = ${p(sourceType)} AND ${storedCond(storedParams(refParam), s, p)}
        AND ${s}.target_type = ${p(type)} AND ${s}.target_id = ${r}.id AND ${reached}${tail})`;
  }
  if (c.chain) {
    const s = `c${depth}`;
    const t = `ct${depth}`;
    const { targetType, criterion } = c.chain;
    if (keyed) {
      // The targets are in the row's own keys.
      const stored = storedParams(def);
      if (stored.targetType && stored.targetType !== targetType) return 'false';
      return `EXISTS (SELECT 1 FROM ${READ_FROM[targetType]} ${t} WHERE ${sameTenant(t, r, p)}
        AND ${t}.id = ANY(${referencedIds(stored.params, targetType, r, p)}) AND ${reachedSql(criterion, c.chain.restrict, targetType, t, p, depth)}${tail})`;
    }
    return `EXISTS (SELECT 1 FROM search_references ${s} JOIN ${READ_FROM[targetType]} ${t} ON ${sameTenant(t, s, p)} AND ${t}.id = ${s}.target_id
      WHERE ${indexRowOf(s, r, type, p)} AND ${storedCond(storedParams(def), s, p)}
        AND ${s}.target_type = ${p(targetType)} AND ${reachedSql(criterion, c.chain.restrict, targetType, t, p, depth)}${tail})`;
  }
  // Parameters on the row itself.
  if (def.code === '_id') {
    if (c.missing !== undefined) return c.missing ? 'false' : 'true';
    return `${r}.id = ANY(${p(c.values)}::text[])`;
  }
  if (def.code === '_lastUpdated') {
    if (c.missing !== undefined) return c.missing ? 'false' : 'true';
    return `(${c.values.map((v) => {
      const { prefix, rest } = prefixed(v);
      const [lo, hi] = searchDateRange(rest);
      return dateCond(prefix, lo, hi, `${r}.last_updated`, `(${r}.last_updated + interval '1 millisecond')`, p);
    }).join(' OR ')})`;
  }
  if (keyed) return rowKeyedSql(c, type, r, p);
  if (c.missing !== undefined) return `${c.missing ? 'NOT ' : ''}${rowsOf()}`;
  if (def.type === 'token' && c.modifier === 'not') {
    return `NOT ${rowsOf(`(${c.values.map((v) => tokenCond(v, '§', p)).join(' OR ')})`)}`;
  }
  const suffix = def.type === 'token' && c.modifier === 'of-type' ? ':of-type'
    : def.type === 'reference' && c.modifier === 'identifier' ? ':identifier' : '';
  if (suffix) {
    // These live in search_tokens whatever the parameter's own type.
    const s = `s${depth}`;
    const conds = c.values.map((v) => (c.modifier === 'of-type' ? ofTypeCond(v, s, p) : tokenCond(v, s, p)));
    return `EXISTS (SELECT 1 FROM search_tokens ${s} WHERE ${indexRowOf(s, r, type, p)}
      AND ${storedCond(modifierRows(def, suffix), s, p)} AND (${conds.join(' OR ')})${tail})`;
  }
  return rowsOf(`(${c.values.map((v) => valueCond(def, c.modifier, v, '§', p)).join(' OR ')})`);
}

/**
 * A criterion on a row-keyed type's own row (rowKeySearch.ts): its time parameter is the
 * clinical_time column, tokens and references are keys. Other parameters have no keys.
 */
function rowKeyedSql(c: Criterion, type: string, r: string, p: P): string {
  const def = c.def;
  if (def.code === ROW_TIME_PARAM[type]) {
    if (c.missing !== undefined) return c.missing ? 'false' : 'true';
    return `(${c.values.map((v) => {
      const { prefix, rest } = prefixed(v);
      const [lo, hi] = searchDateRange(rest);
      return instantCond(prefix, lo, hi, `${r}.clinical_time`, p);
    }).join(' OR ')})`;
  }
  if (def.type !== 'token' && def.type !== 'reference') throw badRequest(`Search parameter '${def.code}' is not supported on ${type}`);
  const { params, targetType } = storedParams(def);
  if (c.missing !== undefined) {
    const present = presentCond(params, targetType, r, p);
    return c.missing ? `NOT ${present}` : present;
  }
  if (def.type === 'token') {
    if (c.modifier === 'text' || c.modifier === 'of-type') throw badRequest(`Modifier ':${c.modifier}' is not supported on ${type}`);
    const cond = tokenKeysCond(type, params, c.values, r, p);
    return c.modifier === 'not' ? `NOT ${cond}` : cond;
  }
  if (c.modifier === 'identifier') return tokenKeysCond(type, modifierRows(def, ':identifier').params, c.values, r, p);
  return referenceKeysCond(type, def, params, targetType, c.modifier, c.values, r, p);
}

function ofTypeCond(value: string, s: string, p: P): string {
  const [system, code, val] = value.split('|');
  if (val === undefined) throw badRequest(`:of-type takes system|code|value, got '${value}'`);
  return `(${s}.system = ${p(system)} AND ${s}.code = ${p(`${code}|${val}`)})`;
}

/** A sort key expression for a parameter, never NULL (missing values sort last). */
export function sortKey(def: SearchParamDef, type: string, desc: boolean, p: P): { expr: string; cast: string } {
  if (def.code === '_id') return { expr: 'r.id', cast: 'text' };
  if (def.code === '_lastUpdated') return { expr: 'r.last_updated', cast: 'timestamptz' };
  if (ROW_KEYED_TYPES.has(type)) {
    if (def.code === ROW_TIME_PARAM[type]) return { expr: 'r.clinical_time', cast: 'timestamptz' };
    if (def.type !== 'token' && def.type !== 'reference') throw badRequest(`Cannot sort ${type} by '${def.code}'`);
    const { params, targetType } = storedParams(def);
    return { expr: `coalesce(${keySortValue(def, params, targetType, desc, 'r', p)}, ${desc ? `''` : 'chr(1114111)'})`, cast: 'text' };
  }
  const agg = desc ? 'max' : 'min';
  const col: Record<string, [string, string, string, string]> = {
    // type: [column, cast, sentinel when ascending, sentinel when descending]
    date: [desc ? 'hi' : 'lo', 'timestamptz', `'infinity'::timestamptz`, `'-infinity'::timestamptz`],
    string: ['value', 'text', `chr(1114111)`, `''`],
    token: ['code', 'text', `chr(1114111)`, `''`],
    reference: ['target_id', 'text', `chr(1114111)`, `''`],
    number: ['value', 'numeric', `'Infinity'::numeric`, `'-Infinity'::numeric`],
    quantity: ['value', 'numeric', `'Infinity'::numeric`, `'-Infinity'::numeric`],
    uri: ['value', 'text', `chr(1114111)`, `''`],
  };
  const spec = col[def.type];
  if (!spec) throw badRequest(`Cannot sort by ${def.type} parameter '${def.code}'`);
  const [column, cast, ascSentinel, descSentinel] = spec;
  return {
    expr: `coalesce((SELECT ${agg}(k.${column}) FROM ${INDEX_TABLE[def.type]} k WHERE ${indexRowOf('k', 'r', type, p)}
      AND ${storedCond(storedParams(def), 'k', p)}), ${desc ? descSentinel : ascSentinel})`,
    cast,
  };
}
