// $viewdefinition-export (SQL on FHIR v2, spec/OperationDefinition-ViewDefinitionExport-notes.md;
// Kiln's OperationDefinition is conformance/OperationDefinition-ViewDefinition-export.json):
//   POST [base]/$viewdefinition-export, [base]/ViewDefinition/$viewdefinition-export   kick-off (202)
//   GET|DELETE [base]/$viewdefinition-export-status/[job]   202 while it runs, then 303 to the result; DELETE cancels
//   GET [base]/$viewdefinition-export-result/[job]          200 Parameters: per view its name and file URLs
//   GET [base]/$viewdefinition-export-file/[job]/[file]     one file of rows (NDJSON, CSV or a JSON array)
// The job is a $export job whose params carry the views (src/export/params.ts ViewExport), run by
// the same durable, resumable worker (src/export/runner.ts, one unit per view). Views, patients,
// groups and scopes are resolved at kick-off by $run's code (src/operations/viewRun.ts), so an
// invalid view or a refused scope is a 4xx before anything is queued; the job keeps what the
// token may read (its patient's compartment, its granular filters) and who asked.
import fs from 'node:fs';
import path from 'node:path';
import type { Session } from '../http/session.ts';
import type { Ctx } from '../http/context.ts';
import { inTenant, queryPairs } from '../http/context.ts';
import { readJsonBody, requireBodyType, sendJson, sendOutcome } from '../http/format.ts';
import { FhirError, badRequest, informational, notFound, outcome } from '../fhir/outcome.ts';
import { dateRange } from '../../mappings/search/extract.ts';
import { forbidden, permit } from '../auth/enforce.ts';
import { searchRestriction } from '../auth/scopes.ts';
import { deleteJob, findJob, listFiles, type ExportJob } from '../store/exportJobs.ts';
import { exportOwner, recordExportOwner } from '../store/auditExportOwners.ts';
import { createJob } from '../export/run.ts';
import { jobDir } from '../export/runner.ts';
import type { ExportParams, ViewFormat, ViewOutput } from '../export/params.ts';
import { prepared, referenceOf, storedQuery, storedView } from './viewRun.ts';
import type { PreparedView } from '../views/index.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** An output name: also the prefix of its files' names. */
const OUTPUT_NAME = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
const FILE_NAME = /^[A-Za-z][A-Za-z0-9_]*-\d+\.\d+\.(ndjson|csv|json)$/;
const FILE_TYPES: Record<string, string> = { ndjson: 'application/x-ndjson', csv: 'text/csv', json: 'application/json' };
const FORMATS: Record<string, ViewFormat> = {
  ndjson: 'ndjson', csv: 'csv', json: 'json',
  'application/x-ndjson': 'ndjson', 'application/ndjson': 'ndjson', 'text/csv': 'csv', 'application/json': 'json',
};
const RETRY_AFTER_SECONDS = 2;

/** File downloads are not FHIR JSON: the router's Accept negotiation leaves them to this operation. */
export function isViewExportFilePath(urlPath: string): boolean {
  return /\/\$viewdefinition-export-file\/[^/]+\/[^/]+$/.test(urlPath);
}

interface ViewParam { name?: string; viewReference?: string; viewResource?: unknown; at: string }

