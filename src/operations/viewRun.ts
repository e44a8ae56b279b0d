// ViewDefinition/$run (SQL on FHIR v2, spec/OperationDefinition-ViewDefinitionRun-notes.md;
// Kiln's OperationDefinition is conformance/OperationDefinition-ViewDefinition-run.json):
//   GET|POST [base]/ViewDefinition/[id]/$run   the stored view
//   GET|POST [base]/ViewDefinition/$run        viewResource (POST) or viewReference
// The rows of a view over the tenant's stored resources of its type, or over the `resource`
// parameters, as a JSON array, NDJSON or CSV. A view over every stored resource of its type
// (a token unrestricted on it, no patient, group or _since) runs as the compiled SQL of
// src/store/views where that compiles it, in one transaction; otherwise the in-memory runner
// (src/views) takes the stored resources the token may read (a patient token: its compartment;
// granular scopes: their filters) in pages of PAGE_SIZE, each page read in a short transaction
// of its own. Either way no connection is held while a slow client reads. The first page's rows
// are made before the status line is sent, so an invalid view or a failing first page is a 4xx
// OperationOutcome; a resource that fails later ends the response early (connection reset: the
// client sees an incomplete body, never a short one).
import { once } from 'node:events';
import type { Request } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import type { Session } from '../http/session.ts';
import { queryPairs } from '../http/context.ts';
import { readJsonBody, requireBodyType } from '../http/format.ts';
import { requestLog } from '../http/accessLog.ts';
import { FhirError, badRequest, notFound } from '../fhir/outcome.ts';
import { validate } from '../fhir/validate.ts';
import { csvRecord, prepareView, ViewError, type PreparedView, type Row, type ViewDefinition } from '../views/index.ts';
import { isResourceType } from '../../mappings/resourceTypes.ts';
import { mapGroup } from '../../mappings/postgres/group.ts';
import { dateRange } from '../../mappings/search/extract.ts';
import { hasCompartment } from '../search/compartment.ts';
import { parseSearch } from '../search/query.ts';
import type { Criterion } from '../search/criteria.ts';
import { permit, requireVisible, restrictionCriteria } from '../auth/enforce.ts';
import { readCurrent, requireLive, type Tx } from '../store/resources.ts';
import { runSearch } from '../store/searchRun.ts';
import { everything } from '../store/everything.ts';
import { compileView, runCompiledView } from '../store/views/index.ts';
import { ID_PATTERN, checkId } from '../interactions/write.ts';

/** The output formats: `_format` short name -> media type. */
const FORMATS = { json: 'application/json', ndjson: 'application/x-ndjson', csv: 'text/csv' } as const;
type Format = keyof typeof FORMATS;
/** `_format` and Accept media types -> format. */
const MEDIA: Record<string, Format> = {
  'application/json': 'json', 'application/fhir+json': 'json', 'application/x-ndjson': 'ndjson', 'application/ndjson': 'ndjson', 'text/csv': 'csv',
};

/** For the CapabilityStatement's ViewDefinition entry (the specification asks formats and reference forms to be documented). */
export const RUN_DOCUMENTATION = '$run (SQL on FHIR v2): _format json (default), ndjson or csv (header=true by default); '
  + 'viewReference as ViewDefinition/[id], an absolute URL of this server, or the canonical url of a stored view (url or url|version); '
  + 'patient, group, _since, _limit and resource (POST) are supported, source is not.';

/** Resources read per transaction. */
const PAGE_SIZE = 500;

/** The path of a $run request: its answer is not FHIR JSON, so the router's negotiation leaves it to this operation. */
export function isViewRunPath(path: string): boolean {
  return /\/ViewDefinition\/(?:[^/]+\/)?\$run\/?$/.test(path);
}

interface RunInput {
  viewResource?: unknown;
  viewReference?: string;
  format?: string;
  header?: string;
  patient?: string;
  groups: string[];
  since?: string;
  limit?: string;
  resources?: unknown[];
}

