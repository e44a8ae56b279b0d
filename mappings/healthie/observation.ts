// Healthie metric Entry <-> FHIR Observation. The category goes through the
// metric-category ConceptMap (LOINC code, UCUM unit, Observation category); a category
// without a LOINC code still maps (code.text and the Healthie metric-category coding).
// Blood pressure is a parent entry with systolic/diastolic subentries -> one panel
// Observation with two components.
import type { CodeableConcept, Observation, ObservationComponent, Quantity } from '@medplum/fhirtypes';
import type { HealthieEntry, HealthieSubentry, PatientContext } from './types.ts';
import type { HealthieMaps, MetricCode } from './conceptMaps.ts';
import { compact, extValue, healthieMeta, identifierValue, text } from './common.ts';
import { toFhirDateTime, toHealthieDateTime } from './dates.ts';
import { EXT, LOINC, OBS_CATEGORY, SYSTEM, UCUM } from './systems.ts';

function code(metric: MetricCode): CodeableConcept {
  return {
    coding: [
      ...(metric.loinc ? [compact({ system: LOINC, code: metric.loinc.code, display: metric.loinc.display })] : []),
      { system: SYSTEM.metricCategory, code: metric.category },
    ],
    text: metric.category,
  };
}

function quantity(value: number | null | undefined, metric: MetricCode): Quantity | undefined {
  if (value === null || value === undefined || !Number.isFinite(value)) return undefined;
  return metric.unit ? { value, unit: metric.unit.display, system: UCUM, code: metric.unit.code } : { value };
}

function component(sub: HealthieSubentry, maps: HealthieMaps): ObservationComponent {
  const metric = maps.metric(text(sub.category) ?? 'Unknown');
  return compact({
    extension: [{ url: EXT.entryId, valueString: sub.id }],
    code: code(metric),
    valueQuantity: quantity(sub.metric_stat, metric),
  });
}

export function entryToObservation(entry: HealthieEntry, maps: HealthieMaps, ctx: PatientContext): Observation {
  const category = text(entry.category) ?? 'Unknown';
  const metric = maps.metric(category);
  const subs = entry.subentries ?? [];
  const source = text(entry.third_party_source);
  return compact({
    resourceType: 'Observation' as const,
    meta: healthieMeta(ctx.source),
    identifier: [{ system: SYSTEM.entry, value: entry.id }],
    status: 'final' as const,
    category: metric.observationCategory ? [{ coding: [{ system: OBS_CATEGORY, code: metric.observationCategory }] }] : undefined,
    code: code(metric),
    subject: { reference: `Patient/${ctx.patientId}`, identifier: entry.poster?.id ? { system: SYSTEM.user, value: entry.poster.id } : undefined },
    effectiveDateTime: toFhirDateTime(entry.created_at),
    valueQuantity: subs.length ? undefined : quantity(entry.metric_stat, metric),
    note: text(entry.description) ? [{ text: text(entry.description)! }] : undefined,
    device: source ? { display: source } : undefined,
    component: subs.map((s) => component(s, maps)),
  });
}

// Healthie keeps no unit, so a FHIR value in another unit is converted to the
// practice's unit for that category; units we cannot convert are refused.
const CONVERSIONS: Record<string, (v: number) => number> = {
  'kg->[lb_av]': (v) => v / 0.45359237,
  'g->[lb_av]': (v) => v / 453.59237,
  'cm->[in_i]': (v) => v / 2.54,
  'm->[in_i]': (v) => v / 0.0254,
  'Cel->[degF]': (v) => v * 9 / 5 + 32,
  '[degF]->Cel': (v) => (v - 32) * 5 / 9,
  '[lb_av]->kg': (v) => v * 0.45359237,
  '[in_i]->cm': (v) => v * 2.54,
};

export class UnmappableObservation extends Error {}

function statFor(q: Quantity | undefined, metric: MetricCode): string | undefined {
  if (q?.value === undefined) return undefined;
  const from = q.code ?? q.unit;
  const to = metric.unit?.code;
  if (!to || !from || from === to) return String(q.value);
  const convert = CONVERSIONS[`${from}->${to}`];
  if (!convert) throw new UnmappableObservation(`Cannot convert ${from} to ${to} for Healthie metric '${metric.category}'`);
  return String(Math.round(convert(q.value) * 100) / 100);
}

/** The metric a FHIR code stands for: the Healthie coding, else a LOINC code in the ConceptMap. */
function metricOf(c: CodeableConcept | undefined, maps: HealthieMaps): MetricCode | undefined {
  const healthie = c?.coding?.find((x) => x.system === SYSTEM.metricCategory)?.code;
  if (healthie) return maps.metric(healthie);
  for (const coding of c?.coding ?? []) {
    if (coding.system === LOINC && coding.code) {
      const hit = maps.categoryForLoinc(coding.code);
      if (hit) return hit;
    }
  }
  return undefined;
}

/** createEntry / updateEntry variables for an Observation; throws UnmappableObservation for codes Healthie has no metric for. */
export function observationToEntryInputs(o: Observation, maps: HealthieMaps, clientId: string, healthieId?: string):
  { create: Record<string, unknown>; update: Record<string, unknown> } {
  const metric = metricOf(o.code, maps);
  if (!metric) throw new UnmappableObservation(`Observation code ${o.code?.coding?.map((c) => `${c.system}|${c.code}`).join(', ') ?? o.code?.text} has no Healthie metric category`);
  const subentries = (o.component ?? []).map((c) => {
    const m = metricOf(c.code, maps);
    if (!m) throw new UnmappableObservation('An Observation component has no Healthie metric category');
    return compact({ id: extValue(c.extension, EXT.entryId), category: m.category, metric_stat: statFor(c.valueQuantity, m), type: 'MetricEntry' });
  });
  const common = compact({
    category: metric.category,
    metric_stat: statFor(o.valueQuantity, metric),
    user_id: clientId,
    created_at: toHealthieDateTime(o.effectiveDateTime ?? o.effectiveInstant ?? o.effectivePeriod?.start),
    description: o.note?.[0]?.text,
    third_party_source: o.device?.display,
    subentries: subentries.length ? subentries : undefined,
  });
  return {
    create: { type: 'MetricEntry', ...common },
    update: compact({ id: healthieId ?? identifierValue(o.identifier, SYSTEM.entry), ...common }),
  };
}
