// `kiln healthie pull`: imports a tenant's Healthie patients, then their appointments,
// metric entries and medications, as idempotent conditional updates. Incremental by
// updated_at watermarks (sql/009): a phase's watermark moves only once the phase has
// completed, so an interrupted pull redoes at most that phase, without duplicates.
// One transaction per page: the page's patients and stored matches are found by one query
// each, then every object is compared (writeMatched): changed ones are updated one by one,
// new ones created together by one createMany at the page's end; the next page is fetched
// from Healthie meanwhile. No transaction is open while a request is waited on.
import type { Resource } from '@medplum/fhirtypes';
import type { Database } from '../store/database.ts';
import { withTenant, type Tx } from '../store/resources.ts';
import { markSyncWrite, readWatermark, writeWatermark } from '../store/healthieSync.ts';
import { identifierPage, idsByIdentifier, lockCriteriaKeys, matchByIdentifier, type IdentifierMatch } from '../store/healthieMatch.ts';
import { FhirError } from '../fhir/outcome.ts';
import type { HealthieClient } from './client.ts';
import * as Q from './queries.ts';
import { identifierLockKey, upsertInTx, withBatchedCreates, writeMatched, type UpsertOutcome } from './upsert.ts';
import { writeAppointment } from './appointments.ts';
import {
  loadMaps, userToPatient, entryToObservation, medicationToStatement, appointmentClientIds,
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
  /** Whether every linked client's medications were read (else only those of clients changed since the last pull). */
  medicationSweep: boolean;
}

export interface PullOptions {
  db: Database;
  orgId: number;
  client: HealthieClient;
  maps?: HealthieMaps;
  /** Ignore watermarks (everything is compared; unchanged objects still write nothing) and sweep medications. */
  full?: boolean;
  /** Page size of appointments and entries (users pages are at most 100, Healthie's cap). */
  pageSize?: number;
  /**
   * Hours between medication sweeps (every linked client's `medications`): Healthie lists
   * medications only per patient, so other pulls read those of clients changed since the
   * last one, and medication.* webhooks carry the rest. Default KILN_HEALTHIE_MEDICATION_SWEEP_HOURS or 24.
   */
  medicationSweepHours?: number;
  /** Sweep medications on this pull whether or not one is due. */
  sweepMedications?: boolean;
  /** Medication requests in flight at once (default 4). */
  concurrency?: number;
  /** Page transactions in flight at once (default 2): one page's mapping and validation run while another's SQL does. */
  writers?: number;
  onProgress?: (phase: Phase, counts: PhaseCounts) => void;
  now?: () => string;
}

const emptyCounts = (): PhaseCounts => ({ seen: 0, created: 0, updated: 0, unchanged: 0, keptFhir: 0, skipped: 0, failed: 0 });
const KEY: Record<UpsertOutcome, keyof PhaseCounts> = { created: 'created', updated: 'updated', unchanged: 'unchanged', 'kept-fhir': 'keptFhir' };
const SWEEP = 'medication-sweep';
/** Clients whose medications one transaction writes. */
const MEDICATION_CHUNK = 50;

function iso(healthieTime: string | null | undefined): string | undefined {
  const t = toFhirDateTime(healthieTime ?? undefined);
  return t && Number.isFinite(Date.parse(t)) ? new Date(Date.parse(t)).toISOString() : undefined;
}

/** Older than the watermark, compared as instants: the watermark is stored to the second, and
 * an object of that very second may have changed after the pull that set it, so it is read again. */
const olderThan = (at: string | undefined, since: string | undefined) => !!(since && at && Date.parse(at) < Date.parse(since));
const later = (a: string | undefined, b: string | undefined) => (!b || (a && Date.parse(a) > Date.parse(b)) ? a : b);

function sweepHours(opts: PullOptions): number {
  if (opts.medicationSweepHours !== undefined) return opts.medicationSweepHours;
  const n = Number(process.env.KILN_HEALTHIE_MEDICATION_SWEEP_HOURS || 24);
  return Number.isFinite(n) && n >= 0 ? n : 24;
}

/** Errors that fail one object (recorded, the pull goes on); anything else fails the page. */
const objectError = (e: unknown) => e instanceof FhirError || e instanceof TypeError || e instanceof RangeError;

