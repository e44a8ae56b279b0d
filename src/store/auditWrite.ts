// AuditEvents as rows (sql/021): one audit_events row per event, its search index in
// the row's key arrays, no locator, history or index-table rows. Many events go in one
// statement: the AuditEvents of concurrent reads (src/audit/writer.ts), the one of a
// write (in its transaction), a client's create.
import crypto from 'node:crypto';
import type pg from 'pg';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import { toRow } from '../../mappings/postgres/index.ts';
import { extractIndex } from '../../mappings/search/extract.ts';
import { rowKeys, type RowKeys } from '../../mappings/search/rowKeys.ts';
import { withServerFields } from '../fhir/jsonText.ts';

export interface AuditRow {
  id: string;
  json: string;
  lastUpdated: string;
  clinicalTime: string;
  patientId: string | null;
  keys: RowKeys;
}

/**
 * The row of an AuditEvent stored at `lastUpdated` (pure apart from a new id): id and
 * meta as a create sets them; `text`, the client's JSON text, is kept as sent otherwise.
 */
export function auditRow(event: AuditEvent, lastUpdated: string, id: string = crypto.randomUUID(), text?: string): AuditRow {
  const { id: _ignored, ...rest } = event;
  const meta = { ...rest.meta, versionId: '1', lastUpdated };
  const resource = { ...rest, id, meta } as Resource;
  const row = toRow(resource);
  return {
    id,
    json: text ? withServerFields(text, id, meta) : JSON.stringify(resource),
    lastUpdated,
    clinicalTime: row.clinicalTime ?? lastUpdated,
    patientId: (row.columns.patient_id as string | null) ?? null,
    keys: rowKeys(extractIndex(resource)),
  };
}

/**
 * Inserts a tenant's AuditEvents in one round trip (sql/021 kiln_insert_audit_events).
 * On a pool the statement commits by itself; on a transaction's client it is part of it.
 */
export async function insertAuditEvents(db: pg.Pool | pg.PoolClient, orgId: number, rows: AuditRow[]): Promise<void> {
  if (!rows.length) return;
  const meta = JSON.stringify(rows.map((r) => [r.id, r.lastUpdated, r.clinicalTime, r.patientId, r.keys.refKeys, r.keys.tokenKeys]));
  await db.query('SELECT kiln_insert_audit_events($1, $2, $3)', [orgId, meta, rows.map((r) => r.json).join('\x1e')]);
}
