// SQL on FHIR v2: a ViewDefinition compiled to one parameterized PostgreSQL query over the
// tenant's current resources of the view's type, so a view runs where the data is: one tenant's
// partitions (`org_id` bound from the transaction's tenant setting), under row-level security.
//
// The functional model (spec/functional-model.md) maps onto SQL as: a select is a LATERAL
// subquery correlated with its context item; forEach iterates jsonb_array_elements WITH
// ORDINALITY (the ordinality gives %rowIndex); forEachOrNull is a LEFT JOIN of the same, so an
// empty collection leaves one row of nulls; repeat is a recursive CTE in depth-first order; nested
// selects are a cross join of laterals; unionAll is UNION ALL of the branches' subqueries; the
// view's `where` is a WHERE with FHIRPath's boolean semantics (empty is not true).
// Output columns are aliased c0, c1, ...: column names never enter the SQL text.
import { READ_FROM } from '../../../mappings/postgres/index.ts';
import type { ViewColumn, ViewDefinition, ViewSelect } from '../../views/types.ts';
import { asBool, asJson, compilePath, navFirst, Params, ROOT_ITEM, ViewCompileError, type Scope, type Val } from './fhirpathSql.ts';

export { ViewCompileError } from './fhirpathSql.ts';

export interface CompiledColumn { name: string; type?: string; collection: boolean; alias: string }
export interface CompiledView { sql: string; params: unknown[]; columns: CompiledColumn[] }

/** The marker of the error a non-collection column with several values raises (see `scalarColumn`). */
export const SEVERAL_VALUES = 'kiln_several_values_';

const TEXT_TYPES = new Set(['string', 'code', 'id', 'uri', 'url', 'canonical', 'oid', 'uuid', 'markdown', 'base64Binary',
  'date', 'dateTime', 'instant', 'time', 'xhtml']);
const INTEGER_TYPES: Record<string, string> = { integer: 'integer', positiveInt: 'integer', unsignedInt: 'integer', integer64: 'bigint' };

interface Compiled { sql: string; columns: CompiledColumn[] }

class Compiler {
  readonly params = new Params();
  private n = 0;
  constructor(readonly view: ViewDefinition, readonly constants: ReadonlyMap<string, unknown>) {}

  alias = (): string => `t${this.n++}`;
  column = (): string => `c${this.n++}`;

  scope(item: string, rowIndex: string): Scope {
    return { item, itemType: this.view.resource, rowIndex, resourceType: this.view.resource, constants: this.constants, params: this.params, alias: this.alias };
  }

  /** A select node (its iteration, then columns × nested selects × unionAll) as a query of its columns. */
  select(node: ViewSelect, scope: Scope): Compiled {
    const iterations = ['forEach', 'forEachOrNull', 'repeat'].filter((k) => (node as Record<string, unknown>)[k] !== undefined);
    if (iterations.length > 1) throw new ViewCompileError(`a select has more than one of ${iterations.join(', ')}`);
    if (node.forEach !== undefined || node.forEachOrNull !== undefined) {
      const path = node.forEach ?? node.forEachOrNull;
      if (typeof path !== 'string') throw new ViewCompileError('forEach and forEachOrNull take a FHIRPath string');
      const collection = compilePath(path, scope);
      const items = asJson(collection, scope);
      const itemType = collection.k === 'nav' || collection.k === 'item' || collection.k === 'json' ? collection.type : undefined;
      const it = this.alias();
      if (node.forEach !== undefined) return this.iterate(`jsonb_array_elements(${items}) WITH ORDINALITY ${it}(e, o)`, it, node, scope, itemType);
      // No item: one row whose item is SQL NULL (every path over it is empty) and whose %rowIndex is 0.
      return this.iterate(`(SELECT) ${this.alias()} LEFT JOIN LATERAL jsonb_array_elements(${items}) WITH ORDINALITY ${it}(e, o) ON true`, it, node, scope, itemType);
    }
    if (node.repeat !== undefined) return this.repeat(node, scope);
    return this.body(node, scope);
  }

  private iterate(from: string, it: string, node: ViewSelect, scope: Scope, itemType?: string): Compiled {
    const inner = this.body(node, { ...scope, item: `${it}.e`, itemType, rowIndex: `coalesce(${it}.o - 1, 0)::integer` });
    const x = this.alias();
    return { sql: `SELECT ${list(inner.columns)} FROM ${from} CROSS JOIN LATERAL (${inner.sql}) ${x}`, columns: inner.columns };
  }

