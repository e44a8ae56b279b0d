// Authorization code + PKCE over real HTTP, the way a browser and an app drive it:
// authorize, login, patient picker, consent, redirect with code and state, code
// exchange; id_token, refresh rotation, code reuse, EHR launch, revocation.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { mintAdminToken, verifyAccessToken } from '../src/auth/verify.ts';
import { Browser } from './support/browser.ts';
import { withTenant } from '../src/store/resources.ts';
import { insertRefreshToken } from '../src/store/authFlow.ts';
import { sha256 } from '../src/auth/secrets.ts';

const REDIRECT = 'http://127.0.0.1:9/callback';
const PASSWORD = 'correct horse battery';

let server: TestServer;
let admin: Record<string, string>;
let app: string; // public client
let confidential: string;
let confidentialSecret: string;
const patients: Record<string, string> = {};

function kiln(...args: string[]): string {
  return execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', ...args], {
    env: { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort), KILN_AUTH_PASSWORD: PASSWORD },
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  });
}


const pkce = () => {
  const verifier = crypto.randomBytes(32).toString('base64url');
  return { verifier, challenge: crypto.createHash('sha256').update(verifier).digest('base64url') };
};

function authorizeUrl(p: Record<string, string | undefined>): string {
  const u = new URL(`${server.url}/auth/authorize`);
  for (const [k, v] of Object.entries(p)) if (v !== undefined) u.searchParams.set(k, v);
  return u.toString();
}

