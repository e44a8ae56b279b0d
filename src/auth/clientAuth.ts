// Client authentication at the token, introspection and revocation endpoints:
// private_key_jwt (SMART Backend Services / RFC 7523 assertion, RS384 or ES384, checked
// against the client's registered JWKS), client_secret_basic, or a public client's id.
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { Tx } from '../store/resources.ts';
import { findClient, recordAssertionJti, type ClientRow } from '../store/authClients.ts';
import { inOrg, type AuthCtx } from './context.ts';
import { hasNul, invalidClient, invalidRequest } from './oauthError.ts';
import { sameHash, sha256 } from './secrets.ts';
import { ASSERTION_ALGS } from './discovery.ts';
import { authUrl } from './urls.ts';
import { jwksUrlRefusal, JwksUnavailable, remoteClientKeys } from './clientJwks.ts';

export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** SMART: a client assertion's exp is at most five minutes in the future. */
const MAX_ASSERTION_SECONDS = 300;
const CLOCK_SKEW = 5;
/** Used jtis are a primary key: a longer one could not be indexed. */
const MAX_JTI = 255;

function usable(client: ClientRow | undefined, clientId: string): ClientRow {
  if (!client || client.revokedAt) throw invalidClient(`Unknown or revoked client '${clientId}'`);
  return client;
}

/** client_id and secret of an HTTP Basic header (each form-urlencoded, RFC 6749 2.3.1). */
function basicCredentials(header: string): { id: string; secret: string } {
  let decoded: string;
  try {
    decoded = Buffer.from(header.replace(/^basic\s+/i, ''), 'base64').toString('utf8');
  } catch {
    throw invalidClient('Malformed Basic credentials');
  }
  const colon = decoded.indexOf(':');
  if (colon < 0) throw invalidClient('Malformed Basic credentials');
  let id: string;
  let secret: string;
  try {
    const form = (s: string) => decodeURIComponent(s.replace(/\+/g, ' '));
    id = form(decoded.slice(0, colon));
    secret = form(decoded.slice(colon + 1));
  } catch {
    throw invalidClient('Malformed Basic credentials');
  }
  if (hasNul(id) || hasNul(secret)) throw invalidRequest('The Basic credentials hold a NUL character');
  return { id, secret };
}

export interface AuthenticatedClient {
  client: ClientRow;
  method: 'private_key_jwt' | 'client_secret_basic' | 'none';
  /** The assertion's jti, recorded by confirmClient in the transaction that uses the client. */
  assertion?: { jti: string; exp: number };
}

/**
 * Authenticates the client of a request. A confidential client must authenticate with
 * its registered method; a public client (method none) only names itself, and only
 * where allowPublic (the authorization-code and refresh grants). The client row is read
 * in a transaction of its own: no connection is held while the keys of a client's JWKS
 * URL are fetched. The caller then calls confirmClient in the transaction that uses it.
 */
export async function authenticateClient(a: AuthCtx, params: Map<string, string>, allowPublic: boolean): Promise<AuthenticatedClient> {
  const authorization = a.req.get('authorization');
  const assertionType = params.get('client_assertion_type');
  if (authorization && /^basic /i.test(authorization)) {
    if (assertionType) throw invalidRequest('Use one client authentication method, not two');
    const { id, secret } = basicCredentials(authorization);
    const client = usable(await clientNamed(a, id), id);
    if (client.authMethod !== 'client_secret_basic' || !client.secretHash || !sameHash(sha256(secret), client.secretHash)) {
      throw invalidClient('Client authentication failed');
    }
    if (params.has('client_id') && params.get('client_id') !== id) throw invalidClient('client_id does not match the authenticated client');
    return { client, method: 'client_secret_basic' };
  }
  if (assertionType !== undefined) {
    if (assertionType !== JWT_BEARER) throw invalidClient(`client_assertion_type must be ${JWT_BEARER}`);
    const assertion = params.get('client_assertion');
    if (!assertion) throw invalidClient('client_assertion is missing');
    const verified = await verifyAssertion(a, assertion);
    if (params.has('client_id') && params.get('client_id') !== verified.client.clientId) throw invalidClient('client_id does not match the client assertion');
    return verified;
  }
  const clientId = params.get('client_id');
  if (!clientId) throw invalidClient('Client authentication is required');
  const client = usable(await clientNamed(a, clientId), clientId);
  if (client.authMethod !== 'none') throw invalidClient(`Client '${clientId}' is confidential and must authenticate (${client.authMethod})`);
  if (!allowPublic) throw invalidClient('This endpoint requires an authenticated (confidential) client');
  return { client, method: 'none' };
}

