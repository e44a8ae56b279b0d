// Attacks on the authorization server (issue #21), over real HTTP on a real PostgreSQL:
// unauthenticated requests must not starve the connection pool (no connection is held
// across a client's JWKS fetch or a password hash); a client's remote JWKS is fetched over
// https (loopback http only when configured for development), size-limited and cached; a
// NUL byte in any OAuth form field or credential is a 400, never a 500; X-Forwarded-For is
// trusted only when a proxy is configured; the sign-in pages carry a strict CSP.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import { startTestServer, removeDataDir, fhir, bearer, token, freePort, type TestServer } from './support/server.ts';
import { insertClient } from '../src/store/authClients.ts';
import { insertUser } from '../src/store/authUsers.ts';
import { hashPassword, randomToken, sha256 } from '../src/auth/secrets.ts';
import { loadAuthSettings } from '../src/auth/settings.ts';
import { Browser } from './support/browser.ts';

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const PASSWORD = 'correct horse battery';
const APP_REDIRECT = 'https://app.example/callback';

interface Signer { key: CryptoKey; kid: string; publicJwk: JWK }

async function signer(kid: string): Promise<Signer> {
  const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
  return { key: privateKey, kid, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES384' } };
}

async function assertion(srv: TestServer, s: Signer, clientId: string, kid = s.kid): Promise<string> {
  return new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' })
    .setIssuer(clientId).setSubject(clientId).setAudience(`${srv.url}/auth/token`)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 240).setJti(crypto.randomUUID()).sign(s.key);
}

async function post(srv: TestServer, endpoint: string, body: string | Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(`${srv.url}/auth/${endpoint}`, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: typeof body === 'string' ? body : new URLSearchParams(body),
  });
  const text = await res.text();
  let json: any;
  try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
  return { status: res.status, headers: res.headers, json, text };
}

const backendToken = async (srv: TestServer, s: Signer, clientId: string, kid?: string) =>
  post(srv, 'token', { grant_type: 'client_credentials', scope: 'system/Patient.rs', client_assertion_type: JWT_BEARER, client_assertion: await assertion(srv, s, clientId, kid) });

