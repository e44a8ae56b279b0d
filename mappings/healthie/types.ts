// The Healthie objects the mappings read, as selected by src/healthie/queries.ts
// (field names from ../shared/healthie/schema.graphql, baseline API version).

export interface HealthieLocation {
  id?: string | null;
  line1?: string | null;
  line2?: string | null;
  city?: string | null;
  state?: string | null;
  zip?: string | null;
  country?: string | null;
}

export interface HealthieRef { id: string; full_name?: string | null }

export interface HealthieUser {
  id: string;
  first_name?: string | null;
  last_name?: string | null;
  legal_name?: string | null;
  dob?: string | null;
  gender?: string | null;
  gender_identity?: string | null;
  sex?: string | null;
  pronouns?: string | null;
  email?: string | null;
  skipped_email?: boolean | null;
  phone_number?: string | null;
  active: boolean;
  record_identifier?: string | null;
  additional_record_identifier?: string | null;
  timezone?: string | null;
  preferred_language?: string | null;
  dietitian_id?: string | null;
  dietitian?: HealthieRef | null;
  location?: HealthieLocation | null;
  locations?: HealthieLocation[] | null;
  created_at?: string | null;
  updated_at?: string | null;
  cursor?: string;
}

export interface HealthieAppointment {
  id: string;
  date?: string | null;
  start?: string | null;
  end?: string | null;
  length?: number | null;
  actual_duration?: string | null;
  contact_type?: string | null;
  pm_status?: string | null;
  appointment_type?: { id: string; name?: string | null } | null;
  appointment_type_id?: number | null;
  user_id?: number | string | null;
  user?: HealthieRef | null;
  attendees?: HealthieRef[] | null;
  provider?: HealthieRef | null;
  providers?: HealthieRef[] | null;
  other_party_id?: number | null;
  location?: string | null;
  appointment_location_id?: string | null;
  reason?: string | null;
  is_blocker?: boolean | null;
  external_id_type?: string | null;
  is_zoom_chat?: boolean | null;
  zoom_meeting_id?: string | null;
  zoom_join_url?: string | null;
  external_videochat_url?: string | null;
  deleted_at?: string | null;
  created_at?: string | null;
  updated_at?: string | null;
  cursor?: string;
}

export interface HealthieSubentry { id: string; category?: string | null; metric_stat?: number | null }

export interface HealthieEntry {
  id: string;
  type?: string | null;
  category?: string | null;
  metric_stat?: number | null;
  description?: string | null;
  created_at: string;
  updated_at?: string | null;
  third_party_source?: string | null;
  poster?: { id: string } | null;
  has_subentries?: boolean | null;
  subentries?: HealthieSubentry[] | null;
  cursor?: string;
}

export interface HealthieMedication {
  id: string;
  name?: string | null;
  active?: boolean | null;
  code?: string | null;
  dosage?: string | null;
  frequency?: string | null;
  directions?: string | null;
  route?: string | null;
  comment?: string | null;
  start_date?: string | null;
  end_date?: string | null;
  mirrored?: boolean;
  requires_consolidation?: boolean | null;
  user_id?: string | null;
  created_at?: string | null;
  updated_at?: string | null;
}

/** What every Healthie -> FHIR mapping needs to know beyond the object itself. */
export interface ToFhirContext {
  /** meta.source: the Healthie endpoint the object came from. */
  source?: string;
  /** "Now" for statuses that depend on it (planned vs unknown, medication status). ISO instant. */
  now: string;
}

/** Context for resources that hang off a patient: the Kiln Patient id of the Healthie user. */
export interface PatientContext extends ToFhirContext {
  patientId: string;
}
