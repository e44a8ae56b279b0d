// The resource server's side of SMART: turn an Authorization header into an
// AccessContext, or an AuthError with the status and WWW-Authenticate to send (RFC 6750).
// Kiln's own tokens are checked against its signing keys; tokens whose `iss` is the
// configured external issuer (KILN_AUTH_ISSUER) against that issuer's JWKS.
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload } from 'jose';
import { liveKeyRings, MAX_TOKEN_SECONDS, TOKEN_ALG, type LoadedKey } from './keys.ts';
import { sha256 } from './secrets.ts';
import { ACCESS_TOKEN_TYP } from './tokens.ts';
import type { ExternalIssuer } from './settings.ts';
import { loopbackSpot, relativeFhirUser } from './urls.ts';

export { mintAdminToken, type AdminTokenOptions } from './tokens.ts';

export interface AccessContext {
  clientId: string;
  subject: string;
  scopes: string[];
  /** Tenant (organization) slug the token is bound to. */
  tenant: string;
  /** Patient id of the launch context (patient/ scopes act on its compartment). */
  patient?: string;
  /** The user's FHIR resource: `Type/id` when it lies on this server, else the URL as given. */
  fhirUser?: string;
  issuer: 'kiln' | 'external';
  /** Seconds since the epoch (the token's exp). */
  expiresAt: number;
  /** The token's id (RFC 7519 jti): what per-token revocation names. */
  jti?: string;
}

export type BearerErrorCode = 'invalid_request' | 'invalid_token' | 'insufficient_scope';

