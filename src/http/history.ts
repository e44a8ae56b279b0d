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
import { ID_PATTERN, parseVersionId } from '../interactions/write.ts';
import { dateRange } from '../../mappings/search/precision.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { forbidden, permit, visible } from '../auth/enforce.ts';
import { touchedResource } from '../audit/request.ts';

/**
 * Type and system history list every version of every resource: they cannot be confined
 * to a compartment or a granular filter (old versions are not in the search index), so
 * they need unrestricted search access on each type.
 */
function permitWideHistory(ctx: Ctx, type?: string): void {
  for (const t of type ? [type] : Object.keys(TABLES)) {
    const a = permit(ctx, t, 's');
    if (a.compartment || a.filters.length) {
      throw forbidden(`${type ? 'Type' : 'System'} history needs user- or system-level search access to ${t} without granular filters; patient-level tokens can read instance history`);
    }
  }
}

type Cursor = NonNullable<HistoryQuery['before']>;

const encodeCursor = (c: Cursor) => Buffer.from(JSON.stringify([c.lastUpdated, c.type, c.id, c.versionId])).toString('base64url');

/** A date or instant PostgreSQL takes as a timestamptz: a real calendar time from year 1, offset within ±14:00. */
function isInstant(raw: unknown): raw is string {
  return typeof raw === 'string' && /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/.test(raw) && dateRange(raw) !== undefined;
}

/** A cursor this server made, checked whole: a tampered one is a 400, never a database error. */
function decodeCursor(raw: string): Cursor {
  try {
    const [lastUpdated, type, id, versionId] = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    if (!isInstant(lastUpdated) || typeof type !== 'string' || !Object.hasOwn(TABLES, type) || typeof id !== 'string' || !ID_PATTERN.test(id)) throw new Error();
    return { lastUpdated, type, id, versionId: parseVersionId(String(versionId)) };
  } catch {
    throw badRequest(`Invalid _page cursor '${raw}'`, ['_page']);
  }
}

function parseSince(raw: unknown): string | undefined {
  if (raw === undefined) return undefined;
  if (!isInstant(raw)) throw badRequest(`_since must be a FHIR instant, got '${String(raw)}'`, ['_since']);
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
  if (id) ctx.audit?.touch({ resources: [`${type}/${id}`] });
  const access = id ? permit(ctx, type!, 'r') : undefined;
  if (!id) permitWideHistory(ctx, type);
  const count = pageSize(ctx, ctx.req.query._count);
  const since = parseSince(ctx.req.query._since);
  const before = typeof ctx.req.query._page === 'string' ? decodeCursor(ctx.req.query._page) : undefined;
  const { entries, total } = await inTenant(ctx, async (tx) => {
    // One extra row tells whether a next page exists.
    let entries = await readHistory(tx, { type, id, since, before, count: count + 1 });
    const total = id && !since ? await countHistory(tx, type!, id) : undefined;
    if (access && (access.compartment || access.filters.length)) {
      // Only the versions that were the token's to see; a resource never in reach is a 404.
      const shown: typeof entries = [];
      for (const e of entries) if (e.deleted || await visible(ctx, tx, e.type, e.id, e.json!, access)) shown.push(e);
      if (!shown.some((e) => !e.deleted) && total !== 0) throw notFound(`${type}/${id} not found`);
      entries = shown;
    }
    return { entries, total };
  });
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
  if (id) await ctx.audit?.success({ patients: [...new Set(page.flatMap((e) => touchedResource(e.type, e.id, e.json).patients ?? []))] });
  else await ctx.audit?.success();
  sendJson(ctx.req, ctx.res, 200, bundleJson('history', page.map((e) => entryOf(ctx, e)), links, total));
}
