// Patient/$everything: the patient compartment (compartmentdefinition-patient) across
// the stored types, in a stable (type, id) order so it pages with a keyset cursor.
import type { Tx } from './resources.ts';
import { READ_FROM, TIME_PARTITIONED } from '../../mappings/postgres/index.ts';
import { compartmentCond } from './compartmentSql.ts';
import { criterionSql } from './searchSql.ts';
import type { Criterion } from '../search/criteria.ts';

export interface EverythingQuery {
  /** Patients whose compartments are wanted; undefined = every patient of the tenant. */
  patientIds?: string[];
  types: string[];
  start?: string;
  end?: string;
  since?: string;
  count: number;
  after?: { type: string; id: string };
  /** The first row of the next page: the `count` rows just before it, still in (type, id) order. */
  before?: { type: string; id: string };
  /** Criteria each type's rows must also match (the token's restriction), by type. */
  restrict?: Record<string, Criterion[]>;
}

/** The Patient comes first (the record the rest is about), then the types in name order. */
const rank = (type: string) => (type === 'Patient' ? 0 : 1);

export async function everything(tx: Tx, q: EverythingQuery): Promise<{ type: string; id: string; json: string }[]> {
  const values: unknown[] = [];
  const p = (v: unknown) => { values.push(v); return `$${values.length}`; };
  const org = `current_setting('app.org_id')::integer`;
  const parts: string[] = [];
  // One bind parameter for the list, named only if a type's condition uses it (an unused one has no type).
  let list: string | undefined;
  const patients = q.patientIds && (() => (list ??= `${p(q.patientIds)}::text[]`));
  for (const type of q.types) {
    const conds = [`r.org_id = ${org}`];
    if (q.since) conds.push(`r.last_updated >= ${p(q.since)}::timestamptz`);
    if (TIME_PARTITIONED.has(type)) {
      if (q.start) conds.push(`r.clinical_time >= ${p(q.start)}::timestamptz`);
      if (q.end) conds.push(`r.clinical_time < ${p(q.end)}::timestamptz`);
    }
    const inCompartment = compartmentCond(type, 'r', { patients, constant: (v) => `${p(v)}::text${typeof v === 'string' ? '' : '[]'}` });
    if (inCompartment) conds.push(inCompartment);
    for (const c of q.restrict?.[type] ?? []) conds.push(criterionSql(c, type, 'r', p));
    parts.push(`SELECT ${rank(type)} AS rank, ${p(type)}::text AS type, r.id, r.resource::text AS json FROM ${READ_FROM[type]} r WHERE ${conds.join(' AND ')}`);
  }
  if (!parts.length) return [];
  // Going back, read down from the cursor and restore the order.
  const [cursor, cmp, dir] = q.before ? [q.before, '<', 'DESC'] : [q.after, '>', 'ASC'];
  const keyset = cursor ? `WHERE (rank, type, id) ${cmp} (${rank(cursor.type)}, ${p(cursor.type)}::text, ${p(cursor.id)}::text)` : '';
  const { rows } = await tx.query(`SELECT type, id, json FROM (${parts.join(' UNION ALL ')}) u ${keyset}
    ORDER BY rank ${dir}, type ${dir}, id ${dir} LIMIT ${p(q.count)}`, values);
  return q.before ? rows.reverse() : rows;
}
