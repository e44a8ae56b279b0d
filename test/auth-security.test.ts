// Security of the SMART layer over real HTTP on a real PostgreSQL: the verified-token
// cache, per-token revocation of access tokens (RFC 7009 and the CLI), the login rate
// limit, user disable/enable/password from the CLI, and CORS on the FHIR API.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { startTestServer, removeDataDir, fhir, bearer, rawToken, type TestServer } from './support/server.ts';
import { configureTokenCache, mintAdminToken, tokenCacheSize } from '../src/auth/verify.ts';
import { insertClient } from '../src/store/authClients.ts';
import { insertUser } from '../src/store/authUsers.ts';
import { revokeTokenAsOwner } from '../src/store/authRevocation.ts';
import { hashPassword, randomToken, sha256 } from '../src/auth/secrets.ts';
import { createOrg } from '../src/store/tenants.ts';
import { Browser } from './support/browser.ts';
import { keyRingFor } from '../src/auth/keys.ts';

const REDIRECT = 'http://127.0.0.1:9/callback';
const PASSWORD = 'correct horse battery';
const ORIGIN = 'https://app.example';

// Small limits so the tests reach them (read by loadConfig when the server starts).
process.env.KILN_LOGIN_MAX_FAILURES = '3';
process.env.KILN_LOGIN_MAX_FAILURES_IP = '10';
process.env.KILN_LOGIN_WINDOW_MINUTES = '15';

let srv: TestServer;
let patientId: string;
/** Confidential clients (client_secret_basic, system/ scopes): id and Basic header. */
const backend: Record<'a' | 'b', { id: string; basic: string }> = {} as never;
let app: string; // public app for the authorize flow

function kiln(args: string[], opts: { password?: string; input?: string } = {}): string {
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort) };
  delete env.KILN_AUTH_PASSWORD;
  if (opts.password) env.KILN_AUTH_PASSWORD = opts.password;
  return execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', ...args], {
    env, encoding: 'utf8', input: opts.input ?? '', stdio: ['pipe', 'pipe', 'pipe'],
  });
}

async function post(path: string, form: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(`${srv.url}/auth/${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(form) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

async function backendToken(c: { basic: string }): Promise<string> {
  const r = await post('token', { grant_type: 'client_credentials', scope: 'system/Patient.rs' }, { authorization: c.basic });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.access_token;
}

/** A system/*.cruds token for the current server (its port changes at a restart). */
const admin = async () => bearer((await mintAdminToken(srv.db, { tenant: 'default', audience: srv.url })).accessToken);

const readPatient = (t: string) => fhir(srv.url, 'GET', `Patient/${patientId}`, undefined, bearer(t));


const SCOPE = 'user/Patient.rs offline_access';

/** Starts an authorize request; returns the browser and the login page's request id. */
async function startAuthorize() {
  const b = new Browser();
  const verifier = crypto.randomBytes(32).toString('base64url');
  const u = new URL(`${srv.url}/auth/authorize`);
  for (const [k, v] of Object.entries({
    response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: SCOPE, state: 's', aud: srv.url,
    code_challenge: sha256(verifier), code_challenge_method: 'S256',
  })) u.searchParams.set(k, v);
  const start = await b.request('GET', u.toString());
  assert.equal(start.status, 200, start.html);
  return { b, request: start.request!, verifier };
}

const login = (s: { b: Browser; request: string }, username: string, password: string) =>
  s.b.request('POST', `${srv.url}/auth/login`, { request: s.request, username, password });

/** The whole flow for a user; returns the token response. */
async function signIn(username: string, password = PASSWORD) {
  const s = await startAuthorize();
  const page = await login(s, username, password);
  assert.equal(page.status, 200, page.html);
  const done = await s.b.request('POST', `${srv.url}/auth/consent`, { request: page.request!, decision: 'approve', scope: SCOPE.split(' ') });
  assert.equal(done.status, 303);
  const code = new URL(done.location!).searchParams.get('code')!;
  const r = await post('token', { grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: s.verifier, client_id: app });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

async function addUser(username: string) {
  await insertUser(srv.db.owner, { orgId: 1, username, passwordHash: await hashPassword(PASSWORD) });
}

async function eventually(what: string, check: () => Promise<boolean>, ms = 8000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail(`${what} within ${ms} ms`);
}

before(async () => {
  srv = await startTestServer({ auth: 'smart', audit: 'off' });
  const p = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Cache' }] }, await admin());
  assert.equal(p.status, 201);
  patientId = p.json.id;
  for (const k of ['a', 'b'] as const) {
    const secret = randomToken();
    const id = crypto.randomUUID();
    await insertClient(srv.db.owner, { orgId: 1, clientId: id, name: `Backend ${k}`, authMethod: 'client_secret_basic', secretHash: sha256(secret), redirectUris: [], scopes: ['system/*.rs'] });
    backend[k] = { id, basic: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` };
  }
  app = crypto.randomUUID();
  await insertClient(srv.db.owner, { orgId: 1, clientId: app, name: 'Chart', authMethod: 'none', redirectUris: [REDIRECT], scopes: ['user/*.rs', 'offline_access'] });
  await createOrg(srv.db.owner, 'acme', 'Acme');
});

