// verifyAccessToken, the contract the resource server calls on every request: Kiln's own
// tokens (minted by the real server's keys) accepted, and every way a token can be bad
// refused with the right status and WWW-Authenticate.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPair, SignJWT, UnsecuredJWT, decodeProtectedHeader, decodeJwt, importJWK } from 'jose';
import { startTestServer, removeDataDir, type TestServer } from './support/server.ts';
import { AuthError, mintAdminToken, verifyAccessToken } from '../src/auth/verify.ts';
import { createOrg } from '../src/store/tenants.ts';
import { keyRingFor } from '../src/auth/keys.ts';

let server: TestServer;
let acmeBase: string;

async function rejects(header: string | undefined, status: 401 | 403, expected = { audience: server.url, tenant: 'default' }, error?: string) {
  await assert.rejects(verifyAccessToken(header, expected), (e: unknown) => {
    assert.ok(e instanceof AuthError, String(e));
    assert.equal(e.status, status, e.message);
    assert.match(e.wwwAuthenticate, /^Bearer realm="kiln"/);
    if (error) assert.match(e.wwwAuthenticate, new RegExp(`error="${error}"`));
    return true;
  });
}

describe('verifyAccessToken', () => {
  before(async () => {
    server = await startTestServer();
    await createOrg(server.db.owner, 'acme', 'Acme');
    acmeBase = `${server.url}/acme`;
    // The server generated its signing key at start and publishes it.
    const jwks = await (await fetch(`${server.url}/auth/jwks`)).json();
    assert.equal(jwks.keys.length, 1);
  });
  after(async () => {
    await server.stop();
    removeDataDir(server.dataDir);
  });

  it('accepts an admin token and maps its claims into an AccessContext', async () => {
    const t = await mintAdminToken(server.db, { tenant: 'default', audience: server.url, scopes: ['patient/Observation.rs', 'launch/patient'], patient: 'p1', fhirUser: 'Practitioner/9', minutes: 5 });
    const ctx = await verifyAccessToken(`Bearer ${t.accessToken}`, { audience: server.url, tenant: 'default' });
    assert.deepEqual(ctx.scopes, ['patient/Observation.rs', 'launch/patient']);
    assert.equal(ctx.clientId, 'kiln-cli');
    assert.equal(ctx.subject, 'admin');
    assert.equal(ctx.tenant, 'default');
    assert.equal(ctx.patient, 'p1');
    assert.equal(ctx.fhirUser, 'Practitioner/9');
    assert.equal(ctx.issuer, 'kiln');
    assert.ok(Math.abs(ctx.expiresAt - (Date.now() / 1000 + 300)) < 10);
    const header = decodeProtectedHeader(t.accessToken);
    assert.equal(header.typ, 'at+jwt');
    const claims = decodeJwt(t.accessToken);
    assert.equal(claims.iss, server.url);
    assert.equal(claims.aud, server.url);
    assert.ok(claims.jti && claims.iat);
    // Lowercase scheme is fine (RFC 6750 schemes are case-insensitive).
    assert.equal((await verifyAccessToken(`bearer ${t.accessToken}`, { audience: server.url, tenant: 'default' })).tenant, 'default');
  });

  it('keeps private keys from the request role: kiln_app cannot read auth_signing_keys', async () => {
    await assert.rejects(server.db.app.query('SELECT private_jwk FROM auth_signing_keys'), /permission denied/);
    const { rows } = await server.db.owner.query('SELECT count(*)::int AS n FROM auth_signing_keys WHERE retired_at IS NULL');
    assert.equal(rows[0].n, 1);
  });

  it('refuses a missing or malformed header with 401', async () => {
    await assert.rejects(verifyAccessToken(undefined, { audience: server.url, tenant: 'default' }), (e: AuthError) => e.status === 401 && e.wwwAuthenticate === 'Bearer realm="kiln"');
    await rejects('Basic abc', 401, undefined, 'invalid_request');
    await rejects('Bearer not-a-jwt', 401, undefined, 'invalid_token');
  });

  it('refuses an expired token', async () => {
    const ring = keyRingFor(server.db.owner);
    const key = await ring.signingKey();
    const now = Math.floor(Date.now() / 1000);
    const expired = await new SignJWT({ scope: 'system/*.rs', client_id: 'x', tenant: 'default' })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'at+jwt' })
      .setIssuer(server.url).setAudience(server.url).setSubject('x').setJti('j1')
      .setIssuedAt(now - 600).setExpirationTime(now - 60).sign(key.privateKey);
    await rejects(`Bearer ${expired}`, 401, undefined, 'invalid_token');
  });

  it('refuses a token signed by another key (forged), even with Kiln\'s kid', async () => {
    const ring = keyRingFor(server.db.owner);
    const kid = (await ring.signingKey()).kid;
    const { privateKey } = await generateKeyPair('RS256');
    const forged = await new SignJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default' })
      .setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
      .setIssuer(server.url).setAudience(server.url).setSubject('x').setJti('j2').setIssuedAt().setExpirationTime('5m').sign(privateKey);
    await rejects(`Bearer ${forged}`, 401, undefined, 'invalid_token');
    // A flipped payload byte under a genuine signature.
    const real = (await mintAdminToken(server.db, { tenant: 'default', audience: server.url })).accessToken;
    const [h, p, s] = real.split('.');
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
    payload.tenant = 'acme';
    await rejects(`Bearer ${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`, 401, { audience: acmeBase, tenant: 'acme' });
  });

  it('refuses alg none and HS256 signed with the public key', async () => {
    const unsecured = new UnsecuredJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default' })
      .setIssuer(server.url).setAudience(server.url).setSubject('x').setJti('j3').setIssuedAt().setExpirationTime('5m').encode();
    await rejects(`Bearer ${unsecured}`, 401, undefined, 'invalid_token');
    const ring = keyRingFor(server.db.owner);
    const key = await ring.signingKey();
    const secret = new TextEncoder().encode(JSON.stringify(key.publicJwk));
    const hs = await new SignJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default' })
      .setProtectedHeader({ alg: 'HS256', kid: key.kid, typ: 'at+jwt' })
      .setIssuer(server.url).setAudience(server.url).setSubject('x').setJti('j4').setIssuedAt().setExpirationTime('5m').sign(secret);
    await rejects(`Bearer ${hs}`, 401, undefined, 'invalid_token');
  });

  it('refuses a token for another audience, and another tenant\'s token with 403', async () => {
    const other = await mintAdminToken(server.db, { tenant: 'default', audience: 'http://elsewhere.example/fhir' });
    await rejects(`Bearer ${other.accessToken}`, 401, undefined, 'invalid_token');
    const acme = await mintAdminToken(server.db, { tenant: 'acme', audience: acmeBase });
    assert.equal((await verifyAccessToken(`Bearer ${acme.accessToken}`, { audience: acmeBase, tenant: 'acme' })).tenant, 'acme');
    await rejects(`Bearer ${acme.accessToken}`, 403, { audience: server.url, tenant: 'default' }, 'insufficient_scope');
  });

  it('refuses an id_token-like JWT (wrong typ) even when signed by Kiln', async () => {
    const ring = keyRingFor(server.db.owner);
    const key = await ring.signingKey();
    const idLike = await new SignJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default' })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
      .setIssuer(server.url).setAudience(server.url).setSubject('x').setJti('j5').setIssuedAt().setExpirationTime('5m').sign(key.privateKey);
    await rejects(`Bearer ${idLike}`, 401);
  });

  it('kiln auth token prints a token the server accepts', async () => {
    const out = execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', 'token', '--tenant', 'acme', '--scope', 'system/Patient.rs', '--minutes', '2', '--aud', acmeBase], {
      env: { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort) }, encoding: 'utf8',
    });
    const token = out.trim().split('\n').at(-1)!;
    const ctx = await verifyAccessToken(`Bearer ${token}`, { audience: acmeBase, tenant: 'acme' });
    assert.deepEqual(ctx.scopes, ['system/Patient.rs']);
    assert.ok(ctx.expiresAt - Date.now() / 1000 <= 120);
  });

  it('keeps accepting tokens of a rotated-out key, and signs with the new one', async () => {
    const before = await mintAdminToken(server.db, { tenant: 'default', audience: server.url });
    const oldKid = decodeProtectedHeader(before.accessToken).kid;
    execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', 'rotate-keys'], {
      env: { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort) }, encoding: 'utf8',
    });
    // The running server learns of the new key when a token names it.
    const ring = keyRingFor(server.db.owner);
    const fresh = await mintAdminToken(server.db, { tenant: 'default', audience: server.url });
    const jwks = await (await fetch(`${server.url}/auth/jwks`)).json();
    const kids = jwks.keys.map((k: { kid: string }) => k.kid);
    assert.ok(kids.includes(oldKid), 'the retired key is still published');
    assert.equal((await verifyAccessToken(`Bearer ${before.accessToken}`, { audience: server.url, tenant: 'default' })).tenant, 'default');
    await ring.keys(0); // what the server does within a minute anyway
    const after = await mintAdminToken(server.db, { tenant: 'default', audience: server.url });
    assert.notEqual(decodeProtectedHeader(after.accessToken).kid, oldKid);
    assert.ok(kids.length === 2 || (await (await fetch(`${server.url}/auth/jwks`)).json()).keys.length === 2);
    await verifyAccessToken(`Bearer ${after.accessToken}`, { audience: server.url, tenant: 'default' });
    await verifyAccessToken(`Bearer ${fresh.accessToken}`, { audience: server.url, tenant: 'default' });
    // Public JWKS entries carry no private parts.
    for (const k of jwks.keys) {
      assert.equal(k.d, undefined);
      await importJWK(k, 'RS256');
    }
  });
});
