// POST [base] with a batch or transaction Bundle; answers a batch-response or
// transaction-response Bundle whose entries follow the request's order.
import type { Ctx } from './context.ts';
import { inTenant } from './context.ts';
import { readJsonBody, requireBodyType, sendJson } from './format.ts';
import { badRequest, FhirError } from '../fhir/outcome.ts';
import { batch, transaction, type EntryPolicy, type EntryRequest, type EntryResult } from '../interactions/bundle.ts';
import { policyOf } from './policy.ts';
import { actionOf } from '../audit/event.ts';
import { touchedResource, type RequestAudit } from '../audit/request.ts';
import type { Tx } from '../store/resources.ts';
import { requireSupported } from '../interactions/supported.ts';

/** Each entry needs what the same request on its own would (src/http/policy.ts, as crud.ts asks it). */
function entryPolicy(ctx: Ctx, e: EntryRequest): EntryPolicy {
  requireSupported(e.type, e.interaction);
  const conditional = !e.id && (e.method === 'PUT' || e.method === 'DELETE');
  return policyOf(ctx, e.type, e.permission, conditional || !!e.ifNoneExist);
}

/** The entry's own AuditEvent, a child of the Bundle's. */
function entryAudit(audit: RequestAudit, e: EntryRequest): RequestAudit {
  const subtype = e.interaction;
  const child = audit.child(subtype, actionOf(subtype, e.method));
  if (e.id) child.touch({ resources: [e.vid ? `${e.type}/${e.id}/_history/${e.vid}` : `${e.type}/${e.id}`] });
  else if (e.method === 'GET' || e.method === 'HEAD') child.query = { type: e.type, text: new URLSearchParams(e.query).toString() };
  return child;
}

/** Resources and patients an entry touched, from its result. */
function touchedBy(e: EntryRequest, r: EntryResult) {
  const loc = r.location ? /^([A-Za-z]+)\/([^/]+)\/_history\/(\d+)$/.exec(r.location) : null;
  if (loc) return touchedResource(loc[1], loc[2], r.json, Number(loc[3]));
  if (e.id && r.json && e.method !== 'DELETE') return touchedResource(e.type, e.id, r.json);
  return {};
}

async function auditEntries(ctx: Ctx, tx: Tx, done: { request: EntryRequest; result: EntryResult }[], isTransaction: boolean) {
  const audit = ctx.audit;
  if (!audit) return;
  if (isTransaction) {
    for (const d of done) audit.touch(touchedBy(d.request, d.result));
    await audit.inTx(tx);
    return;
  }
  const d = done[0];
  const child = entryAudit(audit, d.request);
  await child.inTx(tx, touchedBy(d.request, d.result));
}

function entryJson(ctx: Ctx, r: EntryResult, withResource: boolean): string {
  const fullUrl = r.location ? `${ctx.base}/${r.location.replace(/\/_history\/.*$/, '')}` : undefined;
  const response = { status: r.status, location: r.location, etag: r.etag, lastModified: r.lastModified, outcome: r.outcome };
  const head = JSON.stringify({ fullUrl, response });
  return withResource && r.json ? `${head.slice(0, -1)},"resource":${r.json}}` : head;
}

export async function bundleInteraction(ctx: Ctx) {
  requireBodyType(ctx.req);
  const read = await readJsonBody(ctx.req, { kind: 'bundle' });
  const body = read.value as { resourceType?: string; type?: string };
  if (body?.resourceType !== 'Bundle') throw badRequest('POST to the base takes a batch or transaction Bundle');
  const isTransaction = body.type === 'transaction';
  ctx.audit?.interaction(isTransaction ? 'transaction' : 'batch', 'E');
  const opts = {
    base: ctx.base,
    maxEntries: ctx.config.maxBundleEntries,
    maxCount: ctx.config.maxCount,
    validated: read.entries,
    inTenant: <T>(fn: Parameters<typeof inTenant<T>>[1]) => inTenant(ctx, fn),
    authorize: (e: EntryRequest) => entryPolicy(ctx, e),
    auditInTx: (tx: Tx, done: { request: EntryRequest; result: EntryResult }[]) => auditEntries(ctx, tx, done, isTransaction),
    auditFailed: async (_index: number, e: EntryRequest | undefined, err: FhirError) => {
      if (ctx.audit && e) await entryAudit(ctx.audit, e).failure(err);
    },
  };
  const results = isTransaction ? await transaction(body, opts) : await batch(body, opts);
  // A batch is audited entry by entry (above) and as a whole; a transaction as a whole, in its transaction.
  if (!isTransaction) await ctx.audit?.success();
  // Reads and searches always carry their result; writes only when asked for.
  const representation = /return=representation/i.test(ctx.req.get('prefer') ?? '');
  const entries = results.map((r) => entryJson(ctx, r, representation || !r.location));
  const type = isTransaction ? 'transaction-response' : 'batch-response';
  sendJson(ctx.req, ctx.res, 200, `{"resourceType":"Bundle","type":"${type}","entry":[${entries.join(',')}]}`);
}