/** A local JWKS server: counts fetches; delay, body and chunking are set per test. */
class JwksServer {
  fetches = 0;
  delayMs = 0;
  body = '{"keys":[]}';
  chunked = false;
  private server = http.createServer((_req, res) => {
    this.fetches++;
    setTimeout(() => {
      res.setHeader('content-type', 'application/json');
      if (!this.chunked) { res.end(this.body); return; }
      // No Content-Length: the size is only known by reading.
      for (let i = 0; i < this.body.length; i += 8192) res.write(this.body.slice(i, i + 8192));
      res.end();
    }, this.delayMs);
  });
  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/jwks.json`;
  }
  stop() { this.server.closeAllConnections(); this.server.close(); }
}

async function addBackendClient(srv: TestServer, jwksUri: string): Promise<string> {
  const clientId = crypto.randomUUID();
  await insertClient(srv.db.owner, { orgId: 1, clientId, name: 'Remote keys', authMethod: 'private_key_jwt', jwksUri, redirectUris: [], scopes: ['system/*.rs'] });
  return clientId;
}

/** Starts an authorize request for `clientId` in a fresh browser; returns it and the login page. */
async function startAuthorize(srv: TestServer, clientId: string, scope = 'user/Patient.rs') {
  const b = new Browser();
  const u = new URL(`${srv.url}/auth/authorize`);
  for (const [k, v] of Object.entries({
    response_type: 'code', client_id: clientId, redirect_uri: APP_REDIRECT, scope, state: 's', aud: srv.url,
    code_challenge: sha256(randomToken()), code_challenge_method: 'S256',
  })) u.searchParams.set(k, v);
  const page = await b.request('GET', u.toString());
  assert.equal(page.status, 200, page.html);
  return { b, page, request: page.request! };
}

const login = (srv: TestServer, s: { b: Browser; request: string }, username: string, password: string, headers?: Record<string, string>) => headers
  ? fetch(`${srv.url}/auth/login`, {
    method: 'POST', redirect: 'manual', body: new URLSearchParams({ request: s.request, username, password }),
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: [...s.b.cookies].map(([k, v]) => `${k}=${v}`).join('; '), ...headers },
  }).then(async (r) => ({ status: r.status, html: await r.text() }))
  : s.b.request('POST', `${srv.url}/auth/login`, { request: s.request, username, password });

/** Wall-clock time of fn. */
async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await fn();
  return { ms: performance.now() - start, value };
}

// ------------------------------------------------------------------ default settings
describe('authorization server with default settings', () => {
  let srv: TestServer;
  let app: string;
  let pickerApp: string;
  let secretClient: { id: string; secret: string };
  let jwks: JwksServer;
  let signing: Signer;

  before(async () => {
    srv = await startTestServer({
      auth: 'smart', audit: 'off',
      // Small per-IP limit so the X-Forwarded-For test reaches it; the username limit stays out of the way.
      config: { auth: { ...loadAuthSettings(), loginLimit: { userFailures: 100, ipFailures: 4, windowSeconds: 900 } } },
    });
    app = crypto.randomUUID();
    await insertClient(srv.db.owner, { orgId: 1, clientId: app, name: 'Chart', authMethod: 'none', redirectUris: [APP_REDIRECT], scopes: ['user/*.rs'] });
    pickerApp = crypto.randomUUID();
    await insertClient(srv.db.owner, { orgId: 1, clientId: pickerApp, name: 'Picker', authMethod: 'none', redirectUris: [APP_REDIRECT], scopes: ['patient/*.rs', 'launch/patient'] });
    secretClient = { id: crypto.randomUUID(), secret: randomToken() };
    await insertClient(srv.db.owner, { orgId: 1, clientId: secretClient.id, name: 'Secret', authMethod: 'client_secret_basic', secretHash: sha256(secretClient.secret), redirectUris: [], scopes: ['system/*.rs'] });
    await insertUser(srv.db.owner, { orgId: 1, username: 'nina', passwordHash: await hashPassword(PASSWORD) });
    jwks = new JwksServer();
    signing = await signer('k1');
    jwks.body = JSON.stringify({ keys: [signing.publicJwk] });
  });
  after(async () => {
    await srv.stop();
    jwks.stop();
    removeDataDir(srv.dataDir);
  });

  describe('bad input at the OAuth endpoints is a 4xx, never a 500', () => {
    const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;

    it('a NUL at token, introspect and revoke (any form field, a field name, client_id, Basic credentials) is a 400 invalid_request', async () => {
      const cases: [string, string, Record<string, string>][] = [
        ['token', 'grant_type=client_credentials%00&scope=system%2FPatient.rs', {}],
        ['token', 'grant_type=client_credentials&scope=system%2FPatient.rs%00', { authorization: basic(secretClient.id, secretClient.secret) }],
        ['token', 'grant_type=authorization_code&client_id=abc%00def&code=x&redirect_uri=x&code_verifier=x', {}],
        ['token', `grant_type=client_credentials&scope=x&client_id=${encodeURIComponent('\u0000')}`, {}],
        ['token', 'grant_type=client_credentials&sco%00pe=x', {}],
        ['token', 'grant_type=refresh_token&refresh_token=abc%00', {}],
        ['token', 'grant_type=client_credentials&scope=system%2FPatient.rs', { authorization: basic(`${secretClient.id}\u0000`, secretClient.secret) }],
        ['token', 'grant_type=client_credentials&scope=system%2FPatient.rs', { authorization: basic(`${secretClient.id}%00`, secretClient.secret) }],
        ['token', 'grant_type=client_credentials&scope=system%2FPatient.rs', { authorization: basic(secretClient.id, `${secretClient.secret}\u0000`) }],
        ['introspect', 'token=abc%00', { authorization: basic(secretClient.id, secretClient.secret) }],
        ['introspect', 'token=abc', { authorization: basic('x\u0000y', 'z') }],
        ['revoke', 'token=abc&client_id=%00', {}],
        ['revoke', 'token=abc%00', { authorization: basic(secretClient.id, secretClient.secret) }],
      ];
      for (const [endpoint, body, headers] of cases) {
        const r = await post(srv, endpoint, body, headers);
        assert.equal(r.status, 400, `${endpoint} ${body} ${JSON.stringify(headers)}: ${r.text}`);
        assert.equal(r.json?.error, 'invalid_request', `${endpoint} ${body}`);
        assert.match(r.json.error_description, /NUL/);
      }
    });

    it('a client assertion whose iss or jti holds a NUL is refused as invalid_client', async () => {
      for (const claims of [{ iss: 'a\u0000b', sub: 'a\u0000b' }, { iss: 'x', sub: 'x', jti: 'j\u0000' }]) {
        const head = Buffer.from(JSON.stringify({ alg: 'ES384', kid: 'k1' })).toString('base64url');
        const body = Buffer.from(JSON.stringify({ aud: `${srv.url}/auth/token`, exp: Math.floor(Date.now() / 1000) + 60, jti: 'j', ...claims })).toString('base64url');
        const r = await post(srv, 'token', { grant_type: 'client_credentials', scope: 'system/*.rs', client_assertion_type: JWT_BEARER, client_assertion: `${head}.${body}.AAAA` });
        assert.equal(r.status, 401, r.text);
        assert.equal(r.json.error, 'invalid_client');
      }
    });

    it('a signed assertion with a jti too long to index is refused as invalid_client, not a 500', async () => {
      const key = await signer('inline-1');
      const clientId = crypto.randomUUID();
      await insertClient(srv.db.owner, { orgId: 1, clientId, name: 'Inline keys', authMethod: 'private_key_jwt', jwks: { keys: [key.publicJwk] }, redirectUris: [], scopes: ['system/*.rs'] });
      const jwt = await new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid: key.kid }).setIssuer(clientId).setSubject(clientId)
        .setAudience(`${srv.url}/auth/token`).setExpirationTime(Math.floor(Date.now() / 1000) + 240).setJti(crypto.randomBytes(4500).toString('base64url')).sign(key.key);
      const r = await post(srv, 'token', { grant_type: 'client_credentials', scope: 'system/*.rs', client_assertion_type: JWT_BEARER, client_assertion: jwt });
      assert.equal(r.status, 401, r.text);
      assert.equal(r.json.error, 'invalid_client');
      assert.equal((await backendToken(srv, key, clientId)).status, 200, 'the same client with an ordinary jti');
    });

    it('an endpoint named like an Object.prototype member (/auth/constructor, /auth/toString) is a 404', async () => {
      for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
        for (const method of ['GET', 'POST']) {
          const r = await fetch(`${srv.url}/auth/${name}`, { method });
          assert.equal(r.status, 404, `${method} ${name}`);
        }
      }
    });

    it('a NUL at authorize and the login page: a 400 page', async () => {
      const bad = await fetch(`${srv.url}/auth/authorize?response_type=code&client_id=%00`);
      assert.equal(bad.status, 400);
      assert.match(await bad.text(), /NUL/);
      const u = new URL(`${srv.url}/auth/authorize`);
      for (const [k, v] of Object.entries({ response_type: 'code', client_id: app, redirect_uri: APP_REDIRECT, scope: 'user/Patient.rs', state: 'a\u0000b', aud: srv.url, code_challenge: sha256('v'), code_challenge_method: 'S256' })) u.searchParams.set(k, v);
      assert.equal((await fetch(u)).status, 400, 'state with a NUL');
      const s = await startAuthorize(srv, app);
      for (const [username, password] of [['nina\u0000', PASSWORD], ['\u0000', 'x'], ['nina', 'pass\u0000word']]) {
        const r = await login(srv, s, username, password);
        assert.equal(r.status, 400, JSON.stringify(username));
        assert.match(r.html, /NUL/);
      }
      assert.equal((await login(srv, s, 'nina', PASSWORD)).status, 200, 'the request still works after the refusals');
    });
  });

  describe('X-Forwarded-For is trusted only when a proxy is configured (KILN_TRUST_PROXY)', () => {
    it('by default the per-IP login limit counts the socket peer, whatever X-Forwarded-For says', async () => {
      await srv.db.owner.query('DELETE FROM auth_login_failures');
      const s = await startAuthorize(srv, app);
      // Each guess claims another client address and another username; the limit is 4 per address.
      for (let i = 0; i < 4; i++) {
        assert.equal((await login(srv, s, `user${i}`, 'wrong password', { 'x-forwarded-for': `198.51.100.${i}` })).status, 401);
      }
      const blocked = await login(srv, s, 'user9', 'wrong password', { 'x-forwarded-for': '198.51.100.9' });
      assert.equal(blocked.status, 429, 'the fifth guess from this socket is refused');
      assert.match(blocked.html, /from this network address/);
      const { rows } = await srv.db.owner.query(`SELECT key, failures FROM auth_login_failures WHERE kind = 'ip'`);
      assert.deepEqual(rows.map((r) => [r.key, r.failures]), [['127.0.0.1', 4]]);
      await srv.db.owner.query('DELETE FROM auth_login_failures');
    });
  });

  describe('Content-Security-Policy on the sign-in pages', () => {
    function policy(headers: Headers): Map<string, string> {
      const csp = headers.get('content-security-policy');
      assert.ok(csp, 'a Content-Security-Policy header');
      return new Map(csp.split(';').map((d) => d.trim()).filter(Boolean).map((d) => {
        const sp = d.indexOf(' ');
        return [d.slice(0, sp), d.slice(sp + 1)];
      }));
    }
    function strict(headers: Headers, html: string, formAction: string) {
      const p = policy(headers);
      assert.equal(p.get('default-src'), "'none'");
      assert.equal(p.get('base-uri'), "'none'");
      assert.equal(p.get('frame-ancestors'), "'none'");
      assert.equal(p.get('form-action'), formAction);
      // The page's one inline style is allowed by its hash; nothing else may style or run.
      const style = /<style>([\s\S]*?)<\/style>/.exec(html)![1];
      assert.equal(p.get('style-src'), `'sha256-${crypto.createHash('sha256').update(style).digest('base64')}'`);
      assert.ok(!p.has('script-src'));
      assert.equal(headers.get('x-frame-options'), 'DENY');
    }

    // Chromium applies form-action to the redirect that follows a post: the consent's answer
    // (or a refusal) goes to the app's redirect_uri, so its origin is a form target too.
    it('login, consent and error pages: default-src none, hashed style, no framing, forms to this server and the app', async () => {
      const s = await startAuthorize(srv, app);
      strict(s.page.headers, s.page.html, "'self' https://app.example");
      const consent = await login(srv, s, 'nina', PASSWORD) as Awaited<ReturnType<Browser['request']>>;
      assert.equal(consent.status, 200);
      assert.match(consent.html, /id="approve"/);
      strict(consent.headers, consent.html, "'self' https://app.example");
      const error = await fetch(`${srv.url}/auth/authorize?client_id=nobody`);
      assert.equal(error.status, 400);
      strict(error.headers, await error.text(), "'self'");
    });

    it('the patient picker too', async () => {
      const s = await startAuthorize(srv, pickerApp, 'launch/patient patient/Patient.rs');
      const picker = await login(srv, s, 'nina', PASSWORD) as Awaited<ReturnType<Browser['request']>>;
      assert.equal(picker.status, 200);
      assert.match(picker.html, /Choose a patient/);
      strict(picker.headers, picker.html, "'self' https://app.example");
    });
  });

  it('a client\'s JWKS URL over http is refused unless configured for development, and nothing is fetched', async () => {
    const clientId = await addBackendClient(srv, await jwks.start());
    const r = await backendToken(srv, signing, clientId);
    assert.equal(r.status, 401, r.text);
    assert.equal(r.json.error, 'invalid_client');
    assert.match(r.json.error_description, /https/);
    assert.equal(jwks.fetches, 0);
  });
});

// ------------------------------------------------------------------ a small pool
describe('unauthenticated load does not starve a small connection pool', () => {
  let srv: TestServer;
  let jwks: JwksServer;
  let jwksUrl: string;
  let signing: Signer;
  let clientId: string;
  let app: string;
  let read: () => Promise<{ ms: number; value: { status: number } }>;

  before(async () => {
    srv = await startTestServer({
      auth: 'smart', audit: 'off',
      config: {
        poolSize: 4,
        auth: { ...loadAuthSettings(), allowHttpJwks: true, loginLimit: { userFailures: 10_000, ipFailures: 10_000, windowSeconds: 900 } },
      },
    });
    jwks = new JwksServer();
    jwksUrl = await jwks.start();
    signing = await signer('slow-1');
    jwks.body = JSON.stringify({ keys: [signing.publicJwk] });
    clientId = await addBackendClient(srv, jwksUrl);
    app = crypto.randomUUID();
    await insertClient(srv.db.owner, { orgId: 1, clientId: app, name: 'Chart', authMethod: 'none', redirectUris: [APP_REDIRECT], scopes: ['user/*.rs'] });
    await insertUser(srv.db.owner, { orgId: 1, username: 'otto', passwordHash: await hashPassword(PASSWORD) });
    const reader = bearer(await token(srv, { scope: 'system/*.rs' }));
    const admin = bearer(await token(srv, { scope: 'system/*.cruds' }));
    const patient = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Unrelated' }] }, admin)).json.id;
    read = () => timed(() => fhir(srv.url, 'GET', `Patient/${patient}`, undefined, reader));
    assert.equal((await read()).value.status, 200);
  });
  after(async () => {
    await srv.stop();
    jwks.stop();
    removeDataDir(srv.dataDir);
  });

  it('40 token requests for a client whose JWKS URL answers in 3 s: an unrelated FHIR read meanwhile takes < 1 s; one fetch serves them all', async (t) => {
    jwks.delayMs = 3000;
    const started = performance.now();
    const tokens = Promise.all(Array.from({ length: 40 }, () => backendToken(srv, signing, clientId)));
    await new Promise((r) => setTimeout(r, 300)); // the token requests are all waiting on the JWKS now
    const during = await read();
    const answers = await tokens;
    const total = performance.now() - started;
    t.diagnostic(`FHIR read during the token requests: ${Math.round(during.ms)} ms; token requests done after ${Math.round(total)} ms`);
    assert.equal(during.value.status, 200);
    assert.ok(during.ms < 1000, `the FHIR read took ${Math.round(during.ms)} ms while the token requests waited on the JWKS`);
    assert.ok(total >= 3000, `the token requests waited for the JWKS (${Math.round(total)} ms)`);
    assert.deepEqual([...new Set(answers.map((a) => a.status))], [200], JSON.stringify(answers.find((a) => a.status !== 200)?.json));
    assert.equal(jwks.fetches, 1, 'concurrent fetches of one URL are coalesced');
  });

  it('the keys are cached; an unknown kid refetches them, at most once per 5 s cooldown', async () => {
    jwks.delayMs = 0;
    const fetched = jwks.fetches;
    assert.equal((await backendToken(srv, signing, clientId)).status, 200);
    assert.equal(jwks.fetches, fetched, 'served from the cache');
    assert.equal((await backendToken(srv, signing, clientId, 'rotated-1')).status, 401);
    assert.equal(jwks.fetches, fetched, 'no refetch within the cooldown after the last fetch');
    await new Promise((r) => setTimeout(r, 5200));
    assert.equal((await backendToken(srv, signing, clientId, 'rotated-2')).status, 401);
    assert.equal(jwks.fetches, fetched + 1, 'an unknown kid refetches once the cooldown is over');
    assert.equal((await backendToken(srv, signing, clientId, 'rotated-3')).status, 401);
    assert.equal(jwks.fetches, fetched + 1, 'and then not again within the cooldown');
    assert.equal((await backendToken(srv, signing, clientId)).status, 200);
  });

  it('a JWKS over 64 KiB is refused (with or without Content-Length), not parsed', async () => {
    const big = new JwksServer();
    const s = await signer('big-1');
    const filler = Array.from({ length: 600 }, (_, i) => ({ ...s.publicJwk, kid: `filler-${i}` }));
    big.body = JSON.stringify({ keys: [s.publicJwk, ...filler] });
    assert.ok(big.body.length > 100 * 1024);
    const url = await big.start();
    try {
      for (const chunked of [false, true]) {
        big.chunked = chunked;
        const r = await backendToken(srv, s, await addBackendClient(srv, `${url}?chunked=${chunked}`));
        assert.equal(r.status, 401, `chunked=${chunked}: ${r.text}`);
        assert.equal(r.json.error, 'invalid_client');
        assert.match(r.json.error_description, /JWKS/);
      }
    } finally {
      big.stop();
    }
  });

  it('http off loopback is refused even for development; an unreachable JWKS URL is a 401, not a 500', async () => {
    const offLoopback = await timed(async () => backendToken(srv, signing, await addBackendClient(srv, 'http://192.0.2.1/jwks.json')));
    assert.equal(offLoopback.value.status, 401);
    assert.match(offLoopback.value.json.error_description, /https/);
    assert.ok(offLoopback.ms < 1000, `refused without a connection attempt (${Math.round(offLoopback.ms)} ms)`);
    const closed = await backendToken(srv, signing, await addBackendClient(srv, `http://127.0.0.1:${await freePort()}/jwks.json`));
    assert.equal(closed.status, 401, closed.text);
    assert.equal(closed.json.error, 'invalid_client');
  });

  it('150 concurrent sign-ins (each hashes a password): an unrelated FHIR read meanwhile takes < 1 s', async (t) => {
    const sessions = [];
    for (let i = 0; i < 150; i += 15) sessions.push(...await Promise.all(Array.from({ length: 15 }, () => startAuthorize(srv, app))));
    const logins = Promise.all(sessions.map((s, i) => login(srv, s, 'otto', i % 10 === 0 ? PASSWORD : 'wrong password')));
    await new Promise((r) => setTimeout(r, 200));
    const during = await read();
    const statuses = (await logins).map((r) => r.status);
    t.diagnostic(`FHIR read during the sign-ins: ${Math.round(during.ms)} ms`);
    assert.equal(during.value.status, 200);
    assert.ok(during.ms < 1000, `the FHIR read took ${Math.round(during.ms)} ms during the sign-ins`);
    assert.equal(statuses.filter((s) => s === 200).length, 15);
    assert.equal(statuses.filter((s) => s === 401).length, 135);
  });
});
