// POST [base] with a batch or transaction Bundle; answers a batch-response or
// transaction-response Bundle whose entries follow the request's order.
import type { Ctx } from './context.ts';
import { inTenant } from './context.ts';
import { jsonBody, requireBodyType, sendJson } from './format.ts';
import { badRequest } from '../fhir/outcome.ts';
import { batch, transaction, type EntryResult } from '../interactions/bundle.ts';

function entryJson(ctx: Ctx, r: EntryResult, withResource: boolean): string {
  const fullUrl = r.location ? `${ctx.base}/${r.location.replace(/\/_history\/.*$/, '')}` : undefined;
  const response = { status: r.status, location: r.location, etag: r.etag, lastModified: r.lastModified, outcome: r.outcome };
  const head = JSON.stringify({ fullUrl, response });
  return withResource && r.json ? `${head.slice(0, -1)},"resource":${r.json}}` : head;
}

export async function bundleInteraction(ctx: Ctx) {
  requireBodyType(ctx.req);
  const body = jsonBody(ctx.req) as { resourceType?: string; type?: string };
  if (body?.resourceType !== 'Bundle') throw badRequest('POST to the base takes a batch or transaction Bundle');
  const opts = {
    base: ctx.base,
    maxEntries: ctx.config.maxBundleEntries,
    maxCount: ctx.config.maxCount,
    inTenant: <T>(fn: Parameters<typeof inTenant<T>>[1]) => inTenant(ctx, fn),
  };
  const isTransaction = body.type === 'transaction';
  const results = isTransaction ? await transaction(body, opts) : await batch(body, opts);
  // Reads and searches always carry their result; writes only when asked for.
  const representation = /return=representation/i.test(ctx.req.get('prefer') ?? '');
  const entries = results.map((r) => entryJson(ctx, r, representation || !r.location));
  const type = isTransaction ? 'transaction-response' : 'batch-response';
  sendJson(ctx.req, ctx.res, 200, `{"resourceType":"Bundle","type":"${type}","entry":[${entries.join(',')}]}`);
}