/** One Healthie object of a page: its mapped resource is built in the page's transaction, once the page's patients are known. */
interface Item {
  healthieId: string;
  updatedAt?: string | null;
  /** Healthie user ids whose Patient the mapping needs. */
  users: string[];
  /** The mapped resource; undefined: nothing to write (skipped). */
  build?: (patientOf: (userId: string) => string | undefined) => Resource | undefined;
  /** Writes the object itself, given what is stored under its identifier (instead of build + writeMatched). */
  write?: (tx: Tx, stored: IdentifierMatch[], patientOf: (userId: string) => string | undefined) => Promise<UpsertOutcome | 'skipped'>;
}

type Result = { healthieId: string; outcome: UpsertOutcome | 'skipped' } | { healthieId: string; failed: string };

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
    failures: [], seconds: 0, objects: 0, requests: 0, retries: 0, medicationSweep: false,
  };
  // Healthie user id -> Kiln Patient id, as found or written; bounded (ids only, refilled per page).
  const patientIds = new Map<string, string>();
  const remember = (userId: string, id: string) => {
    if (patientIds.size >= 100_000) patientIds.clear();
    patientIds.set(userId, id);
  };
  const watermark = async (kind: string) => withTenant(db.app, orgId, (tx) => readWatermark(tx, kind));
  const saveWatermark = async (kind: string, at: string | undefined) => {
    if (at) await withTenant(db.app, orgId, (tx) => writeWatermark(tx, kind, at));
  };

  const record = (phase: Phase, results: Result[]) => {
    const c = summary.phases[phase];
    for (const r of results) {
      c.seen++;
      if ('failed' in r) {
        c.failed++;
        summary.failures.push({ phase, healthieId: r.healthieId, reason: r.failed });
      } else if (r.outcome === 'skipped') c.skipped++;
      else c[KEY[r.outcome]]++;
      opts.onProgress?.(phase, c);
    }
  };
  const reasonOf = (e: unknown) => e instanceof FhirError ? `${e.status} ${e.issues.map((i) => i.diagnostics).join('; ')}` : (e as Error).message;

  /** The page's objects in one transaction (see the header); what each came to, and the Patients it wrote (known once it commits). */
  async function writeItems(tx: Tx, type: string, system: string, items: Item[]): Promise<{ results: Result[]; wrote: [string, string][] }> {
    const wrote: [string, string][] = [];
    await markSyncWrite(tx);
    const missing = [...new Set(items.flatMap((i) => i.users))].filter((u) => !patientIds.has(u));
    for (const [userId, id] of await idsByIdentifier(tx, 'Patient', SYSTEM.user, missing)) remember(userId, id);
    const patientOf = (u: string) => patientIds.get(u);
    const results: Result[] = [];
    const built: { item: Item; resource?: Resource; at: number }[] = [];
    for (const item of items) {
      try {
        const resource = item.write ? undefined : item.build!(patientOf);
        if (resource || item.write) built.push({ item, resource, at: results.length });
        results.push({ healthieId: item.healthieId, outcome: 'skipped' });
      } catch (e) {
        if (!objectError(e)) throw e;
        results.push({ healthieId: item.healthieId, failed: reasonOf(e) });
      }
    }
    const values = built.map((b) => b.item.healthieId);
    await lockCriteriaKeys(tx, values.map((v) => identifierLockKey(type, system, v)));
    const stored = await matchByIdentifier(tx, type, system, values);
    // New objects are created together at the end of the page (one createMany); updates go one by one.
    await withBatchedCreates(tx, async () => {
      for (const { item, resource, at } of built) {
        try {
          const found = stored.get(item.healthieId) ?? [];
          if (item.write) {
            results[at] = { healthieId: item.healthieId, outcome: await item.write(tx, found, patientOf) };
            continue;
          }
          // Two stored resources carry one Healthie id: the conditional update's rule decides (412).
          const r = found.length > 1
            ? await upsertInTx(tx, resource!, system, item.healthieId, item.updatedAt)
            : await writeMatched(tx, resource!, found[0], item.updatedAt, { marked: true });
          if (type === 'Patient') wrote.push([item.healthieId, r.id]);
          results[at] = { healthieId: item.healthieId, outcome: r.outcome };
        } catch (e) {
          if (!objectError(e)) throw e;
          results[at] = { healthieId: item.healthieId, failed: reasonOf(e) };
        }
      }
    });
    return { results, wrote };
  }

  /**
   * Writes a page in one transaction. A database error (which aborts the transaction), or any
   * failure of the page's createMany, sends the page again one object per transaction, so only the object that causes it fails the pull,
   * as before pages were batched.
   */
  async function writePage(phase: Phase, type: string, system: string, items: Item[]): Promise<void> {
    if (!items.length) return;
    // One object's transaction: a database error it causes that Kiln names (a duplicate MRN: 409) fails that object only.
    const one = async (item: Item): Promise<Result[]> => {
      try {
        const w = await withTenant(db.app, orgId, (tx) => writeItems(tx, type, system, [item]));
        for (const [u, id] of w.wrote) remember(u, id);
        return w.results;
      } catch (e) {
        if (!objectError(e)) throw e;
        return [{ healthieId: item.healthieId, failed: reasonOf(e) }];
      }
    };
    let results: Result[];
    if (items.length === 1) results = await one(items[0]);
    else {
      try {
        const w = await withTenant(db.app, orgId, (tx) => writeItems(tx, type, system, items));
        for (const [u, id] of w.wrote) remember(u, id);
        results = w.results;
      } catch {
        results = [];
        for (const item of items) results.push(...await one(item));
      }
    }
    record(phase, results);
  }

  // Pages being written; a phase waits for all of them before its watermark moves.
  const writing: Promise<void>[] = [];
  const writers = Math.max(1, opts.writers ?? 2);
  async function submit(phase: Phase, type: string, system: string, items: Item[]): Promise<void> {
    if (writing.length >= writers) await writing.shift();
    const w = writePage(phase, type, system, items);
    w.catch(() => {}); // awaited in turn (or by drain)
    writing.push(w);
  }
  /** Waits for every page in flight; the first failure is thrown once none is left running. */
  async function drain(): Promise<void> {
    const all = await Promise.allSettled(writing.splice(0));
    const failed = all.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
  /** Runs a phase; on any failure, the pages still in flight finish before the pull gives up. */
  async function phaseOf<T>(work: () => Promise<T>): Promise<T> {
    try {
      const r = await work();
      await drain();
      return r;
    } catch (e) {
      await Promise.allSettled(writing.splice(0));
      throw e;
    }
  }

  /**
   * Pages of a newest-change-first list, each handed over with the objects not older than
   * `since`, until a page reaches below it. The next page is requested while the caller
   * writes the current one, unless this page already reached the watermark.
   */
  async function newestFirst<T extends { id: string; updated_at?: string | null; cursor?: string }>(
    query: string, field: string, size: number, variables: Record<string, unknown>, since: string | undefined,
    each: (fresh: T[]) => Promise<void>): Promise<string | undefined> {
    let newest: string | undefined;
    const pages = client.pages<T>(query, field, size, variables);
    try {
      let next: Promise<IteratorResult<T[]>> | undefined = pages.next();
      while (next) {
        const r: IteratorResult<T[]> = await next;
        if (r.done) break;
        const fresh: T[] = r.value.filter((o: T) => !olderThan(iso(o.updated_at), since));
        for (const o of fresh) newest = later(iso(o.updated_at), newest);
        next = fresh.length === r.value.length ? pages.next() : undefined;
        // Awaited on the next turn; a failure meanwhile must not be an unhandled rejection.
        next?.catch(() => {});
        await each(fresh);
      }
    } finally {
      void pages.return(undefined).catch(() => {});
    }
    return newest;
  }

  const lastSweep = await watermark(SWEEP);
  const sweep = !!(opts.full || opts.sweepMedications || !lastSweep || Date.parse(lastSweep) <= Date.now() - sweepHours(opts) * 3_600_000);
  summary.medicationSweep = sweep;
  const sweepStarted = new Date().toISOString();

  // Users, newest change first (active and archived; archival shows as Patient.active=false).
  // Those changed since the watermark have their medications read below, when no sweep is due.
  const changedUsers = new Set<string>();
  {
    const since = opts.full ? undefined : await watermark('users');
    let newest: string | undefined;
    await phaseOf(async () => {
      for (const status of ['active', 'archived']) {
        newest = later(await newestFirst<HealthieUser>(Q.USERS, 'users', Math.min(pageSize, 100), { active_status: status }, since, async (users) => {
          if (!sweep) for (const u of users) changedUsers.add(u.id);
          await submit('users', 'Patient', SYSTEM.user, users.map((u) => ({
            healthieId: u.id, updatedAt: u.updated_at, users: [], build: () => userToPatient(u, { source, now: now() }),
          })));
        }), newest);
      }
    });
    await saveWatermark('users', newest);
  }

  // Appointments and entries: org-wide lists, newest change first, read until a page reaches
  // below the watermark. The new watermark is the newest seen.
  async function changedSince<T extends { id: string; updated_at?: string | null; cursor?: string }>(
    phase: Phase, query: string, field: string, type: string, system: string, item: (o: T) => Item) {
    const since = opts.full ? undefined : await watermark(phase);
    const newest = await phaseOf(() => newestFirst<T>(query, field, pageSize, {}, since, (fresh) => submit(phase, type, system, fresh.map(item))));
    await saveWatermark(phase, newest);
  }

  // One Encounter per client attending (src/healthie/appointments.ts); an appointment counts
  // once: created if any client's Encounter was, else updated (or cancelled) if any was, ...
  await changedSince<HealthieAppointment>('appointments', Q.APPOINTMENTS, 'appointments', 'Encounter', SYSTEM.appointment, (a) => ({
    healthieId: a.id, updatedAt: a.updated_at, users: isMappableAppointment(a) ? appointmentClientIds(a) : [],
    write: async (tx, stored, patientOf) => {
      const writes = await writeAppointment(tx, a, maps, { source, now: now(), patientIdOf: async (u) => patientOf(u), stored, marked: true });
      const has = (...o: string[]) => writes.some((w) => o.includes(w.outcome));
      return has('created') ? 'created' : has('updated', 'cancelled') ? 'updated' : has('kept-fhir') ? 'kept-fhir' : has('unchanged') ? 'unchanged' : 'skipped';
    },
  }));

  await changedSince<HealthieEntry>('entries', Q.ENTRIES, 'entries', 'Observation', SYSTEM.entry, (e) => ({
    healthieId: e.id, updatedAt: e.updated_at, users: e.poster?.id ? [e.poster.id] : [],
    build: (patientOf) => {
      const patientId = e.poster?.id ? patientOf(e.poster.id) : undefined;
      return patientId ? entryToObservation(e, maps, { source, now: now(), patientId }) : undefined;
    },
  }));

  // Medications: Healthie lists them only per patient, with no "changed since". A sweep reads
  // every linked client's (the clients come from the store, a page at a time); other pulls
  // only those of clients changed since the last pull.
  {
    const medicationItems = (userId: string, list: HealthieMedication[]): Item[] => list.map((m) => ({
      healthieId: m.id, updatedAt: m.updated_at, users: [userId],
      build: (patientOf) => {
        const patientId = patientOf(userId);
        return patientId ? medicationToStatement(m, { source, now: now(), patientId }) : undefined;
      },
    }));
    const fetchChunk = async (userIds: string[]): Promise<Item[]> => {
      const lists: HealthieMedication[][] = new Array(userIds.length);
      let i = 0;
      const worker = async () => {
        while (i < userIds.length) {
          const k = i++;
          lists[k] = (await client.request<{ medications: HealthieMedication[] | null }>(Q.MEDICATIONS, { patient_id: userIds[k] })).medications ?? [];
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? 4, userIds.length)) }, worker));
      return userIds.flatMap((u, k) => medicationItems(u, lists[k]));
    };
    // Chunks of clients; the next chunk's medications are requested while this one is written.
    async function* chunks(): AsyncGenerator<string[]> {
      if (!sweep) {
        const ids = [...changedUsers];
        for (let k = 0; k < ids.length; k += MEDICATION_CHUNK) yield ids.slice(k, k + MEDICATION_CHUNK);
        return;
      }
      let after: string | undefined;
      for (;;) {
        const page = await withTenant(db.app, orgId, (tx) => identifierPage(tx, 'Patient', SYSTEM.user, after, MEDICATION_CHUNK));
        if (!page.length) return;
        for (const p of page) remember(p.value, p.id);
        yield page.map((p) => p.value);
        after = page[page.length - 1].value;
      }
    }
    await phaseOf(async () => {
      let pending: Promise<Item[]> | undefined;
      for await (const userIds of chunks()) {
        const fetched = fetchChunk(userIds);
        fetched.catch(() => {});
        if (pending) await submit('medications', 'MedicationStatement', SYSTEM.medication, await pending);
        pending = fetched;
      }
      if (pending) await submit('medications', 'MedicationStatement', SYSTEM.medication, await pending);
    });
    if (sweep) await saveWatermark(SWEEP, sweepStarted);
  }

  summary.seconds = (Date.now() - started) / 1000;
  summary.objects = PHASES.reduce((n, p) => n + summary.phases[p].seen, 0);
  summary.requests = client.stats.requests - startRequests;
  summary.retries = client.stats.retries - startRetries;
  return summary;
}
