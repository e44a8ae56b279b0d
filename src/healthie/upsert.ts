// Writes a mapped Healthie object into FHIR as a conditional update keyed by its Healthie
// identifier, inside a transaction marked as a sync write (not pushed back). Unchanged
// content writes nothing, so re-importing creates no versions. Conflict rule: a FHIR
// change newer than the Healthie object and still waiting in the outbox wins (it will be
// pushed); otherwise the Healthie state wins and the older FHIR version stays in history.
import { isDeepStrictEqual } from 'node:util';
import type { Resource } from '@medplum/fhirtypes';
import type { Database } from '../store/database.ts';
import { withTenant, type Tx } from '../store/resources.ts';
import { markSyncWrite, pendingPushNewerThan } from '../store/healthieSync.ts';
import { checkResource, conditionalUpdate, matchCriteria } from '../interactions/write.ts';
import { toFhirDateTime } from '../../mappings/healthie/index.ts';

export type UpsertOutcome = 'created' | 'updated' | 'unchanged' | 'kept-fhir';

function comparable(r: Resource): unknown {
  const { id: _id, meta, ...rest } = r as Resource & { meta?: Record<string, unknown> };
  const { versionId: _v, lastUpdated: _l, ...m } = meta ?? {};
  return { ...rest, meta: m };
}

export interface UpsertResult { outcome: UpsertOutcome; id: string }

export async function upsertInTx(tx: Tx, resource: Resource, system: string, value: string, healthieUpdatedAt?: string | null): Promise<UpsertResult> {
  await markSyncWrite(tx);
  const type = resource.resourceType;
  const criteria: [string, string][] = [['identifier', `${system}|${value}`]];
  const found = await matchCriteria(tx, type, criteria);
  if (found.length === 1) {
    const current = JSON.parse(found[0].json) as Resource;
    if (isDeepStrictEqual(comparable(current), comparable(resource))) return { outcome: 'unchanged', id: found[0].id };
    const at = toFhirDateTime(healthieUpdatedAt ?? undefined);
    if (at && await pendingPushNewerThan(tx, type, found[0].id, new Date(Date.parse(at)).toISOString())) {
      return { outcome: 'kept-fhir', id: found[0].id };
    }
  }
  checkResource(resource, type);
  const w = await conditionalUpdate(tx, type, criteria, resource, undefined);
  return { outcome: w.created ? 'created' : 'updated', id: w.id };
}

export function upsert(db: Database, orgId: number, resource: Resource, system: string, value: string, healthieUpdatedAt?: string | null): Promise<UpsertResult> {
  return withTenant(db.app, orgId, (tx) => upsertInTx(tx, resource, system, value, healthieUpdatedAt));
}

/** The Kiln Patient id of a Healthie user, if it was imported. */
export async function patientIdFor(db: Database, orgId: number, healthieUserId: string, system: string): Promise<string | undefined> {
  return withTenant(db.app, orgId, async (tx) => (await matchCriteria(tx, 'Patient', [['identifier', `${system}|${healthieUserId}`]]))[0]?.id);
}
