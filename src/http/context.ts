// What every FHIR interaction handler receives.
import type { Request, Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import type { Tx } from '../store/resources.ts';
import { withTenant } from '../store/resources.ts';
import { badRequest } from '../fhir/outcome.ts';
import type { AccessContext } from '../auth/verify.ts';
import type { ResourceScope } from '../auth/scopes.ts';
import type { RequestAudit } from '../audit/request.ts';

export interface Ctx {
  req: Request;
  res: Response;
  db: Database;
  config: Config;
  orgId: number;
  /** Absolute FHIR base of this tenant, e.g. http://host/fhir/acme */
  base: string;
  /** Tenant slug ('default' for /fhir). */
  tenant: string;
  /** The verified access token (KILN_AUTH=smart), set by src/auth/enforce.ts authenticate. */
  access?: AccessContext;
  /** The token's resource scopes, parsed once. */
  grants?: ResourceScope[];
  /** This request's AuditEvent (undefined with KILN_AUDIT=off). */
  audit?: RequestAudit;
}

export function inTenant<T>(ctx: Ctx, fn: (tx: Tx) => Promise<T>): Promise<T> {
  return withTenant(ctx.db.app, ctx.orgId, fn);
}

/** Query parameters as ordered [name, value] pairs (repeats kept), from the URL. */
export function queryPairs(req: Request): [string, string][] {
  const q = req.originalUrl.indexOf('?');
  return q < 0 ? [] : [...new URLSearchParams(req.originalUrl.slice(q + 1)).entries()];
}

/** Result-control parameters that are not search criteria. */
const CONTROL = new Set(['_format', '_pretty', '_count', '_summary', '_elements', '_total', '_page', '_sort', '_since']);

export function criteriaPairs(pairs: [string, string][]): [string, string][] {
  return pairs.filter(([n]) => !CONTROL.has(n));
}

export function pageSize(ctx: Ctx, raw: unknown): number {
  if (raw === undefined) return ctx.config.defaultCount;
  // Digits only ('1e3', '1.0' are not integers as FHIR writes them); any larger count is capped.
  if (typeof raw !== 'string' || !/^\d+$/.test(raw)) throw badRequest(`_count must be a non-negative integer, got '${String(raw)}'`, ['_count']);
  return Math.min(Number(raw), ctx.config.maxCount);
}
