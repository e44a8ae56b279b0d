import type { AuditEvent } from '@medplum/fhirtypes';
import { toInstant, type MappedRow } from './common.ts';

// An AuditEvent row is its time (recorded, the partition key) and its search keys, which
// the store fills from the search index (mappings/search/rowKeys.ts, sql/021).
export function mapAuditEvent(a: AuditEvent): MappedRow {
  return { columns: {}, clinicalTime: toInstant(a.recorded) };
}
