// Profiles a tenant stores (StructureDefinitions with a snapshot, POSTed like any resource):
// enforced on that tenant's writes that claim them in meta.profile, and by $validate. They
// are looked up by url in the write's own transaction, so a profile stored earlier in the
// same transaction counts and another tenant's is never seen (the search is the tenant's).
// Profiles in profiles/ (src/fhir/validate.ts) win over a tenant's of the same url; a claimed
// url neither holds is not enforced, as FHIR lets a server ignore profiles it does not know.
import type { OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { TABLES } from '../../mappings/postgres/index.ts';
import { FhirError } from '../fhir/outcome.ts';
import { localProfile, profileIssues } from '../fhir/validate.ts';
import { parseSearch } from '../search/query.ts';
import { runSearch, txOrgId } from '../store/searchRun.ts';
import type { Tx } from '../store/resources.ts';

/** A profile found by url: usable, or held but not usable (why). */
export type FoundProfile = { sd: StructureDefinition; reason?: undefined } | { sd?: undefined; reason: string };

interface Cached { text: string; found: FoundProfile }

/**
 * Parsed tenant profiles per (tenant, url, version asked), each with the stored text it was
 * parsed from: a write reuses the parse while the stored version is the same text. Bounded,
 * oldest out first (a snapshot parses to a few hundred KB).
 */
const cache = new Map<string, Cached>();
const CACHE_MAX = 64;

const escapeValue = (v: string) => v.replace(/[\\,$|]/g, '\\$&');

/** The profile with this canonical url (`url` or `url|version`): profiles/ first, then the tenant's. */
export async function findProfile(tx: Tx, canonical: string): Promise<FoundProfile | undefined> {
  const local = localProfile(canonical);
  if (local) return { sd: local };
  return tenantProfile(tx, canonical);
}

/**
 * The tenant's StructureDefinition with this url (and version, when the canonical names one),
 * the most recently updated when several match; undefined when it holds none.
 */
export async function tenantProfile(tx: Tx, canonical: string): Promise<FoundProfile | undefined> {
  if (!Object.hasOwn(TABLES, 'StructureDefinition')) return undefined; // not a stored type (yet)
  const bar = canonical.indexOf('|');
  const url = bar < 0 ? canonical : canonical.slice(0, bar);
  const version = bar < 0 ? undefined : canonical.slice(bar + 1);
  if (!url) return undefined;
  const pairs: [string, string][] = [['url', escapeValue(url)], ['_sort', '-_lastUpdated']];
  if (version) pairs.push(['version', escapeValue(version)]);
  const q = parseSearch('StructureDefinition', pairs);
  if (q.unknown.length || q.criteria.length !== pairs.length - 1) return undefined; // never a search wider than the url
  const orgId = await txOrgId(tx);
  const { rows } = await runSearch(tx, { orgId, type: 'StructureDefinition', criteria: q.criteria, sort: q.sort, count: 1, total: 'none' });
  const row = rows[0];
  if (!row) return undefined;
  const key = JSON.stringify([orgId, url, version ?? null]);
  const hit = cache.get(key);
  if (hit && hit.text === row.json) return hit.found;
  const found = usable(JSON.parse(row.json) as StructureDefinition);
  cache.delete(key);
  cache.set(key, { text: row.json, found });
  if (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value!);
  return found;
}

function usable(sd: StructureDefinition): FoundProfile {
  const name = `StructureDefinition/${sd.id} (${sd.url})`;
  if (!sd.snapshot?.element?.length) return { reason: `${name} has no snapshot: Kiln validates against snapshots only` };
  if (sd.kind !== 'resource' || !sd.type) return { reason: `${name} does not constrain a resource type` };
  return { sd };
}

/**
 * Issues of a resource against the tenant profiles it claims (those in profiles/ are checked
 * with its structure, src/fhir/validate.ts). A held profile without a snapshot is not
 * enforced, like an unknown one: Kiln does not generate snapshots.
 */
export async function claimedProfileIssues(tx: Tx, resource: Resource): Promise<OperationOutcomeIssue[]> {
  const claims = resource.meta?.profile;
  if (!claims?.length) return [];
  const issues: OperationOutcomeIssue[] = [];
  for (const canonical of new Set(claims)) {
    if (typeof canonical !== 'string' || localProfile(canonical)) continue;
    const found = await tenantProfile(tx, canonical);
    if (found?.sd) issues.push(...profileIssues(resource, found.sd));
  }
  return issues;
}

/** A write claiming a tenant profile it does not conform to: 422 with the issues. */
export async function requireClaimedProfiles(tx: Tx, resource: Resource): Promise<void> {
  if (!resource.meta?.profile?.length) return;
  const issues = await claimedProfileIssues(tx, resource);
  if (issues.length) throw FhirError.withIssues(422, issues, `${resource.resourceType} does not conform to its profile: ${issues.length} issue(s)`);
}
