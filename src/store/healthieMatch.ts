// The stored resources a page of Healthie objects maps onto, found in one query per page
// (src/healthie/pull.ts): by their Healthie identifier, through the identifier token rows
// (texteq on the value index is leakproof, so kiln_app's plan is an index range under RLS;
// the resource rows' `identifier_tokens &&` is not). Runs inside a tenant transaction.
import { READ_FROM, TABLES, TIME_PARTITIONED } from '../../mappings/postgres/index.ts';
import { stmt } from './statements.ts';
import type { Tx } from './resources.ts';

export interface IdentifierMatch { id: string; json: string }

function fromOf(type: string): string {
  const from = READ_FROM[type];
  if (!from || !TABLES[type]) throw new Error(`No table for ${type}`);
  return from;
}

const ORG = `current_setting('app.org_id')::integer`;

/**
 * Stored resources of `type` carrying identifier `system|value`, per value (several when
 * more than one resource carries it), each with its stored JSON text.
 */
export async function matchByIdentifier(tx: Tx, type: string, system: string, values: string[]): Promise<Map<string, IdentifierMatch[]>> {
  const found = new Map<string, IdentifierMatch[]>();
  if (!values.length) return found;
  const time = TIME_PARTITIONED.has(type) ? ' AND r.clinical_time = s.clinical_time' : '';
  const { rows } = await tx.query(stmt(
    `SELECT s.code, r.id, r.resource::text AS json
       FROM search_tokens s JOIN ${fromOf(type)} r ON r.org_id = s.org_id AND r.id = s.id${time}
      WHERE s.param = 'identifier' AND s.org_id = ${ORG} AND s.resource_type = $1
        AND s.code = ANY($2::text[]) AND s.system = $3`, [type, [...new Set(values)], system]));
  for (const r of rows) {
    const list = found.get(r.code);
    if (list) { if (!list.some((m) => m.id === r.id)) list.push({ id: r.id, json: r.json }); } else found.set(r.code, [{ id: r.id, json: r.json }]);
  }
  return found;
}

/** Ids of stored resources of `type` carrying identifier `system|value`, per value (the first, when several do). */
export async function idsByIdentifier(tx: Tx, type: string, system: string, values: string[]): Promise<Map<string, string>> {
  const ids = new Map<string, string>();
  if (!values.length) return ids;
  const { rows } = await tx.query(stmt(
    `SELECT s.code, min(s.id) AS id FROM search_tokens s
      WHERE s.param = 'identifier' AND s.org_id = ${ORG} AND s.resource_type = $1
        AND s.code = ANY($2::text[]) AND s.system = $3 GROUP BY s.code`, [type, [...new Set(values)], system]));
  for (const r of rows) ids.set(r.code, r.id);
  return ids;
}

/**
 * A page of the identifier values of `system` that stored resources of `type` carry, with
 * the resource id, in value order after `after` (keyset paging: a caller walks every linked
 * patient without holding them all).
 */
export async function identifierPage(tx: Tx, type: string, system: string, after: string | undefined, limit: number): Promise<{ value: string; id: string }[]> {
  const { rows } = await tx.query(stmt(
    `SELECT s.code, min(s.id) AS id FROM search_tokens s
      WHERE s.param = 'identifier' AND s.org_id = ${ORG} AND s.resource_type = $1 AND s.system = $2
        AND ($3::text IS NULL OR s.code > $3) GROUP BY s.code ORDER BY s.code LIMIT $4`, [type, system, after ?? null, limit]));
  return rows.map((r) => ({ value: r.code, id: r.id }));
}

/**
 * Takes, in one statement and in a fixed order, the transaction-level locks that conditional
 * writes take one by one (src/store/resources.ts lockCriteria, same key space), so a page
 * and a webhook's upsert of the same object cannot both create it.
 */
export async function lockCriteriaKeys(tx: Tx, keys: string[]): Promise<void> {
  if (!keys.length) return;
  await tx.query(stmt(
    `SELECT count(pg_advisory_xact_lock(hashtextextended('kiln-criteria/' || current_setting('app.org_id') || '/' || k, 0)))
       FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS k ORDER BY k) keys`, [keys]));
}
