// Search conditions on the key arrays of row-keyed types (AuditEvent; sql/021,
// mappings/search/rowKeys.ts): the resource row `r` holds its own index as `ref_keys`
// (GIN-indexed) and `token_keys` (not indexed), so a criterion is a condition on the
// row instead of an EXISTS over index rows. searchSql.ts decides which criterion
// takes which form; everything here is SQL text with pg parameters.
import type { SearchParamDef } from '../../mappings/search/definitions.ts';
import { codeKey, isRefKeyParam, presenceKey, refKey, refTypeKey, tokenKey } from '../../mappings/search/rowKeys.ts';
import { referenceTarget } from '../search/criteria.ts';

/**
 * How a search writes its ref_keys lookups: runSearch collects them (`seen`) in a first
 * pass, asks which are `common` in the tenant, and builds again (see refKeysCond).
 */
export interface KeyForms {
  common?: (keys: string[]) => boolean;
  seen?: string[][];
}

/** A statement's parameter binder, carrying the search's key forms when it has them. */
type P = ((v: unknown) => string) & { keyForms?: KeyForms };

const likeEscape = (s: string) => s.replace(/[\\%_]/g, '\\$&');

/**
 * The rows of `type` in the bound tenant whose ref_keys hold any of the keys (an SQL
 * text[] expression), as a FROM item with columns id, clinical_time: through a function
 * that runs without RLS and applies the tenant itself (sql/021), because under RLS the
 * planner will not use the GIN index for `&&`, which is not leakproof.
 */
export function rowsWithKeys(type: string, keysSql: string): string {
  if (type !== 'AuditEvent') throw new Error(`no key lookup for ${type}`);
  return `kiln_audit_events_with_keys(${keysSql})`;
}

/** Row `r` of `type` holds any of the keys in ref_keys (see rowsWithKeys). */
export function hasRefKeys(type: string, r: string, keysSql: string): string {
  return `(${r}.id, ${r}.clinical_time) IN (SELECT w.id, w.clinical_time FROM ${rowsWithKeys(type, keysSql)} w)`;
}

/**
 * Row `r` holds one of `keys` in ref_keys. Keys that are common in the tenant are checked
 * on the rows the search walks in its order (RLS allows `&&` as a filter), which stops at
 * a page; others go through the GIN index (hasRefKeys), which finds every match.
 */
function refKeysCond(type: string, r: string, keys: string[], p: P): string {
  p.keyForms?.seen?.push(keys);
  return p.keyForms?.common?.(keys) ? `${r}.ref_keys && ${p(keys)}::text[]` : hasRefKeys(type, r, `${p(keys)}::text[]`);
}

/** The array column a parameter's keys live in. */
function keyColumn(param: string, isReference: boolean): 'ref_keys' | 'token_keys' {
  return isRefKeyParam(param, isReference) ? 'ref_keys' : 'token_keys';
}

/**
 * The row holds one of `keys`, or a key starting with one of `prefixes`. Exact keys are
 * one `&&` (the GIN index serves it on ref_keys); prefixes need a look at every key of
 * the row (a filter on rows found otherwise).
 */
function anyKeyCond(type: string, r: string, column: 'ref_keys' | 'token_keys', keys: string[], prefixes: string[], p: P): string {
  const col = `${r}.${column}`;
  const conds: string[] = [];
  if (keys.length) conds.push(column === 'ref_keys' ? refKeysCond(type, r, keys, p) : `${col} && ${p(keys)}::text[]`);
  if (prefixes.length) conds.push(`EXISTS (SELECT 1 FROM unnest(${col}) k WHERE k LIKE ANY(${p(prefixes)}::text[]))`);
  return conds.length ? `(${conds.join(' OR ')})` : 'false';
}

/**
 * Token values (`code`, `system|code`, `|code`, `system|`) of the rows of `params`, OR'd.
 * The params are all in one column (token parameters, or `:identifier` tokens).
 */
