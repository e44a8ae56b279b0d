// SMART discovery and Backend Services (client_credentials with a signed client
// assertion), client_secret_basic, introspection and client revocation, over real HTTP.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, UnsecuredJWT, decodeJwt, type JWK } from 'jose';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';
import { verifyAccessToken } from '../src/auth/verify.ts';
import { smartSecurityExtension } from '../src/auth/discovery.ts';

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// The ES384 client's JWKS is served over plain http from this process: allowed for development only.
process.env.KILN_AUTH_ALLOW_HTTP_JWKS = 'on';

let server: TestServer;
let tokenUrl: string;
let jwksServer: http.Server;
let tmp: string;

function kiln(...args: string[]): string {
  return execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', ...args], {
    env: { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort), KILN_AUTH_PASSWORD: 'correct horse battery' },
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  });
}

const clientIdOf = (out: string) => /client_id: (\S+)/.exec(out)![1];

interface Signer { key: CryptoKey; alg: 'RS384' | 'ES384'; kid: string; publicJwk: JWK }

async function signer(alg: 'RS384' | 'ES384', kid: string): Promise<Signer> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { key: privateKey, alg, kid, publicJwk: { ...(await exportJWK(publicKey)), kid, alg } };
}

let jtiCounter = 0;
async function assertion(s: Signer, clientId: string, o: { aud?: string; exp?: number; iss?: string; sub?: string; jti?: string; header?: Record<string, unknown> } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: s.alg, kid: s.kid, typ: 'JWT', ...o.header })
    .setIssuer(o.iss ?? clientId).setSubject(o.sub ?? clientId).setAudience(o.aud ?? tokenUrl)
    .setExpirationTime(o.exp ?? now + 240).setJti(o.jti ?? `jti-${++jtiCounter}-${Date.now()}`)
    .sign(s.key);
}

async function token(form: Record<string, string>, headers: Record<string, string> = {}, url = tokenUrl) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers }, body: new URLSearchParams(form) });
  return { status: res.status, headers: res.headers, json: await res.json().catch(() => undefined) as any };
}

const backend = (clientAssertion: string, scope = 'system/*.rs') =>
  token({ grant_type: 'client_credentials', scope, client_assertion_type: JWT_BEARER, client_assertion: clientAssertion });

let rsa: Signer;
let ec: Signer;
let rsaClient: string;
let ecClient: string;
let secretClient: string;
let secret: string;

