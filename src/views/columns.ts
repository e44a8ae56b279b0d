// The shape of a view's output, shared by the validator, the in-memory runner and the SQL compiler:
// which columns a selection produces, in which order, and what a constant's value is.
import type { TypedValue } from '@medplum/core';
import type { ViewColumn, ViewConstant, ViewDefinition, ViewSelect } from './types.ts';

/**
 * The columns a selection produces, in output order: its own columns, then its nested selects',
 * then its unionAll's (every branch has the same columns; the first speaks for them), as the
 * specification's "column ordering" test expects.
 */
export function selectColumns(select: ViewSelect): ViewColumn[] {
  return [
    ...(select.column ?? []),
    ...(select.select ?? []).flatMap(selectColumns),
    ...(select.unionAll?.length ? selectColumns(select.unionAll[0]) : []),
  ];
}

/** The view's columns in output order. */
export function viewColumns(view: ViewDefinition): ViewColumn[] {
  return view.select.flatMap(selectColumns);
}

/** The value[x] keys a constant may carry, and the FHIR type each names. */
export const CONSTANT_TYPES = [
  'base64Binary', 'boolean', 'canonical', 'code', 'date', 'dateTime', 'decimal', 'id', 'instant', 'integer',
  'integer64', 'oid', 'string', 'positiveInt', 'time', 'unsignedInt', 'uri', 'url', 'uuid',
] as const;

const CONSTANT_KEYS = new Map<string, string>(CONSTANT_TYPES.map((t) => [`value${t[0].toUpperCase()}${t.slice(1)}`, t]));

/** The constant's value[x] keys present (a valid constant has exactly one). */
export function constantValueKeys(constant: object): string[] {
  return Object.keys(constant).filter((k) => k.startsWith('value'));
}

/** The constant as a FHIRPath value (type from its value[x] key); undefined when it has none or an unknown one. */
export function constantValue(constant: ViewConstant): TypedValue | undefined {
  const [key] = constantValueKeys(constant);
  const type = key ? CONSTANT_KEYS.get(key) : undefined;
  if (!type) return undefined;
  return { type, value: constant[key] };
}
