// The patient picker's reads: the tenant's live Patients by name or identifier (relational
// columns filled on every write, plus the stored resource for what a clinician checks:
// identifiers, gender, the birth date as written), inside the tenant's transaction.
import type { Tx } from './resources.ts';
import { readCurrent } from './resources.ts';

const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';

interface Identifier {
  system?: string;
  value?: string;
  type?: { text?: string; coding?: { system?: string; code?: string; display?: string }[] };
}

export interface PatientChoice {
  id: string;
  family?: string;
  given?: string;
  /** As written in the resource (a partial date stays partial). */
  birthDate?: string;
  gender?: string;
  /** The MR identifier (v2-0203), else the first identifier with a value. */
  identifier?: { value: string; isMrn: boolean; label?: string };
  /** The row's place in the picker's order, for its paging cursor. */
  key: string[];
}

export function displayIdentifier(ids: unknown): PatientChoice['identifier'] {
  const list = (Array.isArray(ids) ? ids : []).filter((i): i is Identifier => typeof i?.value === 'string' && i.value !== '');
  const mrn = list.find((i) => i.type?.coding?.some((c) => c.system === V2_0203 && c.code === 'MR'));
  if (mrn) return { value: mrn.value!, isMrn: true };
  const first = list[0];
  if (!first) return undefined;
  const coding = first.type?.coding?.[0];
  return { value: first.value!, isMrn: false, label: first.type?.text ?? coding?.display ?? coding?.code ?? first.system };
}

// The picker's order, null names first; the key is what a cursor carries.
const ORDER = [`coalesce(lower(family_name), '')`, `coalesce(lower(given_names), '')`, 'id'];
const ORDER_KEY = ORDER.join(', ');
const COLUMNS = `id, family_name, given_names, resource->>'birthDate' AS birth_date, resource->>'gender' AS gender,
  resource->'identifier' AS identifiers, ARRAY[${ORDER_KEY}] AS key`;

function toChoice(r: any): PatientChoice {
  return {
    id: r.id, family: r.family_name ?? undefined, given: r.given_names ?? undefined, birthDate: r.birth_date ?? undefined,
    gender: r.gender ?? undefined, identifier: displayIdentifier(r.identifiers), key: r.key,
  };
}

const likePrefix = (word: string) => `${word.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

export interface PatientSearch {
  /** Words that each start a family or given name, or one identifier value (an MRN) exactly. */
  text: string;
  /** Rows after this key (next page) or before it (previous page); at most `count` + 1 rows. */
  after?: string[];
  before?: string[];
  count: number;
}

/** One page of matching Patients, in the picker's order, with one row more on the cursor's side when there is more. */
export async function searchPatients(tx: Tx, orgId: number, s: PatientSearch): Promise<PatientChoice[]> {
  const words = s.text.split(/\s+/).filter(Boolean).slice(0, 6).map(likePrefix);
  const cursor = s.after ?? s.before;
  const { rows } = await tx.query(
    `SELECT ${COLUMNS} FROM patients
      WHERE org_id = $1
        AND (cardinality($2::text[]) = 0
             OR NOT EXISTS (SELECT 1 FROM unnest($2::text[]) w
                             WHERE NOT (lower(family_name) LIKE w OR lower(family_name) LIKE '% ' || w
                                        OR lower(given_names) LIKE w OR lower(given_names) LIKE '% ' || w))
             OR identifier_tokens @> ARRAY['|' || $3])
        AND ($4::text[] IS NULL OR (ROW(${ORDER_KEY}) ${s.before ? '<' : '>'} ROW($4[1], $4[2], $4[3])))
      ORDER BY ${s.before ? ORDER.map((c) => `${c} DESC`).join(', ') : ORDER_KEY}
      LIMIT $5`,
    [orgId, words, s.text.trim(), cursor ?? null, s.count + 1]);
  const out = rows.map(toChoice);
  return s.before ? out.reverse() : out;
}

/** The picker's facts of one live Patient, for the consent page. */
export async function findPatientChoice(tx: Tx, orgId: number, id: string): Promise<PatientChoice | undefined> {
  const { rows } = await tx.query(`SELECT ${COLUMNS} FROM patients WHERE org_id = $1 AND id = $2`, [orgId, id]);
  return rows[0] ? toChoice(rows[0]) : undefined;
}

export async function patientExists(tx: Tx, id: string): Promise<boolean> {
  const stored = await readCurrent(tx, 'Patient', id);
  return Boolean(stored && !stored.deleted);
}
