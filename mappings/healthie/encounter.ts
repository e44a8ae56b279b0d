// Healthie Appointment <-> FHIR Encounter. Blockers and synced calendar events have no
// patient and map to nothing. Appointments with no Healthie provider are external care:
// tagged so, and never written back as provider appointments.
import type { Encounter, EncounterParticipant, Extension } from '@medplum/fhirtypes';
import type { HealthieAppointment, HealthieRef, PatientContext } from './types.ts';
import type { HealthieMaps } from './conceptMaps.ts';
import { compact, extValue, hasTag, healthieMeta, stringExt, text } from './common.ts';
import { addMinutes, toFhirDateTime } from './dates.ts';
import { EXT, EXTERNAL_TAG, SYSTEM, UCUM, V3_ACT_CODE, V3_PARTICIPATION } from './systems.ts';

/** The Healthie user id of the appointment's client (undefined for blockers and group shells). */
export function appointmentClientId(a: HealthieAppointment): string | undefined {
  return text(a.user?.id) ?? text(a.user_id) ?? text(a.attendees?.[0]?.id);
}

/** Whether an appointment becomes an Encounter at all. */
export function isMappableAppointment(a: HealthieAppointment): boolean {
  return !a.is_blocker && !a.external_id_type && appointmentClientId(a) !== undefined;
}

function providersOf(a: HealthieAppointment): HealthieRef[] {
  const all = [...(a.provider ? [a.provider] : []), ...(a.providers ?? [])];
  const seen = new Set<string>();
  return all.filter((p) => p && !seen.has(p.id) && seen.add(p.id));
}

export function isExternalAppointment(a: HealthieAppointment): boolean {
  return providersOf(a).length === 0 && !a.other_party_id;
}

function status(a: HealthieAppointment, maps: HealthieMaps, now: string): Encounter['status'] {
  if (a.deleted_at) return 'entered-in-error';
  const pm = text(a.pm_status);
  if (pm) return (maps.pmStatusToStatus(pm)?.status ?? 'unknown') as Encounter['status'];
  const start = Date.parse(toFhirDateTime(a.date ?? a.start) ?? '');
  return Number.isFinite(start) && start > Date.parse(now) ? 'planned' : 'unknown';
}

function participant(p: HealthieRef, primary: boolean): EncounterParticipant {
  return {
    type: [{ coding: [{ system: V3_PARTICIPATION, code: primary ? 'PPRF' : 'ATND' }] }],
    individual: compact({ identifier: { system: SYSTEM.provider, value: p.id }, display: text(p.full_name) }),
  };
}

/** The Encounter for an appointment, or undefined when it is not a patient visit. */
export function appointmentToEncounter(a: HealthieAppointment, maps: HealthieMaps, ctx: PatientContext): Encounter | undefined {
  if (!isMappableAppointment(a)) return undefined;
  const external = isExternalAppointment(a);
  const contactType = text(a.contact_type);
  const start = toFhirDateTime(a.date ?? a.start);
  const end = toFhirDateTime(a.end) ?? (start && a.length ? addMinutes(start, a.length) : undefined);
  const actual = text(a.actual_duration);
  const minutes = actual !== undefined && Number.isFinite(Number(actual)) ? Number(actual) : a.length ?? undefined;
  const videoUrl = text(a.external_videochat_url) ?? text(a.zoom_join_url);
  // The class comes from how the parties connect (contact_type); being external changes the
  // tag, not the class: a provider-less "Phone Call" is VR as any phone call is. Without a
  // contact type, a video link still says virtual.
  const classCode = !contactType && videoUrl ? 'VR' : maps.contactTypeToClass(contactType);
  // Zoom details are kept (never the host's start URL); R4 has no VirtualServiceDetail.
  const virtual: Extension[] = [
    ...stringExt('meetingId', text(a.zoom_meeting_id)),
    ...(text(a.zoom_join_url) ? [{ url: 'joinUrl', valueUrl: text(a.zoom_join_url) }] : []),
    ...(text(a.external_videochat_url) ? [{ url: 'externalVideochatUrl', valueUrl: text(a.external_videochat_url) }] : []),
  ];
  const extension: Extension[] = [
    ...stringExt(EXT.contactType, contactType),
    ...stringExt(EXT.pmStatus, text(a.pm_status)),
    ...stringExt(EXT.actualDuration, actual),
    ...(virtual.length ? [{ url: EXT.virtualService, extension: virtual }] : []),
  ];
  const typeId = text(a.appointment_type?.id) ?? text(a.appointment_type_id);
  const typeName = text(a.appointment_type?.name);
  const locationText = text(a.location);
  const locationId = text(a.appointment_location_id);
  const reason = text(a.reason);
  const clientId = appointmentClientId(a)!;
  return compact({
    resourceType: 'Encounter' as const,
    meta: healthieMeta(ctx.source, external ? [{ ...EXTERNAL_TAG }] : []),
    extension,
    identifier: [{ system: SYSTEM.appointment, value: a.id }],
    status: status(a, maps, ctx.now),
    class: { system: V3_ACT_CODE, code: classCode },
    type: typeId || typeName
      ? [compact({ coding: typeId ? [compact({ system: SYSTEM.appointmentType, code: typeId, display: typeName })] : undefined, text: typeName })]
      : undefined,
    subject: { reference: `Patient/${ctx.patientId}`, identifier: { system: SYSTEM.user, value: clientId } },
    participant: providersOf(a).map((p, i) => participant(p, i === 0)),
    period: start ? compact({ start, end }) : undefined,
    length: minutes !== undefined ? { value: minutes, unit: 'min', system: UCUM, code: 'min' } : undefined,
    reasonCode: reason ? [{ text: reason }] : undefined,
    location: locationText || locationId
      ? [{ location: compact({ display: locationText, identifier: locationId ? { system: SYSTEM.appointmentLocation, value: locationId } : undefined }) }]
      : undefined,
  });
}

