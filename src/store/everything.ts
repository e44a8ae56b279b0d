// Patient/$everything: the patient compartment (compartmentdefinition-patient) across
// the stored types, in a stable (type, id) order so it pages with a keyset cursor.
import type { Tx } from './resources.ts';
import { READ_FROM, TIME_PARTITIONED } from '../../mappings/postgres/index.ts';
import { indexRowOf } from './searchSql.ts';
import { compartmentIndexParams } from '../search/compartment.ts';
import { ROW_KEYED_TYPES, refTypeKey } from '../../mappings/search/rowKeys.ts';
import { refersToCond } from './rowKeySearch.ts';

export interface EverythingQuery {
  /** Patients whose compartments are wanted; undefined = every patient of the tenant. */
  patientIds?: string[];
  types: string[];
  start?: string;
  end?: string;
  since?: string;
  count: number;
  after?: { type: string; id: string };
}

export async function everything(tx: Tx, q: EverythingQuery): Promise<{ type: string; id: string; json: string }[]> {
  const values: unknown[] = [];
  const p = (v: unknown) => { values.push(v); return `$${values.length}`; };
  const org = `current_setting('app.org_id')::integer`;
  const parts: string[] = [];
  for (const type of q.types) {
    const conds = [`r.org_id = ${org}`];
    if (q.since) conds.push(`r.last_updated >= ${p(q.since)}::timestamptz`);
    if (TIME_PARTITIONED.has(type)) {
      if (q.start) conds.push(`r.clinical_time >= ${p(q.start)}::timestamptz`);
      if (q.end) conds.push(`r.clinical_time < ${p(q.end)}::timestamptz`);
    }
    if (type === 'Patient') {
      // The patients and the Patient records that link to them, as one id list (a key lookup).
      if (q.patientIds) {
        conds.push(`r.id = ANY(${p(q.patientIds)}::text[] || ARRAY(SELECT s.id FROM search_references s WHERE s.org_id = ${org}
          AND s.resource_type = 'Patient' AND s.param = ANY(${p(compartmentIndexParams('Patient'))}::text[]) AND s.target_type = 'Patient'
          AND s.target_id = ANY(${p(q.patientIds)}::text[])))`);
      }
    } else if (ROW_KEYED_TYPES.has(type)) {
      // The references are keys of the row: to the patients (GIN-indexed), or to any patient.
      const params = compartmentIndexParams(type);
      conds.push(q.patientIds
        ? refersToCond(type, params, q.patientIds.map((id) => `Patient/${id}`), 'r', p)
        : `r.token_keys && ${p(params.map((x) => refTypeKey(x, 'Patient')))}::text[]`);
    } else {
      conds.push(`EXISTS (SELECT 1 FROM search_references s WHERE ${indexRowOf('s', 'r', type, p)}
        AND s.param = ANY(${p(compartmentIndexParams(type))}::text[]) AND s.target_type = 'Patient'
        AND ${q.patientIds ? `s.target_id = ANY(${p(q.patientIds)}::text[])` : 's.target_id IS NOT NULL'})`);
    }
    parts.push(`SELECT ${p(type)}::text AS type, r.id, r.resource::text AS json FROM ${READ_FROM[type]} r WHERE ${conds.join(' AND ')}`);
  }
  if (!parts.length) return [];
  const keyset = q.after ? `WHERE (type, id) > (${p(q.after.type)}::text, ${p(q.after.id)}::text)` : '';
  const { rows } = await tx.query(`SELECT * FROM (${parts.join(' UNION ALL ')}) u ${keyset} ORDER BY type, id LIMIT ${p(q.count)}`, values);
  return rows;
}
