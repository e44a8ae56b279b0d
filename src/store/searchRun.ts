// Runs a search: matches in a stable order with a keyset cursor (so walking pages
// returns each match once even while others write), totals, and included resources.
import type { Tx } from './resources.ts';
import { onGenericPlans } from './statements.ts';
import { READ_FROM, TABLES } from '../../mappings/postgres/index.ts';
import { bodyKey, bodyOf, criterionSql, driverRank, driverRows, sortKey } from './searchSql.ts';
import { rowsWithKeys, type KeyForms } from './rowKeySearch.ts';
import type { Criterion } from '../search/criteria.ts';
import { badRequest } from '../fhir/outcome.ts';
import { dateRange } from '../../mappings/search/precision.ts';
import { searchParamsFor, storedParams, type SearchParamDef, type StoredAs } from '../../mappings/search/definitions.ts';
import { ROW_KEYED_TYPES, refKey, refKeyTargets } from '../../mappings/search/rowKeys.ts';

export interface SortSpec { def: SearchParamDef; desc: boolean }

export interface SearchRequest {
  type: string;
  criteria: Criterion[];
  sort: SortSpec[];
  count: number;
  /** Sort-key values and id of the last row of the previous page. */
  after?: string[];
  /** Sort-key values and id of the first row of the next page: the page before it is wanted. */
  before?: string[];
  total: 'none' | 'estimate' | 'accurate';
  /** The transaction's tenant (read from it when not given). As a plain value it lets
   * the planner prune other tenants' partitions, which halves planning time or better. */
  orgId?: number;
  /** How ref_keys lookups of row-keyed types are written (runSearch sets it). */
  keyForms?: KeyForms;
}

export interface SearchPage {
  rows: { id: string; json: string }[];
  /** Cursor for the next page, when there is one. */
  next?: string[];
  /** Cursor (first row) for the page before this one, when there is one. */
  previous?: string[];
  total?: number;
  /** The total is the planner's estimate (`_total=estimate` past EXACT_TOTAL_BOUND). */
  estimated?: boolean;
}

/** Bind parameters; `orgId`, when given, is the tenant every index row of the statement
 * belongs to (searchSql.ts sameTenant). */
function params(keyForms?: KeyForms, orgId?: number) {
  const values: unknown[] = [];
  return { values, p: Object.assign((v: unknown) => { values.push(v); return `$${values.length}`; }, { keyForms, orgId }) };
}

export interface SearchStatements {
  page: { sql: string; values: unknown[] };
  count: { sql: string; values: unknown[] };
  keys: number;
  /** The page runs on its generic plan (see runSearch). */
  generic: boolean;
}

/** The SQL of one page of a search (with its keyset cursor) and of its total. */
export function searchStatements(q: SearchRequest & { orgId: number }): SearchStatements {
  const driver = bestDriver(q);
  const count = countStatement(q, driver?.index);
  const unsorted = !q.sort.length && driver && !q.criteria.some(onResourceRow);
  const driven = unsorted ? driver : driver?.rank === 0 ? driver : undefined;
  const page = unsorted ? unsortedPage(q, driver.index) : sortedPage(q, driven?.index);
  // A driven page has the same plan whatever the values (the driver's rows, each probed):
  // planning it every time cost more than running it. Not when a code (rank 2, common)
  // drives other criteria: a generic plan, sizing the code by its average, hashed every
  // row of the others' value range (170 ms) instead of probing the driver's rows. Pages
  // not driven keep custom plans: a generic one cannot size a range.
  const generic = driven !== undefined && (driven.rank !== 2 || q.criteria.length === 1);
  return { page, count, keys: q.sort.length, generic: ROW_KEYED_TYPES.has(q.type) || generic };
}

/**
 * The total's statement. With a driver, the distinct ids of its matching index rows that
 * pass the other criteria: index rows exist exactly while their resource does (a delete
 * removes them), so no resource row is read, and no monthly partition planned (4 ms of
 * planning for an Observation count two years in). Else every row of the type is checked.
 */
