// Resource -> relational row for the per-type tables of sql/001_schema.sql.
import type { Resource } from '@medplum/fhirtypes';
import { mapAuditEvent } from './auditEvent.ts';
import { commonColumns, type MappedRow } from './common.ts';
import { mapEncounter } from './encounter.ts';
import { mapGroup } from './group.ts';
import { mapMedicationStatement } from './medicationStatement.ts';
import { mapObservation } from './observation.ts';
import { mapPatient } from './patient.ts';
import { RESOURCE_TYPES, registry } from '../resourceTypes.ts';

export { collectReferences } from './references.ts';
export { referenceId } from './common.ts';
export type { MappedRow } from './common.ts';

/** The table of every type without one of its own (sql/031): keyed (org_id, resource_type, id). */
export const GENERIC_TABLE = 'resources';

/** Types with a table of their own, with relational columns and database constraints. */
const FIRST_CLASS: Record<string, string> = {
  Patient: 'patients',
  Encounter: 'encounters',
  Observation: 'observations',
  MedicationStatement: 'medication_statements',
  AuditEvent: 'audit_events',
  Group: 'groups',
};

/**
 * The table of every stored type (mappings/resourceTypes.ts lists them), the first-class
 * types first: lists derived from it (export order, CapabilityStatement) start with them.
 */
export const TABLES: Readonly<Record<string, string>> = registry(Object.fromEntries([
  ...Object.entries(FIRST_CLASS),
  ...RESOURCE_TYPES.filter((t) => !Object.hasOwn(FIRST_CLASS, t)).map((t) => [t, GENERIC_TABLE]),
]));

/**
 * Where queries read a type's rows (`r.resource` the JSON text, `r.id`, `r.last_updated`):
 * its table; for AuditEvent the view that renders the server's events from their stored
 * parts (sql/027); for a generic type its rows of the generic table, as a subquery that
 * PostgreSQL flattens into the query (the type is a constant of the registry, never input).
 */
export const READ_FROM: Readonly<Record<string, string>> = registry(Object.fromEntries(Object.keys(TABLES).map((t) => [t,
  t === 'AuditEvent' ? 'audit_event_resources'
    : TABLES[t] === GENERIC_TABLE ? `(SELECT * FROM ${GENERIC_TABLE} WHERE resource_type = '${t}')` : TABLES[t]])));

/** Types whose row holds `patient_id`, the Patient its subject names. */
export const PATIENT_COLUMN = new Set(['Encounter', 'Observation', 'MedicationStatement']);

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
    // The generic table: the columns every resource table shares, and the type in the key.
    default: return { columns: { ...commonColumns(r), resource_type: r.resourceType } };
  }
}