describe('SMART discovery and Backend Services', () => {
  before(async () => {
    server = await startTestServer();
    await createOrg(server.db.owner, 'acme', 'Acme');
    tokenUrl = `${server.url}/auth/token`;
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-auth-'));
    rsa = await signer('RS384', 'rsa-1');
    ec = await signer('ES384', 'ec-1');
    // The ES384 client's keys are served from a JWKS URL, like a real Backend Services client.
    jwksServer = http.createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [ec.publicJwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
    const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    fs.writeFileSync(path.join(tmp, 'rsa.json'), JSON.stringify({ keys: [rsa.publicJwk] }));
    rsaClient = clientIdOf(kiln('client', 'add', '--tenant', 'default', '--name', 'Bulk RSA', '--jwks', path.join(tmp, 'rsa.json'), '--scope', 'system/*.rs system/Patient.cruds'));
    ecClient = clientIdOf(kiln('client', 'add', '--tenant', 'default', '--name', 'Bulk EC', '--jwks', jwksUrl, '--scope', 'system/Observation.rs'));
    // A JWKS URL the token endpoint would refuse is refused at registration (http off loopback, even for development).
    assert.throws(() => kiln('client', 'add', '--tenant', 'default', '--name', 'Plain', '--jwks', 'http://jwks.example.org/keys', '--scope', 'system/*.rs'), /must use https/);
    const out = kiln('client', 'add', '--tenant', 'default', '--name', 'Secret service', '--secret', '--scope', 'system/*.read');
    secretClient = clientIdOf(out);
    secret = /client_secret: (\S+)/.exec(out)![1];
  });
  after(async () => {
    await server.stop();
    jwksServer.close();
    removeDataDir(server.dataDir);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('publishes .well-known/smart-configuration for the default tenant and per tenant', async () => {
    for (const base of [server.url, `${server.url}/acme`]) {
      const res = await fetch(`${base}/.well-known/smart-configuration`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('access-control-allow-origin'), '*');
      const c = await res.json();
      assert.equal(c.issuer, base);
      assert.equal(c.jwks_uri, `${base}/auth/jwks`);
      assert.equal(c.authorization_endpoint, `${base}/auth/authorize`);
      assert.equal(c.token_endpoint, `${base}/auth/token`);
      assert.equal(c.introspection_endpoint, `${base}/auth/introspect`);
      assert.deepEqual(c.grant_types_supported, ['authorization_code', 'client_credentials', 'refresh_token']);
      assert.deepEqual(c.token_endpoint_auth_methods_supported, ['private_key_jwt', 'client_secret_basic']);
      assert.deepEqual(c.token_endpoint_auth_signing_alg_values_supported, ['RS384', 'ES384']);
      assert.deepEqual(c.code_challenge_methods_supported, ['S256']);
      assert.deepEqual(c.response_types_supported, ['code']);
      assert.ok(c.scopes_supported.includes('system/*.rs') && c.scopes_supported.includes('launch/patient'));
      for (const cap of ['launch-ehr', 'launch-standalone', 'client-public', 'client-confidential-symmetric', 'client-confidential-asymmetric',
        'context-ehr-patient', 'context-standalone-patient', 'permission-patient', 'permission-user', 'permission-v1', 'permission-v2',
        'sso-openid-connect', 'authorize-post']) assert.ok(c.capabilities.includes(cap), cap);
      const oidc = await (await fetch(`${base}/.well-known/openid-configuration`)).json();
      assert.equal(oidc.issuer, base);
      assert.deepEqual(oidc.id_token_signing_alg_values_supported, ['RS256']);
    }
    assert.equal((await fetch(`${server.url}/nosuchtenant/.well-known/smart-configuration`)).status, 404);
    const security = smartSecurityExtension(server.url);
    assert.equal(security.service![0].coding![0].code, 'SMART-on-FHIR');
    const uris = security.extension![0];
    assert.equal(uris.url, 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    assert.deepEqual(uris.extension!.map((e) => [e.url, e.valueUri]).slice(0, 2), [['token', tokenUrl], ['authorize', `${server.url}/auth/authorize`]]);
  });

  it('issues a token for an RS384 assertion checked against the inline JWKS, limited to registered scopes', async () => {
    const res = await backend(await assertion(rsa, rsaClient), 'system/Patient.rs system/Observation.rs system/Encounter.cruds patient/*.rs');
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.equal(res.json.token_type, 'Bearer');
    assert.ok(res.json.expires_in > 0 && res.json.expires_in <= 300);
    // Encounter.cruds goes beyond system/*.rs; patient/ scopes are not for backend clients.
    assert.equal(res.json.scope, 'system/Patient.rs system/Observation.rs');
    const ctx = await verifyAccessToken(`Bearer ${res.json.access_token}`, { audience: server.url, tenant: 'default' });
    assert.equal(ctx.clientId, rsaClient);
    assert.equal(ctx.subject, rsaClient);
    assert.deepEqual(ctx.scopes, ['system/Patient.rs', 'system/Observation.rs']);
    assert.equal(ctx.patient, undefined);
    const read = await fhir(server.url, 'GET', 'Patient?_count=1', undefined, { authorization: `Bearer ${res.json.access_token}` });
    assert.equal(read.status, 200);
  });

  it('issues a token for an ES384 assertion checked against the client\'s JWKS URL', async () => {
    const res = await backend(await assertion(ec, ecClient), 'system/Observation.rs');
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(decodeJwt(res.json.access_token).client_id, ecClient);
    // A jku header other than the registered JWKS URL is refused.
    const jku = await backend(await assertion(ec, ecClient, { header: { jku: 'http://evil.example/jwks' } }), 'system/Observation.rs');
    assert.equal(jku.status, 401);
    assert.equal(jku.json.error, 'invalid_client');
  });

  it('refuses expired, far-future, forged, alg none, wrong-algorithm, wrong-audience and iss != sub assertions', async () => {
    const now = Math.floor(Date.now() / 1000);
    const other = await signer('RS384', 'rsa-1'); // same kid, different key: a forgery
    const { privateKey: rs256 } = await generateKeyPair('RS256');
    const cases: [string, string][] = [
      ['expired', await assertion(rsa, rsaClient, { exp: now - 30 })],
      ['exp more than 5 minutes ahead', await assertion(rsa, rsaClient, { exp: now + 600 })],
      ['forged', await assertion(other, rsaClient)],
      ['alg none', new UnsecuredJWT({}).setIssuer(rsaClient).setSubject(rsaClient).setAudience(tokenUrl).setExpirationTime(now + 60).setJti('none-1').encode()],
      ['RS256', await new SignJWT({}).setProtectedHeader({ alg: 'RS256', kid: 'rsa-1' }).setIssuer(rsaClient).setSubject(rsaClient).setAudience(tokenUrl).setExpirationTime(now + 60).setJti('rs256-1').sign(rs256)],
      ['wrong aud', await assertion(rsa, rsaClient, { aud: `${server.url}/acme/auth/token` })],
      ['iss != sub', await assertion(rsa, rsaClient, { sub: ecClient })],
      ['unknown client', await assertion(rsa, 'no-such-client')],
      ['client of another method', await assertion(rsa, secretClient)],
    ];
    for (const [what, a] of cases) {
      const res = await backend(a);
      assert.equal(res.status, 401, `${what}: ${JSON.stringify(res.json)}`);
      assert.equal(res.json.error, 'invalid_client', what);
      assert.equal(typeof res.json.error_description, 'string');
    }
  });

  it('refuses a replayed jti', async () => {
    const a = await assertion(rsa, rsaClient, { jti: 'once-only' });
    assert.equal((await backend(a)).status, 200);
    const again = await backend(a);
    assert.equal(again.status, 401);
    assert.match(again.json.error_description, /jti/);
    // The same jti in a fresh assertion is a replay too.
    assert.equal((await backend(await assertion(rsa, rsaClient, { jti: 'once-only' }))).status, 401);
  });

  it('answers OAuth errors for bad requests', async () => {
    const noScope = await token({ grant_type: 'client_credentials', client_assertion_type: JWT_BEARER, client_assertion: await assertion(rsa, rsaClient) });
    assert.equal(noScope.status, 400);
    assert.equal(noScope.json.error, 'invalid_scope');
    const notRegistered = await backend(await assertion(rsa, rsaClient), 'system/Encounter.write');
    assert.equal(notRegistered.json.error, 'invalid_scope');
    assert.equal((await token({ grant_type: 'password' })).json.error, 'unsupported_grant_type');
    assert.equal((await token({ scope: 'x' })).json.error, 'invalid_request');
    const json = await fetch(tokenUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(json.status, 400);
    assert.equal((await json.json()).error, 'invalid_request');
    const get = await fetch(tokenUrl);
    assert.equal(get.status, 405);
    // A client of one tenant cannot get a token at another tenant's endpoint.
    const acmeToken = `${server.url}/acme/auth/token`;
    const cross = await token({ grant_type: 'client_credentials', scope: 'system/*.rs', client_assertion_type: JWT_BEARER, client_assertion: await assertion(rsa, rsaClient, { aud: acmeToken }) }, {}, acmeToken);
    assert.equal(cross.status, 401);
  });

  it('authenticates a confidential symmetric client with client_secret_basic', async () => {
    const basic = (id: string, s: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${s}`).toString('base64')}` });
    const ok = await token({ grant_type: 'client_credentials', scope: 'system/Patient.read' }, basic(secretClient, secret));
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.equal(ok.json.scope, 'system/Patient.read');
    const bad = await token({ grant_type: 'client_credentials', scope: 'system/Patient.read' }, basic(secretClient, 'wrong'));
    assert.equal(bad.status, 401);
    assert.equal(bad.json.error, 'invalid_client');
    assert.match(bad.headers.get('www-authenticate') ?? '', /^Basic/);
  });

  it('introspects tokens for an authenticated client (RFC 7662)', async () => {
    const issued = (await backend(await assertion(rsa, rsaClient), 'system/Patient.rs')).json.access_token;
    const introspect = async (tok: string, headers: Record<string, string>) =>
      token({ token: tok }, headers, `${server.url}/auth/introspect`);
    const auth = { authorization: `Basic ${Buffer.from(`${secretClient}:${secret}`).toString('base64')}` };
    const active = await introspect(issued, auth);
    assert.equal(active.status, 200);
    assert.equal(active.json.active, true);
    assert.equal(active.json.scope, 'system/Patient.rs');
    assert.equal(active.json.client_id, rsaClient);
    assert.equal(typeof active.json.exp, 'number');
    assert.equal(active.json.sub, rsaClient);
    assert.deepEqual((await introspect('garbage', auth)).json, { active: false });
    assert.deepEqual((await introspect(`${issued.slice(0, -4)}AAAA`, auth)).json, { active: false });
    // A token of this tenant is not active at another tenant's introspection endpoint.
    const out = kiln('client', 'add', '--tenant', 'acme', '--name', 'acme rs', '--secret', '--scope', 'system/*.rs');
    const acmeAuth = { authorization: `Basic ${Buffer.from(`${clientIdOf(out)}:${/client_secret: (\S+)/.exec(out)![1]}`).toString('base64')}` };
    const acme = await token({ token: issued }, acmeAuth, `${server.url}/acme/auth/introspect`);
    assert.equal(acme.status, 200);
    assert.deepEqual(acme.json, { active: false });
    // ...and the default tenant's client is unknown there.
    assert.equal((await token({ token: issued }, auth, `${server.url}/acme/auth/introspect`)).status, 401);
    const unauth = await introspect(issued, {});
    assert.equal(unauth.status, 401);
    assert.equal(unauth.json.error, 'invalid_client');
  });

  it('a revoked client gets no token and its access tokens stop working', async () => {
    const issued = (await backend(await assertion(rsa, rsaClient), 'system/Patient.rs')).json.access_token;
    assert.ok(await verifyAccessToken(`Bearer ${issued}`, { audience: server.url, tenant: 'default' }));
    const list = kiln('client', 'list', '--tenant', 'default');
    assert.match(list, new RegExp(`${rsaClient}\\tdefault\\tprivate_key_jwt\\tactive`));
    assert.match(kiln('client', 'revoke', rsaClient), /revoked/);
    const refused = await backend(await assertion(rsa, rsaClient));
    assert.equal(refused.status, 401);
    assert.equal(refused.json.error, 'invalid_client');
    await new Promise((r) => setTimeout(r, 5_500)); // the resource server's revocation cache
    await assert.rejects(verifyAccessToken(`Bearer ${issued}`, { audience: server.url, tenant: 'default' }), /revoked/);
  });
});
