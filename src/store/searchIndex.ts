// Writes a resource's search index rows (mappings/search) into the side tables,
// as CTEs of the statement that writes the resource, so indexing costs no round trip.
import type { IndexRows } from '../../mappings/search/extract.ts';

type P = (v: unknown) => string;

export interface TableSpec {
  table: string;
  key: keyof IndexRows;
  /** column -> [SQL array type, value of a row] */
  columns: [string, string, (row: any) => unknown][];
}

/**
 * The index tables, their columns and where each value comes from (also used by bench/search-data.ts).
 * value_f is the value as float8, whose comparisons are leakproof: the value index under RLS (sql/033).
 */
export const SPECS: TableSpec[] = [
  { table: 'search_tokens', key: 'tokens', columns: [['param', 'text', (r) => r.param], ['system', 'text', (r) => r.system], ['code', 'text', (r) => r.code], ['text', 'text', (r) => r.text]] },
  { table: 'search_strings', key: 'strings', columns: [['param', 'text', (r) => r.param], ['value', 'text', (r) => r.value], ['raw', 'text', (r) => r.raw]] },
  { table: 'search_dates', key: 'dates', columns: [['param', 'text', (r) => r.param], ['lo', 'timestamptz', (r) => r.lo], ['hi', 'timestamptz', (r) => r.hi]] },
  { table: 'search_references', key: 'references', columns: [['param', 'text', (r) => r.param], ['target_type', 'text', (r) => r.targetType], ['target_id', 'text', (r) => r.targetId], ['reference', 'text', (r) => r.reference]] },
  { table: 'search_quantities', key: 'quantities', columns: [['param', 'text', (r) => r.param], ['value', 'numeric', (r) => r.value], ['value_f', 'float8', (r) => r.value], ['lo', 'numeric', (r) => r.lo], ['hi', 'numeric', (r) => r.hi], ['system', 'text', (r) => r.system], ['code', 'text', (r) => r.code], ['unit', 'text', (r) => r.unit]] },
  { table: 'search_numbers', key: 'numbers', columns: [['param', 'text', (r) => r.param], ['value', 'numeric', (r) => r.value], ['value_f', 'float8', (r) => r.value], ['lo', 'numeric', (r) => r.lo], ['hi', 'numeric', (r) => r.hi]] },
  { table: 'search_uris', key: 'uris', columns: [['param', 'text', (r) => r.param], ['value', 'text', (r) => r.value]] },
  { table: 'search_composites', key: 'composites', columns: [['param', 'text', (r) => r.param], ['parts', 'jsonb', (r) => JSON.stringify(r.parts)]] },
];

/**
 * CTE fragments (each starting with a comma) that drop the resource's old index rows
 * (when `replace`) and insert `rows` (none for a delete), each carrying the resource's
 * partition key so that searches joining back to the resource table prune to one partition.
 */
export function indexCtes(p: P, type: string, id: string, rows: IndexRows | undefined, replace: boolean, clinicalTime: string | null = null): string {
  const parts: string[] = [];
  SPECS.forEach((spec, i) => {
    if (replace) {
      parts.push(`, idx_del_${i} AS (DELETE FROM ${spec.table}
        WHERE org_id = current_setting('app.org_id')::integer AND resource_type = ${p(type)} AND id = ${p(id)})`);
    }
    if (rows) {
      const list = rows[spec.key] as unknown[];
      const arrays = spec.columns.map(([, sqlType, get]) => `${p(list.map(get))}::${sqlType}[]`);
      parts.push(`, idx_ins_${i} AS (INSERT INTO ${spec.table} (org_id, resource_type, id, clinical_time, ${spec.columns.map(([c]) => c).join(', ')})
        SELECT current_setting('app.org_id')::integer, ${p(type)}, ${p(id)}, ${p(clinicalTime)}::timestamptz, u.* FROM unnest(${arrays.join(', ')}) AS u)`);
    }
  });
  return parts.join('\n');
}
