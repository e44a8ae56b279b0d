// CORS for everything under /fhir (the FHIR API, discovery, the OAuth endpoints): SMART
// apps running in a browser call them from their own origin. Bearer tokens travel in the
// Authorization header, never in cookies, so no credentials mode and `*` is a safe
// default (KILN_CORS_ORIGINS narrows it to a list). Preflights need no token.
import type { NextFunction, Request, Response } from 'express';

const ALLOW_METHODS = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';
const ALLOW_HEADERS = 'Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Exist, If-None-Match, If-Modified-Since, X-Request-Id';
const EXPOSE_HEADERS = 'Location, ETag, Content-Location, Last-Modified, WWW-Authenticate, X-Progress, Retry-After';
/** Seconds a browser may reuse a preflight (Chromium caps it at 7200). */
const MAX_AGE = '3600';

/** `origins`: ['*'] or the exact origins (scheme://host[:port]) allowed. */
export function cors(origins: string[]) {
  const any = origins.includes('*');
  return (req: Request, res: Response, next: NextFunction): void => {
    const origin = req.get('origin');
    if (!any) res.vary('Origin');
    const allowed = any ? '*' : origin && origins.includes(origin) ? origin : undefined;
    if (allowed) res.set('Access-Control-Allow-Origin', allowed);
    if (req.method === 'OPTIONS' && req.get('access-control-request-method')) {
      if (allowed) {
        res.set('Access-Control-Allow-Methods', ALLOW_METHODS);
        res.set('Access-Control-Allow-Headers', ALLOW_HEADERS);
        res.set('Access-Control-Max-Age', MAX_AGE);
      }
      res.status(204).end();
      return;
    }
    if (allowed) res.set('Access-Control-Expose-Headers', EXPOSE_HEADERS);
    next();
  };
}