export function isExternalEncounter(e: Encounter): boolean {
  return hasTag(e, EXTERNAL_TAG.system, EXTERNAL_TAG.code);
}

/** Variables for createAppointment / updateAppointment. */
export interface AppointmentInputs {
  create: Record<string, unknown>;
  update: Record<string, unknown>;
}

/**
 * Mutation inputs for an Encounter; undefined for external care, which is never
 * written to Healthie as a provider appointment. `clientId` is the Healthie user id.
 */
export function encounterToAppointmentInputs(e: Encounter, maps: HealthieMaps, clientId: string, healthieId?: string): AppointmentInputs | undefined {
  if (isExternalEncounter(e)) return undefined;
  // A Healthie appointment with no contact type keeps none; a FHIR-made one gets the ConceptMap's.
  const fromHealthie = e.identifier?.some((i) => i.system === SYSTEM.appointment);
  const contactType = extValue(e.extension, EXT.contactType) ?? (fromHealthie ? undefined : maps.classToContactType(e.class?.code ?? ''));
  // A kept pm_status goes back while the FHIR status still agrees with it (No-Show and
  // Late Cancellation are both "cancelled"); a changed status goes through the ConceptMap.
  const keptPm = extValue(e.extension, EXT.pmStatus);
  const pm = keptPm && (maps.pmStatusToStatus(keptPm)?.status ?? 'unknown') === e.status ? keptPm : maps.statusToPmStatus(e.status);
  const providers = (e.participant ?? []).map((p) => p.individual?.identifier).filter((i) => i?.system === SYSTEM.provider).map((i) => i!.value!);
  const virtual = e.extension?.find((x) => x.url === EXT.virtualService)?.extension;
  const location = e.location?.[0]?.location;
  const typeId = e.type?.flatMap((t) => t.coding ?? []).find((c) => c.system === SYSTEM.appointmentType)?.code;
  const common = compact({
    user_id: clientId,
    other_party_id: providers[0],
    providers: providers.length > 1 ? providers.join(',') : undefined,
    appointment_type_id: typeId,
    contact_type: contactType,
    datetime: e.period?.start,
    location: location?.display,
    appointment_location_id: location?.identifier?.system === SYSTEM.appointmentLocation ? location.identifier.value : undefined,
    external_videochat_url: virtual?.find((x) => x.url === 'externalVideochatUrl')?.valueUrl,
  });
  const update = compact({
    id: healthieId,
    ...common,
    pm_status: pm,
    actual_duration: extValue(e.extension, EXT.actualDuration),
  });
  return { create: common, update };
}
