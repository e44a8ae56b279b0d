// Re-fetches one Healthie object by id and mirrors it into FHIR with upsert() (a sync
// write: never pushed back). Shared by the webhook queue worker and by the push worker
// when Healthie's copy turned out newer than the FHIR change (conflict rule).
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { markSyncWrite } from '../store/healthieSync.ts';
import { conditionalDelete } from '../interactions/write.ts';
import type { HealthieClient } from './client.ts';
import * as Q from './queries.ts';
import { upsert, patientIdFor, type UpsertOutcome } from './upsert.ts';
import {
  userToPatient, appointmentToEncounter, entryToObservation, medicationToStatement, appointmentClientId, isMappableAppointment,
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
export interface MirrorResult { outcome: MirrorOutcome; id?: string; reason?: string }

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
      return conditionalDelete(tx, k.fhirType, [['identifier', `${k.system}|${id}`]]);
    });
    return deleted === undefined ? { outcome: 'skipped', reason: 'not in Healthie nor in FHIR' } : { outcome: 'deleted' };
  }
  if (kind === 'user') {
    const u = current as HealthieUser;
    return upsert(db, orgId, userToPatient(u, { source, now }), k.system, u.id, u.updated_at);
  }
  const clientId = kind === 'appointment' ? appointmentClientId(current as HealthieAppointment)
    : kind === 'entry' ? (current as HealthieEntry).poster?.id : (current as HealthieMedication).user_id ?? undefined;
  if (kind === 'appointment' && !isMappableAppointment(current as HealthieAppointment)) return { outcome: 'skipped', reason: 'blocker or calendar event' };
  if (!clientId) return { outcome: 'skipped', reason: 'no Healthie client' };
  let patientId = await patientIdFor(db, orgId, String(clientId), SYSTEM.user);
  if (!patientId) {
    const p = await mirrorObject(ctx, 'user', String(clientId));
    if (!p.id || p.outcome === 'deleted') return { outcome: 'skipped', reason: `client ${clientId} not found` };
    patientId = p.id;
  }
  const pctx = { source, now, patientId };
  if (kind === 'appointment') {
    const a = current as HealthieAppointment;
    const enc = appointmentToEncounter(a, maps, pctx);
    if (!enc) return { outcome: 'skipped', reason: 'not mapped' };
    return upsert(db, orgId, enc, k.system, a.id, a.updated_at);
  }
  if (kind === 'entry') {
    const e = current as HealthieEntry;
    return upsert(db, orgId, entryToObservation(e, maps, pctx), k.system, e.id, e.updated_at);
  }
  const m = current as HealthieMedication;
  return upsert(db, orgId, medicationToStatement(m, pctx), k.system, m.id, m.updated_at);
}