export function tokenKeysCond(type: string, params: string[], values: string[], r: string, p: P): string {
  const keys: string[] = [];
  const prefixes: string[] = [];
  for (const v of values) {
    const bar = v.indexOf('|');
    for (const param of params) {
      if (bar < 0) keys.push(codeKey(param, v));
      else if (v.slice(bar + 1) === '') prefixes.push(`${likeEscape(tokenKey(param, v.slice(0, bar), ''))}%`);
      else keys.push(tokenKey(param, v.slice(0, bar) || null, v.slice(bar + 1)));
    }
  }
  return anyKeyCond(type, r, keyColumn(params[0], false), keys, prefixes, p);
}

/**
 * Reference values of `def` (stored as `params`, of `targetType` when set): `Type/id` or a
 * URL ending in it (that URL also as written: a canonical's key, rowKeys.ts), a bare id (of
 * each allowed target type, or of the `:Type` modifier), another URL as written. A value of
 * another type than `targetType` matches nothing.
 */
export function referenceKeysCond(type: string, def: SearchParamDef, params: string[], targetType: string | undefined,
  modifier: string | undefined, values: string[], r: string, p: P): string {
  const keys: string[] = [];
  const prefixes: string[] = [];
  for (const v of values) {
    const t = referenceTarget(v, modifier);
    if (t.url) {
      if (!targetType) keys.push(...params.map((x) => refKey(x, t.url!)));
      continue;
    }
    if (t.text && !targetType) keys.push(...params.map((x) => refKey(x, t.text!)));
    if (t.type && targetType && t.type !== targetType) continue;
    const types = t.type ? [t.type] : targetType ? [targetType] : def.target;
    for (const x of params) {
      // A reference parameter without declared targets: a key of any type with that id.
      if (!types) prefixes.push(`${likeEscape(refKey(x, ''))}%/${likeEscape(t.id!)}`);
      else keys.push(...types.map((ty) => refKey(x, `${ty}/${t.id}`)));
    }
  }
  return anyKeyCond(type, r, 'ref_keys', keys, prefixes, p);
}

/** `:missing=false` condition: the row holds a value of one of `params` (of `targetType` when set). */
export function presentCond(params: string[], targetType: string | undefined, r: string, p: P): string {
  const keys = params.map((x) => (targetType ? refTypeKey(x, targetType) : presenceKey(x)));
  return `${r}.token_keys && ${p(keys)}::text[]`;
}

/** Row `r` of `type` references one of `targets` (`Type/id`) through one of `params` (the GIN index). */
export function refersToCond(type: string, params: string[], targets: string[], r: string, p: P): string {
  return refKeysCond(type, r, params.flatMap((x) => targets.map((t) => refKey(x, t))), p);
}

/** The ids of `targetType` that row `r` references through `params`, as an SQL array (for chains). */
export function referencedIds(params: string[], targetType: string, r: string, p: P): string {
  // `param>Type/id`: neither a parameter code nor a type holds a '/', an id never does.
  const prefixes = params.map((x) => `${likeEscape(refTypeKey(x, targetType))}%`);
  return `ARRAY(SELECT split_part(k, '/', 2) FROM unnest(${r}.ref_keys) k WHERE k LIKE ANY(${p(prefixes)}::text[]))`;
}

/** The keys with which a row references the resource `Type/<idSql>` through `params` (for _has), as an SQL array. */
export function keysNaming(params: string[], type: string, idSql: string, p: P): string {
  return `ARRAY[${params.map((x) => `${p(refKey(x, `${type}/`))}::text || ${idSql}`).join(', ')}]`;
}

/**
 * Sort value of a token (its codes) or reference (its targets, `Type/id` or URL) parameter
 * stored as `params`: the least (greatest when descending) one, NULL when none.
 */
export function keySortValue(def: SearchParamDef, params: string[], targetType: string | undefined, desc: boolean, r: string, p: P): string {
  const reference = def.type === 'reference';
  const prefixes = params.map((x) => `${likeEscape(reference ? refKey(x, targetType ? `${targetType}/` : '') : codeKey(x, ''))}%`);
  const sep = reference ? '>' : '#';
  return `(SELECT ${desc ? 'max' : 'min'}(substr(k, strpos(k, '${sep}') + 1)) FROM unnest(${r}.${keyColumn(params[0], reference)}) k
      WHERE k LIKE ANY(${p(prefixes)}::text[]))`;
}