after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('verified access-token cache', () => {
  it('a token is verified once, then served from the cache', async () => {
    const t = await backendToken(backend.a);
    const size = tokenCacheSize();
    assert.equal((await readPatient(t)).status, 200);
    assert.equal(tokenCacheSize(), size + 1);
    assert.equal((await readPatient(t)).status, 200);
    assert.equal(tokenCacheSize(), size + 1, 'the second use is a hit, not a new entry');
  });

  it('the tenant, audience and issuer are still checked on a hit', async () => {
    const t = await backendToken(backend.a);
    assert.equal((await readPatient(t)).status, 200); // cached now
    const other = await fhir(srv.url, 'GET', 'acme/Patient', undefined, bearer(t));
    assert.equal(other.status, 403, 'a cached token of default is still refused on acme');
    // Another tenant's base as audience: the cached token is not for it either.
    const sizeBefore = tokenCacheSize();
    const wrongAud = await rawToken(srv, { aud: `${srv.url}/acme` });
    assert.equal((await readPatient(wrongAud)).status, 401);
    assert.equal((await readPatient(wrongAud)).status, 401, 'refused again when it comes from the cache');
    assert.equal(tokenCacheSize(), sizeBefore + 1, 'the signature verified, so it was cached; the audience check refused it');
  });

  it('a cached token is refused once it expires', async () => {
    const now = Math.floor(Date.now() / 1000);
    const t = await rawToken(srv, { iat: now - 10, exp: now + 2 });
    assert.equal((await readPatient(t)).status, 200);
    // jwtVerify allows 5 s of clock skew; past that, neither the cache nor a new verification accepts it.
    await new Promise((r) => setTimeout(r, 8_000));
    const r = await readPatient(t);
    assert.equal(r.status, 401);
    assert.match(r.headers.get('www-authenticate')!, /invalid_token/);
  });

  it('a cached token stops working when its client is revoked', async () => {
    const id = crypto.randomUUID();
    const secret = randomToken();
    await insertClient(srv.db.owner, { orgId: 1, clientId: id, name: 'Doomed', authMethod: 'client_secret_basic', secretHash: sha256(secret), redirectUris: [], scopes: ['system/*.rs'] });
    const t = await backendToken({ basic: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });
    assert.equal((await readPatient(t)).status, 200);
    kiln(['client', 'revoke', id]);
    await eventually('the revoked client\'s cached token is refused', async () => (await readPatient(t)).status === 401);
  });

  it('KILN_TOKEN_CACHE=off verifies every time', async () => {
    configureTokenCache(false);
    try {
      const t = await backendToken(backend.a);
      assert.equal((await readPatient(t)).status, 200);
      assert.equal((await readPatient(t)).status, 200);
      assert.equal(tokenCacheSize(), 0);
    } finally {
      configureTokenCache(true);
    }
  });
});

