// Push worker: sends queued FHIR changes (healthie_outbox, filled by the sql/009 trigger)
// to Healthie as create/update mutations. Rows are leased in a short transaction (sql/034)
// and sent with no transaction open, so workers in several processes share the queue and
// a crash leaves them pending until the lease runs out (the next run sends them again; a
// create whose Healthie id was already written back becomes an update). Conflict rule: when Healthie's updated_at is newer than the FHIR version,
// the row is `superseded` and Healthie's copy is mirrored into FHIR instead.
import type { Resource, Encounter, Observation, MedicationStatement, Patient } from '@medplum/fhirtypes';
import type { Database } from '../store/database.ts';
import { withTenant, readCurrent, type Tx } from '../store/resources.ts';
import { claimOutbox, renewOutbox, finishOutbox, retryOutbox, markSyncWrite, type OutboxItem } from '../store/healthieSync.ts';
import { listOrgs } from '../store/tenants.ts';
import { update } from '../interactions/write.ts';
import { FhirError } from '../fhir/outcome.ts';
import { HealthieError, HealthieMutationError, type HealthieClient } from './client.ts';
import { MUTATIONS } from './queries.ts';
import { healthieSettings, clientFor } from './settings.ts';
import { KINDS, kindOfFhirType, fetchObject, mirrorObject, type MirrorContext, type HealthieKind } from './refetch.ts';
import { leaseSeconds, workerName, drainLeased, withPullLease, describeHolder, type Lease } from './lease.ts';
import { processWebhooks } from './webhooks.ts';
import { pull } from './pull.ts';
import { log as logger } from '../log.ts';
import {
  loadMaps, patientToClientInputs, encounterToAppointmentInputs, observationToEntryInputs, statementToMedicationInputs,
  isExternalEncounter, isMirroredStatement, UnmappableObservation, epochMs, SYSTEM, type HealthieMaps,
} from '../../mappings/healthie/index.ts';
import { identifierValue, patientIdOf } from '../../mappings/healthie/common.ts';

export interface PushOptions {
  db: Database;
  orgId: number;
  client: HealthieClient;
  maps?: HealthieMaps;
  /** Rows leased per claim: small, so workers in other processes share a long queue. */
  batchSize?: number;
  /** Delay before retry number `attempts` (1-based), in seconds. */
  backoffSeconds?: (attempts: number) => number;
  /** After this many failed attempts a row is `failed` for good. */
  maxAttempts?: number;
  /** How long a claim lasts without renewal (default KILN_HEALTHIE_LEASE_SECONDS, 300). */
  leaseSeconds?: number;
}

/** `lost`: rows whose lease another worker took over (this one ran past it) before they were finished. */
export interface PushSummary { claimed: number; done: number; skipped: number; superseded: number; failed: number; retried: number; lost: number; errors: string[] }

type Outcome = { status: 'done' | 'skipped' | 'superseded' | 'failed'; note?: string; healthieId?: string };

export const defaultBackoff = (attempts: number) => Math.min(6 * 3600, 30 * 2 ** (attempts - 1));

/**
 * Sends every due outbox row of the tenant once (rows put back for retry wait their turn).
 * No transaction is open while Healthie is called: rows are leased, then finished in a
 * new short transaction that only applies while this worker still holds the lease.
 */