async function tokenRequest(form: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(`${server.url}/auth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(form) });
  return { status: res.status, json: await res.json() as any };
}

/** Authorize through login, picker and consent; returns the redirect's query. */
async function launch(o: { scope: string; username?: string; pickName?: string; patient?: string; extra?: Record<string, string>; client?: string; decision?: string; ticked?: string[] }) {
  const b = new Browser();
  const { verifier, challenge } = pkce();
  const state = crypto.randomUUID();
  const start = await b.request('GET', authorizeUrl({
    response_type: 'code', client_id: o.client ?? app, redirect_uri: REDIRECT, scope: o.scope, state, aud: server.url,
    code_challenge: challenge, code_challenge_method: 'S256', nonce: 'n-1', ...o.extra,
  }));
  assert.equal(start.status, 200, start.location ?? start.html);
  assert.match(start.html, /Sign in/);
  let page = await b.request('POST', `${server.url}/auth/login`, { request: start.request!, username: o.username ?? 'dr.who', password: PASSWORD });
  assert.equal(page.status, 200, page.html);
  if (o.pickName !== undefined) {
    assert.match(page.html, /Choose a patient/);
    page = await b.request('POST', `${server.url}/auth/pick`, { request: page.request!, name: o.pickName, action: 'search' });
    page = await b.request('POST', `${server.url}/auth/pick`, { request: page.request!, patient: o.patient! });
  }
  assert.match(page.html, /Allow/);
  const done = await b.request('POST', `${server.url}/auth/consent`, { request: page.request!, decision: o.decision ?? 'approve', ...(o.ticked ? { scope: o.ticked } : { scope: o.scope.split(' ') }) });
  assert.equal(done.status, 303);
  const url = new URL(done.location!);
  assert.equal(`${url.origin}${url.pathname}`, REDIRECT);
  assert.equal(url.searchParams.get('state'), state, 'state round-trips');
  return { params: url.searchParams, verifier, browser: b };
}

const exchange = (code: string, verifier: string, headers: Record<string, string> = {}, client = app) =>
  tokenRequest({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier, ...(headers.authorization ? {} : { client_id: client }) }, headers);

describe('authorization code + PKCE', () => {
  before(async () => {
    // Auditing on (the FHIR API stays open): the authorization server records its sign-ins and tokens.
    server = await startTestServer({ audit: 'on' });
    admin = { authorization: `Bearer ${(await mintAdminToken(server.db, { tenant: 'default', audience: server.url })).accessToken}` };
    for (const [key, given, family] of [['alice', 'Alice', 'Smith'], ['bob', 'Bob', 'Smith'], ['carol', 'Carol', 'Jones']]) {
      const res = await fhir(server.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ given: [given], family }] }, admin);
      assert.equal(res.status, 201);
      patients[key] = res.json.id;
    }
    app = /client_id: (\S+)/.exec(kiln('client', 'add', '--tenant', 'default', '--name', 'Growth Chart', '--public', '--redirect-uri', REDIRECT,
      '--scope', 'patient/*.rs user/*.rs offline_access'))![1];
    const out = kiln('client', 'add', '--tenant', 'default', '--name', 'Clinic Portal', '--secret', '--redirect-uri', REDIRECT, '--scope', 'patient/*.rs');
    confidential = /client_id: (\S+)/.exec(out)![1];
    confidentialSecret = /client_secret: (\S+)/.exec(out)![1];
    kiln('user', 'add', '--tenant', 'default', 'dr.who', '--fhir-user', 'Practitioner/77');
    kiln('user', 'add', '--tenant', 'default', 'alice', '--fhir-user', `Patient/${patients.alice}`);
  });
  after(async () => {
    await server.stop();
    removeDataDir(server.dataDir);
  });

  it('standalone launch: login, patient picker, consent, code exchange with PKCE, id_token and refresh token', async () => {
    const scope = 'launch/patient openid fhirUser offline_access patient/Observation.rs patient/Patient.rs';
    const { params, verifier } = await launch({ scope, pickName: 'smi', patient: patients.bob });
    const code = params.get('code')!;
    const res = await exchange(code, verifier);
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.json.patient, patients.bob);
    assert.equal(res.json.token_type, 'Bearer');
    assert.deepEqual(res.json.scope.split(' ').sort(), scope.split(' ').sort());
    const ctx = await verifyAccessToken(`Bearer ${res.json.access_token}`, { audience: server.url, tenant: 'default' });
    assert.equal(ctx.patient, patients.bob);
    assert.equal(ctx.fhirUser, 'Practitioner/77');
    assert.equal(ctx.subject, 'dr.who');
    assert.equal(ctx.clientId, app);
    // The id_token verifies against the published JWKS, for this client, with fhirUser and nonce.
    const jwks = createRemoteJWKSet(new URL(`${server.url}/auth/jwks`));
    const { payload } = await jwtVerify(res.json.id_token, jwks, { issuer: server.url, audience: app });
    assert.equal(payload.fhirUser, `${server.url}/Practitioner/77`);
    assert.equal(payload.nonce, 'n-1');
    assert.equal(payload.sub, 'dr.who');
    assert.ok(res.json.refresh_token);
  });

  it('the picker searches patients by name', async () => {
    const b = new Browser();
    const { challenge } = pkce();
    const start = await b.request('GET', authorizeUrl({ response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'launch/patient patient/*.rs', state: 's', aud: server.url, code_challenge: challenge, code_challenge_method: 'S256' }));
    const picker = await b.request('POST', `${server.url}/auth/login`, { request: start.request!, username: 'dr.who', password: PASSWORD });
    for (const name of ['Alice', 'Bob', 'Carol']) assert.match(picker.html, new RegExp(name));
    const smiths = await b.request('POST', `${server.url}/auth/pick`, { request: picker.request!, name: 'smith', action: 'search' });
    assert.match(smiths.html, /Alice/);
    assert.match(smiths.html, /Bob/);
    assert.doesNotMatch(smiths.html, /Carol/);
    const unknown = await b.request('POST', `${server.url}/auth/pick`, { request: picker.request!, patient: 'no-such-patient' });
    assert.equal(unknown.status, 400);
    // Another browser cannot continue this request.
    const thief = await new Browser().request('POST', `${server.url}/auth/pick`, { request: picker.request!, patient: patients.alice });
    assert.equal(thief.status, 400);
    assert.match(thief.html, /unknown or expired/);
  });

  it('a patient user signs in as their own patient context (no picker)', async () => {
    const { params, verifier } = await launch({ scope: 'launch/patient patient/*.rs', username: 'alice' });
    const res = await exchange(params.get('code')!, verifier);
    assert.equal(res.json.patient, patients.alice);
    // Posting to the picker cannot swap in another patient.
    const b = new Browser();
    const { verifier: v2, challenge } = pkce();
    const start = await b.request('GET', authorizeUrl({ response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'launch/patient patient/*.rs', state: 's2', aud: server.url, code_challenge: challenge, code_challenge_method: 'S256' }));
    const consentPage = await b.request('POST', `${server.url}/auth/login`, { request: start.request!, username: 'alice', password: PASSWORD });
    assert.match(consentPage.html, /Allow/);
    const swapped = await b.request('POST', `${server.url}/auth/pick`, { request: consentPage.request!, patient: patients.bob });
    assert.match(swapped.html, /Allow/);
    const done = await b.request('POST', `${server.url}/auth/consent`, { request: consentPage.request!, decision: 'approve', scope: 'patient/*.rs' });
    const again = await exchange(new URL(done.location!).searchParams.get('code')!, v2);
    assert.equal(again.json.patient, patients.alice);
  });

  it('requires PKCE with S256 and checks the verifier', async () => {
    const b = new Browser();
    const base = { response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'user/*.rs', state: 'st', aud: server.url };
    for (const [extra, why] of [[{}, /PKCE/], [{ code_challenge: 'a'.repeat(43), code_challenge_method: 'plain' }, /plain/]] as const) {
      const r = await b.request('GET', authorizeUrl({ ...base, ...extra }));
      assert.equal(r.status, 302);
      const loc = new URL(r.location!);
      assert.equal(loc.searchParams.get('error'), 'invalid_request');
      assert.match(loc.searchParams.get('error_description')!, why);
      assert.equal(loc.searchParams.get('state'), 'st');
    }
    const { params, verifier } = await launch({ scope: 'user/*.rs' });
    const code = params.get('code')!;
    const missing = await tokenRequest({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, client_id: app });
    assert.equal(missing.status, 400);
    assert.equal(missing.json.error, 'invalid_request');
    const wrong = await exchange(code, pkce().verifier);
    assert.equal(wrong.status, 400);
    assert.equal(wrong.json.error, 'invalid_grant');
    // A failed verifier does not burn the code for the real app.
    assert.equal((await exchange(code, verifier)).status, 200);
  });

  it('refuses a reused code and revokes what the first exchange issued', async () => {
    const { params, verifier } = await launch({ scope: 'user/*.rs offline_access' });
    const code = params.get('code')!;
    const first = await exchange(code, verifier);
    assert.equal(first.status, 200);
    const second = await exchange(code, verifier);
    assert.equal(second.status, 400);
    assert.equal(second.json.error, 'invalid_grant');
    const refresh = await tokenRequest({ grant_type: 'refresh_token', refresh_token: first.json.refresh_token, client_id: app });
    assert.equal(refresh.status, 400);
    assert.equal(refresh.json.error, 'invalid_grant');
  });

  it('rotates refresh tokens; replaying a rotated one revokes the chain', async () => {
    const { params, verifier } = await launch({ scope: 'launch/patient patient/*.rs offline_access', pickName: 'jones', patient: patients.carol });
    const first = await exchange(params.get('code')!, verifier);
    const r1 = first.json.refresh_token;
    const second = await tokenRequest({ grant_type: 'refresh_token', refresh_token: r1, client_id: app });
    assert.equal(second.status, 200, JSON.stringify(second.json));
    assert.equal(second.json.patient, patients.carol);
    assert.notEqual(second.json.refresh_token, r1);
    const ctx = await verifyAccessToken(`Bearer ${second.json.access_token}`, { audience: server.url, tenant: 'default' });
    assert.equal(ctx.patient, patients.carol);
    // Narrowing on refresh is allowed, widening is not.
    const r2 = second.json.refresh_token;
    const wider = await tokenRequest({ grant_type: 'refresh_token', refresh_token: r2, client_id: app, scope: 'patient/*.cruds' });
    assert.equal(wider.json.error, 'invalid_scope');
    const third = await tokenRequest({ grant_type: 'refresh_token', refresh_token: r2, client_id: app, scope: 'patient/*.rs offline_access' });
    assert.equal(third.status, 200, JSON.stringify(third.json));
    assert.equal(third.json.scope, 'patient/*.rs offline_access');
    const replay = await tokenRequest({ grant_type: 'refresh_token', refresh_token: r1, client_id: app });
    assert.equal(replay.json.error, 'invalid_grant');
    const afterReplay = await tokenRequest({ grant_type: 'refresh_token', refresh_token: third.json.refresh_token, client_id: app });
    assert.equal(afterReplay.json.error, 'invalid_grant', 'the newest token of the chain is revoked too');
  });

  it('EHR launch: the launch parameter gives the patient context without a picker', async () => {
    const launchId = kiln('launch', '--tenant', 'default', '--client', app, '--patient', patients.alice).trim().split('\n').at(-1)!;
    const { params, verifier } = await launch({ scope: 'launch openid fhirUser patient/*.rs', extra: { launch: launchId } });
    const res = await exchange(params.get('code')!, verifier);
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.json.patient, patients.alice);
    assert.equal(decodeJwt(res.json.id_token).fhirUser, `${server.url}/Practitioner/77`);
    const r = await new Browser().request('GET', authorizeUrl({ response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'launch patient/*.rs', state: 'x', aud: server.url, code_challenge: pkce().challenge, code_challenge_method: 'S256', launch: 'forged-launch' }));
    assert.equal(new URL(r.location!).searchParams.get('error'), 'invalid_request');
  });

  it("a Patient user's grant is their own compartment: user/*.rs becomes patient/*.rs for their own record", async () => {
    // The consent page offers what will be granted; ticking the scope as asked changes nothing.
    const { params, verifier } = await launch({ scope: 'openid fhirUser user/*.rs', username: 'alice', ticked: ['user/*.rs', 'patient/*.rs'] });
    const res = await exchange(params.get('code')!, verifier);
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.json.scope, 'openid fhirUser patient/*.rs');
    assert.equal(res.json.patient, patients.alice);
    const ctx = await verifyAccessToken(`Bearer ${res.json.access_token}`, { audience: server.url, tenant: 'default' });
    assert.deepEqual(ctx.scopes, ['openid', 'fhirUser', 'patient/*.rs']);
    assert.equal(ctx.patient, patients.alice);
    assert.equal(ctx.fhirUser, `Patient/${patients.alice}`);
  });

  it("a refresh token granted to a Patient user with user/ scopes (before that rule) refreshes into their own compartment only", async () => {
    const refresh = crypto.randomBytes(32).toString('base64url');
    const { rows } = await server.db.owner.query("SELECT id FROM organizations WHERE slug = 'default'");
    await withTenant(server.db.owner, rows[0].id, (tx) => insertRefreshToken(tx, {
      tokenHash: sha256(refresh), family: crypto.randomUUID(), clientId: app, scopes: ['fhirUser', 'user/*.rs', 'offline_access'],
      username: 'alice', fhirUser: `Patient/${patients.alice}`, expiresAt: Math.floor(Date.now() / 1000) + 3600,
    }));
    const res = await tokenRequest({ grant_type: 'refresh_token', refresh_token: refresh, client_id: app });
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.json.scope, 'fhirUser patient/*.rs offline_access');
    assert.equal(res.json.patient, patients.alice);
    const ctx = await verifyAccessToken(`Bearer ${res.json.access_token}`, { audience: server.url, tenant: 'default' });
    assert.deepEqual(ctx.scopes, ['fhirUser', 'patient/*.rs', 'offline_access']);
    assert.equal(ctx.patient, patients.alice);
  });

  it('an EHR launch is for one client, one user when named, one patient user only for themselves, and is used once', async () => {
    const newLaunch = (...extra: string[]) => kiln('launch', '--tenant', 'default', '--client', app, ...extra).trim().split('\n').at(-1)!;
    const start = (launchId: string, client = app) => new Browser().request('GET', authorizeUrl({
      response_type: 'code', client_id: client, redirect_uri: REDIRECT, scope: 'launch patient/*.rs', state: 'l', aud: server.url,
      code_challenge: pkce().challenge, code_challenge_method: 'S256', launch: launchId,
    }));
    const errorOf = (r: { location?: string }) => new URL(r.location!).searchParams.get('error');
    // Used once: the second authorize request presenting it is refused.
    const once = newLaunch('--patient', patients.bob);
    const { params } = await launch({ scope: 'launch patient/*.rs', extra: { launch: once } });
    assert.ok(params.get('code'));
    assert.equal(errorOf(await start(once)), 'invalid_request', 'a launch id is used once');
    // Bound to its client.
    const forApp = newLaunch('--patient', patients.bob);
    assert.equal(errorOf(await start(forApp, confidential)), 'invalid_request', 'another client cannot use it');
    assert.throws(() => kiln('launch', '--tenant', 'default', '--client', 'no-such-client', '--patient', patients.bob), 'launch for an unknown client');
    assert.throws(() => kiln('launch', '--tenant', 'default', '--patient', patients.bob), '--client is required');
    // Bound to its user, when the EHR names one.
    /** Starts an authorize request with the launch and signs in as `username`. */
    const signIn = async (launchId: string, username: string) => {
      const browser = new Browser();
      const started = await browser.request('GET', authorizeUrl({
        response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'launch patient/*.rs', state: 's', aud: server.url,
        code_challenge: pkce().challenge, code_challenge_method: 'S256', launch: launchId,
      }));
      return { browser, started, page: await browser.request('POST', `${server.url}/auth/login`, { request: started.request!, username, password: PASSWORD }) };
    };
    const other = (await signIn(newLaunch('--patient', patients.bob, '--user', 'dr.who'), 'alice')).page;
    assert.equal(other.status, 303, other.html);
    assert.equal(errorOf(other), 'access_denied');
    // A Patient user with a launch for another patient gets no token for that patient.
    const { browser: b2, started: s2, page: alice } = await signIn(newLaunch('--patient', patients.bob), 'alice');
    assert.equal(alice.status, 303, alice.html);
    assert.equal(errorOf(alice), 'access_denied');
    assert.match(new URL(alice.location!).searchParams.get('error_description')!, /own record/);
    const consent = await b2.request('POST', `${server.url}/auth/consent`, { request: s2.request!, decision: 'approve', scope: 'patient/*.rs' });
    assert.equal(consent.status, 400, 'the request is gone');
  });

  it('checks client, redirect_uri and aud before anything else', async () => {
    const b = new Browser();
    const good = { response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'user/*.rs', state: 'st', aud: server.url, code_challenge: pkce().challenge, code_challenge_method: 'S256' };
    // An unregistered redirect_uri is never redirected to.
    const evil = await b.request('GET', authorizeUrl({ ...good, redirect_uri: 'https://evil.example/cb' }));
    assert.equal(evil.status, 400);
    assert.equal(evil.location, undefined);
    const unknown = await b.request('GET', authorizeUrl({ ...good, client_id: 'nope' }));
    assert.equal(unknown.status, 400);
    const aud = await b.request('GET', authorizeUrl({ ...good, aud: 'https://other.example/fhir' }));
    assert.equal(new URL(aud.location!).searchParams.get('error'), 'invalid_request');
    assert.match(new URL(aud.location!).searchParams.get('error_description')!, /aud/);
    const scope = await b.request('GET', authorizeUrl({ ...good, scope: 'system/*.cruds' }));
    assert.equal(new URL(scope.location!).searchParams.get('error'), 'invalid_scope');
    const bad = await b.request('POST', `${server.url}/auth/login`, { request: (await b.request('GET', authorizeUrl(good))).request!, username: 'dr.who', password: 'wrong password' });
    assert.equal(bad.status, 401);
    assert.match(bad.html, /Wrong username or password/);
  });

  it('authorize-post, deny, and unticked scopes', async () => {
    const b = new Browser();
    const { challenge } = pkce();
    const start = await b.request('POST', `${server.url}/auth/authorize`, { response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'user/*.rs', state: 'p', aud: server.url, code_challenge: challenge, code_challenge_method: 'S256' });
    assert.equal(start.status, 200);
    assert.ok(start.request);
    const denied = await launch({ scope: 'user/*.rs', decision: 'deny' });
    assert.equal(denied.params.get('error'), 'access_denied');
    assert.equal(denied.params.get('code'), null);
    const partial = await launch({ scope: 'user/*.rs offline_access', ticked: ['user/*.rs'] });
    const res = await exchange(partial.params.get('code')!, partial.verifier);
    assert.equal(res.json.scope, 'user/*.rs');
    assert.equal(res.json.refresh_token, undefined);
  });

  it('a confidential app authenticates with client_secret_basic at the token endpoint', async () => {
    const { params, verifier } = await launch({ scope: 'launch/patient patient/*.rs', client: confidential, pickName: '', patient: patients.bob });
    const code = params.get('code')!;
    const noAuth = await exchange(code, verifier, {}, confidential);
    assert.equal(noAuth.status, 401);
    assert.equal(noAuth.json.error, 'invalid_client');
    const ok = await exchange(code, verifier, { authorization: `Basic ${Buffer.from(`${confidential}:${confidentialSecret}`).toString('base64')}` });
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.equal(ok.json.patient, patients.bob);
  });

  it('sign-ins and token requests, granted and refused, each leave an AuditEvent (DCM 110114) naming user, client and address', async () => {
    const AUTH = encodeURIComponent('http://dicom.nema.org/resources/ontology/DCM|110114');
    const events = async () => (await fhir(server.url, 'GET', `AuditEvent?type=${AUTH}&_count=1000`, undefined, admin)).json.entry?.map((e: any) => e.resource) ?? [];
    const seen = new Set((await events()).map((e: any) => e.id));
    // A wrong password, then a granted launch (a sign-in and a token), then the code again (refused).
    const b = new Browser();
    const { challenge } = pkce();
    const start = await b.request('GET', authorizeUrl({ response_type: 'code', client_id: app, redirect_uri: REDIRECT, scope: 'user/*.rs', state: 'a', aud: server.url, code_challenge: challenge, code_challenge_method: 'S256' }));
    const wrong = await b.request('POST', `${server.url}/auth/login`, { request: start.request!, username: 'dr.who', password: 'not it' });
    assert.equal(wrong.status, 401);
    const { params, verifier } = await launch({ scope: 'user/*.rs' });
    assert.equal((await exchange(params.get('code')!, verifier)).status, 200);
    assert.equal((await exchange(params.get('code')!, verifier)).status, 400);
    const fresh = (await events()).filter((e: any) => !seen.has(e.id));
    const summary = fresh.map((e: any) => [e.subtype[0].code, e.outcome, e.agent.find((g: any) => g.requestor)?.name, e.agent.find((g: any) => g.type.coding[0].code === '110150').name].join(' ')).sort();
    assert.deepEqual(summary, ['110122 0 dr.who ' + app, '110122 4 dr.who ' + app, 'ITI-71 0 dr.who ' + app, 'ITI-71 4 ' + app + ' ' + app].sort(), JSON.stringify(fresh, null, 1));
    for (const e of fresh) {
      assert.equal(e.agent[0].network.address.replace(/^::ffff:/, ''), '127.0.0.1');
      assert.equal(e.action, 'E');
    }
    const refused = fresh.find((e: any) => e.subtype[0].code === 'ITI-71' && e.outcome === '4');
    assert.match(refused.outcomeDesc, /^400 invalid_grant: /);
    assert.ok(!JSON.stringify(fresh).includes(params.get('code')!), 'no code in the events');
  });

  it('revokes a refresh token (RFC 7009) and introspection then reports it inactive', async () => {
    const { params, verifier } = await launch({ scope: 'user/*.rs offline_access' });
    const tokens = (await exchange(params.get('code')!, verifier)).json;
    const introspect = async (t: string) => (await fetch(`${server.url}/auth/introspect`, {
      method: 'POST', body: new URLSearchParams({ token: t }),
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`${confidential}:${confidentialSecret}`).toString('base64')}` },
    })).json();
    const live = await introspect(tokens.refresh_token);
    assert.equal(live.active, true);
    assert.equal(live.client_id, app);
    assert.equal((await introspect(tokens.access_token)).sub, 'dr.who');
    const res = await fetch(`${server.url}/auth/revoke`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token: tokens.refresh_token, client_id: app }) });
    assert.equal(res.status, 200);
    assert.deepEqual(await introspect(tokens.refresh_token), { active: false });
    const refresh = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: app });
    assert.equal(refresh.json.error, 'invalid_grant');
  });

  it('picker and consent escape what a Patient carries, explain online_access, and a tampered paging cursor shows the first page', async () => {
    const born = new Date(Date.now() - 10 * 86_400_000).toISOString().slice(0, 10);
    const zed = (await fhir(server.url, 'POST', 'Patient', {
      resourceType: 'Patient', name: [{ given: ['<img src=x>'], family: 'Zed"&' }], birthDate: born, gender: 'female',
      identifier: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] }, value: '<b>Z-1</b>' }],
    }, admin)).json.id;
    const online = /client_id: (\S+)/.exec(kiln('client', 'add', '--tenant', 'default', '--name', 'Ward <Board>', '--public', '--redirect-uri', REDIRECT,
      '--scope', 'patient/*.rs online_access'))![1];
    const b = new Browser();
    const { challenge } = pkce();
    const start = await b.request('GET', authorizeUrl({ response_type: 'code', client_id: online, redirect_uri: REDIRECT, scope: 'launch/patient patient/*.rs online_access', state: 's', aud: server.url, code_challenge: challenge, code_challenge_method: 'S256' }));
    const picker = await b.request('POST', `${server.url}/auth/login`, { request: start.request!, username: 'dr.who', password: PASSWORD });
    const tampered = await b.request('POST', `${server.url}/auth/pick`, { request: picker.request!, name: '', page: 'not-a-cursor' });
    assert.equal(tampered.status, 200);
    for (const name of ['Alice', 'Bob', 'Carol']) assert.match(tampered.html, new RegExp(name));
    const found = await b.request('POST', `${server.url}/auth/pick`, { request: picker.request!, name: 'zed', action: 'search' });
    assert.match(found.html, /&lt;img src=x&gt; Zed&quot;&amp;/);
    assert.match(found.html, /&lt;b&gt;Z-1&lt;\/b&gt;/);
    assert.match(found.html, new RegExp(`${born} \\(age 10 days\\)`));
    assert.doesNotMatch(found.html, /<img|<b>/);
    const consent = await b.request('POST', `${server.url}/auth/pick`, { request: picker.request!, patient: zed });
    assert.match(consent.html, /Allow Ward &lt;Board&gt;\?/);
    assert.match(consent.html, /<strong>&lt;img src=x&gt; Zed&quot;&amp;<\/strong>/);
    assert.match(consent.html, /MRN &lt;b&gt;Z-1&lt;\/b&gt;/);
    assert.match(consent.html, /Read and search all of this patient&#39;s data <code class="muted">patient\/\*\.rs/);
    assert.match(consent.html, /Keep access without signing in again for up to 8 hours/);
    assert.doesNotMatch(consent.html, /<img|<b>/);
  });
});