const SINGLE = ['viewReference', '_format', 'header', 'patient', '_since', '_limit'] as const;
type Single = typeof SINGLE[number];
const KEYS: Record<Single, 'viewReference' | 'format' | 'header' | 'patient' | 'since' | 'limit'> = {
  viewReference: 'viewReference', _format: 'format', header: 'header', patient: 'patient', _since: 'since', _limit: 'limit',
};

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function setParam(input: RunInput, name: string, value: unknown): void {
  if (name === 'group') {
    if (typeof value !== 'string' || !value) throw badRequest('group must be a reference (Group/[id])', ['group']);
    input.groups.push(value);
    return;
  }
  if (name === 'source') throw new FhirError(400, 'not-supported', 'Kiln runs views over its own data or the resource parameter; source is not supported', ['source']);
  if (!(SINGLE as readonly string[]).includes(name)) {
    throw badRequest(`$run has no parameter '${name}' (viewReference, viewResource, _format, header, patient, group, _since, _limit, resource)`, [name]);
  }
  const key = KEYS[name as Single];
  if (input[key] !== undefined) throw badRequest(`${name} is given more than once`, [name]);
  if (typeof value !== 'string' || value === '') throw badRequest(`${name} needs a value`, [name]);
  input[key] = value;
}

/** A Parameters parameter's value as text (Reference.reference for a reference), or undefined when it has none. */
function textValue(p: Record<string, unknown>): string | undefined {
  const key = Object.keys(p).find((k) => k.startsWith('value'));
  const value = key ? p[key] : undefined;
  if (isObject(value)) return typeof value.reference === 'string' ? value.reference : undefined;
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : undefined;
}

async function readInput(req: Request): Promise<RunInput> {
  const input: RunInput = { groups: [] };
  for (const [name, value] of queryPairs(req)) {
    if (name === '_pretty') continue;
    if (name === 'viewResource' || name === 'resource') throw badRequest(`${name} is a resource: send it in a POST's Parameters body`, [name]);
    setParam(input, name, value);
  }
  const raw = req.body;
  if (req.method !== 'POST' || !Buffer.isBuffer(raw) || raw.length === 0) return input;
  requireBodyType(req);
  const { value } = await readJsonBody(req, { kind: 'json' });
  if (!isObject(value) || value.resourceType !== 'Parameters') throw badRequest('A POST $run body must be a Parameters resource');
  const params = value.parameter ?? [];
  if (!Array.isArray(params)) throw badRequest('Parameters.parameter must be an array', ['Parameters.parameter']);
  params.forEach((p: unknown, i: number) => {
    const at = `Parameters.parameter[${i}]`;
    if (!isObject(p) || typeof p.name !== 'string') throw badRequest(`${at} needs a name`, [at]);
    if (p.name === 'viewResource' || p.name === 'resource') {
      if (!isObject(p.resource)) throw badRequest(`${at} (${p.name}) carries a resource (parameter.resource)`, [at]);
      if (p.name === 'resource') (input.resources ??= []).push(p.resource);
      else if (input.viewResource !== undefined) throw badRequest('viewResource is given more than once', ['viewResource']);
      else input.viewResource = p.resource;
      return;
    }
    const text = textValue(p);
    if (text === undefined) throw badRequest(`${at} (${p.name}) needs a value[x]`, [at]);
    setParam(input, p.name, text);
  });
  return input;
}

/** The format from `_format` (a short name or media type), else from Accept; json by default. */
function formatOf(req: Request, param: string | undefined): Format {
  if (param !== undefined) {
    const f = param.split(';')[0].trim().toLowerCase();
    if (Object.hasOwn(FORMATS, f)) return f as Format;
    if (Object.hasOwn(MEDIA, f)) return MEDIA[f];
    throw new FhirError(400, 'not-supported', `Format '${param}' is not supported. Supported formats: json, ndjson, csv`, ['_format']);
  }
  const accept = req.get('accept');
  if (!accept) return 'json';
  for (const range of accept.split(',').map((r) => r.split(';')[0].trim().toLowerCase())) {
    if (Object.hasOwn(MEDIA, range)) return MEDIA[range];
    if (range === '*/*' || range === 'application/*') return 'json';
    if (range === 'text/*') return 'csv';
  }
  throw new FhirError(406, 'not-supported', `Cannot produce any of '${accept}'; $run answers application/json, application/x-ndjson or text/csv`);
}

function booleanParam(name: string, raw: string | undefined, fallback: boolean): boolean {
  if (raw === undefined) return fallback;
  if (raw !== 'true' && raw !== 'false') throw badRequest(`${name} must be true or false, got '${raw}'`, [name]);
  return raw === 'true';
}