describe('revoking access tokens', () => {
  it('token_type_hint=access_token: the owning client revokes it, and it is refused at once', async () => {
    const t = await backendToken(backend.a);
    assert.equal((await readPatient(t)).status, 200); // cached
    const r = await post('revoke', { token: t, token_type_hint: 'access_token' }, { authorization: backend.a.basic });
    assert.equal(r.status, 200);
    const refused = await readPatient(t);
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get('www-authenticate')!, /error="invalid_token", error_description="The access token was revoked"/);
    const intro = await post('introspect', { token: t }, { authorization: backend.a.basic });
    assert.deepEqual(intro.json, { active: false });
    // Revoking again is not an error.
    assert.equal((await post('revoke', { token: t }, { authorization: backend.a.basic })).status, 200);
  });

  it('without a hint too; another client cannot revoke it', async () => {
    const t = await backendToken(backend.a);
    const byOther = await post('revoke', { token: t }, { authorization: backend.b.basic });
    assert.equal(byOther.status, 200, 'the same answer as for any token it cannot revoke');
    assert.equal((await readPatient(t)).status, 200, 'still valid: b does not own it');
    assert.equal((await post('revoke', { token: t }, { authorization: backend.a.basic })).status, 200);
    assert.equal((await readPatient(t)).status, 401);
  });

  it('the revocation endpoint needs client authentication', async () => {
    const t = await backendToken(backend.a);
    const r = await post('revoke', { token: t });
    assert.equal(r.status, 401);
    assert.equal(r.json.error, 'invalid_client');
    assert.equal((await readPatient(t)).status, 200);
  });

  it('kiln auth token revoke <jti>: another process revokes it, the server refuses it within seconds', async () => {
    const t = await backendToken(backend.a);
    assert.equal((await readPatient(t)).status, 200);
    const intro = await post('introspect', { token: t }, { authorization: backend.a.basic });
    assert.equal(intro.json.active, true);
    const jti = intro.json.jti;
    assert.match(jti, /^[0-9a-f-]{36}$/);
    const out = kiln(['token', 'revoke', jti]);
    assert.match(out, new RegExp(`revoked access token ${jti}`));
    const started = Date.now();
    await eventually('the CLI-revoked token is refused', async () => (await readPatient(t)).status === 401);
    assert.ok(Date.now() - started < 7_000);
    const { rows } = await srv.db.owner.query('SELECT client_id, expires_at > now() + interval \'23 hours\' AS long FROM auth_revoked_tokens WHERE jti = $1', [jti]);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].long, true, 'a bare jti is kept as long as any Kiln token lives');
  });

  it('the CLI also takes the whole token (its real expiry is kept)', async () => {
    const t = await backendToken(backend.b);
    assert.match(kiln(['token', 'revoke', t]), /revoked access token/);
    await eventually('the token is refused', async () => (await readPatient(t)).status === 401);
    const { rows } = await srv.db.owner.query(
      `SELECT client_id, expires_at < now() + interval '10 minutes' AS short FROM auth_revoked_tokens WHERE client_id = $1`, [backend.b.id]);
    assert.deepEqual(rows, [{ client_id: backend.b.id, short: true }]);
  });

  it('rows of expired tokens are pruned at the next revocation', async () => {
    const old = crypto.randomUUID();
    await revokeTokenAsOwner(srv.db.owner, 1, { jti: old, clientId: backend.a.id, expiresAt: Math.floor(Date.now() / 1000) - 3600 });
    const count = async () => (await srv.db.owner.query('SELECT count(*)::int AS n FROM auth_revoked_tokens WHERE jti = $1', [old])).rows[0].n;
    assert.equal(await count(), 1);
    const t = await backendToken(backend.a);
    assert.equal((await post('revoke', { token: t, token_type_hint: 'access_token' }, { authorization: backend.a.basic })).status, 200);
    assert.equal(await count(), 0);
  });
});