function countStatement(q: SearchRequest & { orgId: number }, driverIndex: number | undefined): { sql: string; values: unknown[] } {
  const { values, p } = params(undefined, q.orgId);
  if (driverIndex !== undefined && !q.criteria.some(onResourceRow)) {
    // Not per-row probes: a count reads every match, and a common driver's matches are
    // better joined to the others' (hashed) than probed one by one.
    const others = otherCriteria(q, driverIndex, p, false);
    return { sql: `SELECT count(*)::integer AS n FROM (SELECT DISTINCT d.id FROM ${driverRows(q.criteria[driverIndex], q.type, q.orgId, p, others, () => '')}) m`, values };
  }
  const where = [`r.org_id = ${p(q.orgId)}::integer`, ...q.criteria.map((cr) => criterionSql(cr, q.type, 'r', p))];
  return { sql: `SELECT count(*)::integer AS n FROM ${READ_FROM[q.type]} r WHERE ${where.join(' AND ')}`, values };
}

/** _lastUpdated is a column of the resource row, not of index rows. */
const onResourceRow = (c: Criterion) => c.def.code === '_lastUpdated';

/** The criterion whose index rows should drive the search (see driverRank), if any.
 * Row-keyed types have no index rows: their criteria are conditions on the row. */
function bestDriver(q: SearchRequest): { index: number; rank: number } | undefined {
  if (ROW_KEYED_TYPES.has(q.type)) return undefined;
  let best: { index: number; rank: number } | undefined;
  q.criteria.forEach((c, index) => {
    const rank = driverRank(c);
    if (rank !== undefined && (!best || rank < best.rank)) best = { index, rank };
  });
  return best;
}

/** The conditions, on the driver's index rows `d`, of the criteria other than the driver (criterionSql's `perRow`). */
function otherCriteria(q: SearchRequest, driverIndex: number, p: (v: unknown) => string, perRow: boolean): (d: string) => string {
  return (d) => q.criteria.filter((c, i) => i !== driverIndex && !onResourceRow(c)).map((c) => ` AND ${criterionSql(c, q.type, d, p, 0, perRow)}`).join('');
}

/**
 * The driver's matching index rows, the other criteria checked on each (`extra` may
 * order and limit them), joined to their locator rows `r` by a per-row probe (the body is
 * read from the history: bodyOf; no time partition is planned). Starting from the driver
 * keeps the plan tied to its (usually small or id-ordered) row set, whatever the planner
 * estimates for the other criteria.
 */
function drivenRows(q: SearchRequest & { orgId: number }, driverIndex: number, p: (v: unknown) => string, extra: (d: string) => string): string {
  const driver = q.criteria[driverIndex];
  const others = otherCriteria(q, driverIndex, p, true);
  return `(SELECT DISTINCT ON (d.id) d.org_id, d.id, d.clinical_time FROM ${driverRows(driver, q.type, q.orgId, p, others, extra)}) m
    CROSS JOIN LATERAL (SELECT x.org_id, x.id, x.last_updated, x.clinical_time, x.version_id FROM resource_ids x
       WHERE x.org_id = m.org_id AND x.resource_type = ${p(q.type)} AND x.id = m.id AND NOT x.deleted LIMIT 1) r`;
}

/**
 * An unsorted page (id order) walked from the driver's index rows in id order: the walk
 * stops at `_count` matches, so a page costs about the same at any table size.
 * (_lastUpdated lives on the resource row, which the walk reaches only at the end, so
 * such searches take the sorted plan.)
 */
