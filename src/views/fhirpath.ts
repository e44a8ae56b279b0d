// FHIRPath for ViewDefinitions: Medplum's engine (the one Kiln already uses), plus the functions
// the SQL on FHIR specification adds or defines more precisely than Medplum does
// (getResourceKey, getReferenceKey, extension over every input, lowBoundary, highBoundary).
// Medplum does not export its function table, so a parsed expression's FunctionAtoms with those
// names are swapped for our own atoms before evaluation; everything else is Medplum's.
import {
  FunctionAtom, SymbolAtom, evalFhirPathTyped, parseFhirPath, type Atom, type AtomContext, type FhirPathAtom, type TypedValue,
} from '@medplum/core';

/** Functions a view may call: the specification's subset and the rest Medplum implements. */
const MEDPLUM_FUNCTIONS = [
  'empty', 'hasValue', 'exists', 'all', 'allTrue', 'anyTrue', 'allFalse', 'anyFalse', 'subsetOf', 'supersetOf',
  'count', 'distinct', 'isDistinct', 'where', 'select', 'ofType', 'single', 'first', 'last', 'tail', 'skip',
  'take', 'intersect', 'exclude', 'union', 'combine', 'iif', 'toBoolean', 'convertsToBoolean', 'toInteger',
  'convertsToInteger', 'toDate', 'convertsToDate', 'toDateTime', 'convertsToDateTime', 'toDecimal',
  'convertsToDecimal', 'toQuantity', 'convertsToQuantity', 'toString', 'convertsToString', 'toTime',
  'convertsToTime', 'indexOf', 'substring', 'startsWith', 'endsWith', 'contains', 'upper', 'lower', 'replace',
  'matches', 'replaceMatches', 'length', 'toChars', 'join', 'abs', 'ceiling', 'exp', 'floor', 'ln', 'log',
  'power', 'round', 'sqrt', 'truncate', 'now', 'timeOfDay', 'today', 'is', 'not', 'as', 'type',
];

/** Variables every expression may read besides the view's constants. */
export const BUILTIN_VARIABLES = ['rowIndex', 'resource', 'rootResource', 'context', 'ucum', 'sct', 'loinc'];

type SpecFunction = (context: AtomContext, input: TypedValue[], ...args: Atom[]) => TypedValue[];

const SPEC_FUNCTIONS: Record<string, SpecFunction> = {
  getResourceKey: (_context, input) =>
    input.flatMap((v) => (typeof v.value?.id === 'string' ? [{ type: 'string', value: v.value.id as string }] : [])),

  // The key of a literal reference: its last type/id pair (relative or absolute URL); with a type
  // argument, nothing for references to another type.
  getReferenceKey: (_context, input, typeAtom?: Atom) => {
    const wanted = typeAtom ? typeName(typeAtom) : undefined;
    return input.flatMap((v) => {
      const parsed = parseReference(v.value?.reference);
      if (!parsed || (wanted && parsed.type !== wanted)) return [];
      return [{ type: 'string', value: parsed.id }];
    });
  },

  extension: (context, input, urlAtom: Atom) => {
    const url = urlAtom?.eval(context, input)[0]?.value;
    return input.flatMap((v) => {
      const exts = v.value?.extension;
      if (!Array.isArray(exts)) return [];
      return exts.filter((e) => e?.url === url).map((e) => ({ type: 'Extension', value: e }));
    });
  },

  lowBoundary: (context, input, precisionAtom?: Atom) => boundary(context, input, precisionAtom, 'low'),
  highBoundary: (context, input, precisionAtom?: Atom) => boundary(context, input, precisionAtom, 'high'),
};

export const KNOWN_FUNCTIONS = new Set([...MEDPLUM_FUNCTIONS, ...Object.keys(SPEC_FUNCTIONS)]);