export async function pushOutbox(opts: PushOptions): Promise<PushSummary> {
  const { db, orgId } = opts;
  const maps = opts.maps ?? loadMaps();
  const lease: Lease = { owner: workerName('push'), seconds: opts.leaseSeconds ?? leaseSeconds() };
  const summary: PushSummary = { claimed: 0, done: 0, skipped: 0, superseded: 0, failed: 0, retried: 0, lost: 0, errors: [] };
  const finish = async (item: OutboxItem, f: (tx: Tx) => Promise<boolean>) => {
    if (await withTenant(db.app, orgId, f)) return true;
    summary.lost++;
    summary.errors.push(`${item.resourceType}/${item.resourceId}: lease lost to another worker before the outcome was recorded`);
    return false;
  };
  await drainLeased(db, orgId, lease, 'Healthie outbox rows',
    (tx, skip) => claimOutbox(tx, lease, opts.batchSize ?? 5, skip),
    (tx, ids) => renewOutbox(tx, lease, ids),
    async (item) => {
      summary.claimed++;
      let result: Outcome;
      try {
        result = await pushOne(item, { ...opts, maps });
      } catch (e) {
        const message = (e as Error).message;
        const permanent = e instanceof HealthieMutationError || e instanceof UnmappableObservation || e instanceof FhirError
          || (e instanceof HealthieError && !e.retryable && e.code !== 'UNAUTHORIZED');
        summary.errors.push(`${item.resourceType}/${item.resourceId}: ${message}`);
        if (!permanent && item.attempts + 1 < (opts.maxAttempts ?? 10)) {
          const delay = (opts.backoffSeconds ?? defaultBackoff)(item.attempts + 1);
          if (await finish(item, (tx) => retryOutbox(tx, item.id, lease.owner, message, delay))) summary.retried++;
          return;
        }
        result = { status: 'failed', note: message };
      }
      if (await finish(item, (tx) => finishOutbox(tx, item.id, lease.owner, result.status, result.note, result.healthieId))) summary[result.status]++;
    });
  return summary;
}

/** What a row needs from the database before Healthie is called, read in one short transaction. */
async function readForPush(db: Database, orgId: number, item: OutboxItem, kind: HealthieKind, resource: Resource) {
  return withTenant(db.app, orgId, async (tx) => {
    // The Healthie id may have been written back after this version (an earlier create).
    const current = await readCurrent(tx, item.resourceType, item.resourceId);
    if (!current?.json) return undefined;
    const currentRes = JSON.parse(current.json) as Resource & { identifier?: Patient['identifier'] };
    const healthieId = identifierValue(currentRes.identifier, KINDS[kind].system) ?? identifierValue((resource as Patient).identifier, KINDS[kind].system);
    let clientId = healthieId;
    if (kind !== 'user') {
      const patientId = patientIdOf((resource as Observation).subject?.reference) ?? '';
      const patient = patientId ? await readCurrent(tx, 'Patient', patientId) : undefined;
      clientId = patient?.json ? identifierValue((JSON.parse(patient.json) as Patient).identifier, SYSTEM.user) : undefined;
    }
    return { healthieId, clientId };
  });
}

async function pushOne(item: OutboxItem, opts: PushOptions & { maps: HealthieMaps }): Promise<Outcome> {
  const { client, maps } = opts;
  if (!item.json) return { status: 'skipped', note: 'deletes are not sent to Healthie' };
  const kind = kindOfFhirType(item.resourceType);
  if (!kind) return { status: 'skipped', note: `${item.resourceType} is not synced` };
  const { system } = KINDS[kind];
  const resource = JSON.parse(item.json) as Resource;
  if (item.resourceType === 'Encounter' && isExternalEncounter(resource as Encounter)) return { status: 'skipped', note: 'external care is never written to Healthie' };
  if (item.resourceType === 'MedicationStatement' && isMirroredStatement(resource as MedicationStatement)) return { status: 'skipped', note: 'e-Rx medications are read-only in Healthie' };

  const read = await readForPush(opts.db, opts.orgId, item, kind, resource);
  if (!read) return { status: 'skipped', note: 'deleted since' };
  let { healthieId } = read;
  const { clientId } = read;
  if (!clientId) return { status: 'skipped', note: 'patient not linked to Healthie' };

  const inputs = kind === 'user' ? patientToClientInputs(resource as Patient, healthieId)
    : kind === 'appointment' ? encounterToAppointmentInputs(resource as Encounter, maps, clientId, healthieId)
    : kind === 'entry' ? observationToEntryInputs(resource as Observation, maps, clientId, healthieId)
    : statementToMedicationInputs(resource as MedicationStatement, clientId, healthieId);
  if (!inputs) return { status: 'skipped', note: 'not representable in Healthie' };
  const m = MUTATIONS[item.resourceType as keyof typeof MUTATIONS];

  if (healthieId) {
    const theirs = await fetchObject<{ updated_at?: string | null }>(client, kind, healthieId);
    if (!theirs) return { status: 'failed', note: `Healthie ${kind} ${healthieId} not found`, healthieId };
    const theirsAt = epochMs(theirs.updated_at);
    if (Number.isFinite(theirsAt) && theirsAt > Date.parse(item.lastUpdated)) {
      const ctx: MirrorContext = { db: opts.db, orgId: opts.orgId, client, maps };
      await mirrorObject(ctx, kind, healthieId, theirs);
      return { status: 'superseded', note: `Healthie changed it later (${theirs.updated_at}); Healthie's copy kept`, healthieId };
    }
    await client.mutate(m.update, { input: { ...inputs.update, id: healthieId } }, m.updateField, m.object);
    return { status: 'done', healthieId };
  }
  const created = await client.mutate<{ id: string }>(m.create, { input: inputs.create }, m.createField, m.object);
  healthieId = String(created.id);
  await writeBackId(opts.db, opts.orgId, item.resourceType, item.resourceId, system, healthieId);
  return { status: 'done', healthieId };
}

