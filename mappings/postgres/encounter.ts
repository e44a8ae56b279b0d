import type { Encounter } from '@medplum/fhirtypes';
import { commonColumns, orNull, periodRange, referenceId, tokensOfCodeableConcepts, type MappedRow } from './common.ts';

export function mapEncounter(e: Encounter): MappedRow {
  const period = periodRange(e.period);
  return {
    columns: {
      ...commonColumns(e),
      patient_id: orNull(referenceId(e.subject, 'Patient')),
      status: orNull(e.status),
      class_code: orNull(e.class?.code),
      type_tokens: tokensOfCodeableConcepts(e.type),
      period_start: orNull(period.start),
      period_end: orNull(period.end),
    },
    clinicalTime: period.start,
  };
}
