// Stores a page of new resources in a constant number of statements per type, with the rows
// writeResource would store one by one: locator, history (its outbox trigger still fires per
// row), type table, search index and, for Encounters, the hub. Per-resource statements, each
// planned on execution (sql/006), were most of a bulk import's database time.
import crypto from 'node:crypto';
import type { Resource } from '@medplum/fhirtypes';
import { TIME_PARTITIONED, toRow } from '../../mappings/postgres/index.ts';
import { extractIndex, type IndexRows } from '../../mappings/search/extract.ts';
import { ROW_KEYED_TYPES } from '../../mappings/search/rowKeys.ts';
import { withServerFields } from '../fhir/jsonText.ts';
import { unprocessable } from '../fhir/outcome.ts';
import { SPECS } from './searchIndex.ts';
import { stmt } from './statements.ts';
import {
  instant, localReferences, params, tableOf, writeResource, type Tx, type WriteRequest, type WriteResult,
} from './resources.ts';

const ORG = `current_setting('app.org_id')::integer`;
/** Bind parameters per statement stay well under PostgreSQL's 65,535. */
const MAX_PARAMS = 30_000;

interface Planned {
  req: WriteRequest;
  id: string;
  refs: { type: string; id: string }[];
  /** Writes of this call a reference here names (written before it, as writeResource in order would need). */
  level: number;
  result?: WriteResult;
}

/**
 * Creates `reqs` (POST, no If-Match; an id, when given, is one the server handed out and no
 * resource has) as writeResource would in request order: version 1, a lastUpdated taken once
 * the transaction has its id (one instant for the call), local references checked (422 when
 * one does not resolve; another resource of the call counts when it comes earlier). Nothing is
 * written before every check passed, so a FhirError leaves the transaction usable. Row-keyed
 * types (AuditEvent) go through writeResource one by one. Results are in request order.
 */
export async function createMany(tx: Tx, reqs: WriteRequest[]): Promise<WriteResult[]> {
  const planned: Planned[] = [];
  const position = new Map<string, number>();
  for (const req of reqs) {
    if (req.method !== 'POST' || req.ifMatch !== undefined || req.mustExist) throw new Error('createMany stores new resources only (POST, no If-Match)');
    tableOf(req.type);
    const id = req.id ?? (ROW_KEYED_TYPES.has(req.type) ? '' : crypto.randomUUID());
    const key = `${req.type}/${id}`;
    if (id && position.has(key)) throw new Error(`createMany was given ${key} twice`);
    const refs = ROW_KEYED_TYPES.has(req.type) ? [] : localReferences(req.resource, req.type, id);
    let level = 0;
    for (const r of refs) {
      const at = position.get(`${r.type}/${r.id}`);
      // A resource of another type must be stored by an earlier statement; one of the same type may share its insert.
      if (at !== undefined) level = Math.max(level, planned[at].level + (r.type === req.type ? 0 : 1));
    }
    if (id) position.set(key, planned.length);
    planned.push({ req, id, refs, level });
  }
  if (!planned.length) return [];
  const now = await checkReferences(tx, planned, position);

  const groups = new Map<string, Planned[]>();
  for (const w of [...planned].sort((a, b) => a.level - b.level)) {
    const k = `${w.level}/${w.req.type}`;
    const g = groups.get(k);
    if (g) g.push(w); else groups.set(k, [w]);
  }
  for (const group of groups.values()) {
    if (ROW_KEYED_TYPES.has(group[0].req.type)) {
      for (const w of group) w.result = await writeResource(tx, w.req);
    } else {
      await insertGroup(tx, group, now);
    }
  }
  return planned.map((w) => w.result!);
}

/**
 * One statement for the whole call: which references resolve nowhere (as lockId checks them,
 * AuditEvents by a statement of their own), and the write instant, taken once the transaction
 * has its id (an export's transaction time relies on that, src/store/exportRows.ts). Throws the
 * 422 writeResource gives for the first request with a reference that does not resolve.
 */
async function checkReferences(tx: Tx, planned: Planned[], position: Map<string, number>): Promise<string> {
  const located = new Map<string, { type: string; id: string }>();
  const audited = new Set<string>();
  planned.forEach((w, i) => {
    for (const r of w.refs) {
      const at = position.get(`${r.type}/${r.id}`);
      if (at !== undefined && at < i) continue;
      if (ROW_KEYED_TYPES.has(r.type)) audited.add(r.id);
      else located.set(`${r.type}/${r.id}`, r);
    }
  });
  const refs = [...located.values()];
  const { rows } = await tx.query(stmt(
    `SELECT pg_current_xact_id() IS NOT NULL AS xid, ${instant("date_trunc('milliseconds', clock_timestamp())")} AS now,
       ARRAY(SELECT t.type || '/' || t.id FROM unnest($1::text[], $2::text[]) AS t(type, id)
              WHERE NOT EXISTS (SELECT 1 FROM resource_ids r
                                 WHERE r.org_id = ${ORG} AND r.resource_type = t.type
                                   AND r.id = t.id AND NOT r.deleted AND r.version_id > 0)) AS missing`,
    [refs.map((r) => r.type), refs.map((r) => r.id)]));
  const missing = new Set<string>(rows[0].missing);
  if (audited.size) {
    const { rows: absent } = await tx.query(
      `SELECT ARRAY(SELECT 'AuditEvent/' || t.id FROM unnest($1::text[]) AS t(id)
                     WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.org_id = ${ORG} AND a.id = t.id)) AS missing`,
      [[...audited]]);
    for (const m of absent[0].missing) missing.add(m);
  }
  if (missing.size) {
    planned.forEach((w, i) => {
      const earlier = (r: { type: string; id: string }) => { const at = position.get(`${r.type}/${r.id}`); return at !== undefined && at < i; };
      const keys = (audit: boolean) => w.refs.filter((r) => ROW_KEYED_TYPES.has(r.type) === audit && !earlier(r)).map((r) => `${r.type}/${r.id}`).filter((k) => missing.has(k));
      const gone = [...keys(false), ...keys(true)];
      if (gone.length) throw unprocessable(`Reference${gone.length > 1 ? 's' : ''} not found: ${gone.join(', ')}`);
    });
  }
  return rows[0].now;
}

