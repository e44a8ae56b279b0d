// JWTs Kiln signs: access tokens (RFC 9068 `at+jwt`, iss = aud = the tenant's FHIR
// base) and OpenID Connect id_tokens; and admin tokens for local use.
import crypto from 'node:crypto';
import { SignJWT } from 'jose';
import type { Database } from '../store/database.ts';
import { loadConfig } from '../config.ts';
import { findOrg } from '../store/tenants.ts';
import { keyRingFor, MAX_TOKEN_SECONDS, type KeyRing } from './keys.ts';
import { tenantBase } from './urls.ts';

export const ACCESS_TOKEN_TYP = 'at+jwt';

export interface AccessGrant {
  tenant: string;
  /** The tenant's FHIR base URL: the token's audience and issuer. */
  audience: string;
  clientId: string;
  subject: string;
  scopes: string[];
  patient?: string;
  encounter?: string;
  /** Absolute URL of the user's FHIR resource, e.g. https://host/fhir/Practitioner/1 */
  fhirUser?: string;
}

export interface SignedToken {
  token: string;
  /** Seconds since the epoch (JWT exp). */
  expiresAt: number;
  jti: string;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

export async function signAccessToken(ring: KeyRing, grant: AccessGrant, seconds: number): Promise<SignedToken> {
  const key = await ring.signingKey();
  const iat = nowSeconds();
  const expiresAt = iat + Math.min(Math.max(1, Math.floor(seconds)), MAX_TOKEN_SECONDS);
  const jti = crypto.randomUUID();
  const token = await new SignJWT({
    scope: grant.scopes.join(' '),
    client_id: grant.clientId,
    tenant: grant.tenant,
    ...(grant.patient ? { patient: grant.patient } : {}),
    ...(grant.encounter ? { encounter: grant.encounter } : {}),
    ...(grant.fhirUser ? { fhirUser: grant.fhirUser } : {}),
  })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: ACCESS_TOKEN_TYP })
    .setIssuer(grant.audience)
    .setAudience(grant.audience)
    .setSubject(grant.subject)
    .setIssuedAt(iat)
    .setExpirationTime(expiresAt)
    .setJti(jti)
    .sign(key.privateKey);
  return { token, expiresAt, jti };
}

export async function signIdToken(ring: KeyRing, c: { issuer: string; clientId: string; subject: string; fhirUser?: string; nonce?: string; seconds: number }): Promise<string> {
  const key = await ring.signingKey();
  const iat = nowSeconds();
  return new SignJWT({ ...(c.fhirUser ? { fhirUser: c.fhirUser } : {}), ...(c.nonce ? { nonce: c.nonce } : {}), auth_time: iat })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setIssuer(c.issuer)
    .setAudience(c.clientId)
    .setSubject(c.subject)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.min(c.seconds, MAX_TOKEN_SECONDS))
    .sign(key.privateKey);
}

export interface AdminTokenOptions {
  /** Tenant slug ('default' for /fhir). */
  tenant: string;
  /** The FHIR base the token is for; default BASE_URL (or http://localhost:$PORT/fhir) plus the tenant. */
  audience?: string;
  /** Default: ['system/*.cruds'] (every interaction on every type). */
  scopes?: string[];
  /** Lifetime, default 15, at most 1440. */
  minutes?: number;
  patient?: string;
  /** Relative (Practitioner/1) or absolute; made absolute against the audience. */
  fhirUser?: string;
  /** Default 'admin'. */
  subject?: string;
}

export const ADMIN_CLIENT_ID = 'kiln-cli';

/** A short-lived token for local use (kiln auth token), signed with the server's key. */
export async function mintAdminToken(db: Database, opts: AdminTokenOptions): Promise<{ accessToken: string; expiresAt: number; audience: string; scope: string }> {
  if (!await findOrg(db.owner, opts.tenant)) throw new Error(`unknown tenant '${opts.tenant}'`);
  const minutes = opts.minutes ?? 15;
  if (!(minutes > 0 && minutes <= MAX_TOKEN_SECONDS / 60)) throw new Error(`minutes must be between 1 and ${MAX_TOKEN_SECONDS / 60}`);
  const config = loadConfig();
  const audience = opts.audience ?? tenantBase(config.baseUrl ?? `http://localhost:${config.port}/fhir`, opts.tenant);
  const scopes = opts.scopes?.length ? opts.scopes : ['system/*.cruds'];
  const fhirUser = opts.fhirUser && !/^https?:/.test(opts.fhirUser) ? `${audience}/${opts.fhirUser}` : opts.fhirUser;
  const signed = await signAccessToken(keyRingFor(db.owner), {
    tenant: opts.tenant, audience, clientId: ADMIN_CLIENT_ID, subject: opts.subject ?? 'admin', scopes,
    patient: opts.patient, fhirUser,
  }, minutes * 60);
  return { accessToken: signed.token, expiresAt: signed.expiresAt, audience, scope: scopes.join(' ') };
}
