// URLs the Healthie mappings write: one identifier system per Healthie type, our
// extensions, and the tags that say a resource came from (or must stay out of) Healthie.
const BASE = 'https://gethealthie.com/fhir';

export const SYSTEM = {
  user: `${BASE}/identifier/user`,
  provider: `${BASE}/identifier/provider`,
  appointment: `${BASE}/identifier/appointment`,
  entry: `${BASE}/identifier/entry`,
  medication: `${BASE}/identifier/medication`,
  recordIdentifier: `${BASE}/identifier/record-identifier`,
  additionalRecordIdentifier: `${BASE}/identifier/additional-record-identifier`,
  appointmentType: `${BASE}/identifier/appointment-type`,
  appointmentLocation: `${BASE}/identifier/appointment-location`,
  metricCategory: `${BASE}/CodeSystem/metric-category`,
  medicationCode: `${BASE}/CodeSystem/medication-code`,
  origin: `${BASE}/CodeSystem/sync-origin`,
  appointmentOrigin: `${BASE}/CodeSystem/healthie-appointment-origin`,
} as const;

export const EXT = {
  sex: `${BASE}/StructureDefinition/healthie-sex`,
  gender: `${BASE}/StructureDefinition/healthie-gender`,
  pronouns: `${BASE}/StructureDefinition/healthie-pronouns`,
  genderIdentity: 'http://hl7.org/fhir/StructureDefinition/individual-genderIdentity',
  timezone: 'http://hl7.org/fhir/StructureDefinition/timezone',
  contactType: `${BASE}/StructureDefinition/contact-type`,
  pmStatus: `${BASE}/StructureDefinition/pm-status`,
  actualDuration: `${BASE}/StructureDefinition/actual-duration`,
  virtualService: `${BASE}/StructureDefinition/virtual-service`,
  /** On each attendee's Encounter of a group appointment: how many clients attend (integer). */
  groupAppointment: `${BASE}/StructureDefinition/group-appointment`,
  /** On the Encounter of a client no longer among the appointment's attendees (boolean true). */
  removedAttendee: `${BASE}/StructureDefinition/removed-attendee`,
  entryId: `${BASE}/StructureDefinition/entry-id`,
  medicationDosage: `${BASE}/StructureDefinition/medication-dosage`,
} as const;

export const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
export const V3_ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
export const V3_PARTICIPATION = 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType';
export const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
export const LOINC = 'http://loinc.org';
export const UCUM = 'http://unitsofmeasure.org';
export const RXNORM = 'http://www.nlm.nih.gov/research/umls/rxnorm';
export const BCP47 = 'urn:ietf:bcp:47';

/** meta.tag every resource mapped from Healthie carries. */
export const HEALTHIE_TAG = { system: SYSTEM.origin, code: 'healthie', display: 'Mirrored from Healthie' } as const;
/** meta.tag of an appointment with no Healthie provider: external care, never written back. */
export const EXTERNAL_TAG = { system: SYSTEM.appointmentOrigin, code: 'external', display: 'External care (no Healthie provider)' } as const;
/** meta.tag of a medication mirrored from an e-Rx system: read-only in Healthie. */
export const MIRRORED_TAG = { system: SYSTEM.origin, code: 'erx-mirrored', display: 'Mirrored from e-prescribing; read-only' } as const;

export const DEFAULT_SOURCE = 'https://api.gethealthie.com/graphql';
