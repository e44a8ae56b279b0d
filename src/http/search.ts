// Type-level search (GET [type]?..., POST [type]/_search): criteria, result
// control (_sort, _count, _total, _summary, _elements, _include, _revinclude) and
// stable cursor paging. Unknown parameters are reported (lenient) or refused (strict).
import { pageSize } from './context.ts';
import type { Session } from './session.ts';
import { sendJson, preferStrict } from './format.ts';
import { bundleJson, type EntryParts } from './bundle.ts';
import { decodeCursor, pageLinks } from './paging.ts';
import { ID_PATTERN } from '../interactions/write.ts';
import { badRequest, outcome } from '../fhir/outcome.ts';
import { subset, type SummaryMode } from '../fhir/subset.ts';
import { parseSearch } from '../search/query.ts';
import { runSearch, runSystemSearch, fetchIncludes, EXACT_TOTAL_BOUND } from '../store/searchRun.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { filterVisible, forbidden } from '../auth/enforce.ts';
import { queryPatients } from '../audit/request.ts';

const BOUND_TEXT = EXACT_TOTAL_BOUND.toLocaleString('en-US');

/** Records the search's AuditEvent: the query, and the patients it names or is confined to. */
function auditSearch(s: Session, type: string | undefined, pairs: [string, string][], confined: boolean) {
  const patients = queryPatients(type, pairs);
  if (confined && s.ctx.access?.patient) patients.push(s.ctx.access.patient);
  return s.succeed({ patients });
}

/** A system search's cursor: a stored type and an id (the sort values fit when the search runs). */
const typedId = ([type, id, ...rest]: string[]) => !rest.length && Object.hasOwn(TABLES, type) && ID_PATTERN.test(id ?? '');

/** A search confined to a compartment (`Patient/[id]/[type]`): its criterion, and the path its links repeat. */
export interface Within {
  pair: [string, string];
  path: string;
}

export async function searchInteraction(s: Session, pairs: [string, string][], within?: Within) {
  const { ctx } = s;
  const type = s.match.type!;
  // The compartment and granular filters apply to the result type and to every resource
  // a chain or _has reaches, so the client's criteria can only narrow what the token sees.
  const { access, restrict: restricted } = s.policy;
  const q = parseSearch(type, [...pairs, ...restricted, ...within ? [within.pair] : []]);
  if (q.unknown.length && preferStrict(ctx.req)) throw badRequest(`Unsupported search parameter(s): ${q.unknown.join(', ')}`);
  const count = pageSize(ctx, q.count);
  const cursor = q.page ? decodeCursor(q.page) : undefined;
  const countOnly = q.summary === 'count';
  const result = await s.inTenant(async (tx) => {
    const page = await runSearch(tx, {
      orgId: ctx.orgId,
      type, criteria: q.criteria, sort: q.sort, count: countOnly ? 0 : count,
      after: cursor?.dir === 'next' ? cursor.key : undefined, before: cursor?.dir === 'previous' ? cursor.key : undefined,
      // The planner's estimate comes from statistics over the whole tenant: a restricted
      // token gets the exact count of what it may see instead.
      total: (countOnly && q.total === 'none') || (q.total === 'estimate' && restricted.length) ? 'accurate' : q.total,
    });
    const included = countOnly || (!q.include.length && !q.revinclude.length) ? []
      // Filtered round by round: an :iterate round starts only from what the token may read.
      : await fetchIncludes(tx, type, page.rows.map((r) => r.id), q.include, q.revinclude, ctx.config.maxCount, (rows) => filterVisible(ctx, tx, rows, 'r'));
    return { page, included };
  });
  const summary = countOnly ? undefined : (q.summary as SummaryMode | undefined);
  const entries: EntryParts[] = [
    ...result.page.rows.map((r): EntryParts => ({ fullUrl: `${ctx.base}/${type}/${r.id}`, resourceJson: subset(r.json, summary, q.elements), search: { mode: 'match' } })),
    ...result.included.map((r): EntryParts => ({ fullUrl: `${ctx.base}/${r.type}/${r.id}`, resourceJson: subset(r.json, summary, q.elements), search: { mode: 'include' } })),
  ];
  if (q.unknown.length) {
    entries.push({
      resourceJson: JSON.stringify(outcome([{ severity: 'warning', code: 'not-supported', diagnostics: `Ignored unsupported search parameter(s): ${q.unknown.join(', ')}` }])),
      search: { mode: 'outcome' },
    });
  }
  if (result.page.estimated && !countOnly) {
    // Bundle.total cannot say it is approximate: the outcome entry does.
    entries.push({
      resourceJson: JSON.stringify(outcome([{ severity: 'information', code: 'informational',
        diagnostics: `total is an estimate: more than ${BOUND_TEXT} matches (counted exactly up to ${BOUND_TEXT}), sized by the database's statistics; _total=accurate counts them all` }])),
      search: { mode: 'outcome' },
    });
  }
  await auditSearch(s, type, pairs, access.compartment);
  // Links repeat the query (minus what was ignored) so every page means the same search.
  const keep = pairs.filter(([n]) => n !== '_page' && n !== '_count' && !q.unknown.includes(n.split(/[:.]/)[0]));
  const link = (page?: string) => `${ctx.base}/${within?.path ?? type}?${new URLSearchParams([...keep, ['_count', String(count)], ...page ? [['_page', page]] : []]).toString()}`;
  const links = pageLinks(link, q.page, result.page);
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset', countOnly ? [] : entries, links, result.page.total));
}

