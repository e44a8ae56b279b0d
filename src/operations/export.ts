// Bulk Data Access IG v2 over HTTP: $export kick-off (system, Patient, Group; their
// OperationDefinitions are conformance/OperationDefinition-export.json, -patient-export.json
// and -group-export.json), the status URL (poll, DELETE to cancel) and the output files.
// The job itself runs in src/export/ (params.ts checks the kick-off parameters).
// With KILN_AUTH=smart a kick-off needs system/ scopes (src/auth/enforce.ts exportAccess)
// and the status URL and files need a token of the client that started the export
// (requiresAccessToken: true).
import fs from 'node:fs';
import path from 'node:path';
import type { Ctx } from '../http/context.ts';
import { inTenant, queryPairs } from '../http/context.ts';
import { jsonBody, sendOutcome } from '../http/format.ts';
import { badRequest, informational, notFound, outcome } from '../fhir/outcome.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { mapGroup } from '../../mappings/postgres/group.ts';
import { readCurrent, requireLive } from '../store/resources.ts';
import { deleteJob, findJob, listFiles, type ExportJob } from '../store/exportJobs.ts';
import { parseKickoff, parametersToPairs, type ExportLevel } from '../export/params.ts';
import { createJob } from '../export/run.ts';
import { jobDir } from '../export/runner.ts';
import { checkId } from '../http/crud.ts';
import { exportAccess, exportableTypes, forbidden } from '../auth/enforce.ts';
import { exportOwner, recordExportOwner } from '../store/auditExportOwners.ts';

const NDJSON = 'application/fhir+ndjson';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const FILE_NAME = /^[A-Za-z]+-\d+\.\d+\.ndjson$/;
const RETRY_AFTER_SECONDS = 2;

/** A file download may ask for NDJSON, which the router's JSON negotiation would refuse. */
export function isExportFilePath(urlPath: string): boolean {
  return /\/\$export-file\/[^/]+\/[^/]+$/.test(urlPath);
}

/** Serves an export route of src/interactions/routes.ts, which has already refused other methods (405). */
export async function exportInteraction(ctx: Ctx, segments: string[]): Promise<void> {
  const m = ctx.req.method;
  const [first, second, third] = segments;
  if (first === '$export-status') {
    ctx.audit?.interaction('operation', m === 'GET' ? 'R' : 'D', { operation: m === 'GET' ? 'export-status' : 'export-cancel' });
    return m === 'GET' ? status(ctx, second) : cancel(ctx, second);
  }
  if (first === '$export-file') {
    ctx.audit?.interaction('operation', 'R', { operation: 'export-file' });
    return file(ctx, second, third);
  }
  const url = new URL(ctx.req.originalUrl, 'http://x');
  ctx.audit?.interaction('operation', 'E', { operation: 'export', query: url.search.slice(1) });
  if (first === '$export') return kickoff(ctx, 'system', '$export');
  if (first === 'Patient') return kickoff(ctx, 'patient', 'Patient/$export');
  checkId(second);
  return kickoff(ctx, 'group', `Group/${second}/$export`, second);
}

async function kickoff(ctx: Ctx, level: ExportLevel, path: string, groupId?: string): Promise<void> {
  const { req } = ctx;
  const accept = (req.get('accept') ?? '').split(',').map((a) => a.split(';')[0].trim().toLowerCase());
  if (!accept.includes('application/fhir+json')) {
    throw badRequest('$export needs Accept: application/fhir+json (Bulk Data kick-off request)');
  }
  const prefer = req.get('prefer') ?? '';
  if (!/(^|[\s,;])respond-async($|[\s,;])/i.test(prefer)) {
    throw badRequest('$export runs asynchronously: send Prefer: respond-async');
  }
  const lenient = /handling\s*=\s*lenient/i.test(prefer);
  let pairs = queryPairs(req).filter(([n]) => n !== '_format' && n !== '_pretty');
  if (req.method === 'POST' && Buffer.isBuffer(req.body) && req.body.length > 0) {
    pairs = [...pairs, ...parametersToPairs(jsonBody(req))];
  }
  const { params, ignored } = parseKickoff(level, pairs, { lenient, storedTypes: Object.keys(TABLES), groupId });
  // Without _type the export covers the types the token may read; named types must all be readable.
  if (!pairs.some(([n]) => n === '_type')) {
    params.types = exportableTypes(ctx, params.types);
    if (!params.types.length) throw forbidden("$export: the access token's scopes allow reading none of the exported types");
  }
  exportAccess(ctx, params.types);
  if (groupId) {
    const members = await inTenant(ctx, async (tx) => {
      const group = requireLive(await readCurrent(tx, 'Group', groupId), 'Group', groupId);
      return mapGroup(JSON.parse(group.json)).columns.member_ids as string[];
    });
    params.patients = params.patients ? params.patients.filter((p) => members.includes(p)) : members;
  }
  const url = new URL(req.originalUrl, 'http://x');
  const id = await createJob(ctx.db, ctx.orgId, `${ctx.base}/${path}${url.search}`, params);
  if (ctx.access) await inTenant(ctx, (tx) => recordExportOwner(tx, id, ctx.access!.clientId));
  ctx.audit?.touch({ resources: [`urn:kiln:export:${id}`] });
  await ctx.audit?.success({ patients: params.patients ?? [] });
  ctx.res.set('Content-Location', `${ctx.base}/$export-status/${id}`);
  sendOutcome(req, ctx.res, 202, informational(`Export ${id} accepted${ignored.length ? `; ignored (Prefer: handling=lenient): ${ignored.join(', ')}` : ''}`));
}

