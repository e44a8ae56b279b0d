// Writes one Healthie appointment as one Encounter per client attending it, in the caller's
// transaction. Every Encounter of an appointment carries the appointment identifier; the
// key of one is (appointment id, client's Healthie user id), read from subject.identifier
// (so an Encounter the one-Encounter code stored for a group, subject the first attendee,
// is found as that attendee's). A client no longer attending keeps their Encounter,
// cancelled. Shared by the pull, webhooks and the push conflict rule (src/healthie/refetch.ts).
import type { Encounter } from '@medplum/fhirtypes';
import { lockCriteria, type Tx } from '../store/resources.ts';
import { matchByIdentifier } from '../store/healthieMatch.ts';
import { identifierLockKey, writeMatched, type UpsertOutcome } from './upsert.ts';
import {
  appointmentToEncounter, appointmentClientIds, isMappableAppointment, removedAttendeeEncounter, SYSTEM,
  type HealthieAppointment, type HealthieMaps,
} from '../../mappings/healthie/index.ts';
import { patientIdOf as patientOfReference } from '../../mappings/healthie/common.ts';

/** What happened to one client's Encounter; `cancelled`: the client left the appointment. */
export type AppointmentWrite = { clientId: string; outcome: UpsertOutcome | 'cancelled' | 'skipped'; id?: string };

export interface AppointmentContext {
  /** meta.source of the Encounters (the Healthie endpoint). */
  source: string;
  now: string;
  /** The Kiln Patient id of a Healthie user, undefined when not imported (that client is skipped). */
  patientIdOf: (healthieUserId: string) => Promise<string | undefined>;
  /** The appointment's stored Encounters when the caller found them in a batched lookup
   * (src/store/healthieMatch.ts), holding the identifier's lock (identifierLockKey). */
  stored?: { id: string; json: string }[];
  /** The caller already marked the transaction as a sync write. */
  marked?: boolean;
}

/**
 * Every stored Encounter carrying the appointment's identifier, however many. Takes the
 * lock a conditional write on that identifier takes, so two writers of one appointment
 * (pull, webhook, push conflict) cannot both create a client's Encounter.
 */
export async function appointmentEncounters(tx: Tx, appointmentId: string): Promise<{ id: string; json: string }[]> {
  await lockCriteria(tx, identifierLockKey('Encounter', SYSTEM.appointment, appointmentId));
  return (await matchByIdentifier(tx, 'Encounter', SYSTEM.appointment, [appointmentId])).get(appointmentId) ?? [];
}

/**
 * Writes appointment `a` for each of its clients (see the header), comparing with what is
 * stored (unchanged content writes nothing; the conflict rule of writeMatched applies).
 * Returns one entry per client, then one per stored Encounter of a client who left.
 * An appointment with no client (a blocker) whose Encounters were never stored gives [].
 */
export async function writeAppointment(tx: Tx, a: HealthieAppointment, maps: HealthieMaps, ctx: AppointmentContext): Promise<AppointmentWrite[]> {
  const clients = isMappableAppointment(a) ? appointmentClientIds(a) : [];
  const stored = (ctx.stored ?? await appointmentEncounters(tx, a.id)).map((row) => ({ row, enc: JSON.parse(row.json) as Encounter }));
  const opts = { marked: ctx.marked };
  const patients = new Map<string, string | undefined>();
  for (const c of clients) patients.set(c, await ctx.patientIdOf(c));

  // Pair by subject identifier; an Encounter made in FHIR (then pushed) has only the reference.
  const used = new Set<number>();
  const storedOf = (clientId: string) => {
    let i = stored.findIndex((s, j) => !used.has(j) && s.enc.subject?.identifier?.system === SYSTEM.user && s.enc.subject.identifier.value === clientId);
    const patientId = patients.get(clientId);
    if (i < 0 && patientId) i = stored.findIndex((s, j) => !used.has(j) && !s.enc.subject?.identifier && patientOfReference(s.enc.subject?.reference) === patientId);
    if (i < 0) return undefined;
    used.add(i);
    return stored[i].row;
  };

  const writes: AppointmentWrite[] = [];
  for (const clientId of clients) {
    const patientId = patients.get(clientId);
    const found = storedOf(clientId);
    if (!patientId) { writes.push({ clientId, outcome: 'skipped', id: found?.id }); continue; }
    const enc = appointmentToEncounter(a, maps, { source: ctx.source, now: ctx.now, patientId, clientId })!;
    const r = await writeMatched(tx, enc, found, a.updated_at, opts);
    writes.push({ clientId, outcome: r.outcome, id: r.id });
  }
  for (const [j, s] of stored.entries()) {
    if (used.has(j)) continue;
    const clientId = s.enc.subject?.identifier?.value ?? s.enc.subject?.reference ?? '';
    const r = await writeMatched(tx, removedAttendeeEncounter(s.enc), s.row, a.updated_at, opts);
    writes.push({ clientId, outcome: r.outcome === 'updated' ? 'cancelled' : r.outcome, id: r.id });
  }
  return writes;
}