interface Built {
  w: Planned;
  cols: Record<string, unknown>;
  json: string;
  clinicalTime: string | null;
  index: IndexRows;
}

/** A group of one type: the hub rows (Encounter), then locator, history, index and table rows in one statement per chunk. */
async function insertGroup(tx: Tx, group: Planned[], now: string): Promise<void> {
  const type = group[0].req.type;
  const table = tableOf(type);
  const built: Built[] = group.map((w) => {
    const meta = { ...w.req.resource.meta, versionId: '1', lastUpdated: now };
    const resource = { ...w.req.resource, id: w.id, meta } as Resource;
    const row = toRow(resource);
    const clinicalTime = TIME_PARTITIONED.has(type) ? (row.clinicalTime ?? now) : null;
    const json = w.req.text ? withServerFields(w.req.text, w.id, meta) : JSON.stringify(resource);
    const cols: Record<string, unknown> = {
      ...row.columns, version_id: 1, last_updated: now, resource: json, ...(clinicalTime ? { clinical_time: clinicalTime } : {}),
    };
    w.result = { resource, json, versionId: 1, lastUpdated: now, created: true };
    return { w, cols, json, clinicalTime, index: extractIndex(resource) };
  });
  if (type === 'Encounter') {
    // The hub row carries the encounter's patient; clinical rows reference it.
    await tx.query(stmt(
      `INSERT INTO clinical_events (org_id, encounter_id, patient_id)
       SELECT ${ORG}, u.id, u.patient_id FROM unnest($1::text[], $2::text[]) AS u(id, patient_id)
       ON CONFLICT (org_id, encounter_id) DO UPDATE SET patient_id = EXCLUDED.patient_id`,
      [built.map((b) => b.w.id), built.map((b) => b.cols.patient_id ?? null)]));
  }
  const names: string[] = [];
  for (const b of built) for (const n of Object.keys(b.cols)) if (!names.includes(n)) names.push(n);
  const size = Math.max(1, Math.floor(MAX_PARAMS / (names.length + 2)));
  for (let k = 0; k < built.length; k += size) await insertChunk(tx, type, table, names, built.slice(k, k + size), now);
}

async function insertChunk(tx: Tx, type: string, table: string, names: string[], chunk: Built[], now: string): Promise<void> {
  const { values, p } = params();
  const t = p(type);
  const at = p(now);
  const ids = p(chunk.map((b) => b.w.id));
  const times = p(chunk.map((b) => b.clinicalTime));
  const ctes = [
    `locator AS (INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted, clinical_time)
       SELECT ${ORG}, ${t}, u.id, 1, ${at}, false, u.clinical_time FROM unnest(${ids}::text[], ${times}::timestamptz[]) AS u(id, clinical_time))`,
    `history AS (INSERT INTO resource_history (org_id, resource_type, id, version_id, last_updated, method, resource)
       SELECT ${ORG}, ${t}, u.id, 1, ${at}, u.method, u.json::json
         FROM unnest(${ids}::text[], ${p(chunk.map((b) => b.w.req.method))}::text[], ${p(chunk.map((b) => b.json))}::text[]) AS u(id, method, json))`,
  ];
  // Index rows of every resource of the chunk, one insert per index table (src/store/searchIndex.ts).
  SPECS.forEach((spec, i) => {
    const rowIds: string[] = [];
    const rowTimes: (string | null)[] = [];
    const columns: unknown[][] = spec.columns.map(() => []);
    for (const b of chunk) {
      for (const r of b.index[spec.key] as unknown[]) {
        rowIds.push(b.w.id);
        rowTimes.push(b.clinicalTime);
        spec.columns.forEach(([, , get], c) => columns[c].push(get(r)));
      }
    }
    if (!rowIds.length) return;
    const arrays = [`${p(rowIds)}::text[]`, `${p(rowTimes)}::timestamptz[]`, ...spec.columns.map(([, sqlType], c) => `${p(columns[c])}::${sqlType}[]`)];
    ctes.push(`idx_ins_${i} AS (INSERT INTO ${spec.table} (org_id, resource_type, id, clinical_time, ${spec.columns.map(([c]) => c).join(', ')})
       SELECT ${ORG}, ${t}, u.* FROM unnest(${arrays.join(', ')}) AS u)`);
  });
  // A column a resource's mapping leaves out keeps its default, as writeResource's insert leaves it.
  const rows = chunk.map((b) => `(${ORG}, ${p(b.w.id)}, ${names.map((n) => (Object.hasOwn(b.cols, n) ? p(b.cols[n]) : 'DEFAULT')).join(', ')})`);
  await tx.query(`WITH ${ctes.join(',\n')}
    INSERT INTO ${table} (org_id, id, ${names.join(', ')}) VALUES ${rows.join(',\n')}`, values);
}