/** `Patient/x` (or an absolute URL of this server ending so) -> x. */
function referenceId(raw: string, type: string, base: string, name: string): string {
  const local = raw.startsWith(`${base}/`) ? raw.slice(base.length + 1) : raw;
  const m = new RegExp(`^${type}/([^/]+)$`).exec(local);
  if (!m || !ID_PATTERN.test(m[1])) throw badRequest(`${name} must reference a ${type} (${type}/[id]), got '${raw}'`, [name]);
  return m[1];
}

/** The view an instance-level call or viewReference names: needs read access to ViewDefinition; 404 when absent. */
export async function storedView(s: Session, tx: Tx, ref: { id?: string; canonical?: string }): Promise<{ id: string; json: string }> {
  const access = permit(s.ctx, 'ViewDefinition', 'r');
  let found: { id: string; json: string } | undefined;
  if (ref.id !== undefined) {
    found = { id: ref.id, json: requireLive(await readCurrent(tx, 'ViewDefinition', ref.id), 'ViewDefinition', ref.id).json };
  } else {
    const [url, version] = ref.canonical!.split('|');
    const q = parseSearch('ViewDefinition', [['url', url]]);
    const { rows } = await runSearch(tx, { orgId: s.orgId, type: 'ViewDefinition', criteria: q.criteria, sort: [], count: 100, total: 'none' });
    const matching = rows.filter((r) => version === undefined || (JSON.parse(r.json) as { version?: string }).version === version);
    if (matching.length > 1) throw badRequest(`${matching.length} stored ViewDefinitions have the url ${ref.canonical}; name one by ViewDefinition/[id] or url|version`, ['viewReference']);
    if (!matching.length) throw notFound(`No ViewDefinition with the url ${ref.canonical}`);
    found = matching[0];
  }
  await requireVisible(s.ctx, tx, 'ViewDefinition', found.id, found.json, access);
  s.touch({ resources: [`ViewDefinition/${found.id}`] });
  return found;
}

/** The view to run: validated as a stored one is (400 naming each problem and its location). */
export function prepared(view: unknown, where: string): PreparedView {
  if (!isObject(view) || view.resourceType !== 'ViewDefinition') throw badRequest(`${where} must be a ViewDefinition`, [where]);
  validate(view as unknown as Resource);
  try {
    return prepareView(view);
  } catch (e) {
    if (e instanceof ViewError) throw FhirError.withIssues(400, e.problems.map((p) => ({ severity: 'error', code: 'invalid', diagnostics: p })), e.message);
    throw e;
  }
}

/** Where the rows' resources come from: a page at a time (each its own transaction), or the given resources. */
type Source = AsyncGenerator<Resource[]>;

async function* givenResources(resources: unknown[]): Source {
  yield resources as Resource[];
}

/** The view's rows, a page at a time. */
type RowSource = AsyncGenerator<Row[]>;

async function* inMemory(view: PreparedView, source: Source): RowSource {
  for await (const page of source) yield rowsOf(view, page);
}

async function* compiled(s: Session, view: ViewDefinition): RowSource {
  yield await s.inTenant((tx) => runCompiledView(tx, view));
}

/** Whether the PostgreSQL compiler takes the view (it leaves out a few experimental functions). */
function compiles(view: ViewDefinition): boolean {
  try {
    compileView(view);
    return true;
  } catch {
    return false;
  }
}

export interface StoredQuery {
  type: string;
  restrict: Criterion[];
  /** Patients whose compartments hold the rows (patient, group); undefined: the whole tenant. */
  patientIds?: string[];
  since?: string;
}

