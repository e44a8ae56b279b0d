// Versioned resource storage: every write locks the id's locator row, appends a
// history version and upserts the current row of the type's partitioned table.
import crypto from 'node:crypto';
import type pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { GENERIC_TABLE, READ_FROM, TABLES, TIME_PARTITIONED, toRow, collectReferences } from '../../mappings/postgres/index.ts';
import { withServerFields } from '../fhir/jsonText.ts';
import { extractIndex } from '../../mappings/search/extract.ts';
import { indexCtes } from './searchIndex.ts';
import { stmt } from './statements.ts';
import { ROW_KEYED_TYPES } from '../../mappings/search/rowKeys.ts';
import { auditRow, insertAuditEvents } from './auditWrite.ts';
import type { AuditEvent } from '@medplum/fhirtypes';
import { FhirError, badRequest, gone, notFound, preconditionFailed, unprocessable } from '../fhir/outcome.ts';
import type { Logger } from 'pino';
import { log } from '../log.ts';

export type Tx = pg.PoolClient;


/**
 * Per pool, the statement timeout (ms) withTenant sets in each transaction: SET LOCAL, so it
 * holds behind PgBouncer in transaction mode (a startup parameter would not), and only where
 * openDatabase asked for it (request traffic, not a long export COPY).
 */
const statementTimeouts = new WeakMap<pg.Pool, string>();

export function limitStatements(pool: pg.Pool, timeoutMs: number): void {
  if (timeoutMs > 0) statementTimeouts.set(pool, `${Math.floor(timeoutMs)}ms`);
}

const BIND_TENANT = "SELECT set_config('app.org_id', $1, true)";
const BIND_TENANT_LIMITED = "SELECT set_config('app.org_id', $1, true), set_config('statement_timeout', $2, true)";

/** Runs fn in one transaction bound to a tenant: RLS sees only org rows. */
export async function withTenant<T>(pool: pg.Pool, orgId: number, fn: (tx: Tx) => Promise<T>): Promise<T> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (e) {
    throw translatePgError(e); // unreachable database, or no free connection within the pool's wait
  }
  try {
    await client.query('BEGIN');
    const timeout = statementTimeouts.get(pool);
    await client.query(timeout ? stmt(BIND_TENANT_LIMITED, [String(orgId), timeout]) : stmt(BIND_TENANT, [String(orgId)]));
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw translatePgError(e);
  } finally {
    client.release(); // a connection that failed is not queryable, and the pool drops it
  }
}

/** Seconds a client is told to wait (Retry-After) when the database cannot serve it now. */
export const RETRY_AFTER_SECONDS = 2;

/**
 * The database cannot serve the request now (connection lost or refused, restarting, no
 * free connection, a statement over the time limit): 503 with Retry-After, nothing about
 * the request is wrong. Deliberately not a FhirError: callers that treat a FhirError as the
 * input's own fault (a Healthie delivery given up as permanent) must retry this one.
 */
export class DatabaseUnavailable extends Error {
  readonly status = 503;
  readonly retryAfter = RETRY_AFTER_SECONDS;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DatabaseUnavailable';
  }
}

/** Node socket errors of a connection to the database that went away or never came. */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED']);
/** PostgreSQL: the server is shutting down, crashed, starting, or out of connection slots. */
const SERVER_CODES = new Set(['57P01', '57P02', '57P03', '53300']);
/** pg and pg-pool say these in words only: a connection that ended, a pool wait that ran out, a pool closed by a stop, a query_timeout. */
const LOST_MESSAGE = /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Client was closed and is not queryable|Cannot use a pool after calling end|Query read timeout)/;

/**
 * The one test of "the database cannot serve now": connection-class errors (SQLSTATE class
 * 08, 57P01-03, 53300, socket errors, pg's own words), and a statement the timeout
 * cancelled (57014). Anything else is undefined: a real error of the request or a bug.
 */