  /** repeat: the items of every path, then theirs, recursively, numbered depth-first (%rowIndex). */
  private repeat(node: ViewSelect, scope: Scope): Compiled {
    if (!Array.isArray(node.repeat) || node.repeat.length === 0) throw new ViewCompileError('repeat takes a non-empty list of FHIRPath strings');
    const rec = this.alias();
    const children = (item: string) => node.repeat!.map((p, i) => {
      const t = this.alias();
      return `SELECT ${t}.e, ARRAY[${i}, ${t}.o] AS k FROM jsonb_array_elements(${asJson(compilePath(p, { ...scope, item }), scope)}) WITH ORDINALITY ${t}(e, o)`;
    }).join(' UNION ALL ');
    const step = this.alias();
    const it = this.alias();
    const from = `(WITH RECURSIVE ${rec}(e, k) AS (${children(scope.item)} UNION ALL `
      + `SELECT ${step}.e, ${rec}.k || ${step}.k FROM ${rec} CROSS JOIN LATERAL (${children(`${rec}.e`)}) ${step})`
      + ` SELECT ${rec}.e, row_number() OVER (ORDER BY ${rec}.k) AS o FROM ${rec}) ${it}`;
    return this.iterate(from, it, node, scope);
  }

  private body(node: ViewSelect, scope: Scope): Compiled {
    const own = (node.column ?? []).map((c) => this.columnOf(c, scope));
    const laterals: string[] = [];
    const columns: CompiledColumn[] = own.map((o) => o.column);
    for (const sub of node.select ?? []) {
      const s = this.select(sub, scope);
      laterals.push(`CROSS JOIN LATERAL (${s.sql}) ${this.alias()}`);
      columns.push(...s.columns);
    }
    if (node.unionAll?.length) {
      const branches = node.unionAll.map((b) => this.select(b, scope));
      const names = branches[0].columns.map((c) => c.name).join(',');
      for (const b of branches) {
        if (b.columns.map((c) => c.name).join(',') !== names) throw new ViewCompileError('unionAll branches must have the same columns in the same order');
      }
      laterals.push(`CROSS JOIN LATERAL (${branches.map((b) => `(${b.sql})`).join(' UNION ALL ')}) ${this.alias()}`);
      columns.push(...branches[0].columns);
    }
    if (columns.length === 0) throw new ViewCompileError('a select must have columns');
    const items = [...own.map((o) => `${o.sql} AS ${o.column.alias}`), ...columns.slice(own.length).map((c) => c.alias)];
    return { sql: `SELECT ${items.join(', ')}${laterals.length ? ` FROM (SELECT) ${this.alias()} ${laterals.join(' ')}` : ''}`, columns };
  }

  private columnOf(c: ViewColumn, scope: Scope): { sql: string; column: CompiledColumn } {
    if (typeof c?.name !== 'string' || typeof c.path !== 'string') throw new ViewCompileError('a column needs a name and a path');
    const column: CompiledColumn = { name: c.name, type: c.type, collection: c.collection === true, alias: this.column() };
    const v = compilePath(c.path, { ...scope, columnType: c.type });
    return { sql: column.collection ? asJson(v, scope) : scalarColumn(v, scope, column), column };
  }
}

function list(columns: CompiledColumn[]): string {
  return columns.map((c) => c.alias).join(', ');
}

/**
 * A non-collection column: its one value cast to the column's type, NULL when empty. Several
 * values are an error the query raises itself (a strict SQL/JSON path naming a key that is not
 * there, `kiln_several_values_<alias>`), so the compiled SQL keeps the rule wherever it runs.
 */
