// Re-fetches one Healthie object by id and mirrors it into FHIR with upsert() (an
// appointment with writeAppointment: one Encounter per client), as a sync write: never
// pushed back. Shared by the webhook queue worker and by the push worker when Healthie's
// copy turned out newer than the FHIR change (conflict rule).
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { markSyncWrite } from '../store/healthieSync.ts';
import { conditionalDelete, remove } from '../interactions/write.ts';
import type { HealthieClient } from './client.ts';
import * as Q from './queries.ts';
import { upsert, patientIdFor, type UpsertOutcome } from './upsert.ts';
import { appointmentEncounters, writeAppointment, type AppointmentWrite } from './appointments.ts';
import {
  userToPatient, entryToObservation, medicationToStatement, appointmentClientIds, isMappableAppointment,
  SYSTEM, type HealthieMaps, type HealthieUser, type HealthieAppointment, type HealthieEntry, type HealthieMedication,
} from '../../mappings/healthie/index.ts';

export type HealthieKind = 'user' | 'appointment' | 'entry' | 'medication';

export const KINDS: Record<HealthieKind, { query: string; field: string; fhirType: string; system: string }> = {
  user: { query: Q.USER, field: 'user', fhirType: 'Patient', system: SYSTEM.user },
  appointment: { query: Q.APPOINTMENT, field: 'appointment', fhirType: 'Encounter', system: SYSTEM.appointment },
  entry: { query: Q.ENTRY, field: 'entry', fhirType: 'Observation', system: SYSTEM.entry },
  medication: { query: Q.MEDICATION, field: 'medication', fhirType: 'MedicationStatement', system: SYSTEM.medication },
};

export function kindOfFhirType(type: string): HealthieKind | undefined {
  return (Object.keys(KINDS) as HealthieKind[]).find((k) => KINDS[k].fhirType === type);
}

/** The object as Healthie has it now (appointments include deleted ones); null when gone. */
export async function fetchObject<T = any>(client: HealthieClient, kind: HealthieKind, id: string): Promise<T | null> {
  const k = KINDS[kind];
  const data = await client.request<Record<string, T | null>>(k.query, { id });
  return data?.[k.field] ?? null;
}

export interface MirrorContext { db: Database; orgId: number; client: HealthieClient; maps: HealthieMaps; now?: () => string }
export type MirrorOutcome = UpsertOutcome | 'deleted' | 'skipped';
/** For an appointment, `outcome` sums up `writes` (one per client's Encounter): the strongest of them. */
export interface MirrorResult { outcome: MirrorOutcome; id?: string; reason?: string; writes?: AppointmentWrite[] }

/**
 * Mirrors Healthie object `id` into FHIR. `obj` may be passed when already fetched; a
 * missing object (deleted in Healthie) deletes the FHIR resource carrying its identifier.
 * A child whose patient was never imported imports that patient first.
 */
export async function mirrorObject(ctx: MirrorContext, kind: HealthieKind, id: string, obj?: any | null): Promise<MirrorResult> {
  const { db, orgId, client, maps } = ctx;
  const k = KINDS[kind];
  const now = ctx.now?.() ?? new Date().toISOString();
  const source = client.url;
  const current = obj === undefined ? await fetchObject(client, kind, id) : obj;
  if (!current) {
    const deleted = await withTenant(db.app, orgId, async (tx) => {
      await markSyncWrite(tx);
      // Every attendee's Encounter of a group appointment carries its identifier.
      if (kind === 'appointment') {
        const found = await appointmentEncounters(tx, id);
        for (const f of found) await remove(tx, k.fhirType, f.id);
        return found.length || undefined;
      }
      return conditionalDelete(tx, k.fhirType, [['identifier', `${k.system}|${id}`]]);
    });
    return deleted === undefined ? { outcome: 'skipped', reason: 'not in Healthie nor in FHIR' } : { outcome: 'deleted' };
  }
  if (kind === 'user') {
    const u = current as HealthieUser;
    return upsert(db, orgId, userToPatient(u, { source, now }), k.system, u.id, u.updated_at);
  }
  if (kind === 'appointment') return mirrorAppointment(ctx, current as HealthieAppointment, source, now);
  const clientId = kind === 'entry' ? (current as HealthieEntry).poster?.id : (current as HealthieMedication).user_id ?? undefined;
  if (!clientId) return { outcome: 'skipped', reason: 'no Healthie client' };
  const patientId = await importedPatient(ctx, String(clientId));
  if (!patientId) return { outcome: 'skipped', reason: `client ${clientId} not found` };
  const pctx = { source, now, patientId };
  if (kind === 'entry') {
    const e = current as HealthieEntry;
    return upsert(db, orgId, entryToObservation(e, maps, pctx), k.system, e.id, e.updated_at);
  }
  const m = current as HealthieMedication;
  return upsert(db, orgId, medicationToStatement(m, pctx), k.system, m.id, m.updated_at);
}

/** The Kiln Patient of a Healthie user, importing the user first when it never was. */
async function importedPatient(ctx: MirrorContext, clientId: string): Promise<string | undefined> {
  const patientId = await patientIdFor(ctx.db, ctx.orgId, clientId, SYSTEM.user);
  if (patientId) return patientId;
  const p = await mirrorObject(ctx, 'user', clientId);
  return p.id && p.outcome !== 'deleted' ? p.id : undefined;
}

const STRENGTH: (AppointmentWrite['outcome'])[] = ['created', 'updated', 'cancelled', 'kept-fhir', 'unchanged', 'skipped'];

/** Every client's Encounter of an appointment; clients never imported are imported first (before the transaction). */
async function mirrorAppointment(ctx: MirrorContext, a: HealthieAppointment, source: string, now: string): Promise<MirrorResult> {
  const patients = new Map<string, string | undefined>();
  if (isMappableAppointment(a)) for (const c of appointmentClientIds(a)) patients.set(c, await importedPatient(ctx, c));
  const writes = await withTenant(ctx.db.app, ctx.orgId, (tx) =>
    writeAppointment(tx, a, ctx.maps, { source, now, patientIdOf: async (c) => patients.get(c) }));
  if (writes.length === 0) return { outcome: 'skipped', reason: 'blocker, calendar event or no client', writes };
  const strongest = STRENGTH.find((o) => writes.some((w) => w.outcome === o))!;
  if (strongest === 'skipped') return { outcome: 'skipped', reason: 'no client found in Healthie', writes };
  return { outcome: strongest === 'cancelled' ? 'updated' : strongest, id: writes.find((w) => w.id)?.id, writes };
}
