// Healthie Appointment <-> FHIR Encounter. Blockers and synced calendar events have no
// patient and map to nothing. Appointments with no Healthie provider are external care:
// tagged so, and never written back as provider appointments. A group appointment gives
// each client attending it an Encounter of their own (all with the appointment's
// identifier); those are never written back either, since one client's Encounter cannot
// say what the appointment is for the others.
import type { Encounter, EncounterParticipant, Extension } from '@medplum/fhirtypes';
import type { HealthieAppointment, HealthieRef, PatientContext } from './types.ts';
import type { HealthieMaps } from './conceptMaps.ts';
import { compact, extValue, hasTag, healthieMeta, stringExt, text } from './common.ts';
import { addMinutes, toFhirDateTime } from './dates.ts';
import { EXT, EXTERNAL_TAG, SYSTEM, UCUM, V3_ACT_CODE, V3_PARTICIPATION } from './systems.ts';

/**
 * The Healthie user ids of the appointment's clients: its user when set (a one-client
 * appointment), else every attendee (a group appointment has user_id null), unique, in order.
 */
export function appointmentClientIds(a: HealthieAppointment): string[] {
  const one = text(a.user?.id) ?? text(a.user_id);
  if (one !== undefined) return [one];
  return [...new Set((a.attendees ?? []).map((p) => text(p?.id)).filter((id): id is string => id !== undefined))];
}

/** The first client's Healthie user id (undefined for blockers and empty group shells). */
export function appointmentClientId(a: HealthieAppointment): string | undefined {
  return appointmentClientIds(a)[0];
}

/** Whether an appointment becomes Encounters at all (one per client). */
export function isMappableAppointment(a: HealthieAppointment): boolean {
  return !a.is_blocker && !a.external_id_type && appointmentClientIds(a).length > 0;
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

/**
 * The Encounter of one client of an appointment (`ctx.clientId`, by default the first; its
 * Kiln Patient is `ctx.patientId`), or undefined when the appointment is not a patient visit.
 */
export function appointmentToEncounter(a: HealthieAppointment, maps: HealthieMaps, ctx: PatientContext & { clientId?: string }): Encounter | undefined {
  if (!isMappableAppointment(a)) return undefined;
  const clients = appointmentClientIds(a);
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
    // A count, not the other attendees: this Encounter sits in one patient's compartment.
    ...(clients.length > 1 ? [{ url: EXT.groupAppointment, valueInteger: clients.length }] : []),
  ];
  const typeId = text(a.appointment_type?.id) ?? text(a.appointment_type_id);
  const typeName = text(a.appointment_type?.name);
  const locationText = text(a.location);
  const locationId = text(a.appointment_location_id);
  const reason = text(a.reason);
  const clientId = ctx.clientId ?? clients[0];
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

/** Whether the Encounter is one attendee's share of a group appointment (or of one they left). */
export function isGroupEncounter(e: Encounter): boolean {
  return !!e.extension?.some((x) => x.url === EXT.groupAppointment || x.url === EXT.removedAttendee);
}

/**
 * The stored Encounter of a client who is no longer an attendee of its appointment: kept
 * (not deleted, it was that patient's booking), `cancelled` unless already entered-in-error,
 * and marked so that it is never written back (it would book the client in again).
 */
export function removedAttendeeEncounter(stored: Encounter): Encounter {
  const extension = [...(stored.extension ?? []).filter((x) => x.url !== EXT.removedAttendee), { url: EXT.removedAttendee, valueBoolean: true }];
  return { ...stored, extension, status: stored.status === 'entered-in-error' ? stored.status : 'cancelled' };
}

/** Variables for createAppointment / updateAppointment. */
export interface AppointmentInputs {
  create: Record<string, unknown>;
  update: Record<string, unknown>;
}

/**
 * Mutation inputs for an Encounter; undefined for external care, which is never
 * written to Healthie as a provider appointment, and for a group appointment's Encounter
 * (sending one attendee's would make the group a one-client appointment, or cancel it for
 * everyone). `clientId` is the Healthie user id.
 */
export function encounterToAppointmentInputs(e: Encounter, maps: HealthieMaps, clientId: string, healthieId?: string): AppointmentInputs | undefined {
  if (isExternalEncounter(e) || isGroupEncounter(e)) return undefined;
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
