// The GraphQL documents Kiln sends to Healthie (baseline schema, pinned API version).
// Every one is validated against ../shared/healthie/schema.graphql by the tests and by
// the local test server. Selections stay flat so query cost stays far below Healthie's
// 2000-point limit at the page sizes used (see docs/healthie.md).

const LOCATION = 'id line1 line2 city state zip country';
export const USER_FIELDS = `id first_name last_name legal_name dob gender gender_identity sex pronouns email skipped_email
  phone_number active record_identifier additional_record_identifier timezone preferred_language dietitian_id
  dietitian { id full_name } location { ${LOCATION} } locations { ${LOCATION} } created_at updated_at cursor`;
export const APPOINTMENT_FIELDS = `id date start end length actual_duration contact_type pm_status
  appointment_type { id name } appointment_type_id user_id user { id full_name } attendees { id full_name }
  provider { id full_name } providers { id full_name } other_party_id location appointment_location_id reason
  is_blocker external_id_type is_zoom_chat zoom_meeting_id zoom_join_url external_videochat_url deleted_at
  created_at updated_at cursor`;
export const ENTRY_FIELDS = `id type category metric_stat description created_at updated_at third_party_source
  poster { id } has_subentries subentries { id category metric_stat } cursor`;
export const MEDICATION_FIELDS = `id name active code dosage frequency directions route comment start_date end_date
  mirrored requires_consolidation user_id created_at updated_at`;

export const USERS = `query Users($after: Cursor, $page_size: Int, $active_status: String) {
  users(should_paginate: true, after: $after, page_size: $page_size, active_status: $active_status, order_by: UPDATED_AT_DESC) { ${USER_FIELDS} }
}`;
export const USER = `query User($id: ID) { user(id: $id) { ${USER_FIELDS} } }`;
export const APPOINTMENTS = `query Appointments($after: Cursor, $page_size: Int) {
  appointments(is_org: true, filter: "all", should_paginate: true, with_all_statuses: true, filter_synced_appointments: true,
    order_by: UPDATED_AT_DESC, after: $after, page_size: $page_size) { ${APPOINTMENT_FIELDS} }
}`;
export const APPOINTMENT = `query Appointment($id: ID) { appointment(id: $id, include_deleted: true) { ${APPOINTMENT_FIELDS} } }`;
export const ENTRIES = `query Entries($after: Cursor, $page_size: Int) {
  entries(is_org: true, type: "MetricEntry", order_by: UPDATED_AT_DESC, after: $after, page_size: $page_size) { ${ENTRY_FIELDS} }
}`;
export const ENTRY = `query Entry($id: ID) { entry(id: $id) { ${ENTRY_FIELDS} } }`;
export const MEDICATIONS = `query Medications($patient_id: ID) { medications(patient_id: $patient_id) { ${MEDICATION_FIELDS} } }`;
export const MEDICATION = `query Medication($id: ID) { medication(id: $id) { ${MEDICATION_FIELDS} } }`;

const MESSAGES = 'messages { field message }';
export const CREATE_CLIENT = `mutation CreateClient($input: createClientInput) { createClient(input: $input) { user { id updated_at } ${MESSAGES} } }`;
export const UPDATE_CLIENT = `mutation UpdateClient($input: updateClientInput) { updateClient(input: $input) { user { id updated_at } ${MESSAGES} } }`;
export const CREATE_APPOINTMENT = `mutation CreateAppointment($input: createAppointmentInput) { createAppointment(input: $input) { appointment { id updated_at } ${MESSAGES} } }`;
export const UPDATE_APPOINTMENT = `mutation UpdateAppointment($input: updateAppointmentInput) { updateAppointment(input: $input) { appointment { id updated_at } ${MESSAGES} } }`;
export const DELETE_APPOINTMENT = `mutation DeleteAppointment($input: deleteAppointmentInput) { deleteAppointment(input: $input) { appointment { id } ${MESSAGES} } }`;
export const CREATE_ENTRY = `mutation CreateEntry($input: createEntryInput) { createEntry(input: $input) { entry { id updated_at } ${MESSAGES} } }`;
export const UPDATE_ENTRY = `mutation UpdateEntry($input: updateEntryInput) { updateEntry(input: $input) { entry { id updated_at } ${MESSAGES} } }`;
export const CREATE_MEDICATION = `mutation CreateMedication($input: createMedicationInput) { createMedication(input: $input) { medication { id updated_at } ${MESSAGES} } }`;
export const UPDATE_MEDICATION = `mutation UpdateMedication($input: updateMedicationInput) { updateMedication(input: $input) { medication { id updated_at } ${MESSAGES} } }`;

/** Per FHIR type: the create/update mutation and the payload field holding the object. */
export const MUTATIONS = {
  Patient: { create: CREATE_CLIENT, update: UPDATE_CLIENT, createField: 'createClient', updateField: 'updateClient', object: 'user' },
  Encounter: { create: CREATE_APPOINTMENT, update: UPDATE_APPOINTMENT, createField: 'createAppointment', updateField: 'updateAppointment', object: 'appointment' },
  Observation: { create: CREATE_ENTRY, update: UPDATE_ENTRY, createField: 'createEntry', updateField: 'updateEntry', object: 'entry' },
  MedicationStatement: { create: CREATE_MEDICATION, update: UPDATE_MEDICATION, createField: 'createMedication', updateField: 'updateMedication', object: 'medication' },
} as const;

export const ALL_DOCUMENTS = {
  USERS, USER, APPOINTMENTS, APPOINTMENT, ENTRIES, ENTRY, MEDICATIONS, MEDICATION,
  CREATE_CLIENT, UPDATE_CLIENT, CREATE_APPOINTMENT, UPDATE_APPOINTMENT, DELETE_APPOINTMENT,
  CREATE_ENTRY, UPDATE_ENTRY, CREATE_MEDICATION, UPDATE_MEDICATION,
};
