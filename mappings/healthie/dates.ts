// Healthie's baseline API writes date-times as "2025-01-14 10:00:00 -0600"; FHIR wants
// "2025-01-14T10:00:00-06:00". Newer API versions send ISO 8601, which passes through.

const HEALTHIE_DATETIME = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(Z|UTC|[+-]\d{2}:?\d{2})?$/;

/** A Healthie date-time as a FHIR dateTime (undefined when it cannot be read). */
export function toFhirDateTime(value: string | null | undefined): string | undefined {
  if (!value) return undefined;
  const m = HEALTHIE_DATETIME.exec(value.trim());
  if (!m) return /^\d{4}-\d{2}-\d{2}$/.test(value) ? value : undefined;
  const time = m[2].length === 5 ? `${m[2]}:00` : m[2];
  const zone = !m[3] || m[3] === 'UTC' ? 'Z' : m[3] === 'Z' ? 'Z' : m[3].includes(':') ? m[3] : `${m[3].slice(0, 3)}:${m[3].slice(3)}`;
  return `${m[1]}T${time}${zone}`;
}

/** A FHIR dateTime in Healthie's format ("YYYY-MM-DD HH:MM:SS -ZZZZ"). */
export function toHealthieDateTime(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(value);
  if (!m) return value;
  const zone = m[3] === 'Z' ? '+0000' : m[3].replace(':', '');
  return `${m[1]} ${m[2]} ${zone}`;
}

/** Milliseconds since the epoch of a Healthie or FHIR date-time (NaN when unreadable). */
export function epochMs(value: string | null | undefined): number {
  const iso = toFhirDateTime(value ?? undefined);
  return iso ? Date.parse(iso) : NaN;
}

/** FHIR dateTime plus some minutes, keeping the original offset. */
export function addMinutes(fhirDateTime: string, minutes: number): string {
  const m = /(Z|[+-]\d{2}:\d{2})$/.exec(fhirDateTime);
  const offset = m?.[1] ?? 'Z';
  const offsetMin = offset === 'Z' ? 0 : (offset[0] === '-' ? -1 : 1) * (Number(offset.slice(1, 3)) * 60 + Number(offset.slice(4, 6)));
  const local = new Date(Date.parse(fhirDateTime) + (minutes + offsetMin) * 60_000).toISOString().slice(0, 19);
  return `${local}${offset}`;
}
