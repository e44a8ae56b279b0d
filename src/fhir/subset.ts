// _summary and _elements (search.html#summary, #elements): a subset of each resource's
// top-level elements, marked with the SUBSETTED tag so nobody mistakes it for the whole.
import type { Bundle, StructureDefinition } from '@medplum/fhirtypes';

const summaryElements = new Map<string, Set<string>>();
const mandatoryElements = new Map<string, Set<string>>();

/** Reads which top-level elements are summary/mandatory, from the R4 resource definitions. */
export function loadSummaries(resources: Bundle): void {
  for (const e of resources.entry ?? []) {
    const sd = e.resource as StructureDefinition;
    if (sd?.resourceType !== 'StructureDefinition' || sd.kind !== 'resource' || !sd.type) continue;
    const summary = new Set<string>(['resourceType', 'id', 'meta']);
    const mandatory = new Set<string>(['resourceType', 'id', 'meta']);
    for (const el of sd.snapshot?.element ?? []) {
      const parts = el.path.split('.');
      if (parts.length !== 2) continue;
      const name = parts[1].replace('[x]', '');
      if (el.isSummary) summary.add(name);
      if ((el.min ?? 0) > 0) mandatory.add(name);
    }
    summaryElements.set(sd.type, summary);
    mandatoryElements.set(sd.type, mandatory);
  }
}

export type SummaryMode = 'true' | 'text' | 'data' | 'false';

const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' };

function keepKey(key: string, keep: Set<string>): boolean {
  // Choice elements (valueQuantity) are listed by their base name (value).
  return keep.has(key) || keep.has(key.replace(/[A-Z].*$/, ''));
}

/** The resource JSON reduced per _summary / _elements; unchanged when neither applies. */
export function subset(json: string, summary: SummaryMode | undefined, elements: string[] | undefined): string {
  if ((!summary || summary === 'false') && !elements) return json;
  const resource = JSON.parse(json) as Record<string, any>;
  const type = resource.resourceType as string;
  let keep: (key: string) => boolean;
  if (elements) {
    const set = new Set([...elements, ...(mandatoryElements.get(type) ?? [])]);
    keep = (k) => keepKey(k, set);
  } else if (summary === 'text') {
    const set = new Set(['text', ...(mandatoryElements.get(type) ?? [])]);
    keep = (k) => keepKey(k, set);
  } else if (summary === 'data') {
    keep = (k) => k !== 'text';
  } else {
    const set = summaryElements.get(type) ?? new Set();
    keep = (k) => keepKey(k, set);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(resource)) if (keep(k)) out[k] = v;
  out.meta = { ...(resource.meta ?? {}), tag: [...(resource.meta?.tag ?? []), SUBSETTED] };
  return JSON.stringify(out);
}
