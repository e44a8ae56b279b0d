import type { MedicationStatement } from '@medplum/fhirtypes';
import {
  commonColumns, dateTimeRange, orNull, periodRange, referenceId, toInstant, tokensOfCodeableConcepts,
  type MappedRow,
} from './common.ts';

function medicationText(m: MedicationStatement): string | null {
  const cc = m.medicationCodeableConcept;
  return cc?.text ?? cc?.coding?.find((c) => c.display)?.display ?? m.medicationReference?.display ?? null;
}

export function mapMedicationStatement(m: MedicationStatement): MappedRow {
  const effective = m.effectiveDateTime ? dateTimeRange(m.effectiveDateTime) : periodRange(m.effectivePeriod);
  const dateAsserted = toInstant(m.dateAsserted);
  return {
    columns: {
      ...commonColumns(m),
      patient_id: orNull(referenceId(m.subject, 'Patient')),
      encounter_id: orNull(referenceId(m.context, 'Encounter')),
      status: orNull(m.status),
      category_tokens: tokensOfCodeableConcepts([m.category]),
      // A referenced Medication's codes live in another resource; this row cannot see them.
      medication_tokens: tokensOfCodeableConcepts([m.medicationCodeableConcept]),
      medication_text: medicationText(m),
      effective_start: orNull(effective.start),
      effective_end: orNull(effective.end),
      date_asserted: orNull(dateAsserted),
    },
    clinicalTime: effective.start ?? dateAsserted,
  };
}
