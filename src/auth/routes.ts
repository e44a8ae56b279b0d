// The authorization server's HTTP routes, mounted under /fhir ahead of the FHIR router:
//   {base}/.well-known/smart-configuration and openid-configuration
//   {base}/auth/{jwks,authorize,login,pick,consent,token,introspect,revoke}
// where {base} is /fhir (default tenant) or /fhir/{tenant}. CORS: src/http/cors.ts, for all of /fhir.
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { findOrg, type Org } from '../store/tenants.ts';
import { keyRingFor } from './keys.ts';
import { configureExternalIssuer, configureTokenCache } from './verify.ts';
import { inOrg, type AuthCtx } from './context.ts';
import { openidConfiguration, smartConfiguration } from './discovery.ts';
import { formParams, noStore, OAuthError, pageForm, queryParams, sendOAuthError } from './oauthError.ts';
import { authorize, consent, login, pick, type PendingAuthorization } from './authorize.ts';
import { introspect, revoke, tokenRequest } from './tokenEndpoint.ts';
import { errorPage, pagePolicy, redirectSource } from './pages.ts';
import { findRequest } from '../store/authFlow.ts';
import { findClient } from '../store/authClients.ts';
import { sha256 } from './secrets.ts';
import { DEFAULT_TENANT, fhirRoot, tenantBase } from './urls.ts';
import type { InFlight } from '../http/inFlight.ts';
import { logFailure } from '../store/resources.ts';
import { requestInfo } from '../http/requestInfo.ts';

const TENANT_SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const PAGES = new Set(['authorize', 'login', 'pick', 'consent']);
const METHODS: Record<string, string[]> = {
  jwks: ['GET'], authorize: ['GET', 'POST'], login: ['POST'], pick: ['POST'], consent: ['POST'],
  token: ['POST'], introspect: ['POST'], revoke: ['POST'],
};

/** `inFlight` counts the endpoints' handlers (a token exchange writes), as for FHIR requests. */
export function authRoutes(db: Database, config: Config, inFlight: InFlight): express.Router {
  const ring = keyRingFor(db.owner);
  configureExternalIssuer(config.auth.external);
  configureTokenCache(config.auth.tokenCache);
  // First start generates the signing key; a failure here is retried on first use (and
  // is no news when the server was stopped before it finished).
  ring.keys().catch((e) => { if (!db.owner.ending) logFailure('loading the token signing keys failed', e); });
  const orgs = new Map<string, Org>(); // tenants are never renamed

  async function ctxFor(req: Request, res: Response): Promise<AuthCtx | undefined> {
    const slug = (req.params.tenant as string | undefined) ?? DEFAULT_TENANT;
    if (!TENANT_SLUG.test(slug)) return undefined;
    let org = orgs.get(slug);
    if (!org) {
      org = await findOrg(db.app, slug);
      if (!org) return undefined;
      orgs.set(slug, org);
    }
    requestInfo(res).tenant = slug;
    return { req, res, db, config, ring, org, base: tenantBase(fhirRoot(req, config), slug) };
  }

  const router = express.Router();

  router.get(['/.well-known/:doc', '/:tenant/.well-known/:doc'], (req: Request, res: Response, next: NextFunction) => {
    const doc = req.params.doc;
    if (doc !== 'smart-configuration' && doc !== 'openid-configuration') return next();
    ctxFor(req, res).then((a) => {
      if (!a) return next();
      requestInfo(res).interaction = doc;
      res.json(doc === 'smart-configuration' ? smartConfiguration(a.base) : openidConfiguration(a.base));
    }).catch(next);
  });

  router.all(['/auth/:endpoint', '/:tenant/auth/:endpoint'], (req: Request, res: Response, next: NextFunction) => {
    const endpoint = req.params.endpoint as string;
    const allowed = Object.hasOwn(METHODS, endpoint) ? METHODS[endpoint] : undefined;
    if (!allowed) return next();
    inFlight.track(handle(req, res, endpoint, allowed)).then((handled) => { if (!handled) next(); }).catch((e) => {
      if (!(e instanceof OAuthError)) return next(e);
      if (PAGES.has(endpoint)) {
        noStore(res);
        res.status(e.status).type('html').send(errorPage('Invalid request', e.message));
      } else {
        sendOAuthError(req, res, e);
      }
    });
  });

  async function handle(req: Request, res: Response, endpoint: string, allowed: string[]): Promise<boolean> {
    const a = await ctxFor(req, res);
    if (!a) return false;
    requestInfo(res).interaction = endpoint; // 'token', 'authorize', 'introspect', ...
    if (PAGES.has(endpoint)) await pageHeaders(a, endpoint);
    if (!allowed.includes(req.method)) {
      res.set('Allow', allowed.join(', '));
      throw new OAuthError(405, 'invalid_request', `${req.method} is not allowed on ${endpoint}`);
    }
    switch (endpoint) {
      case 'jwks':
        res.set('Cache-Control', 'max-age=60');
        res.json(await a.ring.jwks());
        return true;
      case 'authorize':
        await authorize(a, req.method === 'POST' ? formParams(req) : queryParams(req));
        return true;
      case 'login':
        await login(a, pageForm(req));
        return true;
      case 'pick':
        await pick(a, pageForm(req));
        return true;
      case 'consent':
        await consent(a, pageForm(req));
        return true;
      case 'token': {
        const body = await tokenRequest(a, formParams(req));
        noStore(res);
        res.json(body);
        return true;
      }
      case 'introspect': {
        const body = await introspect(a, formParams(req));
        noStore(res);
        res.json(body);
        return true;
      }
      case 'revoke':
        await revoke(a, formParams(req));
        noStore(res);
        res.status(200).end();
        return true;
      default:
        return false;
    }
  }

  return router;
}

/** CSP and no framing for a page. Its form posts may end in a redirect to the app (the
 *  consent's answer, or a refusal), and browsers check that redirect against form-action too. */
async function pageHeaders(a: AuthCtx, endpoint: string): Promise<void> {
  a.res.set('Content-Security-Policy', pagePolicy());
  a.res.set('X-Frame-Options', 'DENY');
  const uris = await redirectUris(a, endpoint);
  const sources = [...new Set(uris.map(redirectSource).filter((s) => s !== undefined))];
  if (sources.length) a.res.set('Content-Security-Policy', pagePolicy(sources));
}

/** The app's redirect URIs: those registered for the client at authorize, then the request's own. */
async function redirectUris(a: AuthCtx, endpoint: string): Promise<string[]> {
  if (endpoint === 'authorize') {
    const clientId = (a.req.method === 'POST' ? formParams(a.req) : queryParams(a.req)).get('client_id');
    if (!clientId) return [];
    const client = await inOrg(a, (tx) => findClient(tx, clientId));
    return client && !client.revokedAt ? client.redirectUris : [];
  }
  const requestId = pageForm(a.req).get('request');
  if (!requestId) return [];
  const request = await inOrg(a, (tx) => findRequest<PendingAuthorization>(tx, sha256(requestId)));
  return request ? [request.params.redirectUri] : [];
}