function unsortedPage(q: SearchRequest & { orgId: number }, driverIndex: number): { sql: string; values: unknown[] } {
  const { values, p } = params(q.keyForms, q.orgId);
  // Going back, the walk runs down from the cursor (runSearch restores the order).
  const [cursor, cmp, dir] = q.before ? [q.before, '<', 'DESC'] : [q.after, '>', 'ASC'];
  if (cursor && cursor.length !== 1) throw badRequest('Invalid _page cursor: it does not fit the sort', ['_page']);
  const from = drivenRows(q, driverIndex, p, (d) =>
    `${cursor ? ` AND ${d}.id ${cmp} ${p(cursor[0])}::text` : ''} ORDER BY ${d}.id ${dir} LIMIT ${p(q.count + 1)}`);
  return { sql: `SELECT r.id, ${bodyOf(q.type, 'r', p)} AS json FROM ${from} ORDER BY r.id ${dir}`, values };
}

/** Whether a cursor's sort value casts to its key's type (a tampered cursor is a 400, not a database error). */
function castable(value: string, cast: string): boolean {
  if (cast === 'numeric') return /^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$|^-?Infinity$/.test(value);
  if (cast === 'timestamptz') {
    if (/^-?infinity$/.test(value)) return true;
    const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-]\d{2})(:\d{2})?$/.exec(value); // PostgreSQL's output
    return !!m && dateRange(`${m[1]}T${m[2]}${m[3]}${m[4] ?? ':00'}`) !== undefined;
  }
  return true;
}

/** A page in _sort order (then id); from the driver's rows when given, else from the
 * resource table with every criterion as EXISTS. */
function sortedPage(q: SearchRequest & { orgId: number }, driverIndex?: number): { sql: string; values: unknown[] } {
  const { values, p } = params(q.keyForms, q.orgId);
  const from = driverIndex === undefined ? `${READ_FROM[q.type]} r` : drivenRows(q, driverIndex, p, () => '');
  const where = driverIndex === undefined
    ? [`r.org_id = ${p(q.orgId)}::integer`, ...q.criteria.map((c) => criterionSql(c, q.type, 'r', p))]
    : ['true', ...q.criteria.filter(onResourceRow).map((c) => criterionSql(c, q.type, 'r', p))];
  const keys = q.sort.map((s) => ({ ...sortKey(s.def, q.type, s.desc, p), desc: s.desc }));
  const cols = keys.map((k, i) => `${k.expr} AS k${i}`);
  // Going back, every key runs the other way from the cursor (runSearch restores the order).
  const back = !!q.before;
  const cursor = q.before ?? q.after;
  const all = [...keys.map((k, i) => ({ col: `k${i}`, cast: k.cast, desc: k.desc !== back })), { col: 'id', cast: 'text', desc: back }];
  const order = all.map((k) => `${k.col} ${k.desc ? 'DESC' : 'ASC'}`).join(', ');
  let keyset = '';
  if (cursor) {
    if (cursor.length !== keys.length + 1 || keys.some((k, i) => !castable(cursor[i], k.cast))) throw badRequest('Invalid _page cursor: it does not fit the sort', ['_page']);
    // (k0 > v0) OR (k0 = v0 AND k1 > v1) OR ... OR (all equal AND id > last id)
    const terms: string[] = [];
    all.forEach((k, i) => {
      const eq = all.slice(0, i).map((e, j) => `${e.col} = ${p(cursor[j])}::${e.cast}`);
      terms.push(`(${[...eq, `${k.col} ${k.desc ? '<' : '>'} ${p(cursor[i])}::${k.cast}`].join(' AND ')})`);
    });
    keyset = `WHERE ${terms.join(' OR ')}`;
  }
  // Bodies are read for the page's rows only, once it is cut to size.
  const body = ROW_KEYED_TYPES.has(q.type) ? '' : `, ${bodyOf(q.type, 'q', p)} AS json`;
  const sql = `SELECT q.*${body} FROM (SELECT * FROM (SELECT r.id, ${bodyKey(q.type, 'r')}${cols.length ? ', ' + cols.join(', ') : ''}
      FROM ${from} WHERE ${where.join(' AND ')}) q ${keyset} ORDER BY ${order} LIMIT ${p(q.count + 1)}) q ORDER BY ${order}`;
  return { sql, values };
}

