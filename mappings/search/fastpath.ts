// A fast evaluator for the simple FHIRPath shapes most search parameter expressions have:
//   Type.a.b            (Observation.component.code, Patient.name.given)
//   (Type.a as T)       (Observation.value as Quantity)   == Type.a.ofType(T)
//   (Type.a as T).b     ((Observation.value as CodeableConcept).text)
//   Type.a.where(b='x') (Patient.telecom.where(system='email'))
//   a.ofType(T)         (composite components, relative to a context of a known type)
// Element types (and choice-type keys such as valueQuantity) are resolved once, at compile
// time, from the StructureDefinitions Medplum has indexed, so evaluation is plain JSON
// navigation. Results are the same TypedValue lists Medplum's evalFhirPathTyped returns for
// these shapes (the test suite checks this on every example); anything else (functions,
// operators, unknown elements) returns undefined from compileFastPath and is left to Medplum.
import { tryGetDataType, type TypedValue } from '@medplum/core';

type Step =
  | { kind: 'prop'; byType: Map<string, { key: string; type: string }[]> }
  | { kind: 'ofType'; type: string }
  | { kind: 'whereEq'; key: string; literal: string };

export interface FastPath {
  eval(input: TypedValue[]): TypedValue[];
  /** The type of every result when it is a single known type (used to type composite contexts). */
  resultType?: string;
}

/** Splits on '.' outside parentheses and quotes. */
function splitDots(expr: string): string[] | undefined {
  const parts: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let start = 0;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === quote) quote = null;
    } else if (ch === "'" || ch === '"') quote = ch;
    else if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '.' && depth === 0) {
      parts.push(expr.slice(start, i).trim());
      start = i + 1;
    }
    if (depth < 0) return undefined;
  }
  if (depth !== 0 || quote) return undefined;
  parts.push(expr.slice(start).trim());
  return parts;
}

const NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
const OF_TYPE = /^ofType\(\s*(?:FHIR\.)?([A-Za-z][A-Za-z0-9]*)\s*\)$/;
const WHERE_EQ = /^where\(\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*'([^'\\]*)'\s*\)$/;
const AS_OPERATOR = /^\(\s*([^()]+?)\s+as\s+(?:FHIR\.)?([A-Za-z][A-Za-z0-9]*)\s*\)(.*)$/;
const AS_OPERATOR_BARE = /^([^()]+?)\s+as\s+(?:FHIR\.)?([A-Za-z][A-Za-z0-9]*)$/;

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/**
 * Compiles `expression` (one union branch) for inputs of type `contextType`. When `rooted`, the
 * expression starts with the type name (`Observation.code`) and the input is the resource;
 * otherwise it is relative to the input (`code`, `value.ofType(Quantity)`).
 */
export function compileFastPath(expression: string, contextType: string, rooted: boolean): FastPath | undefined {
  let expr = expression.trim();
  const as = AS_OPERATOR.exec(expr) ?? AS_OPERATOR_BARE.exec(expr);
  if (as) expr = `${as[1]}.ofType(${as[2]})${as[3] ?? ''}`;
  const parts = splitDots(expr);
  if (!parts || parts.some((p) => p === '')) return undefined;
  if (rooted) {
    if (parts[0] !== contextType) return undefined;
    parts.shift();
  }
  const steps: Step[] = [];
  let types: string[] = [contextType]; // possible types of the current items
  for (const part of parts) {
    let m: RegExpExecArray | null;
    if ((m = OF_TYPE.exec(part))) {
      steps.push({ kind: 'ofType', type: m[1] });
      types = types.includes(m[1]) ? [m[1]] : [];
      if (!types.length) return undefined; // would always be empty: let Medplum decide
    } else if ((m = WHERE_EQ.exec(part))) {
      steps.push({ kind: 'whereEq', key: m[1], literal: m[2] });
    } else if (NAME.test(part)) {
      const byType = new Map<string, { key: string; type: string }[]>();
      const resultTypes = new Set<string>();
      for (const t of types) {
        const schema = tryGetDataType(t);
        if (!schema) return undefined;
        const plain = schema.elements[part];
        const choice = schema.elements[`${part}[x]`];
        let candidates: { key: string; type: string }[];
        if (plain?.type?.length === 1) candidates = [{ key: part, type: plain.type[0].code }];
        else if (choice?.type?.length) candidates = choice.type.map((et) => ({ key: part + capitalize(et.code), type: et.code }));
        else return undefined;
        byType.set(t, candidates);
        for (const c of candidates) resultTypes.add(c.type);
      }
      steps.push({ kind: 'prop', byType });
      types = [...resultTypes];
    } else {
      return undefined;
    }
  }
  return { eval: (input) => run(steps, input), resultType: types.length === 1 ? types[0] : undefined };
}

function run(steps: Step[], input: TypedValue[]): TypedValue[] {
  let items = input;
  for (const step of steps) {
    const next: TypedValue[] = [];
    if (step.kind === 'prop') {
      for (const item of items) {
        const obj = item.value;
        if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) continue;
        const candidates = step.byType.get(item.type);
        if (!candidates) continue;
        for (const c of candidates) {
          const v = (obj as Record<string, unknown>)[c.key];
          if (v === undefined || v === null) continue;
          if (Array.isArray(v)) {
            for (const e of v) if (e !== undefined && e !== null) next.push({ type: c.type, value: e });
          } else {
            next.push({ type: c.type, value: v });
          }
          break; // a choice element has one value (Medplum takes the first key present)
        }
      }
    } else if (step.kind === 'ofType') {
      for (const item of items) if (item.type === step.type) next.push(item);
    } else {
      for (const item of items) {
        const obj = item.value;
        if (typeof obj === 'object' && obj !== null && (obj as Record<string, unknown>)[step.key] === step.literal) {
          next.push(item);
        }
      }
    }
    items = next;
    if (!items.length) break;
  }
  return items;
}
