// $everything (R4 patient-operation-everything.html; Kiln's OperationDefinition is
// conformance/OperationDefinition-Patient-everything.json, which says what it returns):
//   GET|POST [base]/Patient/[id]/$everything and [base]/Patient/$everything: the patient
// compartment as a searchset Bundle, with start, end, _since, _type and _count, paged. A POST
// carries them in the URL, a Parameters body or a form (R4 operations.html#request).
import { pageSize, queryPairs } from '../http/context.ts';
import type { Session } from '../http/session.ts';
import type { Request } from 'express';
import { jsonBody, requireBodyType, sendJson } from '../http/format.ts';
import { bundleJson } from '../http/bundle.ts';
import { decodeCursor, pageLinks, pageOf } from '../http/paging.ts';
import { badRequest, notFound } from '../fhir/outcome.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { PATIENT_COMPARTMENT } from '../../mappings/resourceTypes.ts';
import { dateRange } from '../../mappings/search/extract.ts';
import { readCurrent, requireLive } from '../store/resources.ts';
import { everything } from '../store/everything.ts';
import { checkId } from '../http/crud.ts';
import { ID_PATTERN } from '../interactions/write.ts';
import { accessOf, permit, restrictionCriteria } from '../auth/enforce.ts';

function instantParam(name: string, raw: unknown, end: boolean): string | undefined {
  if (raw === undefined) return undefined;
  const range = typeof raw === 'string' ? dateRange(raw) : undefined;
  if (!range) throw badRequest(`${name} must be a FHIR date or dateTime`, [name]);
  return end ? range.hi : range.lo;
}

/**
 * A POST's parameters from its Parameters body or form; a name also in the URL counts as
 * repeated, as a name twice in the query does.
 */
function bodyPairs(req: Request): [string, string][] {
  if (req.method !== 'POST' || !Buffer.isBuffer(req.body) || req.body.length === 0) return [];
  if (/x-www-form-urlencoded/i.test(req.get('content-type') ?? '')) return [...new URLSearchParams(req.body.toString('utf8')).entries()];
  requireBodyType(req);
  const body = jsonBody(req) as { resourceType?: unknown; parameter?: unknown } | null;
  if (body?.resourceType !== 'Parameters') throw badRequest('A POST $everything body must be a Parameters resource (or a form)');
  if (body.parameter === undefined) return [];
  if (!Array.isArray(body.parameter)) throw badRequest('Parameters.parameter must be an array', ['Parameters.parameter']);
  // Every parameter of the operation is a primitive (date, string, instant, integer): value[x] as its text.
  return body.parameter.map((p: Record<string, unknown> | null, i: number): [string, string] => {
    const key = p && Object.keys(p).find((k) => k.startsWith('value'));
    const value = key ? p[key] : undefined;
    if (typeof p?.name !== 'string' || !['string', 'number', 'boolean'].includes(typeof value)) {
      throw badRequest(`Parameters.parameter[${i}] needs a name and a primitive value[x]`, [`Parameters.parameter[${i}]`]);
    }
    return [p.name, String(value)];
  });
}

/** Each parameter as the query parser gives it: one value as a string, a repeated one as an array. */
function withBody(query: Request['query'], pairs: [string, string][]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...query };
  for (const [name, value] of pairs) {
    const had = out[name];
    out[name] = had === undefined ? value : [...(Array.isArray(had) ? had : [had]), value];
  }
  return out;
}

export async function everythingInteraction(s: Session, { id: patientId }: Record<string, string>) {
  const { ctx } = s;
  if (patientId) checkId(patientId);
  const posted = bodyPairs(ctx.req);
  const query = posted.length ? withBody(ctx.req.query, posted) : ctx.req.query;
  const count = pageSize(ctx, query._count);
  // By default the types of the patient compartment (the Patient too, which is in its own);
  // AuditEvents only when _type names them: every read records one, so each $everything
  // would grow the next.
  const asked = typeof query._type === 'string' ? query._type.split(',').filter(Boolean)
    : Object.keys(PATIENT_COMPARTMENT).filter((t) => t !== 'AuditEvent');
  const unknown = asked.filter((t) => !TABLES[t]);
  if (unknown.length) throw badRequest(`_type names types Kiln does not store: ${unknown.join(', ')}`, ['_type']);
  // Needs read on Patient; returns only the types the token may read. A patient-level
  // token gets its own patient's compartment and nobody else's.
  const patientAccess = permit(ctx, 'Patient', 'r');
  const own = patientAccess.compartment ? ctx.access!.patient! : undefined;
  if (own && patientId && patientId !== own) throw notFound(`Patient/${patientId} not found`);
  const patientIds = patientId ? [patientId] : own ? [own] : undefined;
  const types = asked.filter((t) => accessOf(ctx, t, 'r'));
  // Each type's rows match the token's restriction in the query itself, so a page (and the
  // cursor in its next link) holds only what the token may read. The compartment of the
  // token's own patient is what the query selects already.
  const restrict = Object.fromEntries(types.map((t) => {
    const a = accessOf(ctx, t, 'r')!;
    const selected = a.compartment && own !== undefined && patientIds?.length === 1 && patientIds[0] === own;
    return [t, restrictionCriteria(ctx, t, selected ? { compartment: false, filters: a.filters } : a)];
  }));
  s.touch({ patients: patientIds ?? [] });
  const rawPage = typeof query._page === 'string' ? query._page : undefined;
  const cursor = rawPage === undefined ? undefined
    : decodeCursor(rawPage, ([type, id, ...rest]) => !rest.length && Object.hasOwn(TABLES, type) && ID_PATTERN.test(id ?? ''));
  const at = cursor && { type: cursor.key[0], id: cursor.key[1] };
  const rows = await s.inTenant(async (tx) => {
    if (patientId) requireLive(await readCurrent(tx, 'Patient', patientId), 'Patient', patientId);
    return everything(tx, {
      // One extra row, on the cursor's side, tells whether a page lies beyond this one.
      patientIds, types, count: count + 1, restrict,
      after: cursor?.dir === 'next' ? at : undefined, before: cursor?.dir === 'previous' ? at : undefined,
      start: instantParam('start', query.start, false), end: instantParam('end', query.end, true),
      since: instantParam('_since', query._since, false),
    });
  });
  const { page, next, previous } = pageOf(rows, count, cursor);
  const path = patientId ? `Patient/${patientId}/$everything` : 'Patient/$everything';
  // A POST's links are GETs with its body's parameters in the URL.
  const keep = [...queryPairs(ctx.req), ...posted].filter(([n]) => n !== '_page');
  const link = (pageParam?: string) => {
    const pairs: [string, string][] = [...keep, ...pageParam ? [['_page', pageParam] as [string, string]] : []];
    return `${ctx.base}/${path}${pairs.length ? '?' + new URLSearchParams(pairs).toString() : ''}`;
  };
  const links = pageLinks(link, rawPage, { next: next && [next.type, next.id], previous: previous && [previous.type, previous.id] });
  await s.succeed();
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset',
    page.map((r) => ({ fullUrl: `${ctx.base}/${r.type}/${r.id}`, resourceJson: r.json, search: { mode: 'match' } })), links));
}
