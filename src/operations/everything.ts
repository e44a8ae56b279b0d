// $everything (R4 patient-operation-everything.html; Kiln's OperationDefinition is
// conformance/OperationDefinition-Patient-everything.json, which says what it returns):
//   GET [base]/Patient/[id]/$everything and [base]/Patient/$everything: the patient
// compartment as a searchset Bundle, with start, end, _since, _type and _count, paged.
import type { Ctx } from '../http/context.ts';
import { inTenant, pageSize, queryPairs } from '../http/context.ts';
import { sendJson } from '../http/format.ts';
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

export async function everythingInteraction(ctx: Ctx, patientId?: string) {
  if (patientId) checkId(patientId);
  const query = ctx.req.query;
  const count = pageSize(ctx, query._count);
  // By default the types of the patient compartment (the Patient too, which is in its own).
  const asked = typeof query._type === 'string' ? query._type.split(',').filter(Boolean) : Object.keys(PATIENT_COMPARTMENT);
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
  ctx.audit?.touch({ patients: patientIds ?? [] });
  const rawPage = typeof query._page === 'string' ? query._page : undefined;
  const cursor = rawPage === undefined ? undefined
    : decodeCursor(rawPage, ([type, id, ...rest]) => !rest.length && Object.hasOwn(TABLES, type) && ID_PATTERN.test(id ?? ''));
  const at = cursor && { type: cursor.key[0], id: cursor.key[1] };
  const rows = await inTenant(ctx, async (tx) => {
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
  const keep = queryPairs(ctx.req).filter(([n]) => n !== '_page');
  const link = (pageParam?: string) => {
    const pairs: [string, string][] = [...keep, ...pageParam ? [['_page', pageParam] as [string, string]] : []];
    return `${ctx.base}/${path}${pairs.length ? '?' + new URLSearchParams(pairs).toString() : ''}`;
  };
  const links = pageLinks(link, rawPage, { next: next && [next.type, next.id], previous: previous && [previous.type, previous.id] });
  await ctx.audit?.success();
  sendJson(ctx.req, ctx.res, 200, bundleJson('searchset',
    page.map((r) => ({ fullUrl: `${ctx.base}/${r.type}/${r.id}`, resourceJson: r.json, search: { mode: 'match' } })), links));
}
