// Type-level search over the parameters in store/search.ts: Bundle "searchset",
// paged by id cursor. Unknown parameters are reported (lenient) or refused (strict).
import type { BundleLink } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { inTenant, pageSize, criteriaPairs } from './context.ts';
import { sendJson, preferStrict } from './format.ts';
import { bundleJson, type EntryParts } from './bundle.ts';
import { badRequest, outcome } from '../fhir/outcome.ts';
import { searchIds, unsupportedParams } from '../store/search.ts';

export async function searchInteraction(ctx: Ctx, type: string, pairs: [string, string][]) {
  const count = pageSize(ctx, pairs.find(([n]) => n === '_count')?.[1]);
  const after = pairs.find(([n]) => n === '_page')?.[1];
  const criteria = criteriaPairs(pairs);
  const unknown = unsupportedParams(type, criteria);
  if (unknown.length && preferStrict(ctx.req)) {
    throw badRequest(`Unsupported search parameter(s): ${unknown.join(', ')}`);
  }
  const used = criteria.filter(([n]) => !unknown.includes(n));
  const rows = await inTenant(ctx, (tx) => searchIds(tx, { type, params: used, count: count + 1, after }));
  const page = rows.slice(0, count);
  const keep = [...used, ['_count', String(count)] as [string, string]];
  const link = (extra: [string, string][]) => `${ctx.base}/${type}?${new URLSearchParams([...keep, ...extra]).toString()}`;
  const links: BundleLink[] = [{ relation: 'self', url: link(after ? [['_page', after]] : []) }];
  if (rows.length > count && page.length) links.push({ relation: 'next', url: link([['_page', page[page.length - 1].id]]) });
  const entries: EntryParts[] = page.map((r) => ({ fullUrl: `${ctx.base}/${type}/${r.id}`, resourceJson: r.json, search: { mode: 'match' } }));
  if (unknown.length) {
    entries.push({
      resourceJson: JSON.stringify(outcome([{ severity: 'warning', code: 'not-supported', diagnostics: `Ignored unsupported search parameter(s): ${unknown.join(', ')}` }])),
      search: { mode: 'outcome' },
    });
  }
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset', entries, links));
}
