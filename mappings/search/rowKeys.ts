// Types whose search index lives in their own row (sql/021): AuditEvent. Every access
// writes one, so it is stored as a single row with its index as two text arrays instead
// of a locator, a history version and index rows in the shared tables. The same
// extraction (extract.ts) fills both kinds of index, so both search alike. Pure: no I/O.
//
// Key forms (a parameter code holds only [a-z0-9-:], so the character after it tells
// the forms apart):
//   `param=system|code`  a token (`param=|code` when the coding has no system)
//   `param#code`         a token's code, in any system
//   `param>Type/id`      a reference to a local resource (`param>url` for other references)
//   `param>Type/`        the parameter holds a reference of that type (for :missing with a target type)
//   `param?`             the parameter holds a value (for :missing)
// Reference and identifier keys (selective) go to `ref_keys`, which has a GIN index; the
// rest (a few codes shared by most rows, presence) to `token_keys`, which has none: an
// index over them would cost every insert and serve no selective search.
import type { Resource } from '@medplum/fhirtypes';
import { extractIndex, type IndexRows } from './extract.ts';

export const ROW_KEYED_TYPES: ReadonlySet<string> = new Set(['AuditEvent']);

/** The date parameter of each row-keyed type that is the row's clinical_time (AuditEvent `date` = recorded). */
export const ROW_TIME_PARAM: Readonly<Record<string, string>> = { AuditEvent: 'date' };

/** The keys of a row-keyed resource: its index rows (extractIndex), but for the row time, a column of the row. */
export function resourceKeys(resource: Resource): RowKeys {
  const time = ROW_TIME_PARAM[resource.resourceType];
  return rowKeys(extractIndex(resource, time ? { skip: [time] } : undefined));
}

export interface RowKeys {
  refKeys: string[];
  tokenKeys: string[];
}

/** U+001D-U+001F separate keys and fields in the insert's row text (sql/026); FHIR strings
 * should not hold them (a client's cannot: validation), a token's claims might. A value's
 * key holds U+FFFD in their place, on the way in and in searches alike. */
const SEPARATOR = /[\x1d-\x1f]/;
const SEPARATORS = /[\x1d-\x1f]/g;
const clean = (key: string): string => (SEPARATOR.test(key) ? key.replace(SEPARATORS, '\ufffd') : key);

export const tokenKey = (param: string, system: string | null, code: string): string => clean(`${param}=${system ?? ''}|${code}`);
export const codeKey = (param: string, code: string): string => clean(`${param}#${code}`);
export const refKey = (param: string, target: string): string => clean(`${param}>${target}`);
export const refTypeKey = (param: string, type: string): string => clean(`${param}>${type}/`);
export const presenceKey = (param: string): string => `${param}?`;

/** Whether a key of this parameter lives in ref_keys (references, `:identifier` tokens). */
export function isRefKeyParam(param: string, isReference: boolean): boolean {
  return isReference || param.endsWith(':identifier');
}

/** The keys of a row-keyed resource's index rows (tokens and references; dates are the row's clinical time). */
export function rowKeys(index: IndexRows): RowKeys {
  const ref = new Set<string>();
  const tok = new Set<string>();
  for (const t of index.tokens) {
    if (t.code === null) continue;
    const into = isRefKeyParam(t.param, false) ? ref : tok;
    into.add(tokenKey(t.param, t.system, t.code));
    into.add(codeKey(t.param, t.code));
    tok.add(presenceKey(t.param));
  }
  for (const r of index.references) {
    if (r.targetType && r.targetId) {
      ref.add(refKey(r.param, `${r.targetType}/${r.targetId}`));
      tok.add(refTypeKey(r.param, r.targetType));
    } else {
      ref.add(refKey(r.param, r.reference));
    }
    tok.add(presenceKey(r.param));
  }
  return { refKeys: [...ref], tokenKeys: [...tok] };
}

/** `Type/id` targets in a row's ref_keys of the given parameters (for _include), any parameter when undefined. */
export function refKeyTargets(keys: string[], params: string[] | undefined): { param: string; type: string; id: string }[] {
  const out: { param: string; type: string; id: string }[] = [];
  for (const k of keys) {
    const m = /^([a-z0-9-]+)>([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(k);
    if (m && (!params || params.includes(m[1]))) out.push({ param: m[1], type: m[2], id: m[3] });
  }
  return out;
}
