// The token endpoint (client_credentials, authorization_code + PKCE, refresh_token),
// token introspection (RFC 7662) and revocation (RFC 7009). The client authenticates
// before the transaction that answers it begins, so no connection waits on a client's
// JWKS URL or on verifying an access token.
import type { Tx } from '../store/resources.ts';
import { consumeCode, findRefreshToken, insertRefreshToken, revokeFamily, useRefreshToken, type GrantContext } from '../store/authFlow.ts';
import type { ClientRow } from '../store/authClients.ts';
import { findUser } from '../store/authUsers.ts';
import { insertRevokedToken } from '../store/authRevocation.ts';
import { inOrg, type AuthCtx } from './context.ts';
import { authenticateClient, confirmClient } from './clientAuth.ts';
import { invalidGrant, invalidRequest, invalidScope, OAuthError, unauthorizedClient } from './oauthError.ts';
import { asPatientScopes, grantScopes, patientUser, splitScope } from './scopeGrant.ts';
import { randomToken, s256, sha256 } from './secrets.ts';
import { signAccessToken, signIdToken } from './tokens.ts';
import { absoluteFhirUser } from './urls.ts';
import { auditGranted, auditRefused, type AuthenticationFacts } from './audit.ts';
import { decodeJwt } from 'jose';
import { verifyAccessToken, type AccessContext } from './verify.ts';

const VERIFIER = /^[A-Za-z0-9\-._~]{43,128}$/;

/** What a token request answers: a body, or an error to send after the transaction commits
 *  (a replayed code or refresh token revokes its family, and that must stick). */
type Answer = { body: Record<string, unknown> } | { error: OAuthError };

type Grant = (a: AuthCtx, tx: Tx, client: ClientRow, params: Map<string, string>) => Promise<Answer>;

export async function tokenRequest(a: AuthCtx, params: Map<string, string>): Promise<Record<string, unknown>> {
  const grantType = params.get('grant_type');
  if (!grantType) throw invalidRequest('grant_type is missing');
  const grant: Grant | undefined = grantType === 'client_credentials' ? clientCredentials
    : grantType === 'authorization_code' ? authorizationCode
    : grantType === 'refresh_token' ? refreshToken : undefined;
  if (!grant) throw new OAuthError(400, 'unsupported_grant_type', `grant_type ${grantType} is not supported`);
  let clientId = params.get('client_id'); // as claimed, until the client is authenticated
  try {
    // Backend Services clients are confidential; the user grants also serve public apps.
    const auth = await authenticateClient(a, params, grantType !== 'client_credentials');
    clientId = auth.client.clientId;
    const answer = await inOrg(a, async (tx) => {
      const result = await grant(a, tx, await confirmClient(tx, auth), params);
      if ('body' in result) await auditGranted(a, tx, 'token', grantedFacts(result.body));
      return result;
    });
    if ('error' in answer) throw answer.error;
    return answer.body;
  } catch (e) {
    if (e instanceof OAuthError) await auditRefused(a, 'token', { status: e.status, reason: `${e.error}: ${e.message}`, agent: { clientId } });
    throw e;
  }
}

/** Who a granted token is for, from its own claims. */
function grantedFacts(body: Record<string, unknown>): AuthenticationFacts {
  const claims = decodeJwt(body.access_token as string);
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return { status: 200, agent: { clientId: str(claims.client_id), subject: str(claims.sub), fhirUser: str(claims.fhirUser) }, patient: str(claims.patient) };
}

async function clientCredentials(a: AuthCtx, _tx: Tx, client: ClientRow, params: Map<string, string>): Promise<Answer> {
  const requested = splitScope(params.get('scope'));
  if (requested.length === 0) throw invalidScope('scope is required (for example system/*.rs)');
  const { granted } = grantScopes(requested, client.scopes, 'backend');
  if (granted.length === 0) throw invalidScope(`None of the requested scopes is registered for client '${client.clientId}'`);
  const seconds = a.config.auth.backendTokenSeconds;
  const signed = await signAccessToken(a.ring, {
    tenant: a.org.slug, audience: a.base, clientId: client.clientId, subject: client.clientId, scopes: granted,
  }, seconds);
  return { body: { access_token: signed.token, token_type: 'Bearer', expires_in: signed.expiresAt - Math.floor(Date.now() / 1000), scope: granted.join(' ') } };
}