describe('login rate limit', () => {
  it('after 3 failures for a username, sign-in is refused with 429 and Retry-After, even with the right password', async () => {
    await addUser('amy');
    const s = await startAuthorize();
    for (let i = 0; i < 3; i++) assert.equal((await login(s, 'amy', 'wrong password')).status, 401);
    const blocked = await login(s, 'amy', PASSWORD);
    assert.equal(blocked.status, 429);
    assert.match(blocked.html, /Too many failed sign-ins for this username\. Try again in 15 minutes\./);
    const retry = Number(blocked.headers.get('retry-after'));
    assert.ok(retry > 14 * 60 && retry <= 15 * 60, `Retry-After ${retry}`);
  });

  it('a successful sign-in clears the username\'s counter', async () => {
    await addUser('ben');
    const s = await startAuthorize();
    for (let i = 0; i < 2; i++) assert.equal((await login(s, 'ben', 'nope nope')).status, 401);
    await signIn('ben');
    const s2 = await startAuthorize();
    for (let i = 0; i < 2; i++) assert.equal((await login(s2, 'ben', 'nope nope')).status, 401, 'counted from zero again');
    assert.equal((await login(s2, 'ben', PASSWORD)).status, 200);
  });

  it('concurrent guesses are counted one by one: exactly the limit get through to the password check', async () => {
    await addUser('cat');
    const s = await startAuthorize();
    const statuses = (await Promise.all(Array.from({ length: 6 }, () => login(s, 'cat', 'guess guess')))).map((r) => r.status).sort();
    assert.deepEqual(statuses, [401, 401, 401, 429, 429, 429]);
  });

  it('failures from one address across usernames hit the per-IP limit; the window passing lifts it', async () => {
    // So far from 127.0.0.1: amy 3 + ben 4 + cat 3 = 10 failures, the IP limit.
    await addUser('dan');
    const s = await startAuthorize();
    const blocked = await login(s, 'dan', PASSWORD);
    assert.equal(blocked.status, 429);
    assert.match(blocked.html, /from this network address/);
    // The window ends (moved back in time rather than waiting 15 minutes).
    await srv.db.owner.query(`UPDATE auth_login_failures SET window_start = window_start - interval '15 minutes'`);
    assert.equal((await login(s, 'dan', PASSWORD)).status, 200);
  });

  it('the counters live in the database, so they hold across a restart', async () => {
    const s = await startAuthorize();
    for (let i = 0; i < 3; i++) assert.equal((await login(s, 'amy', 'wrong again')).status, 401);
    await srv.stop();
    srv = await startTestServer({ auth: 'smart', audit: 'off', dataDir: srv.dataDir, pgPort: srv.pgPort });
    const s2 = await startAuthorize();
    assert.equal((await login(s2, 'amy', PASSWORD)).status, 429);
    const { rows } = await srv.db.owner.query(`SELECT failures FROM auth_login_failures WHERE kind = 'user' AND key = 'amy'`);
    assert.equal(rows[0].failures, 3);
  });
});

describe('kiln auth user disable / enable / password', () => {
  it('a disabled user cannot sign in and their refresh and access tokens stop working; enable lets them in again', async () => {
    await addUser('eve');
    const tokens = await signIn('eve');
    assert.ok(tokens.refresh_token);
    assert.equal((await readPatient(tokens.access_token)).status, 200);
    assert.match(kiln(['user', 'disable', '--tenant', 'default', 'eve']), /eve disabled/);
    keyRingFor(srv.db.owner).forgetRevocations(); // this process would see it within 5 s
    const refused = await readPatient(tokens.access_token);
    assert.equal(refused.status, 401);
    assert.match(refused.text, /user of this access token is disabled/);
    assert.match(kiln(['user', 'list', '--tenant', 'default']), /^eve\tdefault\t-\tdisabled/m);
    const refresh = await post('token', { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: app });
    assert.equal(refresh.status, 400);
    assert.equal(refresh.json.error, 'invalid_grant');
    const s = await startAuthorize();
    const page = await login(s, 'eve', PASSWORD);
    assert.equal(page.status, 401);
    assert.match(page.html, /Wrong username or password/);
    kiln(['user', 'enable', '--tenant', 'default', 'eve']);
    assert.equal((await login(s, 'eve', PASSWORD)).status, 200);
  });

  it('a new password from KILN_AUTH_PASSWORD or stdin replaces the old one and revokes refresh tokens', async () => {
    await addUser('fay');
    const tokens = await signIn('fay');
    const first = 'a brand new passphrase';
    assert.match(kiln(['user', 'password', '--tenant', 'default', 'fay'], { password: first }), /password of fay in default changed/);
    const refresh = await post('token', { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: app });
    assert.equal(refresh.json.error, 'invalid_grant');
    const s = await startAuthorize();
    assert.equal((await login(s, 'fay', PASSWORD)).status, 401);
    assert.equal((await login(s, 'fay', first)).status, 200);
    const second = 'from standard input';
    kiln(['user', 'password', '--tenant', 'default', 'fay'], { input: `${second}\n` });
    const s2 = await startAuthorize();
    assert.equal((await login(s2, 'fay', first)).status, 401);
    assert.equal((await login(s2, 'fay', second)).status, 200);
  });

  it('unknown users and short passwords are refused', () => {
    assert.throws(() => kiln(['user', 'disable', '--tenant', 'default', 'nobody']), (e: { status: number; stderr: string }) => e.status === 1 && /no user 'nobody'/.test(e.stderr));
    assert.throws(() => kiln(['user', 'password', '--tenant', 'default', 'fay'], { password: 'short' }), (e: { status: number; stderr: string }) => e.status === 2 && /at least 8/.test(e.stderr));
  });
});