const REALM = 'kiln';
const quote = (s: string) => s.replace(/["\\]/g, "'");

export class AuthError extends Error {
  readonly status: 401 | 403;
  /** The RFC 6750 error code; absent when the request carried no token at all. */
  readonly error?: BearerErrorCode;
  readonly wwwAuthenticate: string;
  constructor(status: 401 | 403, description: string, error?: BearerErrorCode) {
    super(description);
    this.status = status;
    this.error = error;
    this.wwwAuthenticate = error
      ? `Bearer realm="${REALM}", error="${error}", error_description="${quote(description)}"`
      : `Bearer realm="${REALM}"`;
  }
}

const invalidToken = (description: string) => new AuthError(401, description, 'invalid_token');

let external: { settings: ExternalIssuer; jwks: ReturnType<typeof createRemoteJWKSet> } | undefined;

/** Trust tokens of another issuer too (called with config.auth.external at start). */
export function configureExternalIssuer(settings: ExternalIssuer | undefined): void {
  if (settings?.issuer === external?.settings.issuer && settings?.jwksUrl === external?.settings.jwksUrl) return;
  external = settings ? { settings, jwks: createRemoteJWKSet(new URL(settings.jwksUrl), { cooldownDuration: 5_000 }) } : undefined;
}

const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;

function bearerToken(header: string | undefined): string {
  if (header === undefined || header.trim() === '') throw new AuthError(401, 'An access token is required');
  const m = BEARER.exec(header);
  if (!m) throw new AuthError(401, 'The Authorization header must be "Bearer <token>"', 'invalid_request');
  return m[1];
}

export async function verifyAccessToken(authorizationHeader: string | undefined, expected: { audience: string; tenant: string }): Promise<AccessContext> {
  const token = bearerToken(authorizationHeader);
  const cacheKey = tokenCache.enabled ? sha256(token) : '';
  const hit = tokenCache.enabled ? tokenCache.get(cacheKey) : undefined;
  if (hit) return admit(hit, expected);
  let header: ReturnType<typeof decodeProtectedHeader>;
  let unverified: JWTPayload;
  try {
    header = decodeProtectedHeader(token);
    unverified = decodeJwt(token);
  } catch {
    throw invalidToken('The access token is not a signed JWT');
  }
  if (external && unverified.iss === external.settings.issuer) return verifyExternal(token, expected, external.settings, external.jwks);
  const verified = await verifyKiln(token, header);
  if (tokenCache.enabled) tokenCache.set(cacheKey, verified);
  return admit(verified, expected);
}

/** A Kiln token whose signature and lifetime were checked; what it may be used for is checked at each use. */
interface VerifiedToken {
  context: AccessContext & { jti: string };
  issuer: string;
  audiences: string[];
  /** Seconds since the epoch after which the token is refused (its exp, or iat + the longest lifetime). */
  usableUntil: number;
}

/**
 * Kiln tokens verified lately, by SHA-256 of the token: a hit skips the RS256 signature
 * check (the bulk of a read's authentication cost). Bounded (the oldest entry goes
 * first) and never past a token's expiry; tenant, audience and revocation are checked on
 * every use by admit(). External tokens are not cached: their keys are the issuer's.
 */
class TokenCache {
  enabled = true;
  private readonly entries = new Map<string, VerifiedToken>();
  constructor(readonly capacity: number) {}

  get(key: string): VerifiedToken | undefined {
    const v = this.entries.get(key);
    if (v && v.usableUntil <= Date.now() / 1000) {
      this.entries.delete(key);
      return undefined;
    }
    return v;
  }

  set(key: string, v: VerifiedToken): void {
    if (this.entries.size >= this.capacity) this.entries.delete(this.entries.keys().next().value!);
    // Shared by every request with this token: frozen, so none can change it for the others.
    Object.freeze(v.context.scopes);
    Object.freeze(v.context);
    this.entries.set(key, v);
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}

export const TOKEN_CACHE_SIZE = 10_000;
const tokenCache = new TokenCache(TOKEN_CACHE_SIZE);

/** KILN_TOKEN_CACHE=off turns the verified-token cache off (benchmarks compare both). */
export function configureTokenCache(enabled: boolean): void {
  if (enabled === tokenCache.enabled) return;
  tokenCache.enabled = enabled;
  tokenCache.clear();
}

/** Entries in the verified-token cache (tests). */
export const tokenCacheSize = () => tokenCache.size;

/** Ports this process listens on without BASE_URL (counted: servers in one process may share none or one). */
const loopbackPorts = new Map<number, number>();

/**
 * Without BASE_URL a base is named by the request's Host, so `kiln auth token` (for
 * http://localhost:PORT/fhir) would be refused at http://127.0.0.1:PORT/fhir: on these
 * ports Kiln's own tokens for one loopback name are good at the others. Returns the undo.
 */
export function acceptLoopbackAudiences(port: number): () => void {
  loopbackPorts.set(port, (loopbackPorts.get(port) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (loopbackPorts.get(port) ?? 1) - 1;
    if (n > 0) loopbackPorts.set(port, n); else loopbackPorts.delete(port);
  };
}

/** The token's base (audience or issuer) names the expected one: the same URL, or another loopback name for it. */
function sameBase(tokenBase: string, expected: string): boolean {
  if (tokenBase === expected) return true;
  const a = loopbackSpot(tokenBase);
  const b = loopbackSpot(expected);
  return !!a && !!b && a.port === b.port && a.path === b.path && loopbackPorts.has(a.port);
}

/** The checks of a verified token against this request, and against revocations since it was verified. */
async function admit(v: VerifiedToken, expected: { audience: string; tenant: string }): Promise<AccessContext> {
  // A genuine, live token of another tenant is forbidden rather than unauthenticated.
  if (v.context.tenant !== expected.tenant) throw new AuthError(403, `The access token is bound to another tenant than '${expected.tenant}'`, 'insufficient_scope');
  if (!v.audiences.some((a) => sameBase(a, expected.audience))) throw invalidToken(`The access token's audience is not ${expected.audience}`);
  if (!sameBase(v.issuer, expected.audience)) throw invalidToken('The access token has another issuer');
  for (const ring of liveKeyRings()) {
    const revoked = await ring.revocations().catch(() => undefined);
    if (revoked?.clients.has(v.context.clientId)) throw invalidToken('The client of this access token was revoked');
    if (revoked?.tokens.has(v.context.jti)) throw invalidToken('The access token was revoked');
    // A user's tokens name the user as subject; a backend client's name the client.
    if (v.context.subject !== v.context.clientId && revoked?.users.has(`${v.context.tenant}|${v.context.subject}`)) {
      throw invalidToken('The user of this access token is disabled');
    }
  }
  return v.context;
}

async function findKey(kid: string): Promise<LoadedKey | undefined> {
  for (const ring of liveKeyRings()) {
    try {
      const key = await ring.find(kid);
      if (key) return key;
    } catch {
      // a ring whose database just closed (a stopped test server): try the others
    }
  }
  return undefined;
}

function verifyFailure(e: unknown): AuthError {
  if (e instanceof errors.JWTExpired) return invalidToken('The access token expired');
  if (e instanceof errors.JWTClaimValidationFailed) return invalidToken(`The access token's ${e.claim} claim is invalid: ${e.reason}`);
  if (e instanceof errors.JOSEError) return invalidToken(`The access token is invalid (${e.code})`);
  return invalidToken('The access token could not be verified');
}

function audiences(payload: JWTPayload): string[] {
  return Array.isArray(payload.aud) ? payload.aud : typeof payload.aud === 'string' ? [payload.aud] : [];
}

async function verifyKiln(token: string, header: ReturnType<typeof decodeProtectedHeader>): Promise<VerifiedToken> {
  // Only Kiln's own algorithm: refuses alg "none", HS256 key confusion and the like up front.
  if (header.alg !== TOKEN_ALG) throw invalidToken(`The access token's algorithm ${String(header.alg)} is not accepted`);
  if (typeof header.kid !== 'string') throw invalidToken('The access token names no key (kid)');
  const key = await findKey(header.kid);
  if (!key) throw invalidToken('The access token is not signed by this server');
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, key.publicKey, {
      algorithms: [TOKEN_ALG], typ: ACCESS_TOKEN_TYP, clockTolerance: 5, maxTokenAge: MAX_TOKEN_SECONDS,
      requiredClaims: ['iss', 'aud', 'sub', 'exp', 'iat', 'jti', 'tenant', 'client_id', 'scope'],
    }));
  } catch (e) {
    throw verifyFailure(e);
  }
  return {
    context: {
      clientId: String(payload.client_id),
      subject: String(payload.sub),
      scopes: String(payload.scope).split(' ').filter(Boolean),
      tenant: String(payload.tenant),
      ...(typeof payload.patient === 'string' ? { patient: payload.patient } : {}),
      // Relative to the issuer, which admit() requires to be the request's base.
      ...(typeof payload.fhirUser === 'string' ? { fhirUser: relativeFhirUser(String(payload.iss), payload.fhirUser) } : {}),
      issuer: 'kiln',
      expiresAt: payload.exp!,
      jti: String(payload.jti),
    },
    issuer: String(payload.iss),
    audiences: audiences(payload),
    usableUntil: Math.min(payload.exp!, payload.iat! + MAX_TOKEN_SECONDS),
  };
}

/** A claim by name; a dotted name walks into objects (Keycloak: `realm_access.roles`). */
export function claimAt(payload: Record<string, unknown>, name: string): unknown {
  if (name in payload) return payload[name];
  let v: unknown = payload;
  for (const part of name.split('.')) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

function scopeList(v: unknown): string[] {
  if (typeof v === 'string') return v.split(' ').filter(Boolean);
  if (Array.isArray(v)) return v.filter((s): s is string => typeof s === 'string');
  return [];
}

async function verifyExternal(token: string, expected: { audience: string; tenant: string }, ext: ExternalIssuer, jwks: ReturnType<typeof createRemoteJWKSet>): Promise<AccessContext> {
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, jwks, { issuer: ext.issuer, algorithms: ext.algorithms, clockTolerance: 5, requiredClaims: ['exp'] }));
  } catch (e) {
    if (e instanceof errors.JWKSTimeout || e instanceof errors.JWKSInvalid) throw invalidToken("The external issuer's keys could not be fetched");
    throw verifyFailure(e);
  }
  const tenant = claimAt(payload, ext.tenantClaim) ?? ext.defaultTenant;
  if (typeof tenant !== 'string' || tenant === '') throw invalidToken(`The access token carries no tenant (claim ${ext.tenantClaim})`);
  if (tenant !== expected.tenant) throw new AuthError(403, `The access token is bound to another tenant than '${expected.tenant}'`, 'insufficient_scope');
  const aud = audiences(payload);
  if (!aud.includes(expected.audience) && !aud.some((a) => ext.audiences.includes(a))) throw invalidToken(`The access token's audience is not ${expected.audience}`);
  const clientId = claimAt(payload, ext.clientIdClaim) ?? payload.azp ?? payload.sub;
  if (typeof clientId !== 'string') throw invalidToken('The access token names no client');
  const patient = claimAt(payload, ext.patientClaim);
  const fhirUser = claimAt(payload, ext.fhirUserClaim);
  return {
    clientId,
    subject: typeof payload.sub === 'string' ? payload.sub : clientId,
    scopes: scopeList(claimAt(payload, ext.scopeClaim)),
    tenant,
    ...(typeof patient === 'string' && patient ? { patient } : {}),
    ...(typeof fhirUser === 'string' && fhirUser ? { fhirUser: relativeFhirUser(expected.audience, fhirUser) } : {}),
    issuer: 'external',
    expiresAt: payload.exp!,
    ...(typeof payload.jti === 'string' ? { jti: payload.jti } : {}),
  };
}
