// Value normalisation for search index rows: the implicit precision range of FHIR
// date/dateTime/instant values and of decimals, and string normalisation. Pure.

/** Lower bound used for a Period without a start. */
export const MIN_INSTANT = '0001-01-01T00:00:00.000Z';
/** Upper bound used for a Period without an end (and a cap for ranges running past year 9999). */
export const MAX_INSTANT = '9999-12-31T23:59:59.999Z';

// date | dateTime | instant. A time without seconds is not valid FHIR but is accepted (minute precision).
const FHIR_TIME =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

export type DatePrecision = 'year' | 'month' | 'day' | 'minute' | 'second' | 'fraction';

export interface DateRange {
  /** Inclusive start, UTC ISO instant. */
  lo: string;
  /** Exclusive end, UTC ISO instant (capped at MAX_INSTANT). */
  hi: string;
  precision: DatePrecision;
}

function utcDate(y: number, mo: number, d: number, h = 0, mi = 0, s = 0, ms = 0): Date {
  const date = new Date(Date.UTC(2000, mo, d, h, mi, s, ms));
  date.setUTCFullYear(y); // Date.UTC maps years 0-99 to 1900-1999
  return date;
}

function iso(ms: number): string {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime()) || d.getUTCFullYear() > 9999) return MAX_INSTANT;
  if (d.getUTCFullYear() < 1) return MIN_INSTANT;
  return d.toISOString();
}

/**
 * The precision range of a FHIR date, dateTime or instant, as UTC instants: `lo` inclusive,
 * `hi` exclusive. '2013' -> [2013-01-01, 2014-01-01); '2013-04-02T10:30+02:00' -> one minute;
 * '...T10:30:15Z' -> one second; '...T10:30:15.5Z' -> 100 ms; '...T10:30:15.123Z' -> 1 ms
 * (more than 3 fraction digits: truncated to the millisecond, +1 ms).
 * Values without a timezone, including plain dates, are taken as UTC.
 * Undefined for anything that is not such a value or is not a real calendar date/time.
 */
export function dateRange(value: unknown): DateRange | undefined {
  if (typeof value !== 'string') return undefined;
  const m = FHIR_TIME.exec(value);
  if (!m) return undefined;
  const [, ys, mos, ds, hs, mis, ss, frac, tz] = m;
  const y = Number(ys);
  const mo = mos ? Number(mos) - 1 : 0;
  const d = ds ? Number(ds) : 1;
  const h = hs ? Number(hs) : 0;
  const mi = mis ? Number(mis) : 0;
  const s = ss ? Number(ss) : 0;
  const ms = frac ? Number((frac + '00').slice(0, 3)) : 0; // digits, not float math
  if (y < 1 || mo > 11 || h > 23 || mi > 59 || s > 59) return undefined;
  const local = utcDate(y, mo, d, h, mi, s, ms);
  if (local.getUTCMonth() !== mo || local.getUTCDate() !== d) return undefined; // e.g. 2013-02-30
  let offsetMin = 0;
  if (tz && tz !== 'Z') {
    const oh = Number(tz.slice(1, 3));
    const om = Number(tz.slice(4, 6));
    if (oh > 14 || om > 59) return undefined;
    offsetMin = (tz[0] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const start = local.getTime() - offsetMin * 60_000;
  let precision: DatePrecision;
  let end: number;
  if (frac) {
    precision = 'fraction';
    end = start + (frac.length >= 3 ? 1 : 10 ** (3 - frac.length));
  } else if (ss) {
    precision = 'second';
    end = start + 1000;
  } else if (hs) {
    precision = 'minute';
    end = start + 60_000;
  } else {
    precision = ds ? 'day' : mos ? 'month' : 'year';
    const e = utcDate(y, mo, d);
    if (precision === 'year') e.setUTCFullYear(y + 1);
    else if (precision === 'month') e.setUTCMonth(mo + 1);
    else e.setUTCDate(d + 1);
    end = e.getTime() - offsetMin * 60_000;
  }
  return { lo: iso(start), hi: iso(end), precision };
}

export interface DecimalRange {
  lo: number;
  hi: number;
}

/**
 * The implicit precision range of a decimal from its significant digits: half a unit of the last
 * digit either side, lo inclusive and hi exclusive. 5.4 -> [5.35, 5.45); 100 -> [99.5, 100.5);
 * 0.001 -> [0.0005, 0.0015); 1e-7 -> [5e-8, 1.5e-7).
 * `text` is the value as written when known; JSON numbers arrive as JS numbers, so trailing
 * zeros ("5.40") are already lost and the shortest round-trip form (String(n)) is used.
 * The bounds are computed in decimal (BigInt) and rounded once, so no float drift (5.35, not 5.3500000000000005).
 */
export function decimalRange(value: number, text?: string): DecimalRange | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined;
  const s = (text ?? String(value)).trim().toLowerCase();
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:e([+-]?\d+))?$/.exec(s);
  if (!m || (m[2] === '' && !m[3])) return { lo: value, hi: value };
  const [, sign, intPart, fracPart = '', expPart] = m;
  // value = sign * D * 10^exp with D the digit string; the half unit is 5 at exponent exp - 1,
  // so the bounds are the digit strings D5 and (D-1)5 at that exponent.
  const d = (intPart + fracPart).replace(/^0+(?=\d)/, '') || '0';
  const exp = (expPart ? Number(expPart) : 0) - fracPart.length - 1;
  const up = `${d}5`;
  const down = d === '0' ? '-5' : `${d.length < 16 ? Number(d) - 1 : BigInt(d) - 1n}5`;
  const a = Number(`${down}e${exp}`);
  const b = Number(`${up}e${exp}`);
  return sign === '-' ? { lo: -b, hi: -a } : { lo: a, hi: b };
}

/**
 * Search form of a string: Unicode NFD with combining marks removed, lower case, runs of
 * whitespace collapsed to one space, trimmed. "Zoë  Émile" -> "zoe emile".
 */
export function normalizeString(value: string): string {
  const base = ASCII.test(value) ? value : value.normalize('NFD').replace(/\p{M}+/gu, '');
  return base.toLowerCase().replace(/\s+/g, ' ').trim();
}

const ASCII = /^[\x00-\x7f]*$/;
