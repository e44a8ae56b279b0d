// Writes a mapped Healthie object into FHIR as a conditional update keyed by its Healthie
// identifier, inside a transaction marked as a sync write (not pushed back). Unchanged
// content writes nothing, so re-importing creates no versions. Conflict rule: a FHIR
// change newer than the Healthie object and still waiting in the outbox wins (it will be
// pushed); otherwise the Healthie state wins and the older FHIR version stays in history.
import crypto from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import type { Resource } from '@medplum/fhirtypes';
import type { Database } from '../store/database.ts';
import { createMany, withTenant, type Tx, type WriteRequest } from '../store/resources.ts';
import { markSyncWrite, pendingPushNewerThan } from '../store/healthieSync.ts';
import { checkResource, conditionalUpdate, create, criteriaLockKey, matchCriteria, update } from '../interactions/write.ts';
import { requireClaimedProfiles } from '../interactions/profiles.ts';
import { parseSearch } from '../search/query.ts';
import { toFhirDateTime } from '../../mappings/healthie/index.ts';

export type UpsertOutcome = 'created' | 'updated' | 'unchanged' | 'kept-fhir';

function comparable(r: Resource): unknown {
  const { id: _id, meta, ...rest } = r as Resource & { meta?: Record<string, unknown> };
  const { versionId: _v, lastUpdated: _l, ...m } = meta ?? {};
  return { ...rest, meta: m };
}

export interface UpsertResult { outcome: UpsertOutcome; id: string }

/** Whether a stored resource already says what a freshly mapped one says (id and meta's version fields aside). */
export function sameContent(stored: Resource, mapped: Resource): boolean {
  return isDeepStrictEqual(comparable(stored), comparable(mapped));
}

/**
 * Writes a mapped Healthie object whose stored match (if any) the caller already found,
 * in a sync-write transaction. `found` undefined creates; `system|value` is the Healthie
 * identifier the resource carries (the key future pulls find it by).
 */
export async function writeMatched(tx: Tx, resource: Resource, found: { id: string; json: string } | undefined,
  healthieUpdatedAt?: string | null, opts: { marked?: boolean } = {}): Promise<UpsertResult> {
  // `marked`: the caller already marked this transaction as a sync write (one round trip per page, not per object).
  if (!opts.marked) await markSyncWrite(tx);
  const type = resource.resourceType;
  if (found) {
    const current = JSON.parse(found.json) as Resource;
    if (sameContent(current, resource)) return { outcome: 'unchanged', id: found.id };
    const at = toFhirDateTime(healthieUpdatedAt ?? undefined);
    if (at && await pendingPushNewerThan(tx, type, found.id, new Date(Date.parse(at)).toISOString())) {
      return { outcome: 'kept-fhir', id: found.id };
    }
  }
  checkResource(resource, type);
  const batch = found ? undefined : batches.get(tx);
  if (batch) {
    // As create() does, with the id handed out now: the row is stored by the page's createMany.
    await requireClaimedProfiles(tx, resource);
    const { id: _ignored, ...rest } = resource;
    const id = crypto.randomUUID();
    batch.push({ type, id, resource: rest as Resource, method: 'POST' });
    return { outcome: 'created', id };
  }
  const w = found ? await update(tx, type, found.id, { ...resource, id: found.id }, undefined) : await create(tx, type, resource, undefined);
  return { outcome: w.created ? 'created' : 'updated', id: w.id };
}

/** Creates writeMatched defers in a transaction running withBatchedCreates (appointments reach writeMatched through writeAppointment). */
const batches = new WeakMap<Tx, WriteRequest[]>();

/**
 * Runs `work`, during which writeMatched's creates in `tx` are collected, then stores them
 * with one createMany (src/store/batchWrite.ts). A failure of that write fails the whole work:
 * the caller redoes it one object at a time.
 */
export async function withBatchedCreates<T>(tx: Tx, work: () => Promise<T>): Promise<T> {
  const pending: WriteRequest[] = [];
  batches.set(tx, pending);
  let out: T;
  try {
    out = await work();
  } finally {
    batches.delete(tx);
  }
  if (pending.length) await createMany(tx, pending);
  return out;
}

/** The lock key a conditional write on identifier `system|value` takes (src/interactions/write.ts matchCriteria). */
export function identifierLockKey(type: string, system: string, value: string): string {
  return criteriaLockKey(type, parseSearch(type, [['identifier', `${system}|${value}`]]).criteria);
}

export async function upsertInTx(tx: Tx, resource: Resource, system: string, value: string, healthieUpdatedAt?: string | null): Promise<UpsertResult> {
  await markSyncWrite(tx);
  const found = await matchCriteria(tx, resource.resourceType, [['identifier', `${system}|${value}`]]);
  if (found.length > 1) {
    // Two stored resources carry one Healthie id: leave the choice to the conditional update (412).
    checkResource(resource, resource.resourceType);
    const w = await conditionalUpdate(tx, resource.resourceType, [['identifier', `${system}|${value}`]], resource, undefined);
    return { outcome: w.created ? 'created' : 'updated', id: w.id };
  }
  return writeMatched(tx, resource, found[0], healthieUpdatedAt);
}

export function upsert(db: Database, orgId: number, resource: Resource, system: string, value: string, healthieUpdatedAt?: string | null): Promise<UpsertResult> {
  return withTenant(db.app, orgId, (tx) => upsertInTx(tx, resource, system, value, healthieUpdatedAt));
}

/** The Kiln Patient id of a Healthie user, if it was imported. */
export async function patientIdFor(db: Database, orgId: number, healthieUserId: string, system: string): Promise<string | undefined> {
  return withTenant(db.app, orgId, async (tx) => (await matchCriteria(tx, 'Patient', [['identifier', `${system}|${healthieUserId}`]]))[0]?.id);
}
