// History interactions (instance, type, system): Bundle type "history",
// newest first, keyset-paged with an opaque _page cursor.
import type { Ctx } from './context.ts';
import { pageSize, queryPairs } from './context.ts';
import type { Session } from './session.ts';
import { sendJson } from './format.ts';
import { bundleJson, type EntryParts } from './bundle.ts';
import { decodeCursor, pageLinks, pageOf, type Cursor } from './paging.ts';
import { badRequest, notFound } from '../fhir/outcome.ts';
import { history as readHistory, countHistory, type HistoryQuery, type HistoryEntry } from '../store/resources.ts';
import { checkId } from './crud.ts';
import { ID_PATTERN, parseVersionId } from '../interactions/write.ts';
import { dateRange } from '../../mappings/search/precision.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { forbidden } from '../auth/enforce.ts';
import { touchedResource } from '../audit/request.ts';

/**
 * Type and system history list every version of every resource: they cannot be confined
 * to a compartment or a granular filter (old versions are not in the search index), so
 * they need unrestricted search access on each type.
 */
function permitWideHistory(s: Session, type?: string): void {
  for (const t of type ? [type] : Object.keys(TABLES)) {
    const a = s.permitOn(t);
    if (a.compartment || a.filters.length) {
      throw forbidden(`${type ? 'Type' : 'System'} history needs user- or system-level search access to ${t} without granular filters; patient-level tokens can read instance history`);
    }
  }
}

type Key = NonNullable<HistoryQuery['before']>;

const keyOf = (e: HistoryEntry): string[] => [e.lastUpdated, e.type, e.id, String(e.versionId)];

/** A date or instant PostgreSQL takes as a timestamptz: a real calendar time from year 1, offset within ±14:00. */
function isInstant(raw: unknown): raw is string {
  return typeof raw === 'string' && /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/.test(raw) && dateRange(raw) !== undefined;
}

/** Whether a cursor's key is an entry's (lastUpdated, type, id, version). */
function fits([lastUpdated, type, id, versionId, ...rest]: string[]): boolean {
  if (rest.length || !isInstant(lastUpdated) || !Object.hasOwn(TABLES, type) || !ID_PATTERN.test(id ?? '')) return false;
  try { parseVersionId(versionId ?? ''); return true; } catch { return false; }
}

const keyFrom = ([lastUpdated, type, id, versionId]: string[]): Key => ({ lastUpdated, type, id, versionId: parseVersionId(versionId) });

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

export async function historyInteraction(s: Session, { type, id }: Record<string, string>) {
  const { ctx } = s;
  if (id) checkId(id);
  const access = id ? s.authorize().access : undefined;
  if (!id) permitWideHistory(s, type);
  const count = pageSize(ctx, ctx.req.query._count);
  const since = parseSince(ctx.req.query._since);
  const rawPage = typeof ctx.req.query._page === 'string' ? ctx.req.query._page : undefined;
  const cursor: Cursor | undefined = rawPage === undefined ? undefined : decodeCursor(rawPage, fits);
  const at = cursor && keyFrom(cursor.key);
  const { paged, page, total } = await s.inTenant(async (tx) => {
    // One extra row, on the cursor's side, tells whether a page lies beyond this one.
    const rows = await readHistory(tx, { type, id, since, before: cursor?.dir === 'next' ? at : undefined, after: cursor?.dir === 'previous' ? at : undefined, count: count + 1 });
    const paged = pageOf(rows, count, cursor);
    let page = paged.page;
    const total = id && !since ? await countHistory(tx, type!, id) : undefined;
    if (access && (access.compartment || access.filters.length)) {
      // Only the versions that were the token's to see (the links still page over all of
      // them); a resource never in reach is a 404.
      const shown: typeof page = [];
      for (const e of page) if (e.deleted || await s.policy.visible!(tx, e.type, e.id, e.json!)) shown.push(e);
      if (!shown.some((e) => !e.deleted) && total !== 0) throw notFound(`${type}/${id} not found`);
      page = shown;
    }
    return { paged, page, total };
  });
  if (id && total === 0) throw notFound(`${type}/${id} not found`);
  const path = [type, id, '_history'].filter(Boolean).join('/');
  const keep = queryPairs(ctx.req).filter(([n]) => n !== '_page');
  const link = (pageParam?: string) => {
    const pairs: [string, string][] = [...keep, ...pageParam ? [['_page', pageParam] as [string, string]] : []];
    return `${ctx.base}/${path}${pairs.length ? '?' + new URLSearchParams(pairs).toString() : ''}`;
  };
  const links = pageLinks(link, rawPage, { next: paged.next && keyOf(paged.next), previous: paged.previous && keyOf(paged.previous) });
  await s.succeed(id ? { patients: [...new Set(page.flatMap((e) => touchedResource(e.type, e.id, e.json).patients ?? []))] } : undefined);
  sendJson(ctx.req, ctx.res, 200, bundleJson('history', page.map((e) => entryOf(ctx, e)), links, total));
}
