// `kiln healthie pull`: imports a tenant's Healthie patients, then their appointments,
// metric entries and medications, as idempotent conditional updates. Incremental by
// updated_at watermarks (sql/009): a phase's watermark moves only once the phase has
// completed, so an interrupted pull redoes at most that phase, without duplicates.
import type { Database } from '../store/database.ts';
import { withTenant } from '../store/resources.ts';
import { readWatermark, writeWatermark } from '../store/healthieSync.ts';
import { FhirError } from '../fhir/outcome.ts';
import type { HealthieClient } from './client.ts';
import * as Q from './queries.ts';
import { upsert, patientIdFor, type UpsertOutcome } from './upsert.ts';
import {
  loadMaps, userToPatient, appointmentToEncounter, entryToObservation, medicationToStatement, appointmentClientId,
  isMappableAppointment, toFhirDateTime, SYSTEM,
  type HealthieUser, type HealthieAppointment, type HealthieEntry, type HealthieMedication, type HealthieMaps,
} from '../../mappings/healthie/index.ts';

export type Phase = 'users' | 'appointments' | 'entries' | 'medications';
export const PHASES: Phase[] = ['users', 'appointments', 'entries', 'medications'];

export interface PhaseCounts { seen: number; created: number; updated: number; unchanged: number; keptFhir: number; skipped: number; failed: number }
export interface PullSummary {
  phases: Record<Phase, PhaseCounts>;
  failures: { phase: Phase; healthieId: string; reason: string }[];
  seconds: number;
  objects: number;
  requests: number;
  retries: number;
}

export interface PullOptions {
  db: Database;
  orgId: number;
  client: HealthieClient;
  maps?: HealthieMaps;
  /** Ignore watermarks (everything is compared; unchanged objects still write nothing). */
  full?: boolean;
  pageSize?: number;
  onProgress?: (phase: Phase, counts: PhaseCounts) => void;
  now?: () => string;
}

const emptyCounts = (): PhaseCounts => ({ seen: 0, created: 0, updated: 0, unchanged: 0, keptFhir: 0, skipped: 0, failed: 0 });
const KEY: Record<UpsertOutcome, keyof PhaseCounts> = { created: 'created', updated: 'updated', unchanged: 'unchanged', 'kept-fhir': 'keptFhir' };

function iso(healthieTime: string | null | undefined): string | undefined {
  const t = toFhirDateTime(healthieTime ?? undefined);
  return t && Number.isFinite(Date.parse(t)) ? new Date(Date.parse(t)).toISOString() : undefined;
}

/** Older than the watermark, compared as instants: the watermark is stored to the second, and
 * an object of that very second may have changed after the pull that set it, so it is read again. */
const olderThan = (at: string | undefined, since: string | undefined) => !!(since && at && Date.parse(at) < Date.parse(since));

