// OAuth 2.0 error responses (RFC 6749 5.2, RFC 7662): JSON `error` and
// `error_description`, 400 or 401, never cached.
import type { Request, Response } from 'express';

export type OAuthErrorCode = 'invalid_request' | 'invalid_client' | 'invalid_grant' | 'unauthorized_client'
  | 'unsupported_grant_type' | 'invalid_scope' | 'access_denied' | 'unsupported_response_type' | 'unsupported_token_type' | 'server_error' | 'not_found';

export class OAuthError extends Error {
  constructor(readonly status: 400 | 401 | 404 | 405, readonly error: OAuthErrorCode, description: string) {
    super(description);
  }
}

export const invalidRequest = (d: string) => new OAuthError(400, 'invalid_request', d);
export const invalidClient = (d: string) => new OAuthError(401, 'invalid_client', d);
export const invalidGrant = (d: string) => new OAuthError(400, 'invalid_grant', d);
export const invalidScope = (d: string) => new OAuthError(400, 'invalid_scope', d);
export const unauthorizedClient = (d: string) => new OAuthError(400, 'unauthorized_client', d);

export function noStore(res: Response): void {
  res.set('Cache-Control', 'no-store');
  res.set('Pragma', 'no-cache');
}

export function sendOAuthError(req: Request, res: Response, e: OAuthError): void {
  noStore(res);
  // A client that tried HTTP Basic is told which scheme to use (RFC 6749 5.2).
  if (e.status === 401 && /^basic /i.test(req.get('authorization') ?? '')) res.set('WWW-Authenticate', 'Basic realm="kiln"');
  res.status(e.status).json({ error: e.error, error_description: e.message });
}

/** A NUL cannot be stored in PostgreSQL text, so it is refused where requests are parsed. */
export const hasNul = (s: string) => s.includes('\u0000');

/** Form parameters of a POST (application/x-www-form-urlencoded); a repeated one is refused (RFC 6749 3.1). */
export function formParams(req: Request): Map<string, string> {
  if (!/^application\/x-www-form-urlencoded\b/i.test(req.get('content-type') ?? '')) {
    throw invalidRequest('The body must be application/x-www-form-urlencoded');
  }
  return uniqueParams(checked(new URLSearchParams(bodyText(req))));
}

export function queryParams(req: Request): Map<string, string> {
  const q = req.originalUrl.indexOf('?');
  return uniqueParams(checked(new URLSearchParams(q < 0 ? '' : req.originalUrl.slice(q + 1))));
}

/** The form a sign-in page posts, repeats kept (consent checkboxes share a name); not a form: empty. */
export function pageForm(req: Request): URLSearchParams {
  return checked(new URLSearchParams(/^application\/x-www-form-urlencoded\b/i.test(req.get('content-type') ?? '') ? bodyText(req) : ''));
}

const bodyText = (req: Request) => Buffer.isBuffer(req.body) ? req.body.toString('utf8') : typeof req.body === 'string' ? req.body : '';

function checked(search: URLSearchParams): URLSearchParams {
  for (const [k, v] of search) {
    if (hasNul(k)) throw invalidRequest('A parameter name holds a NUL character');
    if (hasNul(v)) throw invalidRequest(`Parameter ${k} holds a NUL character`);
  }
  return search;
}

function uniqueParams(search: URLSearchParams): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of search) {
    if (out.has(k)) throw invalidRequest(`Parameter ${k} is repeated`);
    out.set(k, v);
  }
  return out;
}