export function databaseUnavailable(e: unknown): DatabaseUnavailable | undefined {
  if (e instanceof DatabaseUnavailable) return e;
  const err = e as { code?: unknown; message?: unknown; errors?: unknown } | null;
  if (!err || typeof err !== 'object') return undefined;
  const code = typeof err.code === 'string' ? err.code : '';
  const message = typeof err.message === 'string' ? err.message : '';
  if (code === '57014') {
    return new DatabaseUnavailable(/statement timeout/.test(message)
      ? 'The request took longer than the server allows a database statement (KILN_STATEMENT_TIMEOUT_MS); retry, or narrow the request'
      : 'The database cancelled the request\'s statement; retry', { cause: e });
  }
  if (message.startsWith('timeout exceeded when trying to connect')) {
    return new DatabaseUnavailable('The server is busy: no database connection became free in time; retry shortly', { cause: e });
  }
  const lost = code.startsWith('08') || SERVER_CODES.has(code) || SOCKET_CODES.has(code) || LOST_MESSAGE.test(message)
    // net's AggregateError (several addresses tried) carries the socket errors inside.
    || (Array.isArray(err.errors) && err.errors.some((x) => databaseUnavailable(x) !== undefined));
  return lost ? new DatabaseUnavailable('The database is unavailable; retry shortly', { cause: e }) : undefined;
}

const UNAVAILABLE_LOG_MS = 10_000;
let lastUnavailableLog = 0;

/** Logs that the database cannot serve (one line, at most every 10 s: an outage fails many requests at once). */
export function logUnavailable(what: string, e: unknown, logger: Logger = log): void {
  const now = Date.now();
  if (now - lastUnavailableLog < UNAVAILABLE_LOG_MS) return;
  lastUnavailableLog = now;
  const err = e as { code?: unknown; message?: unknown } | undefined;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  logger.warn(code ? { code } : {}, `${what}: ${typeof err?.message === 'string' ? err.message : ''}`);
}

/**
 * Logs a background failure: a lost database as logUnavailable does, anything else with its
 * stack only (a PostgreSQL error's detail can quote a row: PHI).
 */
export function logFailure(what: string, e: unknown, logger: Logger = log): void {
  if (databaseUnavailable(e)) logUnavailable(`${what}, the database is unavailable`, e, logger);
  else logger.error({ err: e }, what);
}

/** Database constraint failures become FHIR errors, a lost database a 503; anything else stays a bug (500). */
function translatePgError(e: unknown): unknown {
  const unavailable = databaseUnavailable(e);
  if (unavailable) return unavailable;
  const err = e as { code?: string; constraint?: string; detail?: string; message?: string };
  if (err.code === '23503') {
    // A write whose references do not fit (e.g. an encounter of another patient) is
    // unprocessable; a delete or change of something still referenced is a conflict.
    if (err.message?.startsWith('insert or update')) {
      const hub = err.constraint?.includes('encounter_id_patient_id');
      return new FhirError(422, 'processing', hub
        ? 'The referenced Encounter belongs to a different Patient than this resource\'s subject'
        : 'A referenced resource does not exist (it may have just been deleted)');
    }
    return new FhirError(409, 'conflict', 'The resource is still referenced by other resources (for example Observations of this Patient or Encounter); delete or repoint those first');
  }
  if (err.code === '23505') {
    const what = err.constraint?.includes('mrn') ? 'Another Patient in this organization already has this MRN (identifier of type MR in the same system)' : 'A unique value is already taken';
    return new FhirError(409, 'duplicate', what);
  }
  if (err.code === '40001' || err.code === '40P01') return new FhirError(409, 'transient', 'Concurrent update, retry');
  return e;
}

export interface VersionInfo {
  id: string;
  versionId: number;
  lastUpdated: string;
  deleted: boolean;
}

export interface StoredResource extends VersionInfo {
  /** The stored JSON text, exactly as kept (meta included). Absent for a delete. */
  json?: string;
}