/** GET [base]?_type=A,B&...: parameters common to the listed types (all stored types by default). */
export async function systemSearchInteraction(s: Session, pairs: [string, string][]) {
  const { ctx } = s;
  const typeParam = pairs.find(([n]) => n === '_type')?.[1];
  let types = typeParam ? typeParam.split(',').filter(Boolean) : Object.keys(TABLES);
  const bad = types.filter((t) => !TABLES[t]);
  if (bad.length) throw badRequest(`_type names types Kiln does not store: ${bad.join(', ')}`, ['_type']);
  // Named types must all be searchable; without _type, the search covers those that are.
  if (typeParam) types.forEach((t) => s.permitOn(t));
  else types = types.filter((t) => s.accessOn(t));
  if (!types.length) throw forbidden("The access token's scopes allow searching no resource type");
  const rest = pairs.filter(([n]) => n !== '_type');
  const parsed = types.map((type) => ({ type, q: parseSearch(type, rest) }));
  const first = parsed[0].q;
  if (first.sort.length || first.include.length || first.revinclude.length) {
    throw badRequest('_sort, _include and _revinclude need a single resource type');
  }
  // A parameter is usable only if every listed type knows it.
  const unknown = [...new Set(parsed.flatMap(({ q }) => q.unknown))];
  if (unknown.length && preferStrict(ctx.req)) throw badRequest(`Unsupported search parameter(s) for ${types.join(', ')}: ${unknown.join(', ')}`);
  const usable = rest.filter(([n]) => !unknown.includes(n));
  const count = pageSize(ctx, first.count);
  const cursor = first.page ? decodeCursor(first.page, typedId) : undefined;
  const at = cursor && { type: cursor.key[0], id: cursor.key[1] };
  const countOnly = first.summary === 'count';
  const result = await s.inTenant((tx) => runSystemSearch(tx, {
    types: types.map((type) => ({ type, criteria: parseSearch(type, [...usable, ...s.policyOn(type).restrict]).criteria })),
    count: countOnly ? 0 : count, after: cursor?.dir === 'next' ? at : undefined, before: cursor?.dir === 'previous' ? at : undefined,
    // _total=estimate is counted exactly here: the planner's guess for a union of types is poor.
    total: countOnly || first.total !== 'none' ? 'accurate' : 'none',
  }));
  const entries: EntryParts[] = countOnly ? [] : result.rows.map((r) => ({
    fullUrl: `${ctx.base}/${r.type}/${r.id}`, resourceJson: subset(r.json, first.summary as SummaryMode | undefined, first.elements), search: { mode: 'match' },
  }));
  if (unknown.length) {
    entries.push({
      resourceJson: JSON.stringify(outcome([{ severity: 'warning', code: 'not-supported', diagnostics: `Ignored parameter(s) not common to ${types.join(', ')}: ${unknown.join(', ')}` }])),
      search: { mode: 'outcome' },
    });
  }
  const keep = pairs.filter(([n]) => n !== '_page' && n !== '_count' && !unknown.includes(n));
  const link = (page?: string) => `${ctx.base}?${new URLSearchParams([...keep, ['_count', String(count)], ...page ? [['_page', page]] : []]).toString()}`;
  const links = pageLinks(link, first.page, { next: result.next && [result.next.type, result.next.id], previous: result.previous && [result.previous.type, result.previous.id] });
  await auditSearch(s, undefined, pairs, types.some((t) => s.accessOn(t)?.compartment));
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset', entries, links, result.total));
}