/** Adds the new Healthie id as an identifier, as a sync write (not queued again). */
async function writeBackId(db: Database, orgId: number, type: string, id: string, system: string, value: string): Promise<void> {
  await withTenant(db.app, orgId, async (tx) => {
    await markSyncWrite(tx);
    const cur = await readCurrent(tx, type, id, true);
    if (!cur?.json) return;
    const r = JSON.parse(cur.json) as Resource & { identifier?: { system?: string; value?: string }[] };
    if (r.identifier?.some((i) => i.system === system)) return;
    r.identifier = [...(r.identifier ?? []), { system, value }];
    await update(tx, type, id, r, undefined);
  });
}

/**
 * The in-process sync loop: every `intervalMs`, for each tenant with a Healthie API key,
 * processes the webhook queue and pushes the outbox. Returns a stop function.
 */
export function startHealthieLoop(db: Database, intervalMs: number, log: (msg: string) => void = (msg) => logger.warn(msg),
  pullEveryMs = 0): () => Promise<void> {
  let running: Promise<void> | undefined;
  let stopped = false;
  const maps = loadMaps();
  const lastPull = new Map<number, number>(); // org -> when its scheduled incremental pull last ran
  const tick = async () => {
    for (const org of await listOrgs(db.owner)) {
      if (stopped) return;
      const settings = healthieSettings(org.slug);
      if (!settings.apiKey) continue;
      const client = clientFor(settings, { maxRetries: 2 });
      try {
        if (pullEveryMs > 0 && Date.now() - (lastPull.get(org.id) ?? 0) >= pullEveryMs) {
          lastPull.set(org.id, Date.now());
          // Incremental (from the updated_at watermarks); skipped this tick while another process pulls the tenant.
          const r = await withPullLease(db, org.id, () => pull({ db, orgId: org.id, client }));
          if (!r.ran) logger.info(describeHolder(org.slug, r.holder));
        }
        await processWebhooks({ db, orgId: org.id, client, maps });
        const s = await pushOutbox({ db, orgId: org.id, client, maps });
        if (s.errors.length) log(`healthie push '${org.slug}': ${s.errors.length} errors, first: ${s.errors[0]}`);
      } catch (e) {
        log(`healthie sync '${org.slug}' failed: ${(e as Error).message}`);
      }
    }
  };
  // Listing the tenants fails while the database is away: this tick is skipped, the next one tries again.
  const safeTick = () => tick().catch((e) => log(`healthie sync skipped: ${(e as Error).message}`));
  const timer = setInterval(() => { running ??= safeTick().finally(() => { running = undefined; }); }, intervalMs);
  timer.unref();
  return async () => { stopped = true; clearInterval(timer); await running; };
}

/** Whether any tenant has Healthie settings (an API key), so the loop is worth starting. */
export async function anyHealthieTenant(db: Database): Promise<boolean> {
  return (await listOrgs(db.owner)).some((o) => !!healthieSettings(o.slug).apiKey);
}