const clientNamed = (a: AuthCtx, clientId: string) => inOrg(a, (tx) => findClient(tx, clientId));

/**
 * In the transaction that issues or answers for the client: the client is still live
 * (it may have been revoked since it authenticated) and an assertion's jti is recorded,
 * so a replay is refused. Returns the client row as it is now.
 */
export async function confirmClient(tx: Tx, auth: AuthenticatedClient): Promise<ClientRow> {
  const client = usable(await findClient(tx, auth.client.clientId), auth.client.clientId);
  if (auth.assertion && !await recordAssertionJti(tx, client.clientId, auth.assertion.jti, auth.assertion.exp)) {
    throw invalidClient('client_assertion jti was already used');
  }
  return client;
}

async function verifyAssertion(a: AuthCtx, assertion: string): Promise<AuthenticatedClient> {
  let header: ReturnType<typeof decodeProtectedHeader>;
  let unverified: JWTPayload;
  try {
    header = decodeProtectedHeader(assertion);
    unverified = decodeJwt(assertion);
  } catch {
    throw invalidClient('client_assertion is not a signed JWT');
  }
  if (typeof header.alg !== 'string' || !ASSERTION_ALGS.includes(header.alg)) {
    throw invalidClient(`client_assertion must be signed with ${ASSERTION_ALGS.join(' or ')}, not ${String(header.alg)}`);
  }
  if (typeof unverified.iss !== 'string') throw invalidClient('client_assertion has no iss');
  if (hasNul(unverified.iss)) throw invalidClient('client_assertion iss holds a NUL character');
  const client = usable(await clientNamed(a, unverified.iss), unverified.iss);
  if (client.authMethod !== 'private_key_jwt') throw invalidClient(`Client '${client.clientId}' is not registered for private_key_jwt`);
  // SMART: a jku header must be the JWKS URL registered for the client.
  if (header.jku !== undefined && header.jku !== client.jwksUri) throw invalidClient('The jku header is not the JWKS URL registered for this client');
  let keys: JWTVerifyGetKey;
  if (client.jwks) {
    keys = createLocalJWKSet(client.jwks);
  } else {
    const refusal = jwksUrlRefusal(client.jwksUri!, a.config.auth.allowHttpJwks);
    if (refusal) throw invalidClient(`The client's JWKS URL ${refusal}`);
    keys = remoteClientKeys(client.jwksUri!);
  }
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(assertion, keys, {
      algorithms: ASSERTION_ALGS, issuer: client.clientId, subject: client.clientId, audience: authUrl(a.base, 'token'),
      clockTolerance: CLOCK_SKEW, requiredClaims: ['iss', 'sub', 'aud', 'exp', 'jti'],
    }));
  } catch (e) {
    if (e instanceof JwksUnavailable) throw invalidClient(`The client's JWKS ${e.message}`);
    if (e instanceof errors.JWTExpired) throw invalidClient('client_assertion expired');
    if (e instanceof errors.JWTClaimValidationFailed) throw invalidClient(`client_assertion ${e.claim} is invalid: ${e.reason}`);
    if (e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWSSignatureVerificationFailed) throw invalidClient('client_assertion signature does not verify with the client\'s registered keys');
    if (e instanceof errors.JOSEError) throw invalidClient(`client_assertion is invalid (${e.code})`);
    throw e;
  }
  const now = Math.floor(Date.now() / 1000);
  if (payload.exp! > now + MAX_ASSERTION_SECONDS + CLOCK_SKEW) throw invalidClient('client_assertion exp is more than five minutes ahead');
  if (typeof payload.jti !== 'string' || payload.jti === '') throw invalidClient('client_assertion has no jti');
  if (hasNul(payload.jti)) throw invalidClient('client_assertion jti holds a NUL character');
  if (payload.jti.length > MAX_JTI) throw invalidClient(`client_assertion jti is longer than ${MAX_JTI} characters`);
  return { client, method: 'private_key_jwt', assertion: { jti: payload.jti, exp: payload.exp! } };
}
