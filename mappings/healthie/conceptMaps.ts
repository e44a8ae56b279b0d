// Code translations between Healthie strings and FHIR codes live in ConceptMap JSON
// files beside this module, so a practice can change them without code. This module
// reads them once and answers lookups both ways; the mapping functions take the result.
import fs from 'node:fs';
import path from 'node:path';
import type { ConceptMap, ConceptMapGroupElementTarget } from '@medplum/fhirtypes';
import { OBS_CATEGORY, UCUM } from './systems.ts';
import { fromRoot } from '../../src/paths.ts';

export interface MetricCode {
  category: string;
  loinc?: { code: string; display?: string };
  unit?: { code: string; display: string };
  observationCategory?: string;
}

export interface HealthieMaps {
  contactTypeToClass(contactType: string | null | undefined): string;
  classToContactType(classCode: string): string | undefined;
  pmStatusToStatus(pmStatus: string): { status: string; reason?: string } | undefined;
  statusToPmStatus(status: string): string | undefined;
  metric(category: string): MetricCode;
  /** The Healthie category for a LOINC code (undefined when none is mapped). */
  categoryForLoinc(loinc: string): MetricCode | undefined;
}

export const CONCEPT_MAP_DIR = fromRoot('mappings', 'healthie');
export const CONCEPT_MAP_FILES = {
  contactType: 'contact-type-to-encounter-class.json',
  pmStatus: 'pm-status-to-encounter-status.json',
  metric: 'metric-category-to-loinc.json',
} as const;

interface Entry { source: string; target: ConceptMapGroupElementTarget }

function entries(map: ConceptMap): Entry[] {
  return (map.group ?? []).flatMap((g) => (g.element ?? []).flatMap((e) => (e.target ?? []).map((t) => ({ source: e.code!, target: t }))));
}

const key = (s: string) => s.trim().toLowerCase();

/** Builds lookups from ConceptMap resources (pure: no I/O). */
export function buildMaps(contactType: ConceptMap, pmStatus: ConceptMap, metric: ConceptMap): HealthieMaps {
  const ctEntries = entries(contactType);
  const ctForward = new Map(ctEntries.map((e) => [key(e.source), e.target.code!]));
  const ctDefault = contactType.group?.[0]?.unmapped?.code ?? 'AMB';
  const pmEntries = entries(pmStatus);
  const pmForward = new Map(pmEntries.map((e) => [e.source, { status: e.target.code!, reason: e.target.comment }]));
  const metricEntries = entries(metric);
  const metricCodes = new Map<string, MetricCode>();
  for (const e of metricEntries) {
    const unit = e.target.product?.find((p) => p.property === UCUM);
    const cat = e.target.product?.find((p) => p.system === OBS_CATEGORY);
    metricCodes.set(key(e.source), {
      category: e.source,
      loinc: { code: e.target.code!, display: e.target.display },
      unit: unit?.value ? { code: unit.value, display: unit.display ?? unit.value } : undefined,
      observationCategory: cat?.value,
    });
  }
  const preferred = (list: Entry[], code: string) =>
    list.find((e) => e.target.code === code && e.target.equivalence === 'equivalent')?.source;
  return {
    contactTypeToClass(ct) {
      if (!ct) return ctDefault;
      const hit = ctForward.get(key(ct));
      if (hit) return hit;
      // Contact types are free text per practice; a video one is virtual whatever its name.
      return /video|zoom|tele/i.test(ct) ? 'VR' : ctDefault;
    },
    classToContactType: (code) => preferred(ctEntries, code),
    pmStatusToStatus: (pm) => pmForward.get(pm),
    statusToPmStatus: (status) => preferred(pmEntries, status),
    metric: (category) => metricCodes.get(key(category)) ?? { category },
    categoryForLoinc(loinc) {
      const source = preferred(metricEntries, loinc);
      return source === undefined ? undefined : metricCodes.get(key(source));
    },
  };
}

function readMap(dir: string, file: string): ConceptMap {
  const map = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as ConceptMap;
  if (map.resourceType !== 'ConceptMap') throw new Error(`${file} is not a ConceptMap`);
  return map;
}

const cache = new Map<string, HealthieMaps>();

/** The ConceptMaps of a directory (default: this one, or KILN_HEALTHIE_CONCEPTMAPS), read once. */
export function loadMaps(dir = process.env.KILN_HEALTHIE_CONCEPTMAPS || CONCEPT_MAP_DIR): HealthieMaps {
  let maps = cache.get(dir);
  if (!maps) {
    maps = buildMaps(readMap(dir, CONCEPT_MAP_FILES.contactType), readMap(dir, CONCEPT_MAP_FILES.pmStatus), readMap(dir, CONCEPT_MAP_FILES.metric));
    cache.set(dir, maps);
  }
  return maps;
}