/** The tenant the transaction is bound to (withTenant set it). */
export async function txOrgId(tx: Tx): Promise<number> {
  return Number((await tx.query(`SELECT current_setting('app.org_id') AS o`)).rows[0].o);
}

/**
 * The key forms of a search on a row-keyed type: which of its ref_keys lookups are common
 * in the tenant (sql/024), so that its page walks the sort order instead of collecting
 * every match. The total (count) keeps the index form: it needs every match either way.
 */
export async function searchKeyForms(tx: Tx, q: SearchRequest & { orgId: number }): Promise<KeyForms | undefined> {
  if (!ROW_KEYED_TYPES.has(q.type)) return undefined;
  const seen: string[][] = [];
  searchStatements({ ...q, keyForms: { seen } });
  // Only lookups of agents are asked about: agents (clients, users, this server) are few and
  // each is in a large share of the events, while resources and patients are many and each
  // is in few. The estimate costs a plan over every partition (3-5 ms with 72 of them).
  const distinct = [...new Map(seen.filter((keys) => keys.every((k) => /^agent[>:]/.test(k))).map((k) => [JSON.stringify(k), k])).entries()];
  if (!distinct.length) return undefined;
  const common = new Set<string>();
  const now = Date.now();
  for (const [name, keys] of distinct) {
    const cacheKey = `${q.orgId} ${name}`;
    const kept = commonKeys.get(cacheKey);
    let isCommon = kept && now - kept.at < COMMON_KEYS_TTL_MS ? kept.common : undefined;
    if (isCommon === undefined) {
      isCommon = Boolean((await tx.query('SELECT kiln_audit_keys_common($1::text[]) AS common', [keys])).rows[0].common);
      if (commonKeys.size >= COMMON_KEYS_MAX) commonKeys.clear();
      commonKeys.set(cacheKey, { common: isCommon, at: now });
    }
    if (isCommon) common.add(name);
  }
  return { common: (keys) => common.has(JSON.stringify(keys)) };
}

/** The answers of kiln_audit_keys_common per tenant and lookup, kept for a while: the
 * estimate moves only when the partitions are analyzed, either answer gives the same rows,
 * and asking costs a plan over every partition (3-5 ms with 72). */
const commonKeys = new Map<string, { common: boolean; at: number }>();
const COMMON_KEYS_TTL_MS = 5 * 60_000;
const COMMON_KEYS_MAX = 1000;

export async function runSearch(tx: Tx, q: SearchRequest): Promise<SearchPage> {
  const req = { ...q, orgId: q.orgId ?? await txOrgId(tx) };
  const st = searchStatements({ ...req, keyForms: await searchKeyForms(tx, req) });
  // A search of audit_events plans every weekly partition a date range does not rule out
  // (72 a year and a half in, 52 more a year), and planning cost more than running the
  // query: its page and total run on their generic plans (run-time pruning still skips
  // the partitions outside a date range). Other types' pages do when driven
  // (searchStatements) while the database holds few tenants (fewTenants); their totals
  // keep custom plans.
  const keyed = ROW_KEYED_TYPES.has(q.type);
  const { rows } = await onGenericPlans(tx, st.generic && (keyed || await fewTenants(tx)), (run) => run(st.page));
  let total = q.total === 'none' ? undefined : await onGenericPlans(tx, keyed, async (run) =>
    (await run(q.total === 'accurate' ? st.count : boundedCount(st.count))).rows[0].n as number);
  const keyOf = (row: Record<string, string> | undefined) => row && [...Array.from({ length: st.keys }, (_, i) => String(row[`k${i}`])), row.id];
  // A page going back was read from its end: one row more tells that a page precedes it.
  const more = rows.length > q.count;
  const page = q.before ? rows.slice(0, q.count).reverse() : rows.slice(0, q.count);
  const first = page[0];
  const last = page[page.length - 1];
  const next = q.before || more ? keyOf(last) : undefined;
  const previous = q.before ? (more ? keyOf(first) : undefined) : q.after ? keyOf(first) : undefined;
  // Past the bound, the planner's estimate, which cannot go below what was counted.
  const estimated = q.total === 'estimate' && total! > EXACT_TOTAL_BOUND;
  if (estimated) total = Math.max(total!, await estimateRows(tx, st.count.sql, st.count.values));
  return { rows: page.map((r) => ({ id: r.id, json: r.json })), next, previous, total, ...estimated ? { estimated } : {} };
}