interface KickoffInput {
  views: ViewParam[];
  clientTrackingId?: string;
  format?: string;
  header?: string;
  patients: string[];
  groups: string[];
  since?: string;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A parameter's value as text (Reference.reference for a reference). */
function textOf(p: Record<string, unknown>, at: string): string {
  const key = Object.keys(p).find((k) => k.startsWith('value'));
  const value = key ? p[key] : undefined;
  const text = isObject(value) ? value.reference : value;
  if (typeof text === 'string' && text !== '') return text;
  if (typeof text === 'boolean' || typeof text === 'number') return String(text);
  throw badRequest(`${at} (${String(p.name)}) needs a value[x]`, [at]);
}

function readInput(body: unknown): KickoffInput {
  if (!isObject(body) || body.resourceType !== 'Parameters') throw badRequest('A $viewdefinition-export body must be a Parameters resource');
  const params = body.parameter ?? [];
  if (!Array.isArray(params)) throw badRequest('Parameters.parameter must be an array', ['Parameters.parameter']);
  const input: KickoffInput = { views: [], patients: [], groups: [] };
  const once = (key: 'clientTrackingId' | 'format' | 'header' | 'since', name: string, value: string) => {
    if (input[key] !== undefined) throw badRequest(`${name} is given more than once`, [name]);
    input[key] = value;
  };
  params.forEach((p: unknown, i: number) => {
    const at = `Parameters.parameter[${i}]`;
    if (!isObject(p) || typeof p.name !== 'string') throw badRequest(`${at} needs a name`, [at]);
    switch (p.name) {
      case 'view': {
        if (!Array.isArray(p.part)) throw badRequest(`${at} (view) needs parts: name, viewReference or viewResource`, [at]);
        const view: ViewParam = { at };
        p.part.forEach((part: unknown, j: number) => {
          const pat = `${at}.part[${j}]`;
          if (!isObject(part) || typeof part.name !== 'string') throw badRequest(`${pat} needs a name`, [pat]);
          if (part.name === 'viewResource') {
            if (!isObject(part.resource)) throw badRequest(`${pat} (viewResource) carries a resource (part.resource)`, [pat]);
            view.viewResource = part.resource;
          } else if (part.name === 'name' || part.name === 'viewReference') {
            view[part.name] = textOf(part, pat);
          } else {
            throw badRequest(`${pat}: a view has no part '${part.name}' (name, viewReference, viewResource)`, [pat]);
          }
        });
        if ((view.viewReference === undefined) === (view.viewResource === undefined)) {
          throw new FhirError(400, 'required', `${at} (view) needs exactly one of viewReference and viewResource`, [at]);
        }
        input.views.push(view);
        break;
      }
      case 'clientTrackingId': once('clientTrackingId', p.name, textOf(p, at)); break;
      case '_format': once('format', p.name, textOf(p, at)); break;
      case 'header': once('header', p.name, textOf(p, at)); break;
      case '_since': once('since', p.name, textOf(p, at)); break;
      case 'patient': input.patients.push(textOf(p, at)); break;
      case 'group': input.groups.push(textOf(p, at)); break;
      case 'source':
        throw new FhirError(400, 'not-supported', 'Kiln exports views over its own data; source is not supported', [at]);
      default:
        throw badRequest(`$viewdefinition-export has no parameter '${p.name}' (view, clientTrackingId, _format, header, patient, group, _since)`, [at]);
    }
  });
  if (!input.views.length) throw new FhirError(400, 'required', 'At least one view parameter is required');
  return input;
}

function formatOf(raw: string | undefined): ViewFormat {
  if (raw === undefined) return 'ndjson';
  const f = FORMATS[raw.split(';')[0].trim().toLowerCase()];
  if (!f) throw new FhirError(400, 'not-supported', `_format '${raw}' is not supported; use ndjson (default), csv or json`, ['_format']);
  return f;
}

/** Kick-off: every view resolved and checked, scopes applied, then one job queued. */
export async function viewExportOperation(s: Session): Promise<void> {
  const { ctx } = s;
  const { req } = ctx;
  if (!/(^|[\s,;])respond-async($|[\s,;])/i.test(req.get('prefer') ?? '')) {
    throw badRequest('$viewdefinition-export runs asynchronously: send Prefer: respond-async');
  }
  const query = queryPairs(req).filter(([n]) => n !== '_pretty' && n !== '_format');
  if (query.length) throw badRequest(`$viewdefinition-export takes its parameters in a Parameters body, not the URL (${query[0][0]})`, [query[0][0]]);
  if (!Buffer.isBuffer(req.body) || req.body.length === 0) throw badRequest('$viewdefinition-export needs a Parameters body with at least one view');
  requireBodyType(req);
  const input = readInput((await readJsonBody(req, { kind: 'json' })).value);
  const format = formatOf(input.format);
  if (input.header !== undefined && input.header !== 'true' && input.header !== 'false') throw badRequest(`header must be true or false, got '${input.header}'`, ['header']);
  const since = input.since === undefined ? undefined : dateRange(input.since)?.lo;
  if (input.since !== undefined && since === undefined) throw badRequest('_since must be a FHIR instant', ['_since']);

  // The views, each validated (400) or found (404) before anything is queued.
  const views: { name: string; view: PreparedView }[] = [];
  for (const [i, v] of input.views.entries()) {
    let view: PreparedView;
    if (v.viewResource !== undefined) {
      view = prepared(v.viewResource, `${v.at}.viewResource`);
    } else {
      const stored = await s.inTenant((tx) => storedView(s, tx, referenceOf(v.viewReference!, ctx.base)));
      view = prepared(JSON.parse(stored.json), `the stored ViewDefinition ${v.viewReference}`);
    }
    const name = v.name ?? view.view.name ?? `view_${i + 1}`;
    if (!OUTPUT_NAME.test(name)) throw badRequest(`${v.at}: the output name '${name}' must be letters, digits and _, starting with a letter (at most 64)`, [v.at]);
    if (views.some((o) => o.name === name)) throw badRequest(`${v.at}: two views have the output name '${name}'; give each a name part`, [v.at]);
    views.push({ name, view });
  }

  // What the token may read, per view ($run's resolution): patients, groups, compartment, filters.
  const own = ctx.access?.patient;
  let patients: string[] | undefined;
  const restrict: Record<string, string> = {};
  for (const { view } of views) {
    const selected = new Set<string>();
    let compartment = false;
    for (const patient of input.patients.length ? input.patients : [undefined]) {
      const q = await storedQuery(s, view.view, patient, input.groups, since);
      for (const p of q.patientIds ?? []) selected.add(p);
      if (q.patientIds) compartment = true;
    }
    const access = permit(ctx, view.view.resource, 'r');
    if (access.compartment && own !== undefined) {
      // A patient-level token: its own compartment (of the patients asked for, when any).
      patients = compartment ? [...selected].filter((p) => p === own) : [own];
    } else if (compartment) {
      patients = [...selected];
    }
    if (access.filters.length) restrict[view.view.resource] = new URLSearchParams(searchRestriction(access, view.view.resource, own) ?? []).toString();
  }

  const outputs: ViewOutput[] = views.map(({ name, view }) => ({ name, view: view.view }));
  const params: ExportParams = {
    level: patients ? 'patient' : 'system',
    types: [...new Set(views.map((v) => v.view.view.resource))],
    typeFilters: {},
    ...(since ? { since } : {}),
    ...(patients ? { patients } : {}),
    views: {
      outputs, format, header: input.header !== 'false',
      ...(input.clientTrackingId !== undefined ? { clientTrackingId: input.clientTrackingId } : {}),
      ...(own !== undefined ? { requesterPatient: own } : {}),
      ...(Object.keys(restrict).length ? { restrict } : {}),
    },
  };
  const level = s.match.type === 'ViewDefinition' ? 'ViewDefinition/' : '';
  const id = await createJob(ctx.db, ctx.orgId, `${ctx.base}/${level}$viewdefinition-export`, params);
  if (ctx.access) await inTenant(ctx, (tx) => recordExportOwner(tx, id, ctx.access!.clientId));
  await s.succeed({ resources: [`urn:kiln:export:${id}`], patients: patients ?? [] });
  const location = statusUrl(ctx, id);
  ctx.res.set('Content-Location', location);
  sendJson(req, ctx.res, 202, parameters([
    { name: 'exportId', valueString: id },
    ...tracking(params),
    { name: 'status', valueCode: 'accepted' },
    { name: 'location', valueUri: location },
  ]));
}

const statusUrl = (ctx: Ctx, id: string) => `${ctx.base}/$viewdefinition-export-status/${id}`;
const resultUrl = (ctx: Ctx, id: string) => `${ctx.base}/$viewdefinition-export-result/${id}`;

function parameters(parameter: Record<string, unknown>[]) {
  return { resourceType: 'Parameters', parameter };
}

function tracking(p: ExportParams): Record<string, unknown>[] {
  return p.views?.clientTrackingId !== undefined ? [{ name: 'clientTrackingId', valueString: p.views.clientTrackingId }] : [];
}

/** The view jobs of this tenant are for the client (and patient, for a patient-level token) that started them. */
async function loadJob(ctx: Ctx, id: string): Promise<ExportJob> {
  if (!UUID.test(id)) throw notFound(`No view export ${id}`);
  ctx.audit?.touch({ resources: [`urn:kiln:export:${id}`] });
  const { job, owner } = await inTenant(ctx, async (tx) => ({ job: await findJob(tx, id, 'views'), owner: ctx.access ? await exportOwner(tx, id) : undefined }));
  if (!job) throw notFound(`No view export ${id} (it may have been cancelled or have expired)`);
  if (ctx.access) {
    const requester = job.params.views?.requesterPatient;
    if (owner !== undefined && owner !== ctx.access.clientId) throw forbidden('This export belongs to another client');
    if (requester !== undefined && requester !== ctx.access.patient) throw forbidden('This export belongs to another patient');
    if (owner === undefined) {
      // Started without a token: for tokens that may read every row of its types.
      for (const t of job.params.types) {
        const a = permit(ctx, t, 'r');
        if (a.compartment || a.filters.length) throw forbidden('This export was started without a token; it is for tokens that may read all its types');
      }
    }
  }
  return job;
}

function progressText(job: ExportJob): string {
  if (job.status === 'queued') return 'queued';
  const p = job.progress;
  const unit = p.current ? `; exporting ${p.current} (${(p.unitsDone ?? 0) + 1} of ${p.unitsTotal ?? '?'})` : '';
  return `${p.exported ?? 0} rows written${unit}`.slice(0, 100);
}

function pending(ctx: Ctx, job: ExportJob): void {
  ctx.res.set('X-Progress', progressText(job));
  ctx.res.set('Retry-After', String(RETRY_AFTER_SECONDS));
  sendJson(ctx.req, ctx.res, 202, parameters([
    { name: 'exportId', valueString: job.id },
    ...tracking(job.params),
    { name: 'status', valueCode: job.status === 'queued' ? 'accepted' : 'in-progress' },
    { name: 'location', valueUri: statusUrl(ctx, job.id) },
    ...(job.createdAt ? [{ name: 'exportStartTime', valueInstant: job.createdAt }] : []),
  ]));
}

/** GET polls (202, then 303 to the result), DELETE cancels. */
export async function viewExportStatus(ctx: Ctx, id: string): Promise<void> {
  const job = await loadJob(ctx, id);
  if (ctx.req.method === 'DELETE') {
    const existed = await inTenant(ctx, (tx) => deleteJob(tx, id));
    if (!existed) throw notFound(`No view export ${id}`);
    // A worker still running it notices at its next lease renewal and stops.
    fs.rmSync(jobDir(ctx.config, id), { recursive: true, force: true });
    await ctx.audit?.success();
    sendOutcome(ctx.req, ctx.res, 202, informational(`Export ${id} cancelled; its files are removed`));
    return;
  }
  await ctx.audit?.success();
  if (job.status === 'queued' || job.status === 'running') return pending(ctx, job);
  ctx.res.set('Location', resultUrl(ctx, id));
  sendJson(ctx.req, ctx.res, 303, parameters([
    { name: 'exportId', valueString: id },
    ...tracking(job.params),
    { name: 'status', valueCode: job.status },
  ]));
}

/** The result: 200 Parameters with each view's files, or the failure as a 500 OperationOutcome. */
export async function viewExportResult(ctx: Ctx, id: string): Promise<void> {
  const job = await loadJob(ctx, id);
  await ctx.audit?.success();
  if (job.status === 'queued' || job.status === 'running') return pending(ctx, job);
  if (job.status === 'failed') {
    sendOutcome(ctx.req, ctx.res, 500, outcome([{ severity: 'error', code: 'exception', diagnostics: `Export ${id} failed: ${job.error ?? 'unknown error'}` }]));
    return;
  }
  const views = job.params.views!;
  const files = await inTenant(ctx, (tx) => listFiles(tx, ctx.orgId, id));
  const seconds = job.createdAt && job.completedAt ? Math.round((Date.parse(job.completedAt) - Date.parse(job.createdAt)) / 1000) : undefined;
  if (job.expiresAt) ctx.res.set('Expires', new Date(job.expiresAt).toUTCString());
  sendJson(ctx.req, ctx.res, 200, parameters([
    { name: 'exportId', valueString: id },
    ...tracking(job.params),
    { name: 'status', valueCode: 'completed' },
    { name: '_format', valueCode: views.format },
    ...(job.createdAt ? [{ name: 'exportStartTime', valueInstant: job.createdAt }] : []),
    ...(job.completedAt ? [{ name: 'exportEndTime', valueInstant: job.completedAt }] : []),
    ...(seconds !== undefined ? [{ name: 'exportDuration', valueInteger: seconds }] : []),
    ...views.outputs.map((o) => ({
      name: 'output',
      part: [
        { name: 'name', valueString: o.name },
        ...files.filter((f) => f.kind === 'output' && f.type === o.name).sort((a, b) => a.seq - b.seq)
          .map((f) => ({ name: 'location', valueUri: `${ctx.base}/$viewdefinition-export-file/${id}/${f.name}` })),
      ],
    })),
  ]));
}

export async function viewExportFile(ctx: Ctx, id: string, name: string): Promise<void> {
  const job = await loadJob(ctx, id);
  const ext = FILE_NAME.exec(name)?.[1];
  if (!ext || job.status !== 'completed') throw notFound(`No file ${name} in export ${id}`);
  const f = (await inTenant(ctx, (tx) => listFiles(tx, ctx.orgId, id))).find((x) => x.name === name);
  if (!f) throw notFound(`No file ${name} in export ${id}`);
  ctx.audit?.touch({ resources: [`urn:kiln:export:${id}/${name}`] });
  await ctx.audit?.success();
  const stream = fs.createReadStream(path.join(jobDir(ctx.config, id), name));
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => {
      ctx.res.status(200).type(`${FILE_TYPES[ext]}; charset=utf-8`).set('Content-Length', String(f.bytes));
      stream.pipe(ctx.res);
      ctx.res.once('finish', resolve);
      ctx.res.once('close', resolve);
    });
    stream.once('error', (e) => {
      if (ctx.res.headersSent) { ctx.res.destroy(); resolve(); } else reject(notFound(`File ${name} of export ${id} is gone (${(e as Error).message})`));
    });
  });
}
