// SQL on FHIR v2 in PostgreSQL: compile a ViewDefinition (compile.ts) and run it in a tenant's
// transaction (withTenant: kiln_app, row-level security on).
import pg from 'pg';
import type { Tx } from '../resources.ts';
import { FhirError } from '../../fhir/outcome.ts';
import type { ViewDefinition } from '../../views/types.ts';
import { compileView, NOT_BOOLEAN, SEVERAL_VALUES, ViewCompileError, type CompiledView } from './compile.ts';

export { compileView, ViewCompileError, type CompiledView, type CompiledColumn } from './compile.ts';

export type ViewRow = Record<string, unknown>;

const NUMERIC_OID = 1700;
// numeric comes back as a JSON number, as the specification's rows have it (decimal columns, arithmetic).
const types = {
  getTypeParser: (oid: number, format?: string) => oid === NUMERIC_OID
    ? (v: string) => Number(v)
    : pg.types.getTypeParser(oid, format as 'text'),
};

/** The view's rows, each keyed by column name in the view's column order. A view it cannot compile is a 400. */
export async function runCompiledView(tx: Tx, view: ViewDefinition): Promise<ViewRow[]> {
  let compiled: CompiledView;
  try {
    compiled = compileView(view);
  } catch (e) {
    if (e instanceof ViewCompileError) throw new FhirError(400, 'not-supported', `ViewDefinition: ${e.message}`);
    throw e;
  }
  return runCompiled(tx, compiled);
}

/** The rows of a view compiled before (compileView). */
export async function runCompiled(tx: Tx, compiled: CompiledView): Promise<ViewRow[]> {
  let rows: Record<string, unknown>[];
  try {
    ({ rows } = await tx.query({ text: compiled.sql, values: compiled.params, types }));
  } catch (e) {
    const message = (e as Error).message ?? '';
    const at = message.indexOf(SEVERAL_VALUES);
    if (at >= 0) {
      const alias = /^c\d+/.exec(message.slice(at + SEVERAL_VALUES.length))?.[0];
      const name = compiled.columns.find((c) => c.alias === alias)?.name ?? '?';
      throw new FhirError(400, 'processing', `ViewDefinition: column ${name} has several values in a row; declare it collection: true`);
    }
    const where = message.indexOf(NOT_BOOLEAN);
    if (where >= 0) {
      throw new FhirError(400, 'processing', `ViewDefinition: where[${parseInt(message.slice(where + NOT_BOOLEAN.length), 10)}] gives a value that is not one boolean`);
    }
    throw e;
  }
  return rows.map((row) => Object.fromEntries(compiled.columns.map((c) => [c.name, row[c.alias] ?? null])));
}