class SpecFunctionAtom implements Atom {
  readonly name: string;
  readonly args: Atom[];
  constructor(name: string, args: Atom[]) {
    this.name = name;
    this.args = args;
  }
  eval(context: AtomContext, input: TypedValue[]): TypedValue[] {
    return SPEC_FUNCTIONS[this.name](context, input, ...this.args);
  }
  toString(): string {
    return `${this.name}(${this.args.map((a) => a.toString()).join(', ')})`;
  }
}

/** The atoms directly under an atom (Medplum's atoms keep them in these fields). */
function children(atom: Atom): Atom[] {
  const a = atom as unknown as Record<string, unknown>;
  const out: Atom[] = [];
  for (const key of ['child', 'left', 'right', 'expr']) {
    if (isAtom(a[key])) out.push(a[key]);
  }
  if (Array.isArray(a.args)) out.push(...a.args.filter(isAtom));
  return out;
}

function isAtom(x: unknown): x is Atom {
  return typeof x === 'object' && x !== null && typeof (x as Atom).eval === 'function';
}

/** Every atom of an expression, depth first. */
export function atoms(root: Atom): Atom[] {
  const out: Atom[] = [];
  const visit = (atom: Atom): void => {
    out.push(atom);
    children(atom).forEach(visit);
  };
  visit(root);
  return out;
}

function withSpecFunctions(atom: Atom): Atom {
  const a = atom as unknown as Record<string, unknown>;
  for (const key of ['child', 'left', 'right', 'expr']) {
    if (isAtom(a[key])) a[key] = withSpecFunctions(a[key]);
  }
  if (Array.isArray(a.args)) a.args = a.args.map((x) => (isAtom(x) ? withSpecFunctions(x) : x));
  if (atom instanceof FunctionAtom && atom.name in SPEC_FUNCTIONS) return new SpecFunctionAtom(atom.name, atom.args);
  return atom;
}

const cache = new Map<string, FhirPathAtom>();

/** The parsed expression, ready for `evalPath` (throws on a syntax error). */
export function compilePath(expression: string): FhirPathAtom {
  let compiled = cache.get(expression);
  if (!compiled) {
    compiled = parseFhirPath(expression);
    withSpecFunctions(compiled);
    if (cache.size > 5000) cache.clear();
    cache.set(expression, compiled);
  }
  return compiled;
}

/**
 * What is wrong with an expression in a view: syntax, functions no runner supports, variables
 * neither built in nor defined as constants. Empty when it can run.
 */
export function pathProblems(expression: string, constants: ReadonlySet<string>): string[] {
  let parsed: FhirPathAtom;
  try {
    parsed = compilePath(expression);
  } catch (e) {
    return [`invalid FHIRPath ${JSON.stringify(expression)}: ${(e as Error).message}`];
  }
  const problems: string[] = [];
  for (const atom of atoms(parsed)) {
    const name = (atom as { name?: unknown }).name;
    if ((atom instanceof FunctionAtom || atom instanceof SpecFunctionAtom) && !KNOWN_FUNCTIONS.has(atom.name)) {
      problems.push(`unknown FHIRPath function ${atom.name}()`);
    } else if (atom instanceof SymbolAtom && typeof name === 'string' && name.startsWith('%')) {
      const variable = name.slice(1).replace(/^`(.*)`$/, '$1');
      if (!constants.has(variable) && !BUILTIN_VARIABLES.includes(variable) && !variable.startsWith('vs-') && !variable.startsWith('ext-')) {
        problems.push(`undefined constant %${variable}`);
      }
    }
  }
  return problems;
}

/** Evaluates a compiled expression; `variables` are keyed with their % ('%rowIndex'). */
export function evalPath(expression: FhirPathAtom, input: TypedValue[], variables: Record<string, TypedValue>): TypedValue[] {
  return evalFhirPathTyped(expression, input, variables);
}

function typeName(atom: Atom): string | undefined {
  if (atom instanceof SymbolAtom) return atom.name.replace(/^`(.*)`$/, '$1');
  return undefined;
}

