// The in-memory ViewDefinition runner: the specification's functional model (spec/functional-model.md)
// over Medplum's FHIRPath. Per resource of the view's type: every `where` must give true; then each
// select turns a node into rows: its foci (the node itself, or forEach / forEachOrNull / repeat
// results, each with its %rowIndex), and per focus the cross product of its columns' row, its
// nested selects' rows and its unionAll branches' rows, in that column order. A resource is
// processed alone, so an export stream can be fed one resource at a time (`PreparedView.rowsOf`).
import { toTypedValue, type TypedValue } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { loadDefinitions } from '../fhir/validate.ts';
import { constantValue, selectColumns, viewColumns } from './columns.ts';
import { compilePath, evalPath } from './fhirpath.ts';
import type { Row, ViewColumn, ViewDefinition, ViewSelect } from './types.ts';
import { validateView } from './validate.ts';

/** A view that cannot run (`problems` from validateView) or a resource it cannot turn into rows. */
export class ViewError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('; '));
    this.name = 'ViewError';
    this.problems = problems;
  }
}

type Path = ReturnType<typeof compilePath>;
type Variables = Record<string, TypedValue>;

interface CompiledColumn {
  column: ViewColumn;
  path: Path;
  at: string;
}

interface CompiledSelect {
  forEach?: Path;
  forEachOrNull?: Path;
  repeat?: Path[];
  columns: CompiledColumn[];
  selects: CompiledSelect[];
  unionAll?: CompiledSelect[];
  /** The row of nulls standing for this select's columns (a forEachOrNull with nothing to iterate). */
  nulls: Row;
}

function compileSelect(select: ViewSelect, at: string): CompiledSelect {
  const nulls: Row = {};
  for (const c of selectColumns(select)) nulls[c.name] = null;
  return {
    forEach: select.forEach !== undefined ? compilePath(select.forEach) : undefined,
    forEachOrNull: select.forEachOrNull !== undefined ? compilePath(select.forEachOrNull) : undefined,
    repeat: select.repeat?.map(compilePath),
    columns: (select.column ?? []).map((column, i) => ({ column, path: compilePath(column.path), at: `${at}.column[${i}]` })),
    selects: (select.select ?? []).map((s, i) => compileSelect(s, `${at}.select[${i}]`)),
    unionAll: select.unionAll?.map((s, i) => compileSelect(s, `${at}.unionAll[${i}]`)),
    nulls,
  };
}

const rowIndex = (i: number): TypedValue => ({ type: 'integer', value: i });

/** A validated, compiled view: its columns, and the rows of one resource at a time. */
export class PreparedView {
  readonly view: ViewDefinition;
  /** The output columns in order (every row has exactly these keys, in this order). */
  readonly columns: ViewColumn[];
  private readonly where: { path: Path; at: string }[];
  private readonly selects: CompiledSelect[];
  private readonly constants: Variables = {};

  constructor(view: ViewDefinition) {
    this.view = view;
    this.columns = viewColumns(view);
    this.where = (view.where ?? []).map((w, i) => ({ path: compilePath(w.path), at: `where[${i}].path` }));
    this.selects = view.select.map((s, i) => compileSelect(s, `select[${i}]`));
    for (const c of view.constant ?? []) this.constants[`%${c.name}`] = constantValue(c) as TypedValue;
  }

  /** The rows of one resource (none when it is of another type or a where clause excludes it). */
  *rowsOf(resource: Resource): Generator<Row> {
    if (resource.resourceType !== this.view.resource) return;
    const node = toTypedValue(resource);
    const variables: Variables = {
      ...this.constants,
      '%resource': node,
      '%rootResource': node,
      '%context': node,
      '%ucum': { type: 'string', value: 'http://unitsofmeasure.org' },
      '%sct': { type: 'string', value: 'http://snomed.info/sct' },
      '%loinc': { type: 'string', value: 'http://loinc.org' },
      '%rowIndex': rowIndex(0),
    };
    let rows: Row[];
    try {
      for (const w of this.where) {
        const result = evalPath(w.path, [node], variables);
        if (result.length === 0) return;
        if (result.length > 1 || result[0].type !== 'boolean') {
          throw new ViewError([`${w.at}: gave ${result.length > 1 ? `${result.length} values` : `a ${result[0].type}`}, not a boolean`]);
        }
        if (result[0].value !== true) return;
      }
      rows = product(this.selects.map((s) => processSelect(s, node, variables)));
    } catch (e) {
      // Name the resource (its type and id, never its content) beside the view's location.
      const problem = e instanceof ViewError ? e.message : `FHIRPath: ${(e as Error).message}`;
      throw new ViewError([`${resource.resourceType}/${resource.id ?? '(no id)'}: ${problem}`]);
    }
    yield* rows;
  }
}