/** Access token (and id_token, refresh token) for a user grant. */
async function issueUserTokens(a: AuthCtx, tx: Tx, client: ClientRow, grant: GrantContext & { scopes: string[]; nonce?: string; family: string; refreshExpiresAt?: number }, withIdToken: boolean): Promise<Record<string, unknown>> {
  // Every user token is minted here (code and refresh): a Patient user's acts in their own
  // compartment whatever was granted, also for a refresh token issued before that rule.
  const own = patientUser(grant.fhirUser);
  const g = own ? { ...grant, scopes: asPatientScopes(grant.scopes), patient: own } : grant;
  const fhirUser = absoluteFhirUser(a.base, g.fhirUser);
  const subject = g.username ?? client.clientId;
  const signed = await signAccessToken(a.ring, {
    tenant: a.org.slug, audience: a.base, clientId: client.clientId, subject, scopes: g.scopes,
    patient: g.patient, encounter: g.encounter, fhirUser: g.scopes.includes('fhirUser') ? fhirUser : undefined,
  }, a.config.auth.accessTokenSeconds);
  const body: Record<string, unknown> = {
    access_token: signed.token,
    token_type: 'Bearer',
    expires_in: signed.expiresAt - Math.floor(Date.now() / 1000),
    scope: g.scopes.join(' '),
  };
  if (g.patient) {
    body.patient = g.patient;
    body.need_patient_banner = true;
  }
  if (g.encounter) body.encounter = g.encounter;
  if (withIdToken && g.scopes.includes('openid') && g.username) {
    body.id_token = await signIdToken(a.ring, {
      issuer: a.base, clientId: client.clientId, subject: g.username, nonce: g.nonce, seconds: a.config.auth.accessTokenSeconds,
      fhirUser: g.scopes.includes('fhirUser') ? fhirUser : undefined,
    });
  }
  const offline = g.scopes.includes('offline_access');
  if (offline || g.scopes.includes('online_access')) {
    const refresh = randomToken();
    const now = Math.floor(Date.now() / 1000);
    await insertRefreshToken(tx, {
      tokenHash: sha256(refresh), family: g.family, clientId: client.clientId, scopes: g.scopes,
      username: g.username, fhirUser: g.fhirUser, patient: g.patient, encounter: g.encounter,
      // Offline access slides with use; online access ends when the first token's time is up.
      expiresAt: offline ? now + a.config.auth.offlineRefreshSeconds : g.refreshExpiresAt ?? now + a.config.auth.onlineRefreshSeconds,
    });
    body.refresh_token = refresh;
  }
  return body;
}

async function authorizationCode(a: AuthCtx, tx: Tx, client: ClientRow, params: Map<string, string>): Promise<Answer> {
  const code = params.get('code');
  const redirectUri = params.get('redirect_uri');
  const verifier = params.get('code_verifier');
  if (!code) throw invalidRequest('code is missing');
  if (!redirectUri) throw invalidRequest('redirect_uri is missing');
  if (!verifier) throw invalidRequest('code_verifier is missing: PKCE is required');
  if (!VERIFIER.test(verifier)) throw invalidRequest('code_verifier must be 43-128 characters of [A-Za-z0-9-._~]');
  const codeHash = sha256(code);
  const found = await consumeCode(tx, codeHash);
  if (!found) throw invalidGrant('The authorization code is unknown');
  if (found.status === 'reused') {
    // RFC 6749 4.1.2: a second use revokes what the first one issued.
    await revokeFamily(tx, codeHash);
    return { error: invalidGrant('The authorization code was already used') };
  }
  if (found.status === 'expired') throw invalidGrant('The authorization code expired');
  const c = found.code;
  if (c.clientId !== client.clientId) throw invalidGrant('The authorization code was issued to another client');
  if (c.redirectUri !== redirectUri) throw invalidGrant('redirect_uri does not match the authorization request');
  if (s256(verifier) !== c.codeChallenge) throw invalidGrant('code_verifier does not match the code_challenge');
  return { body: await issueUserTokens(a, tx, client, { ...c, family: codeHash }, true) };
}

