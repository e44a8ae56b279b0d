// Small helpers shared by the Healthie mappings.
import type { Coding, Extension, Identifier, Meta, Resource } from '@medplum/fhirtypes';
import { DEFAULT_SOURCE, HEALTHIE_TAG } from './systems.ts';

/** Healthie sends "" and null for "no value"; FHIR allows neither. */
export function text(v: string | number | null | undefined): string | undefined {
  if (v === null || v === undefined) return undefined;
  const s = String(v).trim();
  return s === '' ? undefined : s;
}

export function healthieMeta(source: string | undefined, extraTags: Coding[] = []): Meta {
  return { source: source ?? DEFAULT_SOURCE, tag: [{ ...HEALTHIE_TAG }, ...extraTags] };
}

export const stringExt = (url: string, value: string | undefined): Extension[] =>
  value === undefined ? [] : [{ url, valueString: value }];

export function extValue(exts: Extension[] | undefined, url: string): string | undefined {
  const e = exts?.find((x) => x.url === url);
  return e?.valueString ?? e?.valueCode ?? e?.valueUrl ?? (e?.valueInteger !== undefined ? String(e.valueInteger) : undefined);
}

export function identifierValue(ids: Identifier[] | undefined, system: string): string | undefined {
  return ids?.find((i) => i.system === system)?.value;
}

export function hasTag(r: Resource, system: string, code: string): boolean {
  return !!r.meta?.tag?.some((t) => t.system === system && t.code === code);
}

/** Drops undefined members so mapped resources compare and serialize cleanly. */
export function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && !(Array.isArray(v) && v.length === 0))) as T;
}

/** A Patient reference from a resource's subject ("Patient/123" -> "123"). */
export function patientIdOf(ref: string | undefined): string | undefined {
  return /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(ref ?? '')?.[1];
}
