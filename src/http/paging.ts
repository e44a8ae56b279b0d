// The _page cursor of searches, histories and $everything (search.html#paging,
// http.html#history): an opaque keyset cursor that says which way it pages from its key,
// so a page links to the one after it (next) and to the one before it (previous).
import type { BundleLink } from '@medplum/fhirtypes';
import { badRequest } from '../fhir/outcome.ts';

export type Direction = 'next' | 'previous';

/** The rows after `key` in the listing's order (next), or those just before it (previous). */
export interface Cursor { dir: Direction; key: string[] }

const MARK: Record<Direction, string> = { next: '>', previous: '<' };

export const encodeCursor = (dir: Direction, key: string[]) => Buffer.from(JSON.stringify([MARK[dir], ...key])).toString('base64url');

/**
 * A cursor this server made, checked whole: `fits` checks the key against the listing
 * (arity, types, values), so a tampered cursor is a 400, never a database error.
 */
export function decodeCursor(raw: string, fits: (key: string[]) => boolean = () => true): Cursor {
  try {
    const c = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    // NUL: PostgreSQL text cannot hold one (a cursor this server made never does).
    if (Array.isArray(c) && c.length > 1 && c.every((x) => typeof x === 'string' && !x.includes('\0'))) {
      const dir = c[0] === MARK.next ? 'next' : c[0] === MARK.previous ? 'previous' : undefined;
      const key = c.slice(1);
      if (dir && fits(key)) return { dir, key };
    }
  } catch { /* fall through */ }
  throw badRequest(`Invalid _page cursor '${raw}'`, ['_page']);
}

/**
 * One page of a listing read with one row more than `count` on the cursor's side: rows
 * in the listing's order; the extra row, if read, is beyond the page (last going
 * forward, first going back). A page reached through a cursor has a page before it.
 */
export function pageOf<T>(rows: T[], count: number, cursor?: Cursor): { page: T[]; next?: T; previous?: T } {
  if (cursor?.dir === 'previous') {
    const page = rows.slice(Math.max(0, rows.length - count));
    return { page, previous: rows.length > count ? page[0] : undefined, next: page[page.length - 1] };
  }
  const page = rows.slice(0, count);
  return { page, next: rows.length > count ? page[page.length - 1] : undefined, previous: cursor ? page[0] : undefined };
}

/** self, first, previous and next links; `url` adds the given _page to the listing's query. */
export function pageLinks(url: (page?: string) => string, self: string | undefined, keys: { next?: string[]; previous?: string[] }): BundleLink[] {
  const links: BundleLink[] = [{ relation: 'self', url: url(self) }, { relation: 'first', url: url() }];
  if (keys.previous) links.push({ relation: 'previous', url: url(encodeCursor('previous', keys.previous)) });
  if (keys.next) links.push({ relation: 'next', url: url(encodeCursor('next', keys.next)) });
  return links;
}
