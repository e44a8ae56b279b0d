// Resource -> relational row for the per-type tables of sql/001_schema.sql.
import type { Resource } from '@medplum/fhirtypes';
import { mapAuditEvent } from './auditEvent.ts';
import type { MappedRow } from './common.ts';
import { mapEncounter } from './encounter.ts';
import { mapGroup } from './group.ts';
import { mapMedicationStatement } from './medicationStatement.ts';
import { mapObservation } from './observation.ts';
import { mapPatient } from './patient.ts';

export { collectReferences } from './references.ts';
export { referenceId } from './common.ts';
export type { MappedRow } from './common.ts';

/** A registry keyed by names from requests: no prototype, so `TABLES['toString']` is undefined. */
function registry<T>(entries: Record<string, T>): Record<string, T> {
  return Object.freeze(Object.assign(Object.create(null) as Record<string, T>, entries));
}

export const TABLES: Record<string, string> = registry({
  Patient: 'patients',
  Encounter: 'encounters',
  Observation: 'observations',
  MedicationStatement: 'medication_statements',
  AuditEvent: 'audit_events',
  Group: 'groups',
});

/**
 * Where queries read a type's rows, `resource` being the JSON text: its table, but for
 * AuditEvent the view that renders the server's events from their stored parts (sql/027).
 */
export const READ_FROM: Record<string, string> = registry({ ...TABLES, AuditEvent: 'audit_event_resources' });

/** Types whose tables are RANGE-partitioned on clinical_time. */
export const TIME_PARTITIONED = new Set(['Encounter', 'Observation', 'MedicationStatement', 'AuditEvent']);

export interface Row extends MappedRow {
  table: string;
}

export function toRow(resource: Resource): Row {
  const table = Object.hasOwn(TABLES, resource?.resourceType ?? '') ? TABLES[resource.resourceType] : undefined;
  if (!table) throw new Error(`no table for resource type ${String(resource?.resourceType)}`);
  return { table, ...mapByType(resource) };
}

function mapByType(r: Resource): MappedRow {
  switch (r.resourceType) {
    case 'Patient': return mapPatient(r);
    case 'Encounter': return mapEncounter(r);
    case 'Observation': return mapObservation(r);
    case 'MedicationStatement': return mapMedicationStatement(r);
    case 'AuditEvent': return mapAuditEvent(r);
    case 'Group': return mapGroup(r);
    default: throw new Error(`no mapping for resource type ${r.resourceType}`);
  }
}