const INSTANT_SQL = `to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
export const instant = (col: string) => INSTANT_SQL.replace('%s', col);

/** The generic table holds many types under one id space per type: its rows are keyed by type too. */
function typeMatch(table: string, type: string, p: (v: unknown) => string): string {
  return table === GENERIC_TABLE ? ` AND resource_type = ${p(type)}` : '';
}

export function tableOf(type: string): string {
  const table = TABLES[type];
  if (!table) throw notFound(`Resource type ${type} is not supported`);
  return table;
}

/** Current version of a resource in one round trip (sql/004_read_function.sql):
 * the locator row, then the row from exactly one partition. An AuditEvent has no
 * locator: its one row is read directly (sql/021). */
export async function readById(pool: pg.Pool | Tx, orgId: number | undefined, type: string, id: string): Promise<StoredResource | undefined> {
  const org = orgId === undefined ? `current_setting('app.org_id')::integer` : '$4';
  const { rows } = await pool.query(ROW_KEYED_TYPES.has(type)
    ? stmt(`SELECT * FROM kiln_read_audit_event(${org === '$4' ? '$2' : org}, $1)`, orgId === undefined ? [id] : [id, orgId])
    : stmt(`SELECT * FROM kiln_read(${org}, $1, $2, $3)`, orgId === undefined ? [type, tableOf(type), id] : [type, tableOf(type), id, orgId]));
  const r = rows[0];
  if (!r || r.version_id === null) return undefined;
  return { id, versionId: r.version_id, lastUpdated: r.last_updated, deleted: r.deleted, json: r.body ?? undefined };
}

/** The current version inside a tenant transaction; forUpdate also locks the id against other writers. */
export async function readCurrent(tx: Tx, type: string, id: string, forUpdate = false): Promise<StoredResource | undefined> {
  if (forUpdate) {
    await tx.query(`SELECT 1 FROM resource_ids WHERE org_id = current_setting('app.org_id')::integer AND resource_type = $1 AND id = $2 FOR UPDATE`, [type, id]);
  }
  return readById(tx, undefined, type, id);
}

export async function readVersion(tx: Tx, type: string, id: string, versionId: number): Promise<StoredResource | undefined> {
  // A row-keyed resource (AuditEvent) has one version, its row.
  if (ROW_KEYED_TYPES.has(type)) return versionId === 1 ? readById(tx, undefined, type, id) : undefined;
  const { rows } = await tx.query(
    `SELECT version_id, method, ${instant('last_updated')} AS last_updated, resource::text AS json
       FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3`,
    [type, id, versionId]);
  const r = rows[0];
  if (!r) return undefined;
  return { id, versionId: r.version_id, lastUpdated: r.last_updated, deleted: r.method === 'DELETE', json: r.json ?? undefined };
}

/** Resolves a read into a resource or the right FHIR error (404 / 410). */
export function requireLive(stored: StoredResource | undefined, type: string, id: string): StoredResource & { json: string } {
  if (!stored) throw notFound(`${type}/${id} not found`);
  if (stored.deleted) throw gone(`${type}/${id} was deleted (version ${stored.versionId})`);
  return stored as StoredResource & { json: string };
}

interface Locked {
  versionId: number; // 0 when the id never existed
  deleted: boolean;
  clinicalTime: string | null;
  now: string; // the transaction's write time, FHIR instant
}


/** Local references to stored types (Type/id), other than the resource itself. */
export function localReferences(resource: Resource, selfType: string, selfId: string): { type: string; id: string }[] {
  const wanted = new Map<string, { type: string; id: string }>();
  for (const ref of collectReferences(resource)) {
    // A urn:uuid: reference names a Bundle entry (bundle.html); outside one, or left over
    // after a transaction resolved its fullUrls, it names nothing.
    if (ref.startsWith('urn:uuid:')) throw badRequest(`Reference '${ref}' is a urn:uuid: that no entry of a transaction Bundle resolves`);
    const type = /^([A-Z][A-Za-z]+)[/?]/.exec(ref)?.[1];
    if (!type || !Object.hasOwn(TABLES, type)) continue;
    const m = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/\d+)?$/.exec(ref);
    // A reference to a stored type must be a resolvable Type/id (conditional
    // references belong in transactions, where they are resolved first).
    if (!m) throw unprocessable(`Reference '${ref}' is not a valid ${type}/[id] reference`);
    if (m[1] === selfType && m[2] === selfId) continue;
    wanted.set(`${m[1]}/${m[2]}`, { type: m[1], id: m[2] });
  }
  return [...wanted.values()];
}

/**
 * Locks (creating if needed) the locator row of type/id, which serializes writers of
 * one resource, and in the same round trip lists which references do not resolve.
 */
async function lockId(tx: Tx, type: string, id: string, refs: { type: string; id: string }[] = []): Promise<Locked & { missing: string[] }> {
  // AuditEvents have no locator (sql/021): references to them are looked up in their own
  // table, by a statement of their own. Naming audit_events here would make every write
  // plan that partitioned table (kiln_app plans each execution, sql/006): half the write rate.
  const located = refs.filter((r) => !ROW_KEYED_TYPES.has(r.type));
  const { rows } = await tx.query(stmt(
    `WITH lock AS (
       INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated, deleted)
       VALUES (current_setting('app.org_id')::integer, $1, $2, 0, now(), true)
       ON CONFLICT (org_id, resource_type, id) DO UPDATE SET version_id = resource_ids.version_id
       RETURNING version_id, deleted, clinical_time, ${instant("date_trunc('milliseconds', clock_timestamp())")} AS now)
     SELECT lock.*, ARRAY(
       SELECT t.type || '/' || t.id FROM unnest($3::text[], $4::text[]) AS t(type, id)
        WHERE NOT EXISTS (SELECT 1 FROM resource_ids r
                           WHERE r.org_id = current_setting('app.org_id')::integer AND r.resource_type = t.type
                             AND r.id = t.id AND NOT r.deleted AND r.version_id > 0)) AS missing
       FROM lock`,
    [type, id, located.map((r) => r.type), located.map((r) => r.id)]));
  const r = rows[0];
  const missing: string[] = r.missing;
  const audited = refs.filter((x) => ROW_KEYED_TYPES.has(x.type)).map((x) => x.id);
  if (audited.length) {
    const { rows: absent } = await tx.query(
      `SELECT ARRAY(SELECT 'AuditEvent/' || t.id FROM unnest($1::text[]) AS t(id)
                     WHERE NOT EXISTS (SELECT 1 FROM audit_events a
                                        WHERE a.org_id = current_setting('app.org_id')::integer AND a.id = t.id)) AS missing`,
      [audited]);
    missing.push(...absent[0].missing);
  }
  return { versionId: r.version_id, deleted: r.deleted, clinicalTime: r.clinical_time, now: r.now, missing };
}

export type WriteMethod = 'POST' | 'PUT' | 'PATCH';

export interface WriteRequest {
  type: string;
  /** Absent for a create with a server-assigned id. */
  id?: string;
  resource: Resource;
  /** The resource's JSON text as the client sent it; kept verbatim apart from id/meta. */
  text?: string;
  method: WriteMethod;
  /** Version the client expects to replace (If-Match); 412 when it differs. */
  ifMatch?: number;
  /** PATCH needs an existing live resource. */
  mustExist?: boolean;
}

export interface WriteResult {
  resource: Resource;
  json: string;
  versionId: number;
  lastUpdated: string;
  created: boolean;
}

/** Collects positional parameters while a statement is being assembled. */
export function params() {
  const values: unknown[] = [];
  return { values, p: (v: unknown) => { values.push(v); return `$${values.length}`; } };
}

/** CTEs that append the history version and move the locator to it, run with the row write. */
function versionCtes(p: (v: unknown) => string, type: string, id: string, versionId: number, at: string,
  method: string, json: string | null, clinicalTime: string | null): string {
  return `WITH history AS (
      INSERT INTO resource_history (org_id, resource_type, id, version_id, last_updated, method, resource)
      VALUES (current_setting('app.org_id')::integer, ${p(type)}, ${p(id)}, ${p(versionId)}, ${p(at)}, ${p(method)}, ${p(json)})),
    locator AS (
      UPDATE resource_ids SET version_id = ${p(versionId)}, last_updated = ${p(at)}, deleted = ${p(json === null)},
             clinical_time = coalesce(${p(clinicalTime)}::timestamptz, clinical_time)
       WHERE org_id = current_setting('app.org_id')::integer AND resource_type = ${p(type)} AND id = ${p(id)})`;
}

export async function writeResource(tx: Tx, req: WriteRequest): Promise<WriteResult> {
  if (ROW_KEYED_TYPES.has(req.type)) return createRowKeyed(tx, req);
  const type = req.type;
  const table = tableOf(type);
  const id = req.id ?? crypto.randomUUID();
  const lock = await lockId(tx, type, id, localReferences(req.resource, type, id));
  const exists = lock.versionId > 0 && !lock.deleted;
  if (req.ifMatch !== undefined && (lock.versionId === 0 || req.ifMatch !== lock.versionId)) {
    throw preconditionFailed(`Version conflict: ${type}/${id} is at version ${lock.versionId}, If-Match asked for ${req.ifMatch}`);
  }
  if (req.mustExist && !exists) {
    if (lock.versionId > 0) throw gone(`${type}/${id} was deleted`);
    throw notFound(`${type}/${id} not found`);
  }
  if (lock.missing.length) {
    throw unprocessable(`Reference${lock.missing.length > 1 ? 's' : ''} not found: ${lock.missing.join(', ')}`);
  }
  const versionId = lock.versionId + 1;
  const meta = { ...req.resource.meta, versionId: String(versionId), lastUpdated: lock.now };
  const resource = { ...req.resource, id, meta } as Resource;
  const row = toRow(resource);
  const clinicalTime = TIME_PARTITIONED.has(type) ? (row.clinicalTime ?? lock.now) : null;
  const json = req.text ? withServerFields(req.text, id, meta) : JSON.stringify(resource);

  const cols: Record<string, unknown> = {
    ...row.columns,
    version_id: versionId,
    last_updated: lock.now,
    resource: json,
    ...(clinicalTime ? { clinical_time: clinicalTime } : {}),
  };
  if (type === 'Encounter') {
    // The hub row carries the encounter's patient; clinical rows reference it.
    await tx.query(
      `INSERT INTO clinical_events (org_id, encounter_id, patient_id) VALUES (current_setting('app.org_id')::integer, $1, $2)
       ON CONFLICT (org_id, encounter_id) DO UPDATE SET patient_id = EXCLUDED.patient_id`,
      [id, cols.patient_id ?? null]);
  }
  const names = Object.keys(cols);
  const { values, p } = params();
  const ctes = versionCtes(p, type, id, versionId, lock.now, req.method, json, clinicalTime)
    + indexCtes(p, type, id, extractIndex(resource), exists, clinicalTime);
  if (exists) {
    const assignments = names.map((n) => `${n} = ${p(cols[n])}`).join(', ');
    const timeMatch = lock.clinicalTime ? `AND clinical_time = ${p(lock.clinicalTime)}` : '';
    await tx.query(stmt(`${ctes} UPDATE ${table} SET ${assignments}
       WHERE org_id = current_setting('app.org_id')::integer AND id = ${p(id)} ${timeMatch}${typeMatch(table, type, p)}`, values));
  } else {
    const placeholders = names.map((n) => p(cols[n])).join(', ');
    await tx.query(stmt(`${ctes} INSERT INTO ${table} (org_id, id, ${names.join(', ')})
       VALUES (current_setting('app.org_id')::integer, ${p(id)}, ${placeholders})`, values));
  }
  return { resource, json, versionId, lastUpdated: lock.now, created: !exists };
}

/** A page of new resources in a few multi-row statements (src/store/batchWrite.ts). */
export { createMany } from './batchWrite.ts';

/**
 * The lastUpdated of a write made in this transaction, taken once it has its id (an
 * export's transaction time relies on that, src/store/exportRows.ts), and the bound tenant.
 */
export async function transactionInstant(tx: Tx | pg.PoolClient): Promise<{ org: number | null; now: string }> {
  const { rows } = await tx.query(stmt(`SELECT nullif(current_setting('app.org_id', true), '')::integer AS org, pg_current_xact_id() IS NOT NULL AS xid,
      ${instant("date_trunc('milliseconds', clock_timestamp())")} AS now`, []));
  return { org: rows[0].org, now: rows[0].now };
}

/**
 * A client's AuditEvent: appended as a row (sql/021). It is never changed (the API answers
 * 405 to updates), so there is no version to lock or check; like the server's own events
 * it may name resources that do not exist. lastUpdated is taken once the transaction has
 * its id, as lockId does for other writes (an export's transaction time relies on it).
 * A POST's id is always the server's (create drops resource.id; a transaction assigns it
 * up front so other entries can refer to it), so only PUT, PATCH and If-Match are refused.
 */
async function createRowKeyed(tx: Tx, req: WriteRequest): Promise<WriteResult> {
  if ((req.id !== undefined && req.method !== 'POST') || req.mustExist || req.ifMatch !== undefined) {
    throw new FhirError(405, 'not-supported', `${req.type} resources are created with server-assigned ids and never changed`);
  }
  const { org, now } = await transactionInstant(tx);
  const row = auditRow(req.resource as AuditEvent, now, { id: req.id, text: req.text });
  await insertAuditEvents(tx, org!, [row]);
  const resource = { ...req.resource, id: row.id, meta: { ...req.resource.meta, versionId: '1', lastUpdated: row.lastUpdated } } as Resource;
  return { resource, json: row.json, versionId: 1, lastUpdated: row.lastUpdated, created: true };
}

/** Appends an event the server builds at this transaction's instant (its recorded and lastUpdated). */
export async function appendAuditEvent(tx: Tx, build: (now: string) => AuditEvent): Promise<void> {
  const { org, now } = await transactionInstant(tx);
  await insertAuditEvents(tx, org!, [auditRow(build(now), now)]);
}

export interface DeleteResult {
  /** False when the id never existed. */
  existed: boolean;
  versionId?: number;
}

/** Deletes as a new version; a resource still referenced by clinical rows gives 409. */
export async function deleteResource(tx: Tx, type: string, id: string, ifMatch?: number): Promise<DeleteResult> {
  const table = tableOf(type);
  const lock = await lockId(tx, type, id);
  if (lock.versionId === 0) {
    // Undo the placeholder row lockId made: the id never existed.
    await tx.query(`DELETE FROM resource_ids WHERE org_id = current_setting('app.org_id')::integer AND resource_type = $1 AND id = $2`, [type, id]);
    return { existed: false };
  }
  if (ifMatch !== undefined && ifMatch !== lock.versionId) {
    throw preconditionFailed(`Version conflict: ${type}/${id} is at version ${lock.versionId}, If-Match asked for ${ifMatch}`);
  }
  if (lock.deleted) return { existed: true, versionId: lock.versionId };
  const versionId = lock.versionId + 1;
  const { values, p } = params();
  const ctes = versionCtes(p, type, id, versionId, lock.now, 'DELETE', null, null) + indexCtes(p, type, id, undefined, true);
  const timeMatch = lock.clinicalTime ? `AND clinical_time = ${p(lock.clinicalTime)}` : '';
  await tx.query(`${ctes} DELETE FROM ${table} WHERE org_id = current_setting('app.org_id')::integer AND id = ${p(id)} ${timeMatch}${typeMatch(table, type, p)}`, values);
  if (type === 'Encounter') {
    await tx.query(`DELETE FROM clinical_events WHERE org_id = current_setting('app.org_id')::integer AND encounter_id = $1`, [id]);
  }
  return { existed: true, versionId };
}

/** Serializes conditional writes that use the same criteria (key: their canonical text), so
 * two racing conditional creates cannot both see "no match" and both create. Keyed per tenant,
 * so no tenant waits on (or learns of) another's writes; 64-bit, so unrelated criteria seldom share one. */
export async function lockCriteria(tx: Tx, key: string): Promise<void> {
  await tx.query(stmt(`SELECT pg_advisory_xact_lock(hashtextextended('kiln-criteria/' || current_setting('app.org_id') || '/' || $1, 0))`, [key]));
}

export interface HistoryEntry extends StoredResource {
  type: string;
  method: string;
}

export interface HistoryQuery {
  type?: string;
  id?: string;
  since?: string;
  /** Keyset cursor: entries strictly older than this (lastUpdated, type, id, version). */
  before?: { lastUpdated: string; type: string; id: string; versionId: number };
  /** Keyset cursor for a page back: the `count` entries just newer than this, still newest first. */
  after?: { lastUpdated: string; type: string; id: string; versionId: number };
  count: number;
}

/**
 * History newest first, keyset-paged so pages stay stable while others write. Versions
 * come from resource_history; AuditEvents, which have one version each and no history
 * rows (sql/021), from their own table, merged in the same order.
 */
export async function history(tx: Tx, q: HistoryQuery): Promise<HistoryEntry[]> {
  const params: unknown[] = [];
  const p = (v: unknown) => { params.push(v); return `$${params.length}`; };
  const parts: string[] = [];
  const conds = (type: string, version: string) => {
    const where = [`org_id = current_setting('app.org_id')::integer`];
    if (q.id) where.push(`id = ${p(q.id)}`);
    if (q.since) where.push(`last_updated >= ${p(q.since)}`);
    const cursor = q.after ?? q.before;
    if (cursor) {
      where.push(`(last_updated, ${type}, id, ${version}) ${q.after ? '>' : '<'} (${p(cursor.lastUpdated)}::timestamptz, ${p(cursor.type)}, ${p(cursor.id)}, ${p(cursor.versionId)}::integer)`);
    }
    return where.join(' AND ');
  };
  // A page back is read oldest first from its cursor, then turned round.
  const dir = q.after ? 'ASC' : 'DESC';
  const order = `ORDER BY last_updated ${dir}, resource_type ${dir}, id ${dir}, version_id ${dir}`;
  if (!q.type || !ROW_KEYED_TYPES.has(q.type)) {
    const typed = q.type ? ` AND resource_type = ${p(q.type)}` : '';
    parts.push(`(SELECT resource_type, id, version_id, method, last_updated, resource::text AS resource FROM resource_history
       WHERE ${conds('resource_type', 'version_id')}${typed} ${order} LIMIT ${p(q.count)})`);
  }
  if (!q.type || q.type === 'AuditEvent') {
    parts.push(`(SELECT 'AuditEvent'::text AS resource_type, id, 1 AS version_id, 'POST'::text AS method, last_updated, resource FROM ${READ_FROM.AuditEvent}
       WHERE ${conds("'AuditEvent'::text", '1')} ORDER BY last_updated ${dir}, id ${dir} LIMIT ${p(q.count)})`);
  }
  const { rows } = await tx.query(
    `SELECT resource_type, id, version_id, method, ${instant('last_updated')} AS last_updated, resource::text AS json
       FROM (${parts.join(' UNION ALL ')}) h ${order} LIMIT ${p(q.count)}`,
    params);
  if (q.after) rows.reverse();
  return rows.map((r) => ({
    type: r.resource_type, id: r.id, versionId: r.version_id, lastUpdated: r.last_updated,
    method: r.method, deleted: r.method === 'DELETE', json: r.json ?? undefined,
  }));
}

export async function countHistory(tx: Tx, type: string, id: string): Promise<number> {
  if (ROW_KEYED_TYPES.has(type)) return (await readById(tx, undefined, type, id)) ? 1 : 0;
  const { rows } = await tx.query(
    'SELECT count(*)::integer AS n FROM resource_history WHERE resource_type = $1 AND id = $2', [type, id]);
  return rows[0].n;
}

