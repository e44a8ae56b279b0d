// The search subset the foundation needs (conditional create/update/delete and
// simple type searches). Parameters map to the relational columns the mappings fill.
import type { Tx } from './resources.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { badRequest } from '../fhir/outcome.ts';

type Clause = (value: string, p: (v: unknown) => string) => string;

// A token 'system|code' matches exactly; 'code' matches any system ('|code' is
// stored for every coding); '|code' is treated the same way.
const tokenColumn = (col: string): Clause => (value, p) => {
  const token = value.includes('|') ? value : `|${value}`;
  if (token.endsWith('|')) return `EXISTS (SELECT 1 FROM unnest(${col}) t WHERE t LIKE ${p(token.replace(/[\\%_]/g, '\\$&') + '%')})`;
  return `${col} @> ARRAY[${p(token)}]::text[]`;
};
const referenceColumn = (col: string, type: string): Clause => (value, p) => {
  const m = new RegExp(`^(?:.*/)?(?:${type}/)?([A-Za-z0-9\\-.]{1,64})$`).exec(value);
  if (!m) throw badRequest(`Invalid reference search value '${value}'`);
  return `${col} = ${p(m[1])}`;
};
const textEquals = (col: string): Clause => (value, p) => `${col} = ${p(value)}`;
const startsWith = (col: string): Clause => (value, p) =>
  `lower(${col}) LIKE ${p(value.toLowerCase().replace(/[\\%_]/g, '\\$&') + '%')}`;
const dateEquals = (col: string): Clause => (value, p) => {
  if (!/^\d{4}(-\d{2}(-\d{2})?)?$/.test(value)) throw badRequest(`Invalid date '${value}'`);
  const [y, m, d] = value.split('-');
  const lo = `${y}-${m ?? '01'}-${d ?? '01'}`;
  const unit = d ? 'day' : m ? 'month' : 'year';
  return `(${col} >= ${p(lo)}::date AND ${col} < ${p(lo)}::date + ${p('1 ' + unit)}::interval)`;
};

const COMMON: Record<string, Clause> = {
  _id: (value, p) => `id = ${p(value)}`,
  identifier: tokenColumn('identifier_tokens'),
  _tag: tokenColumn('tags'),
  _profile: (value, p) => `profiles @> ARRAY[${p(value)}]::text[]`,
};
const patientRef = { patient: referenceColumn('patient_id', 'Patient'), subject: referenceColumn('patient_id', 'Patient') };

export const SEARCH_PARAMS: Record<string, Record<string, Clause>> = {
  Patient: { ...COMMON, family: startsWith('family_name'), given: startsWith('given_names'), gender: textEquals('sex'), birthdate: dateEquals('birth_date') },
  Encounter: { ...COMMON, ...patientRef, status: textEquals('status'), class: tokenColumn('ARRAY[class_code]') },
  Observation: { ...COMMON, ...patientRef, status: textEquals('status'), code: tokenColumn('code_tokens'), category: tokenColumn('category_tokens'), encounter: referenceColumn('encounter_id', 'Encounter') },
  MedicationStatement: { ...COMMON, ...patientRef, status: textEquals('status'), code: tokenColumn('medication_tokens') },
  AuditEvent: { ...COMMON, patient: referenceColumn('patient_id', 'Patient'), action: textEquals('action'), outcome: textEquals('outcome') },
};

/** Search type descriptions for the CapabilityStatement. */
export const SEARCH_PARAM_TYPES: Record<string, string> = {
  _id: 'token', identifier: 'token', _tag: 'token', _profile: 'uri', family: 'string', given: 'string', gender: 'token',
  birthdate: 'date', patient: 'reference', subject: 'reference', encounter: 'reference', status: 'token', class: 'token',
  code: 'token', category: 'token', action: 'token', outcome: 'token',
};

export interface SearchQuery {
  type: string;
  /** [name, value] pairs; repeated names AND, commas OR. */
  params: [string, string][];
  count: number;
  /** Keyset cursor: ids strictly after this one. */
  after?: string;
}

/** Parameter names this search cannot evaluate (the caller decides lenient or strict). */
export function unsupportedParams(type: string, params: [string, string][]): string[] {
  const known = SEARCH_PARAMS[type] ?? {};
  return params.map(([n]) => n).filter((n) => !(n in known));
}

export async function searchIds(tx: Tx, q: SearchQuery): Promise<{ id: string; json: string }[]> {
  const known = SEARCH_PARAMS[q.type];
  const table = TABLES[q.type];
  const params: unknown[] = [];
  const p = (v: unknown) => { params.push(v); return `$${params.length}`; };
  const where = [`org_id = current_setting('app.org_id')::integer`];
  for (const [name, raw] of q.params) {
    const clause = known[name];
    if (!clause) continue;
    const alternatives = raw.split(',').filter((v) => v !== '').map((v) => clause(v, p));
    if (alternatives.length) where.push(`(${alternatives.join(' OR ')})`);
  }
  if (q.after) where.push(`id > ${p(q.after)}`);
  const { rows } = await tx.query(
    `SELECT id, resource::text AS json FROM ${table} WHERE ${where.join(' AND ')} ORDER BY id LIMIT ${p(q.count)}`, params);
  return rows;
}
