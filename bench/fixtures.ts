// Resource bodies shared by the HTTP load generator and the direct-SQL baseline,
// plus the column values the baseline writes (hand-computed: the baseline skips
// the server's generic mapping layer, it only needs the same row contents).
import type { Condition, Observation, Patient } from '@medplum/fhirtypes';

export const MRN_SYSTEM = 'urn:oid:2.16.840.1.113883.19.5.99999.1';
const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const LOINC = 'http://loinc.org';

const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis', 'Rodriguez', 'Martinez', 'Nguyen', 'Okafor'];
const GIVEN = ['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael', 'Linda', 'Aisha', 'Wei', 'Sofia', 'Mateo'];
/** The MR identifier of seeded Patient i (updates keep it, so the unique MRN index is not hit). */
export const seedMrn = (tag: string, i: number) => `${tag}-seed-${i}`;

const pad = (n: number, w: number) => String(n).padStart(w, '0');

/** A realistic Patient whose MR identifier is `mrn`; `n` varies the other fields. */
export function patientBody(mrn: string, n: number, id?: string): Patient {
  return {
    resourceType: 'Patient',
    ...(id ? { id } : {}),
    identifier: [{
      use: 'usual',
      type: { coding: [{ system: V2_0203, code: 'MR', display: 'Medical record number' }] },
      system: MRN_SYSTEM,
      value: mrn,
    }],
    active: true,
    name: [{ use: 'official', family: FAMILIES[n % FAMILIES.length], given: [GIVEN[n % GIVEN.length], GIVEN[(n * 7 + 3) % GIVEN.length]] }],
    telecom: [{ system: 'phone', value: `+1-555-${pad(n % 10000, 4)}`, use: 'home' }],
    gender: n % 2 === 0 ? 'female' : 'male',
    birthDate: `${1940 + (n % 70)}-${pad(1 + (n % 12), 2)}-${pad(1 + (n % 28), 2)}`,
    address: [{ use: 'home', line: [`${100 + (n % 900)} Main Street`], city: 'Springfield', state: 'IL', postalCode: '62701', country: 'US' }],
  };
}

/** The patients columns for patientBody (what mappings/postgres/patient.ts would produce). */
export function patientColumns(p: Patient) {
  const mrn = p.identifier![0].value!;
  const name = p.name![0];
  return {
    identifier_tokens: [`${MRN_SYSTEM}|${mrn}`, `|${mrn}`],
    mrn,
    family_name: name.family!,
    given_names: name.given!.join(' '),
    birth_date: p.birthDate!,
    sex: p.gender!,
    active: p.active!,
    deceased: null,
  };
}

/** A heart-rate vital sign for `patientId`, effective at `effective` (an ISO instant). */
export function observationBody(patientId: string, n: number, effective: string): Observation {
  return {
    resourceType: 'Observation',
    status: 'final',
    category: [{ coding: [{ system: OBS_CATEGORY, code: 'vital-signs', display: 'Vital Signs' }] }],
    code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }], text: 'Heart rate' },
    subject: { reference: `Patient/${patientId}` },
    effectiveDateTime: effective,
    valueQuantity: { value: 55 + (n % 50), unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
  };
}

/** The observations columns for observationBody (what mappings/postgres/observation.ts would produce). */
export function observationColumns(o: Observation, patientId: string) {
  const effective = new Date(o.effectiveDateTime!).toISOString();
  return {
    identifier_tokens: [] as string[],
    clinical_time: effective,
    patient_id: patientId,
    encounter_id: null,
    status: o.status,
    category_tokens: [`${OBS_CATEGORY}|vital-signs`, '|vital-signs'],
    code_tokens: [`${LOINC}|8867-4`, '|8867-4'],
    effective_start: effective,
    effective_end: effective,
    issued: null,
    value_quantity: o.valueQuantity!.value!,
    value_unit: o.valueQuantity!.code!,
    value_code_tokens: [] as string[],
    value_string: null,
  };
}

const SNOMED = 'http://snomed.info/sct';
const CONDITION_CLINICAL = 'http://terminology.hl7.org/CodeSystem/condition-clinical';
const CONDITION_CATEGORY = 'http://terminology.hl7.org/CodeSystem/condition-category';

/** The code system and code of the Observations and Conditions the searches ask for (conditionBody's is SNOMED). */
export const HEART_RATE = { system: LOINC, code: '8867-4' };
export const HYPERTENSION = { system: SNOMED, code: '38341003' };

/**
 * A problem-list Condition for `patientId`, about the size of observationBody's JSON (a
 * generic-store type beside the first-class Observation); `other` gives it another code.
 */
export function conditionBody(patientId: string, onset: string, other = false): Condition {
  return {
    resourceType: 'Condition',
    clinicalStatus: { coding: [{ system: CONDITION_CLINICAL, code: 'active' }] },
    category: [{ coding: [{ system: CONDITION_CATEGORY, code: 'problem-list-item', display: 'Problem List Item' }] }],
    code: other
      ? { coding: [{ system: SNOMED, code: '44054006', display: 'Diabetes mellitus type 2' }], text: 'Type 2 diabetes' }
      : { coding: [{ system: SNOMED, code: HYPERTENSION.code, display: 'Hypertensive disorder' }], text: 'Hypertension' },
    subject: { reference: `Patient/${patientId}` },
    onsetDateTime: onset,
  };
}

/** `/fhir/Type?patient=X&code=system|code`: the search the generic-store comparison runs on both types. */
export function searchPath(type: string, patientId: string, code: { system: string; code: string }): string {
  return `/fhir/${type}?patient=${patientId}&code=${encodeURIComponent(`${code.system}|${code.code}`)}`;
}
