// History interactions (instance, type, system): Bundle type "history",
// newest first, keyset-paged with an opaque _page cursor.
import type { BundleLink } from '@medplum/fhirtypes';
import type { Ctx } from './context.ts';
import { inTenant, pageSize, queryPairs } from './context.ts';
import { sendJson } from './format.ts';
import { bundleJson, type EntryParts } from './bundle.ts';
import { badRequest, notFound } from '../fhir/outcome.ts';
import { history as readHistory, countHistory, type HistoryQuery, type HistoryEntry } from '../store/resources.ts';
import { checkId } from './crud.ts';

type Cursor = NonNullable<HistoryQuery['before']>;

const encodeCursor = (c: Cursor) => Buffer.from(JSON.stringify([c.lastUpdated, c.type, c.id, c.versionId])).toString('base64url');

function decodeCursor(raw: string): Cursor {
  try {
    const [lastUpdated, type, id, versionId] = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    if (typeof lastUpdated !== 'string' || typeof type !== 'string' || typeof id !== 'string' || !Number.isInteger(versionId)) throw new Error();
    return { lastUpdated, type, id, versionId };
  } catch {
    throw badRequest(`Invalid _page cursor '${raw}'`, ['_page']);
  }
}

function parseSince(raw: unknown): string | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !/^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/.test(raw) || Number.isNaN(Date.parse(raw))) {
    throw badRequest(`_since must be a FHIR instant, got '${String(raw)}'`, ['_since']);
  }
  return raw;
}

function entryOf(ctx: Ctx, e: HistoryEntry): EntryParts {
  const url = `${e.type}/${e.id}`;
  return {
    fullUrl: `${ctx.base}/${url}`,
    resourceJson: e.json,
    request: { method: e.method, url: e.method === 'POST' ? e.type : url },
    response: {
      status: e.method === 'POST' ? '201 Created' : e.method === 'DELETE' ? '204 No Content' : '200 OK',
      etag: `W/"${e.versionId}"`,
      lastModified: e.lastUpdated,
    },
  };
}

export async function historyInteraction(ctx: Ctx, type?: string, id?: string) {
  if (id) checkId(id);
  const count = pageSize(ctx, ctx.req.query._count);
  const since = parseSince(ctx.req.query._since);
  const before = typeof ctx.req.query._page === 'string' ? decodeCursor(ctx.req.query._page) : undefined;
  const { entries, total } = await inTenant(ctx, async (tx) => ({
    // One extra row tells whether a next page exists.
    entries: await readHistory(tx, { type, id, since, before, count: count + 1 }),
    total: id && !since ? await countHistory(tx, type!, id) : undefined,
  }));
  if (id && total === 0) throw notFound(`${type}/${id} not found`);
  const page = entries.slice(0, count);
  const path = [type, id, '_history'].filter(Boolean).join('/');
  const keep = queryPairs(ctx.req).filter(([n]) => n !== '_page');
  const link = (extra: [string, string][]) => `${ctx.base}/${path}${[...keep, ...extra].length ? '?' + new URLSearchParams([...keep, ...extra]).toString() : ''}`;
  const links: BundleLink[] = [{ relation: 'self', url: link(before ? [['_page', encodeCursor(before)]] : []) }];
  if (entries.length > count && page.length) {
    const last = page[page.length - 1];
    links.push({ relation: 'next', url: link([['_page', encodeCursor({ lastUpdated: last.lastUpdated, type: last.type, id: last.id, versionId: last.versionId })]]) });
  }
  sendJson(ctx.req, ctx.res, 200, bundleJson('history', page.map((e) => entryOf(ctx, e)), links, total));
}
