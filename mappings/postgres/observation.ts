import type { Observation } from '@medplum/fhirtypes';
import {
  commonColumns, dateTimeRange, orNull, periodRange, referenceId, toEndInstant, toInstant,
  tokensOfCodeableConcepts, type MappedRow,
} from './common.ts';

// One range per effective[x] choice, so a date search can test overlap.
function effectiveRange(o: Observation): { start?: string; end?: string } {
  if (o.effectiveDateTime) return dateTimeRange(o.effectiveDateTime);
  if (o.effectivePeriod) return periodRange(o.effectivePeriod);
  if (o.effectiveInstant) return dateTimeRange(o.effectiveInstant);
  const events = o.effectiveTiming?.event;
  if (events && events.length > 0) {
    // Events need not be sorted: the range spans the earliest start to the latest end.
    const starts = events.map(toInstant).filter((s): s is string => !!s).sort();
    const ends = events.map(toEndInstant).filter((s): s is string => !!s).sort();
    return { start: starts[0], end: ends[ends.length - 1] };
  }
  return {};
}

export function mapObservation(o: Observation): MappedRow {
  const effective = effectiveRange(o);
  const issued = toInstant(o.issued);
  const quantity = o.valueQuantity;
  return {
    columns: {
      ...commonColumns(o),
      patient_id: orNull(referenceId(o.subject, 'Patient')),
      encounter_id: orNull(referenceId(o.encounter, 'Encounter')),
      status: orNull(o.status),
      category_tokens: tokensOfCodeableConcepts(o.category),
      code_tokens: tokensOfCodeableConcepts([o.code]),
      effective_start: orNull(effective.start),
      effective_end: orNull(effective.end),
      issued: orNull(issued),
      value_quantity: orNull(quantity?.value),
      value_unit: orNull(quantity?.code ?? quantity?.unit),
      value_code_tokens: tokensOfCodeableConcepts([o.valueCodeableConcept]),
      value_string: orNull(o.valueString),
    },
    clinicalTime: effective.start ?? issued,
  };
}
