// What the access log and the metrics say of a request, filled in as it is understood:
// the tenant once the path is read, the interaction and type once the route matched, the
// client once the token is verified. Never a query string, token or body (they can carry PHI).
import type { Response } from 'express';

export interface RequestInfo {
  /** The request id (src/http/accessLog.ts): the incoming X-Request-Id when sane, else generated. */
  id?: string;
  /** Tenant slug. */
  tenant?: string;
  /** The route table's interaction ('read', 'search-type', 'operation', ...), or an authorization endpoint's name. */
  interaction?: string;
  /** The resource type the interaction is on, if any. */
  type?: string;
  /** The token's client_id. */
  client?: string;
}

/** The request's record, made at first use and kept on `res.locals`. */
export function requestInfo(res: Response): RequestInfo {
  const locals = res.locals as { kiln?: RequestInfo };
  return (locals.kiln ??= {});
}