/** Type and id of a literal reference ("Patient/1", "http://x/fhir/Patient/1/_history/2"); undefined otherwise. */
export function parseReference(reference: unknown): { type: string; id: string } | undefined {
  if (typeof reference !== 'string') return undefined;
  const parts = reference.split('/');
  const history = parts.lastIndexOf('_history');
  const end = history > 0 ? history : parts.length;
  if (end < 2) return undefined;
  const type = parts[end - 2];
  const id = parts[end - 1];
  if (!/^[A-Z][A-Za-z]+$/.test(type) || !id) return undefined;
  return { type, id };
}

// lowBoundary/highBoundary (FHIRPath N2): the least/greatest value the input's precision allows.
function boundary(context: AtomContext, input: TypedValue[], precisionAtom: Atom | undefined, side: 'low' | 'high'): TypedValue[] {
  if (input.length !== 1) return [];
  const { type, value } = input[0];
  const precision = precisionAtom?.eval(context, input)[0]?.value as number | undefined;
  if (typeof value === 'number' && (type === 'decimal' || type === 'integer')) {
    return [{ type: 'decimal', value: decimalBoundary(value, precision, side) }];
  }
  if (typeof value !== 'string') return [];
  if (type === 'date') {
    const v = dateBoundary(value, side);
    return v ? [{ type: 'date', value: v }] : [];
  }
  if (type === 'dateTime' || type === 'instant') {
    const v = dateTimeBoundary(value, side);
    return v ? [{ type: 'dateTime', value: v }] : [];
  }
  if (type === 'time') {
    const v = timeBoundary(value, side);
    return v ? [{ type: 'time', value: v }] : [];
  }
  return [];
}

// A JSON number has lost its written precision: 1 and 1.0 are the same, so the precision is its
// decimal places, at least one (1 -> 0.95 .. 1.05, as the specification's suite expects).
function decimalBoundary(value: number, precision: number | undefined, side: 'low' | 'high'): number {
  const places = Math.max(1, (String(value).split('.')[1] ?? '').length);
  const half = 0.5 * 10 ** -places;
  const bound = side === 'low' ? value - half : value + half;
  const rounded = Number(bound.toFixed(places + 1));
  if (precision === undefined) return rounded;
  const factor = 10 ** precision;
  return (side === 'low' ? Math.floor(rounded * factor) : Math.ceil(rounded * factor)) / factor;
}

function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

function dateBoundary(value: string, side: 'low' | 'high'): string | undefined {
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/.exec(value);
  if (!m) return undefined;
  const year = m[1];
  const month = m[2] ?? (side === 'low' ? '01' : '12');
  const day = m[3] ?? (side === 'low' ? '01' : String(daysInMonth(Number(year), Number(month))).padStart(2, '0'));
  return `${year}-${month}-${day}`;
}

function timeBoundary(value: string, side: 'low' | 'high'): string | undefined {
  const m = /^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$/.exec(value);
  if (!m) return undefined;
  const fill = (part: string | undefined, low: string, high: string): string => part ?? (side === 'low' ? low : high);
  const fraction = m[4] !== undefined ? m[4].slice(0, 3).padEnd(3, side === 'low' ? '0' : '9') : side === 'low' ? '000' : '999';
  return `${m[1]}:${fill(m[2], '00', '59')}:${fill(m[3], '00', '59')}.${fraction}`;
}

// Without a zone, the earliest instant is at +14:00 and the latest at -12:00.
function dateTimeBoundary(value: string, side: 'low' | 'high'): string | undefined {
  const m = /^(\d{4}(?:-\d{2}(?:-\d{2})?)?)(?:T([0-9:.]+))?(Z|[+-]\d{2}:\d{2})?$/.exec(value);
  if (!m) return undefined;
  const date = dateBoundary(m[1], side);
  const time = timeBoundary(m[2] ?? '', side) ?? (side === 'low' ? '00:00:00.000' : '23:59:59.999');
  if (!date) return undefined;
  const zone = m[3] ?? (side === 'low' ? '+14:00' : '-12:00');
  return `${date}T${time}${zone}`;
}
