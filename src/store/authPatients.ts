// The patient picker's reads: the tenant's live Patients by name (relational columns
// filled on every write), inside the tenant's transaction.
import type { Tx } from './resources.ts';
import { readCurrent } from './resources.ts';

export interface PatientChoice {
  id: string;
  family?: string;
  given?: string;
  birthDate?: string;
}

/** Patients whose family or given names start with the text (case-insensitive), by name. */
export async function searchPatientsByName(tx: Tx, orgId: number, text: string, limit: number): Promise<PatientChoice[]> {
  const prefix = `${text.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
  const { rows } = await tx.query(
    `SELECT id, family_name, given_names, birth_date FROM patients
      WHERE org_id = $1 AND ($2 = '%' OR lower(family_name) LIKE $2 OR lower(given_names) LIKE $2 OR lower(given_names) LIKE '% ' || $2)
      ORDER BY lower(family_name), lower(given_names), id LIMIT $3`, [orgId, prefix, limit]);
  return rows.map((r) => ({ id: r.id, family: r.family_name ?? undefined, given: r.given_names ?? undefined, birthDate: r.birth_date ?? undefined }));
}

export async function patientExists(tx: Tx, id: string): Promise<boolean> {
  const stored = await readCurrent(tx, 'Patient', id);
  return Boolean(stored && !stored.deleted);
}
