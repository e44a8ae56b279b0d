// Type-level search (GET [type]?..., POST [type]/_search): criteria, result
// control (_sort, _count, _total, _summary, _elements, _include, _revinclude) and
// stable cursor paging. Unknown parameters are reported (lenient) or refused (strict).
import type { BundleLink } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { inTenant, pageSize } from './context.ts';
import { sendJson, preferStrict } from './format.ts';
import { bundleJson, type EntryParts } from './bundle.ts';
import { badRequest, outcome } from '../fhir/outcome.ts';
import { subset, type SummaryMode } from '../fhir/subset.ts';
import { parseSearch } from '../search/query.ts';
import { runSearch, fetchIncludes } from '../store/searchRun.ts';

const encodeCursor = (c: string[]) => Buffer.from(JSON.stringify(c)).toString('base64url');

function decodeCursor(raw: string): string[] {
  try {
    const c = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    if (Array.isArray(c) && c.every((x) => typeof x === 'string')) return c;
  } catch { /* fall through */ }
  throw badRequest(`Invalid _page cursor '${raw}'`, ['_page']);
}

export async function searchInteraction(ctx: Ctx, type: string, pairs: [string, string][]) {
  const q = parseSearch(type, pairs);
  if (q.unknown.length && preferStrict(ctx.req)) throw badRequest(`Unsupported search parameter(s): ${q.unknown.join(', ')}`);
  const count = pageSize(ctx, q.count);
  const after = q.page ? decodeCursor(q.page) : undefined;
  const countOnly = q.summary === 'count';
  const result = await inTenant(ctx, async (tx) => {
    const page = await runSearch(tx, {
      type, criteria: q.criteria, sort: q.sort, count: countOnly ? 0 : count, after,
      total: countOnly || q.total !== 'none' ? 'accurate' : 'none',
    });
    const included = countOnly || (!q.include.length && !q.revinclude.length) ? []
      : await fetchIncludes(tx, type, page.rows.map((r) => r.id), q.include, q.revinclude, ctx.config.maxCount);
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
  // Links repeat the query (minus what was ignored) so every page means the same search.
  const keep = pairs.filter(([n]) => n !== '_page' && n !== '_count' && !q.unknown.includes(n.split(/[:.]/)[0]));
  const link = (extra: [string, string][]) => `${ctx.base}/${type}?${new URLSearchParams([...keep, ['_count', String(count)], ...extra]).toString()}`;
  const links: BundleLink[] = [{ relation: 'self', url: link(q.page ? [['_page', q.page]] : []) }];
  if (result.page.next) links.push({ relation: 'next', url: link([['_page', encodeCursor(result.page.next)]]) });
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset', countOnly ? [] : entries, links, result.page.total));
}