async function loadJob(ctx: Ctx, id: string): Promise<ExportJob> {
  if (!UUID.test(id)) throw notFound(`No export job ${id}`);
  ctx.audit?.touch({ resources: [`urn:kiln:export:${id}`] });
  const { job, owner } = await inTenant(ctx, async (tx) => ({ job: await findJob(tx, id), owner: ctx.access ? await exportOwner(tx, id) : undefined }));
  if (!job) throw notFound(`No export job ${id} (it may have been cancelled or have expired)`);
  requireOwner(ctx, job, owner);
  return job;
}

/** An export's status and files are for the client that started it (a job started without a token: any client that may export its types). */
function requireOwner(ctx: Ctx, job: ExportJob, owner: string | undefined): void {
  if (!ctx.access) return;
  if (owner !== undefined) {
    if (owner !== ctx.access.clientId) throw forbidden('This export belongs to another client');
    return;
  }
  exportAccess(ctx, job.params.types);
}

function progressText(job: ExportJob): string {
  const p = job.progress;
  if (job.status === 'queued') return 'queued';
  const unit = p.current ? `; exporting ${p.current} (${(p.unitsDone ?? 0) + 1} of ${p.unitsTotal ?? '?'})` : '';
  return `${p.exported ?? 0} resources written${unit}`.slice(0, 100);
}

async function status(ctx: Ctx, id: string): Promise<void> {
  const job = await loadJob(ctx, id);
  await ctx.audit?.success();
  const res = ctx.res;
  if (job.status === 'queued' || job.status === 'running') {
    res.set('X-Progress', progressText(job));
    res.set('Retry-After', String(RETRY_AFTER_SECONDS));
    res.status(202).end();
    return;
  }
  if (job.status === 'failed') {
    sendOutcome(ctx.req, res, 500, outcome([{ severity: 'error', code: 'exception', diagnostics: `Export ${id} failed: ${job.error ?? 'unknown error'}` }]));
    return;
  }
  const files = await inTenant(ctx, (tx) => listFiles(tx, ctx.orgId, id));
  const entry = (f: { type: string; name: string; count: number }) => ({ type: f.type, url: `${ctx.base}/$export-file/${id}/${f.name}`, count: f.count });
  const manifest = {
    transactionTime: job.transactionTime,
    request: job.request,
    // With authorization on, files need a token of the client that started the export.
    requiresAccessToken: ctx.config.authMode !== 'off',
    output: files.filter((f) => f.kind === 'output').map(entry),
    ...(job.params.since ? { deleted: files.filter((f) => f.kind === 'deleted').map(entry) } : {}),
    error: files.filter((f) => f.kind === 'error').map(entry),
  };
  if (job.expiresAt) res.set('Expires', new Date(job.expiresAt).toUTCString());
  res.status(200).type('application/json; charset=utf-8').send(JSON.stringify(manifest));
}

async function cancel(ctx: Ctx, id: string): Promise<void> {
  await loadJob(ctx, id);
  const existed = await inTenant(ctx, (tx) => deleteJob(tx, id));
  if (!existed) throw notFound(`No export job ${id}`);
  // A worker still running it notices at its next lease renewal and stops.
  fs.rmSync(jobDir(ctx.config, id), { recursive: true, force: true });
  await ctx.audit?.success();
  sendOutcome(ctx.req, ctx.res, 202, informational(`Export ${id} cancelled; its files are removed`));
}

async function file(ctx: Ctx, id: string, name: string): Promise<void> {
  const job = await loadJob(ctx, id);
  if (!FILE_NAME.test(name) || job.status !== 'completed') throw notFound(`No file ${name} in export ${id}`);
  const files = await inTenant(ctx, (tx) => listFiles(tx, ctx.orgId, id));
  const f = files.find((x) => x.name === name);
  if (!f) throw notFound(`No file ${name} in export ${id}`);
  ctx.audit?.touch({ resources: [`urn:kiln:export:${id}/${name}`] });
  await ctx.audit?.success();
  const full = path.join(jobDir(ctx.config, id), name);
  const stream = fs.createReadStream(full);
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => {
      ctx.res.status(200).type(NDJSON).set('Content-Length', String(f.bytes));
      stream.pipe(ctx.res);
      ctx.res.once('finish', resolve);
      ctx.res.once('close', resolve);
    });
    stream.once('error', (e) => {
      if (ctx.res.headersSent) { ctx.res.destroy(); resolve(); } else reject(notFound(`File ${name} of export ${id} is gone (${(e as Error).message})`));
    });
  });
}
