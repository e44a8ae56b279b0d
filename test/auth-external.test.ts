// External issuer mode: Kiln trusts tokens of another authorization server (Keycloak
// and the like) through its JWKS URL, mapping configured claims to scopes, tenant and
// patient. The issuer here is a local HTTP server publishing a JWKS; tokens are signed
// with jose as that issuer would.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import { startTestServer, removeDataDir, type TestServer } from './support/server.ts';
import { AuthError, mintAdminToken, verifyAccessToken } from '../src/auth/verify.ts';
import { createOrg } from '../src/store/tenants.ts';

const ISSUER = 'https://idp.example/realms/kiln';

let server: TestServer;
let idp: http.Server;
let published: JWK[] = [];
let fetches = 0;
let key1: CryptoKey;

async function newKey(kid: string) {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

async function idpToken(key: CryptoKey, kid: string, claims: Record<string, unknown>, o: { iss?: string; aud?: string | string[]; exp?: string | number } = {}) {
  return new SignJWT({ scope: 'openid patient/Observation.rs', azp: 'kiln-app', kiln: { tenant: 'acme' }, smart_patient: 'p-42', ...claims })
    .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
    .setIssuer(o.iss ?? ISSUER).setAudience(o.aud ?? 'kiln-api').setSubject('user-7')
    .setIssuedAt().setExpirationTime(o.exp ?? '5m').sign(key);
}

const expected = () => ({ audience: `${server.url}/acme`, tenant: 'acme' });

async function refused(token: string, status: 401 | 403, e = expected()) {
  await assert.rejects(verifyAccessToken(`Bearer ${token}`, e), (err: unknown) => err instanceof AuthError && err.status === status);
}

describe('external issuer', () => {
  before(async () => {
    const k = await newKey('idp-1');
    key1 = k.privateKey;
    published = [k.jwk];
    idp = http.createServer((req, res) => {
      if (req.url !== '/realms/kiln/protocol/openid-connect/certs') { res.statusCode = 404; res.end(); return; }
      fetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: published }));
    });
    await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
    Object.assign(process.env, {
      KILN_AUTH_ISSUER: ISSUER,
      KILN_AUTH_JWKS_URL: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/realms/kiln/protocol/openid-connect/certs`,
      KILN_AUTH_AUDIENCE: 'kiln-api',
      KILN_AUTH_TENANT_CLAIM: 'kiln.tenant',
      KILN_AUTH_PATIENT_CLAIM: 'smart_patient',
      KILN_AUTH_CLIENT_ID_CLAIM: 'azp',
    });
    server = await startTestServer();
    await createOrg(server.db.owner, 'acme', 'Acme');
  });
  after(async () => {
    await server.stop();
    idp.close();
    removeDataDir(server.dataDir);
  });

  it('accepts the issuer\'s tokens and maps their claims', async () => {
    const ctx = await verifyAccessToken(`Bearer ${await idpToken(key1, 'idp-1', { fhirUser: `${server.url}/acme/Practitioner/5` })}`, expected());
    assert.equal(ctx.issuer, 'external');
    assert.equal(ctx.tenant, 'acme');
    assert.equal(ctx.clientId, 'kiln-app');
    assert.equal(ctx.subject, 'user-7');
    assert.deepEqual(ctx.scopes, ['openid', 'patient/Observation.rs']);
    assert.equal(ctx.patient, 'p-42');
    assert.equal(ctx.fhirUser, 'Practitioner/5');
    // Scopes as a JSON array and the FHIR base as the audience work too.
    const arr = await verifyAccessToken(`Bearer ${await idpToken(key1, 'idp-1', { scope: ['system/*.rs'] }, { aud: `${server.url}/acme` })}`, expected());
    assert.deepEqual(arr.scopes, ['system/*.rs']);
  });

  it('refuses expired, forged, wrong-audience and wrong-issuer tokens with 401, another tenant with 403', async () => {
    await refused(await idpToken(key1, 'idp-1', {}, { exp: Math.floor(Date.now() / 1000) - 60 }), 401);
    const stranger = await newKey('idp-1');
    await refused(await idpToken(stranger.privateKey, 'idp-1', {}), 401);
    await refused(await idpToken(key1, 'idp-1', {}, { aud: 'some-other-api' }), 401);
    await refused(await idpToken(key1, 'idp-1', {}, { iss: 'https://evil.example/realms/kiln' }), 401);
    await refused(await idpToken(key1, 'idp-1', { kiln: { tenant: 'default' } }), 403);
    await refused(await idpToken(key1, 'idp-1', { kiln: {} }), 401);
  });

  it('picks up a key the issuer adds (key rotation at the IdP)', async () => {
    const k2 = await newKey('idp-2');
    published = [published[0], k2.jwk];
    const before = fetches;
    await new Promise((r) => setTimeout(r, 5_100)); // jose's refetch cooldown
    const ctx = await verifyAccessToken(`Bearer ${await idpToken(k2.privateKey, 'idp-2', {})}`, expected());
    assert.equal(ctx.issuer, 'external');
    assert.ok(fetches > before);
  });

  it('still accepts Kiln\'s own tokens beside the external issuer', async () => {
    const t = await mintAdminToken(server.db, { tenant: 'acme', audience: `${server.url}/acme` });
    assert.equal((await verifyAccessToken(`Bearer ${t.accessToken}`, expected())).issuer, 'kiln');
  });
});
