// SQL of $export: the rows of one type streamed with COPY, their count, the deleted
// resources as transaction Bundles, and the job's transaction time.
//
// COPY takes no bind parameters, so a job's values (transaction time, _since, the
// patient list) are bound with set_config($1) in the same transaction and read back
// with current_setting() in the COPY query: no value is ever spliced into SQL text.
import type pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import type { Readable } from 'node:stream';
import type { Tx } from './resources.ts';
import { READ_FROM } from '../../mappings/postgres/index.ts';
import { compartmentCond } from './compartmentSql.ts';

export interface RowScope {
  /** Patient-level and Group exports: the compartment of the bound patient list, or of any patient. */
  patients?: 'list' | 'any';
  since?: boolean;
}

export interface ScopeValues {
  until: string;
  since?: string;
  patients?: string[];
  /** Types whose deletes are listed. */
  types?: string[];
}

/** Binds a job's values for the export queries of this transaction. */
export async function bindScope(tx: Tx, v: ScopeValues): Promise<void> {
  await tx.query(
    `SELECT set_config('kiln.export_until', $1, true), set_config('kiln.export_since', $2, true),
            set_config('kiln.export_patients', $3, true), set_config('kiln.export_types', $4, true)`,
    [v.until, v.since ?? '', JSON.stringify(v.patients ?? []), JSON.stringify(v.types ?? [])]);
}

/** An SQL literal of a constant of this server's own (COPY takes no bind parameters): a type name, codes, keys. */
function literal(value: string | string[]): string {
  const values = typeof value === 'string' ? [value] : value;
  if (!values.every((c) => /^[A-Za-z0-9>/-]+$/.test(c))) throw new Error(`unexpected constants ${values.join(',')}`);
  const quoted = values.map((c) => `'${c}'`);
  return typeof value === 'string' ? `${quoted[0]}::text` : `ARRAY[${quoted.join(', ')}]::text[]`;
}

function conditions(type: string, scope: RowScope): string {
  const conds = [
    `r.org_id = current_setting('app.org_id')::integer`,
    // Nothing changed after the transaction time: a resumed job sees what the first attempt would have.
    // The bound is a scalar subquery, computed once, not a setting read and cast for every row.
    `r.last_updated <= (SELECT current_setting('kiln.export_until')::timestamptz)`,
  ];
  if (scope.since) conds.push(`r.last_updated > (SELECT current_setting('kiln.export_since')::timestamptz)`);
  if (scope.patients) {
    const list = `ARRAY(SELECT json_array_elements_text(current_setting('kiln.export_patients')::json))`;
    const inCompartment = compartmentCond(type, 'r', { patients: scope.patients === 'list' ? () => list : undefined, constant: literal });
    if (inCompartment) conds.push(inCompartment);
  }
  return conds.join(' AND ');
}

/**
 * The stored JSON of each row (what a read returns: id and meta are spliced in when
 * the resource is written), one row per line of COPY text format. Raw CR/LF in the
 * text come out escaped (`\n`, `\r`) and are dropped while decoding
 * (src/export/ndjson.ts), which is cheaper there than a replace() per row here.
 */
export function copyRows(tx: Tx, type: string, scope: RowScope): Readable {
  const sql = `COPY (SELECT r.resource::text FROM ${READ_FROM[type]} r WHERE ${conditions(type, scope)}) TO STDOUT`;
  return tx.query(copyTo(sql));
}

export async function countRows(tx: Tx, type: string, scope: RowScope): Promise<number> {
  const { rows } = await tx.query(`SELECT count(*)::bigint AS n FROM ${READ_FROM[type]} r WHERE ${conditions(type, scope)}`);
  return Number(rows[0].n);
}

/** Resources deleted after _since (and by the transaction time), one transaction Bundle per line. */
export function copyDeleted(tx: Tx, onlyBoundPatients: boolean): Readable {
  const patientOnly = onlyBoundPatients
    ? `AND l.resource_type = 'Patient' AND l.id = ANY(ARRAY(SELECT json_array_elements_text(current_setting('kiln.export_patients')::json)))`
    : '';
  const sql = `COPY (SELECT json_build_object('resourceType', 'Bundle', 'type', 'transaction', 'entry',
                        json_build_array(json_build_object('request', json_build_object('method', 'DELETE', 'url', l.resource_type || '/' || l.id))))::text
                 FROM resource_ids l
                WHERE l.org_id = current_setting('app.org_id')::integer AND l.deleted AND l.version_id > 0
                  AND l.resource_type = ANY(ARRAY(SELECT json_array_elements_text(current_setting('kiln.export_types')::json))) ${patientOnly}
                  AND l.last_updated > current_setting('kiln.export_since')::timestamptz
                  AND l.last_updated <= current_setting('kiln.export_until')::timestamptz
                ORDER BY l.resource_type, l.id) TO STDOUT`;
  return tx.query(copyTo(sql));
}

export async function backendPid(tx: Tx): Promise<number> {
  return (await tx.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
}

/** Stops a running COPY (cancel or shutdown); its transaction then rolls back. */
export async function cancelBackend(pool: pg.Pool, pid: number): Promise<void> {
  await pool.query('SELECT pg_cancel_backend($1)', [pid]);
}

/**
 * A transaction time T such that every write with lastUpdated <= T has committed: T is
 * a millisecond below the moment of a snapshot, and every transaction that snapshot saw
 * in progress is waited for (a write takes its lastUpdated after its transaction id).
 * Without the wait, an incremental export from T could miss a write that committed late.
 */
export async function committedTransactionTime(pool: pg.Pool, timeoutMs = 60_000): Promise<string> {
  const { rows } = await pool.query(
    `SELECT to_char((date_trunc('milliseconds', clock_timestamp()) - interval '1 millisecond') AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS t,
            ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text) AS xip`);
  const { t, xip } = rows[0] as { t: string; xip: string[] };
  const deadline = Date.now() + timeoutMs;
  while (xip.length) {
    const { rows: open } = await pool.query(
      `SELECT count(*)::integer AS n FROM unnest($1::xid8[]) x WHERE pg_xact_status(x) = 'in progress'`, [xip]);
    if (open[0].n === 0) break;
    if (Date.now() > deadline) throw new Error('transactions older than the export stayed open too long');
    await new Promise((r) => setTimeout(r, 20));
  }
  return t;
}