async function refreshToken(a: AuthCtx, tx: Tx, client: ClientRow, params: Map<string, string>): Promise<Answer> {
  const presented = params.get('refresh_token');
  if (!presented) throw invalidRequest('refresh_token is missing');
  const row = await useRefreshToken(tx, sha256(presented));
  if (!row || row.clientId !== client.clientId) throw invalidGrant('The refresh token is unknown');
  if (row.status === 'used') {
    // A rotated token presented again: someone holds a copy. End the whole chain.
    await revokeFamily(tx, row.family);
    return { error: invalidGrant('The refresh token was already used; its grant is revoked') };
  }
  if (row.status !== 'ok') throw invalidGrant(`The refresh token is ${row.status}`);
  // `kiln auth user disable` revokes the user's refresh tokens; this also covers a user disabled otherwise.
  if (row.username) {
    const user = await findUser(tx, row.username);
    if (!user || user.disabledAt) throw invalidGrant('The user of this refresh token is disabled');
  }
  let scopes = row.scopes;
  if (params.has('scope')) {
    const asked = splitScope(params.get('scope'));
    const beyond = asked.filter((s) => !row.scopes.includes(s));
    if (beyond.length) throw invalidScope(`Scopes beyond the original grant: ${beyond.join(' ')}`);
    scopes = asked;
  }
  return { body: await issueUserTokens(a, tx, client, { ...row, scopes, family: row.family, refreshExpiresAt: row.expiresAt }, false) };
}

export async function introspect(a: AuthCtx, params: Map<string, string>): Promise<Record<string, unknown>> {
  const token = params.get('token');
  const auth = await authenticateClient(a, params, false);
  if (auth.client.authMethod === 'none') throw unauthorizedClient('Introspection needs a confidential client');
  if (!token) throw invalidRequest('token is missing');
  const isJwt = token.split('.').length === 3;
  const row = await inOrg(a, async (tx) => {
    await confirmClient(tx, auth);
    return isJwt ? undefined : findRefreshToken(tx, sha256(token));
  });
  if (isJwt) {
    try {
      const ctx = await verifyAccessToken(`Bearer ${token}`, { audience: a.base, tenant: a.org.slug });
      return {
        active: true, token_type: 'Bearer', scope: ctx.scopes.join(' '), client_id: ctx.clientId, sub: ctx.subject, exp: ctx.expiresAt,
        iss: ctx.issuer === 'kiln' ? a.base : undefined, aud: a.base, tenant: ctx.tenant, jti: ctx.jti,
        ...(ctx.patient ? { patient: ctx.patient } : {}),
        ...(ctx.fhirUser ? { fhirUser: absoluteFhirUser(a.base, ctx.fhirUser) } : {}),
      };
    } catch {
      return { active: false };
    }
  }
  if (!row || row.status !== 'ok') return { active: false };
  return {
    active: true, token_type: 'refresh_token', scope: row.scopes.join(' '), client_id: row.clientId, sub: row.username ?? row.clientId,
    exp: row.expiresAt, ...(row.patient ? { patient: row.patient } : {}),
  };
}

/**
 * RFC 7009: an access token ends by its jti (every server refuses it within seconds, see
 * keys.ts), a refresh token with its whole chain. Only the client a token was issued to
 * revokes it; unknown, expired or already revoked tokens and tokens of other clients get
 * the same empty 200, so the endpoint tells nothing about them. A JWT is an access token
 * and anything else a refresh token, so token_type_hint is not needed (RFC 7009 2.1).
 */
export async function revoke(a: AuthCtx, params: Map<string, string>): Promise<void> {
  const token = params.get('token');
  const auth = await authenticateClient(a, params, true);
  if (!token) throw invalidRequest('token is missing');
  if (token.split('.').length === 3) {
    const ctx = await verifiedAccessToken(a, token);
    if (ctx && ctx.issuer !== 'kiln') throw new OAuthError(400, 'unsupported_token_type', 'Tokens of the external issuer are revoked at that issuer');
    const revoked = await inOrg(a, async (tx) => {
      const client = await confirmClient(tx, auth);
      if (!ctx || ctx.clientId !== client.clientId || !ctx.jti) return false;
      await insertRevokedToken(tx, { jti: ctx.jti, clientId: ctx.clientId, expiresAt: ctx.expiresAt });
      return true;
    });
    // This server refuses the token at once; the others when they next read revocations.
    if (revoked) a.ring.forgetRevocations();
    return;
  }
  await inOrg(a, async (tx) => {
    const client = await confirmClient(tx, auth);
    const row = await findRefreshToken(tx, sha256(token));
    if (row && row.clientId === client.clientId) await revokeFamily(tx, row.family);
  });
}

/** The access token's claims, or undefined when it does not verify (expired, forged, revoked). */
async function verifiedAccessToken(a: AuthCtx, token: string): Promise<AccessContext | undefined> {
  try {
    return await verifyAccessToken(`Bearer ${token}`, { audience: a.base, tenant: a.org.slug });
  } catch {
    return undefined;
  }
}
