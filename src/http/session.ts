// One request's session (issue #22 item 5): the router makes it once the route is matched
// and the token verified. It holds the tenant, the route and the policy of the route's
// permission, and runs a handler's database work in the tenant with the request's
// AuditEvent, so a handler parses and serializes and cannot skip the access or audit step.
import type { Request, Response } from 'express';
import type { Ctx } from './context.ts';
import { inTenant } from './context.ts';
import { policyOf, type Policy } from './policy.ts';
import { accessOf, permit, visible, type Access } from '../auth/enforce.ts';
import { notFound } from '../fhir/outcome.ts';
import type { RouteMatch } from '../interactions/routes.ts';
import { touchedResource, type RequestAudit, type Touched } from '../audit/request.ts';
import { actionOf } from '../audit/event.ts';
import { requireSupported } from '../interactions/supported.ts';
import type { EntryRequest, EntryResult } from '../interactions/bundle.ts';
import type { Tx } from '../store/resources.ts';

/** What a write touched, for its AuditEvent (no id: nothing was written). */
export interface Written {
  id?: string;
  json?: string;
  versionId?: number;
}

/**
 * Whether the interaction also finds resources by criteria (a conditional update or delete,
 * a create with If-None-Exist), which needs search access and is confined by its restriction.
 * Over HTTP only a create reads If-None-Exist; an entry's ifNoneExist counts on any method.
 */
function byCriteria(interaction: string, id: string | undefined, ifNoneExist: unknown): boolean {
  return ((interaction === 'update' || interaction === 'delete') && id === undefined) || !!ifNoneExist;
}

export class Session {
  private computed?: Policy;

  constructor(readonly ctx: Ctx, readonly match: RouteMatch) {}

  get req(): Request { return this.ctx.req; }
  get res(): Response { return this.ctx.res; }
  /** Absolute FHIR base of the tenant. */
  get base(): string { return this.ctx.base; }
  get orgId(): number { return this.ctx.orgId; }

  /**
   * The policy of the route's permission on its type, composed at first use, so a handler's
   * 400 for a malformed id still comes before a 403 (as the handlers ordered it before).
   */
  get policy(): Policy {
    return this.authorize();
  }

  /** The policy, composed now: a 403 before the handler reads anything. */
  authorize(): Policy {
    if (!this.computed) {
      const { route, params, type } = this.match;
      const ifNoneExist = route.interaction === 'create' ? this.req.get('if-none-exist') : undefined;
      this.computed = policyOf(this.ctx, type!, route.permission!, byCriteria(route.interaction, params.id, ifNoneExist));
    }
    return this.computed;
  }

  /** The route's permission on another type (system-level interactions span types): 403 when the token lacks it. */
  permitOn(type: string): Access {
    return permit(this.ctx, type, this.match.route.permission!);
  }

  /** The route's permission on another type, or undefined when the token lacks it. */
  accessOn(type: string): Access | undefined {
    return accessOf(this.ctx, type, this.match.route.permission!);
  }

  /** The policy of the route's permission on another type (its restriction for a system search). */
  policyOn(type: string): Policy {
    return policyOf(this.ctx, type, this.match.route.permission!, false);
  }

  /** A resource of the route's type outside the token's reach is a 404: it does not tell another patient's data exists. */
  async requireVisible(tx: Tx | undefined, id: string, json: string): Promise<void> {
    const type = this.match.type!;
    if (!await visible(this.ctx, tx, type, id, json, this.policy.access)) throw notFound(`${type}/${id} not found`);
  }

  inTenant<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return inTenant(this.ctx, fn);
  }

  /** Runs a write of the route's type and records its AuditEvent in the same transaction. */
  audited<T>(fn: (tx: Tx) => Promise<T>, touched: (r: T) => Written): Promise<T> {
    return this.inTenant(async (tx) => {
      const r = await fn(tx);
      const t = touched(r);
      if (this.ctx.audit) await this.ctx.audit.inTx(tx, t.id ? touchedResource(this.match.type!, t.id, t.json, t.versionId) : {});
      return r;
    });
  }

  /** Adds to what the request's AuditEvent names (resources, patients) before it is recorded. */
  touch(t: Touched): void {
    this.ctx.audit?.touch(t);
  }

  /** Records a successful read, search or operation before the answer goes out. */
  succeed(t?: Touched): Promise<void> {
    return this.ctx.audit?.success(t) ?? Promise.resolve();
  }

  /** A batch or transaction entry of this request, with the policy and AuditEvent the same request over HTTP would have. */
  forEntry(entry: EntryRequest): EntrySession {
    return new EntrySession(this.ctx, entry);
  }
}

/**
 * One Bundle entry: its policy (from its route's permission, src/interactions/bundle.ts
 * parseEntry) and its own AuditEvent, a child of the Bundle's (a batch records one per
 * entry; a transaction's entries are named in the Bundle's own).
 */
export class EntrySession {
  constructor(private readonly ctx: Ctx, readonly entry: EntryRequest) {}

  /** 405 when the entry's type does not support its interaction, 403 when the token lacks the permission. */
  get policy(): Policy {
    const e = this.entry;
    requireSupported(e.type, e.interaction);
    return policyOf(this.ctx, e.type, e.permission, byCriteria(e.interaction, e.id, e.ifNoneExist));
  }

  private audit(): RequestAudit | undefined {
    const e = this.entry;
    const child = this.ctx.audit?.child(e.interaction, actionOf(e.interaction, e.method));
    if (e.id) child?.touch({ resources: [e.vid ? `${e.type}/${e.id}/_history/${e.vid}` : `${e.type}/${e.id}`] });
    else if (child && (e.method === 'GET' || e.method === 'HEAD')) child.query = { type: e.type, text: new URLSearchParams(e.query).toString() };
    return child;
  }

  /** Resources and patients the entry touched, from its result. */
  touched(r: EntryResult): Touched {
    const e = this.entry;
    const loc = r.location ? /^([A-Za-z]+)\/([^/]+)\/_history\/(\d+)$/.exec(r.location) : null;
    if (loc) return touchedResource(loc[1], loc[2], r.json, Number(loc[3]));
    if (e.id && r.json && e.method !== 'DELETE') return touchedResource(e.type, e.id, r.json);
    return {};
  }

  /** Records the entry's AuditEvent in its write transaction. */
  async recordInTx(tx: Tx, r: EntryResult): Promise<void> {
    await this.audit()?.inTx(tx, this.touched(r));
  }

  /** Records the entry's refusal or failure. */
  async failed(err: unknown): Promise<void> {
    await this.audit()?.failure(err);
  }
}