describe('CORS on the FHIR API', () => {
  it('a preflight is answered 204 without a token', async () => {
    const res = await fetch(`${srv.url}/Patient/${patientId}`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'PUT', 'access-control-request-headers': 'authorization, content-type, if-match, prefer' },
    });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    assert.match(res.headers.get('access-control-allow-methods')!, /\bPUT\b.*\bDELETE\b/);
    const allowed = res.headers.get('access-control-allow-headers')!.toLowerCase();
    for (const h of ['authorization', 'content-type', 'prefer', 'if-match', 'if-none-exist', 'if-none-match', 'if-modified-since']) assert.ok(allowed.includes(h), h);
    assert.ok(Number(res.headers.get('access-control-max-age')) > 0);
  });

  it('responses carry Allow-Origin and expose Location, ETag and WWW-Authenticate', async () => {
    const created = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient' }, { ...await admin(), origin: ORIGIN });
    assert.equal(created.status, 201);
    assert.equal(created.headers.get('access-control-allow-origin'), '*');
    const exposed = created.headers.get('access-control-expose-headers')!;
    for (const h of ['Location', 'ETag', 'Content-Location', 'Last-Modified', 'WWW-Authenticate']) assert.match(exposed, new RegExp(`\\b${h}\\b`));
    const refused = await fhir(srv.url, 'GET', 'Patient', undefined, { origin: ORIGIN });
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('access-control-allow-origin'), '*', 'a browser app can read why it was refused');
  });

  it('the OAuth endpoints use the same CORS', async () => {
    const pre = await fetch(`${srv.url}/auth/token`, { method: 'OPTIONS', headers: { origin: ORIGIN, 'access-control-request-method': 'POST' } });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), '*');
    const disc = await fetch(`${srv.url}/.well-known/smart-configuration`, { headers: { origin: ORIGIN } });
    assert.equal(disc.headers.get('access-control-allow-origin'), '*');
  });

  it('an OPTIONS that is not a preflight is still not a FHIR interaction', async () => {
    assert.equal((await fhir(srv.url, 'OPTIONS', 'Patient')).status, 405);
  });

  it('KILN_CORS_ORIGINS limits which origins may call', async () => {
    await srv.stop();
    process.env.KILN_CORS_ORIGINS = `${ORIGIN}, https://other.example/`;
    try {
      srv = await startTestServer({ auth: 'smart', audit: 'off', dataDir: srv.dataDir, pgPort: srv.pgPort });
    } finally {
      delete process.env.KILN_CORS_ORIGINS;
    }
    const pre = (origin: string) => fetch(`${srv.url}/Patient`, { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'GET' } });
    const ok = await pre('https://other.example');
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get('access-control-allow-origin'), 'https://other.example');
    assert.match(ok.headers.get('vary')!, /Origin/);
    const no = await pre('https://evil.example');
    assert.equal(no.headers.get('access-control-allow-origin'), null);
    assert.equal(no.headers.get('access-control-allow-methods'), null);
    const read = await fhir(srv.url, 'GET', `Patient/${patientId}`, undefined, { ...await admin(), origin: ORIGIN });
    assert.equal(read.status, 200);
    assert.equal(read.headers.get('access-control-allow-origin'), ORIGIN);
  });
});
