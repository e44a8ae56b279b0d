import type { AuditEvent } from '@medplum/fhirtypes';
import { referenceId, toInstant, type MappedRow } from './common.ts';

// The patient the event is about, for patient-level $export: an entity first, since an
// agent Patient is only the actor. Searches use the row's keys (mappings/search/rowKeys.ts).
function patientId(a: AuditEvent): string | null {
  const candidates = [...(a.entity ?? []).map((e) => e.what), ...(a.agent ?? []).map((g) => g.who)];
  for (const ref of candidates) {
    const id = referenceId(ref, 'Patient');
    if (id) return id;
  }
  return null;
}

export function mapAuditEvent(a: AuditEvent): MappedRow {
  return { columns: { patient_id: patientId(a) }, clinicalTime: toInstant(a.recorded) };
}