async function* storedResources(s: Session, q: StoredQuery): Source {
  const since = q.since === undefined ? [] : parseSearch(q.type, [['_lastUpdated', `ge${q.since}`]]).criteria;
  let after: string[] | undefined;
  let afterId: string | undefined;
  for (;;) {
    const page = await s.inTenant(async (tx) => {
      if (q.patientIds) {
        const rows = await everything(tx, {
          patientIds: q.patientIds, types: [q.type], since: q.since, count: PAGE_SIZE,
          after: afterId === undefined ? undefined : { type: q.type, id: afterId }, restrict: { [q.type]: q.restrict },
        });
        return { jsons: rows.map((r) => r.json), more: rows.length === PAGE_SIZE, last: rows.at(-1)?.id };
      }
      const found = await runSearch(tx, { orgId: s.orgId, type: q.type, criteria: [...q.restrict, ...since], sort: [], count: PAGE_SIZE, after, total: 'none' });
      after = found.next;
      return { jsons: found.rows.map((r) => r.json), more: found.next !== undefined, last: undefined };
    });
    afterId = page.last;
    yield page.jsons.map((j) => JSON.parse(j) as Resource);
    if (!page.more) return;
  }
}

class RowWriter {
  private count = 0;
  constructor(private readonly format: Format, private readonly columns: string[]) {}

  head(header: boolean): string {
    if (this.format === 'json') return '[';
    return this.format === 'csv' && header ? csvRecord(this.columns, (c) => c) : '';
  }

  row(row: Row): string {
    const n = this.count++;
    if (this.format === 'csv') return csvRecord(this.columns, (c) => row[c]);
    const text = JSON.stringify(row);
    return this.format === 'ndjson' ? `${text}\n` : `${n ? ',' : ''}\n${text}`;
  }

  tail(): string {
    return this.format === 'json' ? (this.count ? '\n]\n' : ']\n') : '';
  }
}

/** The rows of one page of resources. A resource the view cannot turn into rows is a 400 (the view's problem, named with the resource). */
function rowsOf(view: PreparedView, resources: Resource[]): Row[] {
  const rows: Row[] = [];
  try {
    for (const r of resources) {
      for (const row of view.rowsOf(r)) rows.push(row);
    }
  } catch (e) {
    if (e instanceof ViewError) throw new FhirError(400, 'processing', `ViewDefinition: ${e.message}`);
    throw e;
  }
  return rows;
}

export async function viewRunOperation(s: Session, { id }: Record<string, string>): Promise<void> {
  const { ctx } = s;
  if (id !== undefined) checkId(id);
  const input = await readInput(ctx.req);
  const format = formatOf(ctx.req, input.format);
  const header = booleanParam('header', input.header, true);
  const limit = input.limit === undefined ? Infinity : /^\d+$/.test(input.limit) ? Number(input.limit) : NaN;
  if (Number.isNaN(limit)) throw badRequest(`_limit must be a non-negative integer, got '${input.limit}'`, ['_limit']);
  const since = input.since === undefined ? undefined : dateRange(input.since)?.lo;
  if (input.since !== undefined && since === undefined) throw badRequest('_since must be a FHIR instant', ['_since']);
  if (input.resources && (input.patient || input.groups.length || since)) {
    throw badRequest('patient, group and _since filter stored resources; with the resource parameter, send only the resources wanted');
  }

  // The view: the instance's, viewReference's (both stored) or viewResource (inline).
  const named = [id !== undefined && 'the instance', input.viewReference !== undefined && 'viewReference', input.viewResource !== undefined && 'viewResource'].filter(Boolean);
  if (named.length !== 1) {
    throw new FhirError(400, 'required', named.length ? `Name one view: ${named.join(' and ')} were given` : 'Either viewReference or viewResource is required when invoking at type level');
  }
  let view: PreparedView;
  if (input.viewResource !== undefined) {
    view = prepared(input.viewResource, 'viewResource');
  } else {
    const ref = id !== undefined ? { id } : referenceOf(input.viewReference!, ctx.base);
    const stored = await s.inTenant((tx) => storedView(s, tx, ref));
    view = prepared(JSON.parse(stored.json), 'the stored ViewDefinition');
  }

  let source: RowSource;
  if (input.resources) {
    source = inMemory(view, givenResources(input.resources));
  } else {
    const q = await storedQuery(s, view.view, input.patient, input.groups, since);
    const everyRow = !q.restrict.length && !q.patientIds && q.since === undefined;
    source = everyRow && compiles(view.view) ? compiled(s, view.view) : inMemory(view, storedResources(s, q));
  }

  // The first page before the status line: its errors are still a 4xx.
  const writer = new RowWriter(format, view.columns.map((c) => c.name));
  let left = limit;
  const first = left > 0 ? await source.next() : { done: true as const, value: undefined };
  const rows = first.done ? [] : first.value.slice(0, left);
  left -= rows.length;
  await s.succeed();
  const { res } = ctx;
  let gone = false;
  res.once('close', () => { gone = true; });
  res.status(200).type(`${FORMATS[format]}; charset=utf-8`);
  const send = async (text: string) => {
    if (!text || res.write(text) || gone) return;
    // Wait for the client to take what is buffered, or to hang up (then no drain ever comes).
    const ac = new AbortController();
    try {
      await Promise.race([once(res, 'drain', { signal: ac.signal }), once(res, 'close', { signal: ac.signal })]);
    } finally {
      ac.abort();
    }
  };
  try {
    await send(writer.head(header) + rows.map((r) => writer.row(r)).join(''));
    while (left > 0 && !gone) {
      const next = await source.next();
      if (next.done) break;
      const page = next.value.slice(0, left);
      left -= page.length;
      await send(page.map((r) => writer.row(r)).join(''));
    }
    await source.return(undefined);
    res.end(writer.tail());
  } catch (e) {
    // Rows are out: no status can say it failed, so the response is cut short.
    requestLog(res).warn({ err: e instanceof FhirError ? e.message : e }, 'ViewDefinition/$run ended early');
    res.destroy();
  }
}