/**
 * Whether the database holds few enough tenants for generic plans of searches. A generic
 * plan names every tenant's partitions of the tables whose tenant is a bind parameter, and
 * PostgreSQL locks them all at each execution: at 100 tenants a driven Observation page
 * took 500 locks (custom plans: about 15, and as fast within 0.3 ms), and the shared lock
 * table holds 64 per connection by default. The count is read again after a minute.
 */
async function fewTenants(tx: Tx): Promise<boolean> {
  const now = Date.now();
  if (now - tenantCount.at > 60_000) {
    tenantCount.n = Number((await tx.query('SELECT count(*) AS n FROM organizations')).rows[0].n);
    tenantCount.at = now;
  }
  return tenantCount.n <= GENERIC_PLAN_MAX_TENANTS;
}
const GENERIC_PLAN_MAX_TENANTS = 16;
const tenantCount = { n: 0, at: 0 };

/**
 * `_total=estimate` counts matches up to this bound exactly (reading at most one more), and
 * beyond it takes the planner's estimate (at least the bound + 1). The planner alone said 1
 * for 1,300 matches in partitions not analyzed yet, and 7 for 343 in analyzed ones (a
 * criterion over many small monthly partitions); a small count is cheap.
 */
export const EXACT_TOTAL_BOUND = 1000;

const COUNT_PREFIX = /^SELECT count\(\*\)::integer AS n /;

/** The count query stopped after EXACT_TOTAL_BOUND + 1 matches. */
function boundedCount(count: { sql: string; values: unknown[] }): { sql: string; values: unknown[] } {
  const rows = count.sql.replace(COUNT_PREFIX, 'SELECT 1 ');
  return { sql: `SELECT count(*)::integer AS n FROM (${rows} LIMIT ${EXACT_TOTAL_BOUND + 1}) m`, values: count.values };
}

/** The planner's row estimate for a count query: no rows are read. */
async function estimateRows(tx: Tx, countSql: string, values: unknown[]): Promise<number> {
  const from = countSql.replace(COUNT_PREFIX, 'SELECT 1 ');
  const { rows } = await tx.query(`EXPLAIN (FORMAT JSON) ${from}`, values);
  const plan = rows[0]['QUERY PLAN'];
  return Math.max(0, Math.round((Array.isArray(plan) ? plan : JSON.parse(plan))[0].Plan['Plan Rows']));
}

export interface IncludeSpec { sourceType: string; param: string; targetType?: string; iterate: boolean }

/** The reference rows an include follows: those the parameter is stored as (any parameter for `*`). */
function includeRows(inc: IncludeSpec): StoredAs | undefined {
  if (inc.param === '*') return undefined;
  const def = searchParamsFor(inc.sourceType).find((d) => d.code === inc.param);
  return def ? storedParams(def) : { params: [inc.param] };
}

/** The reference parameters whose keys a row-keyed type holds (`*`): those stored as themselves. */
function referenceParams(type: string): string[] {
  return searchParamsFor(type).filter((d) => d.type === 'reference' && !d.storedAs).map((d) => d.code);
}