export async function pull(opts: PullOptions): Promise<PullSummary> {
  const started = Date.now();
  const { db, orgId, client } = opts;
  const maps = opts.maps ?? loadMaps();
  const now = opts.now ?? (() => new Date().toISOString());
  const source = client.url;
  const pageSize = opts.pageSize ?? 100;
  const startRequests = client.stats.requests;
  const startRetries = client.stats.retries;
  const summary: PullSummary = {
    phases: { users: emptyCounts(), appointments: emptyCounts(), entries: emptyCounts(), medications: emptyCounts() },
    failures: [], seconds: 0, objects: 0, requests: 0, retries: 0,
  };
  const patientIds = new Map<string, string>();
  const watermark = async (kind: Phase) => opts.full ? undefined : withTenant(db.app, orgId, (tx) => readWatermark(tx, kind));
  const saveWatermark = async (kind: Phase, at: string | undefined) => {
    if (at) await withTenant(db.app, orgId, (tx) => writeWatermark(tx, kind, at));
  };
  const patientOf = async (userId: string) => {
    let id = patientIds.get(userId);
    if (!id) {
      id = await patientIdFor(db, orgId, userId, SYSTEM.user);
      if (id) patientIds.set(userId, id);
    }
    return id;
  };
  // One object: mapping or FHIR errors are recorded and the pull goes on; Healthie
  // transport errors (retries exhausted) abort it, leaving the phase's watermark as it was.
  const handle = async (phase: Phase, healthieId: string, work: () => Promise<UpsertOutcome | 'skipped'>) => {
    const c = summary.phases[phase];
    c.seen++;
    try {
      const outcome = await work();
      if (outcome === 'skipped') c.skipped++;
      else c[KEY[outcome]]++;
    } catch (e) {
      if (!(e instanceof FhirError) && !(e instanceof TypeError) && !(e instanceof RangeError)) throw e;
      c.failed++;
      const reason = e instanceof FhirError ? `${e.status} ${e.issues.map((i) => i.diagnostics).join('; ')}` : e.message;
      summary.failures.push({ phase, healthieId, reason });
    }
    opts.onProgress?.(phase, c);
  };

  // Users: the whole list (active and archived; archival shows as Patient.active=false),
  // written when updated since the watermark. Their ids drive the medications phase.
  const userIds: string[] = [];
  {
    const since = await watermark('users');
    let newest: string | undefined;
    for (const status of ['active', 'archived']) {
      for await (const page of client.pages<HealthieUser>(Q.USERS, 'users', Math.min(pageSize, 100), { active_status: status })) {
        for (const u of page) {
          userIds.push(u.id);
          const at = iso(u.updated_at);
          if (at && (!newest || at > newest)) newest = at;
          if (olderThan(at, since)) continue;
          await handle('users', u.id, async () => {
            const r = await upsert(db, orgId, userToPatient(u, { source, now: now() }), SYSTEM.user, u.id, u.updated_at);
            patientIds.set(u.id, r.id);
            return r.outcome;
          });
        }
      }
    }
    await saveWatermark('users', newest);
  }

  // Appointments and entries: org-wide lists, newest change first, read until a page is
  // entirely older than the watermark. The new watermark is the newest seen on page one.
  async function changedSince<T extends { id: string; updated_at?: string | null; cursor?: string }>(
    phase: Phase, query: string, field: string, each: (o: T) => Promise<UpsertOutcome | 'skipped'>) {
    const since = await watermark(phase);
    let newest: string | undefined;
    for await (const page of client.pages<T>(query, field, pageSize)) {
      let fresh = 0;
      for (const o of page) {
        const at = iso(o.updated_at);
        if (at && (!newest || at > newest)) newest = at;
        if (olderThan(at, since)) continue;
        fresh++;
        await handle(phase, o.id, () => each(o));
      }
      if (since && fresh === 0) break;
    }
    await saveWatermark(phase, newest);
  }

  await changedSince<HealthieAppointment>('appointments', Q.APPOINTMENTS, 'appointments', async (a) => {
    if (!isMappableAppointment(a)) return 'skipped';
    const patientId = await patientOf(appointmentClientId(a)!);
    if (!patientId) return 'skipped';
    const enc = appointmentToEncounter(a, maps, { source, now: now(), patientId });
    if (!enc) return 'skipped';
    return (await upsert(db, orgId, enc, SYSTEM.appointment, a.id, a.updated_at)).outcome;
  });

  await changedSince<HealthieEntry>('entries', Q.ENTRIES, 'entries', async (e) => {
    const patientId = e.poster?.id ? await patientOf(e.poster.id) : undefined;
    if (!patientId) return 'skipped';
    return (await upsert(db, orgId, entryToObservation(e, maps, { source, now: now(), patientId }), SYSTEM.entry, e.id, e.updated_at)).outcome;
  });

  // Medications can only be listed per patient.
  {
    const since = await watermark('medications');
    let newest: string | undefined;
    for (const userId of userIds) {
      const patientId = await patientOf(userId);
      if (!patientId) continue;
      const data = await client.request<{ medications: HealthieMedication[] | null }>(Q.MEDICATIONS, { patient_id: userId });
      for (const m of data.medications ?? []) {
        const at = iso(m.updated_at);
        if (at && (!newest || at > newest)) newest = at;
        if (olderThan(at, since)) continue;
        await handle('medications', m.id, async () =>
          (await upsert(db, orgId, medicationToStatement(m, { source, now: now(), patientId }), SYSTEM.medication, m.id, m.updated_at)).outcome);
      }
    }
    await saveWatermark('medications', newest);
  }

  summary.seconds = (Date.now() - started) / 1000;
  summary.objects = PHASES.reduce((n, p) => n + summary.phases[p].seen, 0);
  summary.requests = client.stats.requests - startRequests;
  summary.retries = client.stats.retries - startRetries;
  return summary;
}
