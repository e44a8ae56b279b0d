// SQL of the patient compartment (src/search/compartment.ts) over stored rows: which rows
// of a type are in the compartment of some patients, or of any patient. Patient/$everything
// and the patient-level and Group $export ask the same question; only how they pass
// values differs (bind parameters; settings read back in a COPY, which takes none).
import { ROW_KEYED_TYPES, refTypeKey } from '../../mappings/search/rowKeys.ts';
import { compartmentIndexParams } from '../search/compartment.ts';
import { PATIENT_COLUMN } from '../../mappings/postgres/index.ts';
import { hasRefKeys } from './rowKeySearch.ts';

export interface CompartmentValues {
  /** SQL of a text[] of patient ids (asked for only when used); undefined: the compartment of any patient. */
  patients?: () => string;
  /** SQL of a text (text[]) constant of the server's own: a type name (parameter codes, keys). */
  constant: (value: string | string[]) => string;
}

/**
 * The condition that row `r` of `type` is in the compartment: undefined when every row is
 * (the Patients of any patient), `false` for a type outside it (Organization, ...). `patient_id` holds the subject's patient
 * (mappings/postgres); a resource can also be in it through another parameter
 * (Observation.performer, Patient.link), found in the reference index. Both sides are
 * `= ANY(array)`, so the planner can OR two index scans (patient index, primary key):
 * with `id IN (subquery)` it could not, and scanned the whole table comparing each row's
 * patient_id with every listed patient (a Group of 1,000 in 300k rows: 4.6 s, not 0.2 s).
 */
export function compartmentCond(type: string, r: string, v: CompartmentValues): string | undefined {
  const params = compartmentIndexParams(type);
  // Patient always has `link`: a type without parameters is outside every compartment.
  if (!params.length) return 'false';
  const list = v.patients?.();
  if (ROW_KEYED_TYPES.has(type)) {
    // The references are keys of the row (an AuditEvent is in the compartment of every
    // patient it names): to the patients through the GIN index, or to any patient.
    const prefixes = v.constant(params.map((x) => refTypeKey(x, 'Patient')));
    return list
      ? hasRefKeys(type, r, `ARRAY(SELECT k || x FROM unnest(${prefixes}) k, unnest(${list}) x)`)
      : `${r}.token_keys && ${prefixes}`;
  }
  if (type === 'Patient' && !list) return undefined;
  // Where the row has patient_id (the subject's Patient), subject rows need not be read.
  const others = PATIENT_COLUMN.has(type) ? params.filter((c) => c !== 'subject') : params;
  // Built only when used: every constant() call may add a bind parameter.
  const referring = () => {
    // Not correlated with r: the ids are computed once.
    const ids = `SELECT s.id FROM search_references s WHERE s.org_id = current_setting('app.org_id')::integer
         AND s.resource_type = ${v.constant(type)} AND s.param = ANY(${v.constant(others)}) AND s.target_type = 'Patient'
         AND ${list ? `s.target_id = ANY(${list})` : 's.target_id IS NOT NULL'}`;
    return list ? `${r}.id = ANY(ARRAY(${ids}))` : `${r}.id IN (${ids})`;
  };
  if (type === 'Patient') return others.length ? `(${r}.id = ANY(${list}) OR ${referring()})` : `${r}.id = ANY(${list})`;
  if (!PATIENT_COLUMN.has(type)) return referring();
  const own = list ? `${r}.patient_id = ANY(${list})` : `${r}.patient_id IS NOT NULL`;
  return others.length ? `(${own} OR ${referring()})` : own;
}
