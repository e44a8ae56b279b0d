// AuditEvents as rows (sql/021): one audit_events row per event, its search index in
// the row's key arrays, no locator, history or index-table rows. Many events go in one
// statement: the AuditEvents of concurrent reads (src/audit/writer.ts), the one of a
// write (in its transaction), a client's create.
import crypto from 'node:crypto';
import type pg from 'pg';
import type { AuditEvent } from '@medplum/fhirtypes';
import { toRow } from '../../mappings/postgres/index.ts';
import { resourceKeys, type RowKeys } from '../../mappings/search/rowKeys.ts';
import { withServerFields } from '../fhir/jsonText.ts';
import { stmt } from './statements.ts';
import type { AuditPart } from '../audit/eventText.ts';

/**
 * One event to store: whole (`json`: a client's, an older server's queue), or as the
 * server records its own, a shared part and the event's detail (sql/027,
 * src/audit/eventText.ts: the detail ends where its lastUpdated's value begins).
 */
export type AuditRow = {
  id: string;
  lastUpdated: string;
  clinicalTime: string;
  keys: RowKeys;
} & ({ json: string; part?: undefined; detail?: undefined } | { json?: undefined; part: AuditPart; detail: string });

/**
 * A UUIDv7 (RFC 9562): the creation time in its first 48 bits, so new AuditEvents go to
 * the right-hand edge of the primary key instead of random leaf pages (each of which
 * costs a full-page image in the WAL after every checkpoint), and id order is time order.
 */
export function timeOrderedId(now = Date.now()): string {
  // randomUUID draws from a buffered entropy cache (randomBytes costs a syscall per call):
  // its random bits, with the time in front and the version nibble set to 7.
  const time = now.toString(16).padStart(12, '0');
  const random = crypto.randomUUID();
  return `${time.slice(0, 8)}-${time.slice(8)}-7${random.slice(15)}`;
}

/**
 * The row of an AuditEvent stored at `lastUpdated` (pure apart from a new id): id and
 * meta as a create sets them; `text`, the client's JSON text, is kept as sent otherwise.
 * `keys`: the key extraction (the general one unless the caller knows the event's shape).
 */
export function auditRow(event: AuditEvent, lastUpdated: string, opts: { id?: string; text?: string; keys?: (r: AuditEvent) => RowKeys } = {}): AuditRow & { json: string } {
  const { id = timeOrderedId(), text, keys = resourceKeys } = opts;
  const resource: AuditEvent = { ...event, id, meta: { ...event.meta, versionId: '1', lastUpdated } };
  return {
    id,
    json: text ? withServerFields(text, id, resource.meta!) : JSON.stringify(resource),
    lastUpdated,
    // An event recorded at the instant it is stored (the server's own) needs no date parsing.
    clinicalTime: event.recorded === lastUpdated ? lastUpdated : toRow(resource).clinicalTime ?? lastUpdated,
    keys: keys(resource),
  };
}

/**
 * Inserts a tenant's AuditEvents in one round trip (sql/027 kiln_insert_audit_events).
 * On a pool the statement commits by itself; on a transaction's client it is part of it.
 * `parts`: the parts to store first (by default every part the rows name; stored parts
 * are skipped by the database, so the group commit sends only those it has not stored).
 * `stamp`: the rows were made before this transaction began (the group commit), so their
 * lastUpdated is taken again inside it, where an export's transaction time can count on
 * it; only rows sent as part and detail can be stamped (their text is closed there).
 */
export async function insertAuditEvents(db: pg.Pool | pg.PoolClient, orgId: number, rows: AuditRow[],
  opts: { stamp?: boolean; parts?: AuditPart[] } = {}): Promise<void> {
  const { stamp = false, parts = partsOf(rows) } = opts;
  if (!rows.length && !parts.length) return;
  let partText = '';
  for (let i = 0; i < parts.length; i++) partText += `${i ? '\x1e' : ''}${parts[i].id}\x1f${parts[i].json}`;
  let meta = '';
  let bodies = '';
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    // Fields joined by U+001F, keys by U+001D: an id and instants hold neither, keys never (rowKeys.ts).
    meta += `${i ? '\x1e' : ''}${r.id}\x1f${r.lastUpdated}\x1f${r.clinicalTime}\x1f${r.keys.refKeys.join('\x1d')}\x1f${r.keys.tokenKeys.join('\x1d')}\x1f${r.part ? r.part.id : ''}`;
    bodies += (i ? '\x1e' : '') + (r.part ? r.detail : r.json);
  }
  await db.query(stmt('SELECT kiln_insert_audit_events($1, $2, $3, $4, $5)', [orgId, partText, meta, bodies, stamp]));
}

/** The distinct parts that rows name. */
export function partsOf(rows: AuditRow[]): AuditPart[] {
  const seen = new Map<string, AuditPart>();
  for (const r of rows) if (r.part && !seen.has(r.part.id)) seen.set(r.part.id, r.part);
  return [...seen.values()];
}