/** Validates and compiles a view; throws ViewError listing its problems when it is not valid. */
export function prepareView(view: unknown): PreparedView {
  const problems = validateView(view);
  if (problems.length) throw new ViewError(problems);
  loadDefinitions(); // choice elements (value.ofType(Quantity)) need the R4 type definitions
  return new PreparedView(view as ViewDefinition);
}

/** All rows of a view over resources (those of other types are skipped). */
export function runView(view: unknown, resources: Iterable<Resource>): Row[] {
  const prepared = prepareView(view);
  const rows: Row[] = [];
  for (const resource of resources) {
    for (const row of prepared.rowsOf(resource)) rows.push(row);
  }
  return rows;
}

function processSelect(s: CompiledSelect, node: TypedValue, variables: Variables): Row[] {
  let foci: TypedValue[];
  const iterates = Boolean(s.forEach ?? s.forEachOrNull ?? s.repeat);
  if (s.forEach ?? s.forEachOrNull) foci = evalPath((s.forEach ?? s.forEachOrNull) as Path, [node], variables);
  else if (s.repeat) foci = repeatFoci(s.repeat, node, variables);
  else foci = [node];

  const rows: Row[] = [];
  foci.forEach((focus, i) => {
    const vars = iterates ? { ...variables, '%rowIndex': rowIndex(i) } : variables;
    const parts: Row[][] = [];
    if (s.columns.length) parts.push([columnsRow(s.columns, [focus], vars)]);
    for (const sub of s.selects) parts.push(processSelect(sub, focus, vars));
    if (s.unionAll) parts.push(s.unionAll.flatMap((u) => processSelect(u, focus, vars)));
    rows.push(...product(parts));
  });

  if (foci.length === 0 && s.forEachOrNull) {
    // One row of nulls; the select's own columns are evaluated over nothing (a path gives null,
    // %rowIndex 0, as the suite's row_index tests expect), nested ones are null.
    const own = columnsRow(s.columns, [], { ...variables, '%rowIndex': rowIndex(0) });
    rows.push({ ...s.nulls, ...own });
  }
  return rows;
}

// Depth first, a node before what it contains: the order %rowIndex counts in.
function repeatFoci(paths: Path[], node: TypedValue, variables: Variables): TypedValue[] {
  const out: TypedValue[] = [];
  const visit = (n: TypedValue, depth: number): void => {
    if (depth > 100) throw new ViewError(['repeat: more than 100 levels deep']);
    for (const p of paths) {
      for (const child of evalPath(p, [n], variables)) {
        out.push(child);
        visit(child, depth + 1);
      }
    }
  };
  visit(node, 0);
  return out;
}

function columnsRow(columns: CompiledColumn[], input: TypedValue[], variables: Variables): Row {
  const row: Row = {};
  for (const { column, path, at } of columns) {
    const values = evalPath(path, input, variables);
    const complex = column.type === undefined && values.find((v) => typeof v.value === 'object' && v.value !== null);
    if (complex) throw new ViewError([`${at}: column ${column.name} gives a ${complex.type}, not a primitive; say so in its type`]);
    if (column.collection) row[column.name] = values.map((v) => v.value);
    else if (values.length === 0) row[column.name] = null;
    else if (values.length === 1) row[column.name] = values[0].value;
    else throw new ViewError([`${at}: ${values.length} values for column ${column.name}, which is not a collection (set collection: true)`]);
  }
  return row;
}

/** The cross product of lists of partial rows (one empty row when there are no lists). */
function product(parts: Row[][]): Row[] {
  let rows: Row[] = [{}];
  for (const part of parts) {
    const next: Row[] = [];
    for (const a of rows) for (const b of part) next.push({ ...a, ...b });
    rows = next;
  }
  return rows;
}
