// Pure helpers shared by the per-type row mappings: token arrays, FHIR time
// ranges and reference parsing. No I/O here.
import { dateRange } from '../search/precision.ts';
import type { CodeableConcept, Coding, Identifier, Meta, Period, Reference } from '@medplum/fhirtypes';

/** What a mapping returns: the type-specific column values, plus the clinical time for partitioned tables. */
export interface MappedRow {
  columns: Record<string, unknown>;
  clinicalTime?: string;
}

/** `system|code` and `|code` for each coding (only `|code` when there is no system), deduplicated in order. */
export function tokensOfCodings(codings: readonly (Coding | undefined)[] | undefined): string[] {
  const out = new Set<string>();
  for (const c of codings ?? []) {
    if (typeof c?.code !== 'string' || c.code === '') continue;
    if (c.system) out.add(`${c.system}|${c.code}`);
    out.add(`|${c.code}`);
  }
  return [...out];
}

export function tokensOfCodeableConcepts(ccs: readonly (CodeableConcept | undefined)[] | undefined): string[] {
  return tokensOfCodings((ccs ?? []).flatMap((cc) => cc?.coding ?? []));
}

/** `system|value` and `|value` for each identifier that has a value. */
export function identifierTokens(identifiers: readonly Identifier[] | undefined): string[] {
  const out = new Set<string>();
  for (const id of identifiers ?? []) {
    if (typeof id?.value !== 'string' || id.value === '') continue;
    if (id.system) out.add(`${id.system}|${id.value}`);
    out.add(`|${id.value}`);
  }
  return [...out];
}

/** Profiles and tags; security labels go into tags too so `_security` and `_tag` can share one index. */
export function metaTokens(meta: Meta | undefined): { profiles: string[]; tags: string[] } {
  const profiles = [...new Set((meta?.profile ?? []).filter((p): p is string => typeof p === 'string' && p !== ''))];
  const tags = tokensOfCodings([...(meta?.tag ?? []), ...(meta?.security ?? [])]);
  return { profiles, tags };
}

/** The three columns every resource table has. */
export function commonColumns(r: { identifier?: Identifier | Identifier[]; meta?: Meta }): Record<string, string[]> {
  // Some types (AdverseEvent, QuestionnaireResponse, ...) have one identifier, not a list.
  const identifiers = r.identifier === undefined || Array.isArray(r.identifier) ? r.identifier : [r.identifier];
  return { identifier_tokens: identifierTokens(identifiers), ...metaTokens(r.meta) };
}

// FHIR date | dateTime | instant. Time without seconds is not valid FHIR but is accepted.
/** Start of the value's precision range as a UTC ISO instant; undefined when absent or unparseable. */
export function toInstant(value: string | undefined): string | undefined {
  return dateRange(value)?.lo;
}

/** Exclusive end of the value's precision range ("2013" -> 2014-01-01); a value with a time is its own end. */
export function toEndInstant(value: string | undefined): string | undefined {
  const r = dateRange(value);
  if (!r) return undefined;
  return r.precision === 'year' || r.precision === 'month' || r.precision === 'day' ? r.hi : r.lo;
}

/** Start/end instants of a Period; the end is widened to the end of its precision. */
export function periodRange(period: Period | undefined): { start?: string; end?: string } {
  return { start: toInstant(period?.start), end: toEndInstant(period?.end) };
}

/** Start/end instants of a single dateTime. */
export function dateTimeRange(value: string | undefined): { start?: string; end?: string } {
  return { start: toInstant(value), end: toEndInstant(value) };
}

const ID = '[A-Za-z0-9\\-.]{1,64}';
const referenceIdPatterns = new Map<string, RegExp>();

/**
 * The id when `ref.reference` is `Type/id` or an absolute URL ending in `/Type/id`,
 * optionally followed by `/_history/n`; undefined for other types, fragments,
 * conditional references and identifier-only references.
 */
export function referenceId(ref: Reference | undefined, type: string): string | undefined {
  const reference = ref?.reference;
  if (typeof reference !== 'string' || !/^[A-Z][A-Za-z]*$/.test(type)) return undefined;
  let re = referenceIdPatterns.get(type);
  if (!re) {
    re = new RegExp(`^(?:[A-Za-z][A-Za-z0-9+.-]*://[^?#]*/)?${type}/(${ID})(?:/_history/${ID})?$`);
    referenceIdPatterns.set(type, re);
  }
  return re.exec(reference)?.[1];
}

/** Turns undefined into null, since row values must be explicit. */
export function orNull<T>(value: T | undefined): T | null {
  return value === undefined ? null : value;
}