/** Targets of an _include from row-keyed sources: from their ref_keys. */
async function keyedIncludeTargets(tx: Tx, inc: IncludeSpec, stored: StoredAs | undefined, sources: string[]): Promise<{ type: string; id: string }[]> {
  const { rows } = await tx.query(`SELECT ref_keys FROM ${READ_FROM[inc.sourceType]}
    WHERE org_id = current_setting('app.org_id')::integer AND id = ANY($1::text[])`, [sources]);
  return rows.flatMap((r) => refKeyTargets(r.ref_keys, stored?.params))
    .filter((k) => TABLES[k.type] && (!inc.targetType || k.type === inc.targetType) && (!stored?.targetType || k.type === stored.targetType))
    .map((k) => ({ type: k.type, id: k.id }));
}

type Included = { type: string; id: string; json: string };

/**
 * Resources the page references (_include) or that reference it (_revinclude), de-duplicated.
 * `keep` picks, round by round, those the caller may return: an :iterate round follows only
 * those, and only they count against `limit`.
 */
export async function fetchIncludes(tx: Tx, type: string, ids: string[], includes: IncludeSpec[], revincludes: IncludeSpec[],
  limit: number, keep: (rows: Included[]) => Promise<Included[]> = async (rows) => rows): Promise<Included[]> {
  const seen = new Set(ids.map((id) => `${type}/${id}`));
  const out: { type: string; id: string; json: string }[] = [];
  let frontier = new Map<string, string[]>([[type, ids]]);
  for (let round = 0; round < 2 && out.length < limit; round++) {
    const found: { type: string; id: string }[] = [];
    for (const inc of includes) {
      if (round > 0 && !inc.iterate) continue;
      const sources = frontier.get(inc.sourceType);
      if (!sources?.length) continue;
      const stored = includeRows(inc);
      if (ROW_KEYED_TYPES.has(inc.sourceType)) {
        found.push(...await keyedIncludeTargets(tx, inc, stored, sources));
        continue;
      }
      const { rows } = await tx.query(
        `SELECT DISTINCT target_type, target_id FROM search_references
          WHERE org_id = current_setting('app.org_id')::integer AND resource_type = $1 AND id = ANY($2::text[])
            AND ($3::text[] IS NULL OR param = ANY($3)) AND target_id IS NOT NULL AND ($4::text IS NULL OR target_type = $4)
            AND ($5::text IS NULL OR target_type = $5)`,
        [inc.sourceType, sources, stored?.params ?? null, inc.targetType ?? null, stored?.targetType ?? null]);
      for (const r of rows) if (TABLES[r.target_type]) found.push({ type: r.target_type, id: r.target_id });
    }
    for (const inc of revincludes) {
      if (round > 0 && !inc.iterate) continue;
      const stored = includeRows(inc);
      for (const [targetType, targets] of frontier) {
        if (inc.targetType && inc.targetType !== targetType) continue;
        if (stored?.targetType && stored.targetType !== targetType) continue;
        if (ROW_KEYED_TYPES.has(inc.sourceType)) {
          // Rows whose keys name a target: one GIN probe.
          const params = stored?.params ?? referenceParams(inc.sourceType);
          const keys = params.flatMap((param) => targets.map((id) => refKey(param, `${targetType}/${id}`)));
          const { rows } = await tx.query(`SELECT id FROM ${rowsWithKeys(inc.sourceType, '$1::text[]')}`, [keys]);
          for (const r of rows) found.push({ type: inc.sourceType, id: r.id });
          continue;
        }
        const { rows } = await tx.query(
          `SELECT DISTINCT id FROM search_references
            WHERE org_id = current_setting('app.org_id')::integer AND resource_type = $1 AND ($2::text[] IS NULL OR param = ANY($2))
              AND target_type = $3 AND target_id = ANY($4::text[])`,
          [inc.sourceType, stored?.params ?? null, targetType, targets]);
        for (const r of rows) found.push({ type: inc.sourceType, id: r.id });
      }
    }
    const fresh = found.filter((f) => !seen.has(`${f.type}/${f.id}`) && seen.add(`${f.type}/${f.id}`));
    if (!fresh.length) break;
    const byType = new Map<string, string[]>();
    for (const f of fresh) byType.set(f.type, [...(byType.get(f.type) ?? []), f.id]);
    const fetched: Included[] = [];
    for (const [t, list] of byType) {
      const ids = list.slice(0, limit);
      // Through the id locator, the current version's text from the history (searchSql.ts
      // bodyOf): no time partition is planned. Row-keyed types have no locator.
      const b = params();
      const { rows } = ROW_KEYED_TYPES.has(t)
        ? await tx.query(`SELECT id, resource::text AS json FROM ${READ_FROM[t]} WHERE org_id = current_setting('app.org_id')::integer AND id = ANY($1::text[])`, [ids])
        : await tx.query(`SELECT i.id, ${bodyOf(t, 'i', b.p)} AS json FROM resource_ids i
            WHERE i.org_id = current_setting('app.org_id')::integer AND i.resource_type = ${b.p(t)} AND i.id = ANY(${b.p(ids)}::text[]) AND NOT i.deleted`, b.values);
      fetched.push(...rows.map((r) => ({ type: t, id: r.id, json: r.json })));
    }
    const kept = await keep(fetched);
    out.push(...kept);
    frontier = new Map();
    for (const k of kept) frontier.set(k.type, [...(frontier.get(k.type) ?? []), k.id]);
  }
  return out.slice(0, limit);
}

