// Pure helpers shared by the per-type row mappings: token arrays, FHIR time
// ranges and reference parsing. No I/O here.
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
export function commonColumns(r: { identifier?: Identifier[]; meta?: Meta }): Record<string, string[]> {
  return { identifier_tokens: identifierTokens(r.identifier), ...metaTokens(r.meta) };
}

// FHIR date | dateTime | instant. Time without seconds is not valid FHIR but is accepted.
const FHIR_TIME =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

interface ParsedTime {
  start: Date;
  precision: 'year' | 'month' | 'day' | 'time';
}

function utc(y: number, mo: number, d: number, h = 0, mi = 0, s = 0, ms = 0): Date {
  const date = new Date(Date.UTC(2000, mo, d, h, mi, s, ms));
  date.setUTCFullYear(y); // Date.UTC maps years 0-99 to 1900-1999
  return date;
}

function parseFhirTime(value: string): ParsedTime | undefined {
  const m = FHIR_TIME.exec(value);
  if (!m) return undefined;
  const [, ys, mos, ds, hs, mis, ss, frac, tz] = m;
  const y = Number(ys);
  const mo = mos ? Number(mos) - 1 : 0;
  const d = ds ? Number(ds) : 1;
  const h = hs ? Number(hs) : 0;
  const mi = mis ? Number(mis) : 0;
  const s = ss ? Number(ss) : 0;
  const ms = frac ? Number((frac.slice(1) + '00').slice(0, 3)) : 0; // digits, not float math: .029 must stay 29 ms
  const local = utc(y, mo, d, h, mi, s, ms);
  // Reject overflow such as 2013-02-30 or 25:00 instead of letting Date roll it over.
  if (local.getUTCMonth() !== mo || local.getUTCDate() !== d || local.getUTCHours() !== h ||
      local.getUTCMinutes() !== mi || local.getUTCSeconds() !== s) return undefined;
  let offsetMin = 0;
  if (tz && tz !== 'Z') {
    const oh = Number(tz.slice(1, 3));
    const om = Number(tz.slice(4, 6));
    if (oh > 14 || om > 59) return undefined;
    offsetMin = (tz[0] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const start = new Date(local.getTime() - offsetMin * 60_000);
  const precision = hs ? 'time' : ds ? 'day' : mos ? 'month' : 'year';
  return { start, precision };
}

/** Start of the value's precision range as a UTC ISO instant; undefined when absent or unparseable. */
export function toInstant(value: string | undefined): string | undefined {
  if (typeof value !== 'string') return undefined;
  return parseFhirTime(value)?.start.toISOString();
}

/** Exclusive end of the value's precision range ("2013" -> 2014-01-01); a value with a time is its own end. */
export function toEndInstant(value: string | undefined): string | undefined {
  if (typeof value !== 'string') return undefined;
  const p = parseFhirTime(value);
  if (!p) return undefined;
  const end = new Date(p.start.getTime());
  if (p.precision === 'year') end.setUTCFullYear(end.getUTCFullYear() + 1);
  else if (p.precision === 'month') end.setUTCMonth(end.getUTCMonth() + 1);
  else if (p.precision === 'day') end.setUTCDate(end.getUTCDate() + 1);
  return end.toISOString();
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
