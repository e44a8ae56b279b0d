// Many AuditEvents in one statement. They are new resources with server-assigned ids,
// so none of writeResource's per-resource work applies (no lock, no version check, no
// reference check: an audit record may name a resource that does not exist). The rows
// are the ones writeResource writes for a create: the locator (version 1), the history
// version, the audit_events row (mappings/postgres) and the search index rows
// (mappings/search), so the events read, search, page and export like any resource.
import crypto from 'node:crypto';
import type { AuditEvent, Resource } from '@medplum/fhirtypes';
import { toRow } from '../../mappings/postgres/index.ts';
import { extractIndex, type IndexRows } from '../../mappings/search/extract.ts';
import { SPECS } from './searchIndex.ts';
import type { Tx } from './resources.ts';

export interface PreparedAudit {
  id: string;
  json: string;
  lastUpdated: string;
  clinicalTime: string;
  columns: Record<string, unknown>;
  index: IndexRows;
}

/** Assigns id and meta as a create does and maps the row and index rows (pure apart from the id). */
export function prepareAuditEvent(event: AuditEvent, lastUpdated: string, id: string = crypto.randomUUID()): PreparedAudit {
  const { id: _ignored, ...rest } = event;
  const meta = { ...rest.meta, versionId: '1', lastUpdated };
  const resource = { ...rest, id, meta } as Resource;
  const row = toRow(resource);
  return {
    id,
    json: JSON.stringify(resource),
    lastUpdated,
    clinicalTime: row.clinicalTime ?? lastUpdated,
    columns: row.columns,
    index: extractIndex(resource),
  };
}

/** Inserts prepared events into the tenant the transaction is bound to, in one round trip. */
export async function insertAuditEvents(tx: Tx, events: PreparedAudit[]): Promise<void> {
  if (!events.length) return;
  const values: unknown[] = [];
  const p = (v: unknown) => { values.push(v); return `$${values.length}`; };
  const org = `current_setting('app.org_id')::integer`;
  const ids = p(events.map((e) => e.id));
  const updated = p(events.map((e) => e.lastUpdated));
  const times = p(events.map((e) => e.clinicalTime));
  const bodies = p(events.map((e) => e.json));
  const ctes = [
    `ids AS (INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted, clinical_time)
       SELECT ${org}, 'AuditEvent', u.id, 1, u.at, false, u.t FROM unnest(${ids}::text[], ${updated}::timestamptz[], ${times}::timestamptz[]) AS u(id, at, t))`,
    `history AS (INSERT INTO resource_history (org_id, resource_type, id, version_id, last_updated, method, resource)
       SELECT ${org}, 'AuditEvent', u.id, 1, u.at, 'POST', u.body::json
         FROM unnest(${ids}::text[], ${updated}::timestamptz[], ${bodies}::text[]) AS u(id, at, body))`,
  ];
  SPECS.forEach((spec, i) => {
    const owners: string[] = [];
    const ownerTimes: string[] = [];
    const cols: unknown[][] = spec.columns.map(() => []);
    for (const e of events) {
      for (const r of e.index[spec.key] as unknown[]) {
        owners.push(e.id);
        ownerTimes.push(e.clinicalTime);
        spec.columns.forEach(([, , get], c) => cols[c].push(get(r)));
      }
    }
    if (!owners.length) return;
    const arrays = [`${p(owners)}::text[]`, `${p(ownerTimes)}::timestamptz[]`, ...spec.columns.map(([, sqlType], c) => `${p(cols[c])}::${sqlType}[]`)];
    ctes.push(`idx_${i} AS (INSERT INTO ${spec.table} (org_id, resource_type, id, clinical_time, ${spec.columns.map(([c]) => c).join(', ')})
       SELECT ${org}, 'AuditEvent', u.* FROM unnest(${arrays.join(', ')}) AS u)`);
  });
  // The typed rows: every AuditEvent maps to the same columns; json_populate_recordset
  // types each one by the table's own column types (text[] included).
  const names = Object.keys(events[0].columns);
  const rows = events.map((e) => ({ ...e.columns, id: e.id, last_updated: e.lastUpdated, clinical_time: e.clinicalTime }));
  await tx.query(`WITH ${ctes.join(',\n')}
    INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, ${names.join(', ')})
    SELECT ${org}, r.id, 1, r.last_updated, r.clinical_time, (${bodies}::text[])[r.ordinality]::json, ${names.map((n) => `r.${n}`).join(', ')}
      FROM json_populate_recordset(null::audit_events, ${p(JSON.stringify(rows))}::json) WITH ORDINALITY AS r`, values);
}