/** viewReference: ViewDefinition/[id] (relative, or an absolute URL of this tenant), else a canonical url. */
export function referenceOf(raw: string, base: string): { id?: string; canonical?: string } {
  const local = raw.startsWith(`${base}/`) ? raw.slice(base.length + 1) : raw;
  if (/^ViewDefinition\/[^/]+$/.test(local)) return { id: referenceId(local, 'ViewDefinition', base, 'viewReference') };
  if (/^[a-z][a-z0-9+.-]*:/i.test(raw)) return { canonical: raw };
  throw badRequest(`viewReference must be ViewDefinition/[id], an absolute URL or a canonical url, got '${raw}'`, ['viewReference']);
}

/** The stored resources of the view's type the token may read, narrowed by patient, group and _since. */
export async function storedQuery(s: Session, view: ViewDefinition, patient: string | undefined, groups: string[], since: string | undefined): Promise<StoredQuery> {
  const { ctx } = s;
  const type = view.resource;
  if (!isResourceType(type)) throw badRequest(`The view reads ${type}, which Kiln does not store`, ['resource']);
  const access = permit(ctx, type, 'r');
  const restrict = restrictionCriteria(ctx, type, access);
  if ((patient || groups.length) && !hasCompartment(type)) {
    throw badRequest(`patient and group select patient compartments, and ${type} is in none`, [patient ? 'patient' : 'group']);
  }
  const own = access.compartment ? ctx.access?.patient : undefined;
  let patientIds: string[] | undefined;
  if (patient || groups.length) {
    const patientId = patient ? referenceId(patient, 'Patient', ctx.base, 'patient') : undefined;
    const groupIds = groups.map((g) => referenceId(g, 'Group', ctx.base, 'group'));
    // Another patient than the token's own is not found (as a read of it would be).
    if (own !== undefined && patientId !== undefined && patientId !== own) throw notFound(`Patient/${patientId} not found`);
    patientIds = await s.inTenant(async (tx) => {
      if (patientId !== undefined) {
        const p = await readCurrent(tx, 'Patient', patientId);
        if (!p?.json || p.deleted) throw new FhirError(400, 'not-found', `Patient with id '${patientId}' not found`, ['patient']);
      }
      if (!groupIds.length) return [patientId!];
      // The members of any of the groups (and of those, the patient when one is named).
      const members = new Set<string>();
      for (const g of groupIds) {
        const group = await readCurrent(tx, 'Group', g);
        if (!group?.json || group.deleted) throw new FhirError(400, 'not-found', `Group with id '${g}' not found`, ['group']);
        await requireVisible(ctx, tx, 'Group', g, group.json, permit(ctx, 'Group', 'r'));
        for (const m of mapGroup(JSON.parse(group.json)).columns.member_ids as string[]) members.add(m);
      }
      return [...members].filter((m) => patientId === undefined || m === patientId);
    });
    s.touch({ patients: patientIds });
  } else if (own !== undefined) {
    s.touch({ patients: [own] });
  }
  return { type, restrict, patientIds, since };
}