function scalarColumn(v: Val, scope: Scope, column: CompiledColumn): string {
  const type = column.type;
  // One value by the definitions (every step 0..1, or first()): no check for several.
  if (v.k === 'nav' && v.single) v = { k: 'item', sql: navFirst(v, scope) };
  if (v.k === 'item') {
    if (type && Object.hasOwn(INTEGER_TYPES, type)) return `(${v.sql})::${INTEGER_TYPES[type]}`;
    if (type === 'decimal') return `(${v.sql})::numeric`;
    if (type === 'boolean') return `(${v.sql})::boolean`;
    if (type && TEXT_TYPES.has(type)) return `(${v.sql} #>> '{}')`;
    return v.sql;
  }
  if (v.k === 'bool' || v.k === 'num' || v.k === 'text') {
    if (type && Object.hasOwn(INTEGER_TYPES, type)) return `(${v.sql})::${INTEGER_TYPES[type]}`;
    if (type === 'decimal') return `(${v.sql})::numeric`;
    if (type === 'boolean') return v.k === 'bool' ? v.sql : `(${v.sql})::boolean`;
    if (type && TEXT_TYPES.has(type)) return v.k === 'text' ? v.sql : `(${v.sql})::text`;
    return `to_jsonb(${v.sql})`;
  }
  const x = scope.alias();
  const item = `(SELECT CASE WHEN jsonb_array_length(${x}.a) > 1 THEN jsonb_path_query_first(jsonb_build_object('a', ${x}.a), 'strict $.${SEVERAL_VALUES}${column.alias}') ELSE ${x}.a -> 0 END FROM (SELECT ${asJson(v, scope)} AS a OFFSET 0) ${x})`;
  if (type && Object.hasOwn(INTEGER_TYPES, type)) return `(${item})::${INTEGER_TYPES[type]}`;
  if (type === 'decimal') return `(${item})::numeric`;
  if (type === 'boolean') return `(${item})::boolean`;
  if (type && TEXT_TYPES.has(type)) return `(${item} #>> '{}')`;
  return item;
}

/** The marker of the error a where path giving a non-boolean raises. */
export const NOT_BOOLEAN = 'kiln_not_boolean_where_';

/** A where path's truth; a value that is not one boolean is an error the query raises (as in scalarColumn). */
function whereCondition(v: Val, scope: Scope, i: number): string {
  if (v.k === 'bool') return v.sql;
  if (v.k !== 'nav' && v.k !== 'json' && v.k !== 'item') return asBool(v, scope);
  const x = scope.alias();
  return `(SELECT CASE WHEN jsonb_array_length(${x}.a) = 0 THEN NULL`
    + ` WHEN jsonb_array_length(${x}.a) = 1 AND jsonb_typeof(${x}.a -> 0) = 'boolean' THEN (${x}.a -> 0)::boolean`
    + ` ELSE (jsonb_path_query_first(jsonb_build_object('a', ${x}.a), 'strict $.${NOT_BOOLEAN}${i}'))::boolean END`
    + ` FROM (SELECT ${asJson(v, scope)} AS a OFFSET 0) ${x})`;
}

function constantsOf(view: ViewDefinition): Map<string, unknown> {
  const constants = new Map<string, unknown>();
  for (const c of view.constant ?? []) {
    const keys = Object.keys(c ?? {}).filter((k) => k.startsWith('value'));
    if (typeof c?.name !== 'string' || keys.length !== 1) throw new ViewCompileError(`constant ${String(c?.name)} must have a name and exactly one value[x]`);
    constants.set(c.name, c[keys[0]]);
  }
  return constants;
}

/** The view as one query: its rows are the view's rows, its columns aliased as `columns` says. */
export function compileView(view: ViewDefinition): CompiledView {
  if (typeof view !== 'object' || view === null) throw new ViewCompileError('a ViewDefinition must be an object');
  if (typeof view.resource !== 'string' || !Object.hasOwn(READ_FROM, view.resource)) {
    throw new ViewCompileError(`resource must name a resource type this server stores, not ${String(view.resource)}`);
  }
  if (!Array.isArray(view.select) || view.select.length === 0) throw new ViewCompileError('a view needs at least one select');
  const compiler = new Compiler(view, constantsOf(view));
  const root = compiler.scope(ROOT_ITEM, '0');
  const body = compiler.select({ select: view.select }, root);
  const where = (view.where ?? []).map((w, i) => {
    if (typeof w?.path !== 'string') throw new ViewCompileError('a where needs a path');
    return `(${whereCondition(compilePath(w.path, root), root, i)}) IS TRUE`;
  });
  // The resource text is parsed to jsonb once per row (OFFSET 0 keeps the planner from copying the cast into every use).
  const sql = `SELECT ${list(body.columns)} FROM ${READ_FROM[view.resource]} r`
    + ` CROSS JOIN LATERAL (SELECT r.resource::jsonb AS res OFFSET 0) d`
    + ` CROSS JOIN LATERAL (${body.sql}) v`
    + ` WHERE r.org_id = current_setting('app.org_id')::integer${where.map((w) => ` AND ${w}`).join('')}`;
  return { sql, params: compiler.params.values, columns: body.columns };
}