export interface SystemSearchRequest {
  /** Criteria per type (the same parameters, parsed against each type). */
  types: { type: string; criteria: Criterion[] }[];
  count: number;
  after?: { type: string; id: string };
  /** The first row of the next page: the page before it is wanted. */
  before?: { type: string; id: string };
  total: 'none' | 'accurate';
}

type TypedId = { type: string; id: string };

/** Search across types (GET [base]?_type=...), in (type, id) order with a keyset cursor. */
export async function runSystemSearch(tx: Tx, q: SystemSearchRequest): Promise<{ rows: { type: string; id: string; json: string }[]; next?: TypedId; previous?: TypedId; total?: number }> {
  const { values, p } = params();
  const selects = q.types.map(({ type, criteria }) => {
    const where = [`r.org_id = current_setting('app.org_id')::integer`, ...criteria.map((c) => criterionSql(c, type, 'r', p))];
    return `SELECT ${p(type)}::text AS type, r.id, r.resource::text AS json FROM ${READ_FROM[type]} r WHERE ${where.join(' AND ')}`;
  });
  const union = selects.join(' UNION ALL ');
  // Going back, read down from the cursor and restore the order below.
  const [cursor, cmp, dir] = q.before ? [q.before, '<', 'DESC'] : [q.after, '>', 'ASC'];
  const keyset = cursor ? `WHERE (type, id) ${cmp} (${p(cursor.type)}::text, ${p(cursor.id)}::text)` : '';
  const { rows } = await tx.query(`SELECT * FROM (${union}) u ${keyset} ORDER BY type ${dir}, id ${dir} LIMIT ${p(q.count + 1)}`, values);
  const more = rows.length > q.count;
  const page = q.before ? rows.slice(0, q.count).reverse() : rows.slice(0, q.count);
  const first = page[0];
  const last = page[page.length - 1];
  const keyOf = (r: TypedId | undefined) => r && { type: r.type, id: r.id };
  let total: number | undefined;
  if (q.total === 'accurate') {
    const c = params();
    const counts = q.types.map(({ type, criteria }) => {
      const where = [`r.org_id = current_setting('app.org_id')::integer`, ...criteria.map((cr) => criterionSql(cr, type, 'r', c.p))];
      return `(SELECT count(*) FROM ${READ_FROM[type]} r WHERE ${where.join(' AND ')})`;
    });
    total = (await tx.query(`SELECT (${counts.join(' + ')})::integer AS n`, c.values)).rows[0].n;
  }
  const next = q.before || more ? keyOf(last) : undefined;
  const previous = q.before ? (more ? keyOf(first) : undefined) : q.after ? keyOf(first) : undefined;
  return { rows: page, next, previous, total };
}
