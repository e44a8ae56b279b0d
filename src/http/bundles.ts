// POST [base] with a batch or transaction Bundle; answers a batch-response or
// transaction-response Bundle whose entries follow the request's order.
import type { Ctx } from './context.ts';
import { readJsonBody, requireBodyType, sendJson } from './format.ts';
import { badRequest, FhirError } from '../fhir/outcome.ts';
import { batch, transaction, type EntryRequest, type EntryResult } from '../interactions/bundle.ts';
import type { Session } from './session.ts';
import type { Tx } from '../store/resources.ts';

/** A batch entry's AuditEvent is its own, in its transaction; a transaction's is the Bundle's, naming what every entry touched. */
async function auditEntries(s: Session, tx: Tx, done: { request: EntryRequest; result: EntryResult }[], isTransaction: boolean) {
  const audit = s.ctx.audit;
  if (!audit) return;
  if (isTransaction) {
    for (const d of done) audit.touch(s.forEntry(d.request).touched(d.result));
    await audit.inTx(tx);
    return;
  }
  await s.forEntry(done[0].request).recordInTx(tx, done[0].result);
}

function entryJson(ctx: Ctx, r: EntryResult, withResource: boolean): string {
  const fullUrl = r.location ? `${ctx.base}/${r.location.replace(/\/_history\/.*$/, '')}` : undefined;
  const response = { status: r.status, location: r.location, etag: r.etag, lastModified: r.lastModified, outcome: r.outcome };
  const head = JSON.stringify({ fullUrl, response });
  return withResource && r.json ? `${head.slice(0, -1)},"resource":${r.json}}` : head;
}

export async function bundleInteraction(s: Session) {
  const { ctx } = s;
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
    inTenant: <T>(fn: (tx: Tx) => Promise<T>) => s.inTenant(fn),
    // Each entry needs what the same request on its own would.
    authorize: (e: EntryRequest) => s.forEntry(e).policy,
    auditInTx: (tx: Tx, done: { request: EntryRequest; result: EntryResult }[]) => auditEntries(s, tx, done, isTransaction),
    auditFailed: async (_index: number, e: EntryRequest | undefined, err: FhirError) => {
      if (e) await s.forEntry(e).failed(err);
    },
  };
  const results = isTransaction ? await transaction(body, opts) : await batch(body, opts);
  // A batch is audited entry by entry (above) and as a whole; a transaction as a whole, in its transaction.
  if (!isTransaction) await s.succeed();
  // Reads and searches always carry their result; writes only when asked for.
  const representation = /return=representation/i.test(ctx.req.get('prefer') ?? '');
  const entries = results.map((r) => entryJson(ctx, r, representation || !r.location));
  const type = isTransaction ? 'transaction-response' : 'batch-response';
  sendJson(ctx.req, ctx.res, 200, `{"resourceType":"Bundle","type":"${type}","entry":[${entries.join(',')}]}`);
}
