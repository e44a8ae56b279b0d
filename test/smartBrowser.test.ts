// A real browser performs a SMART standalone launch: headless Chromium (Debian's
// chromium, driven by playwright-core) opens the authorize URL an app builds, signs in,
// picks the patient, consents, and lands on the app's redirect_uri (a local server that
// captures the code); the app, running in that page, exchanges the code with its PKCE
// verifier (cross-origin, as a browser app does), and with the token the page reads the
// patient's Observations from the FHIR API (cross-origin too: CORS preflight and exposed headers).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser } from 'playwright-core';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { mintAdminToken, verifyAccessToken } from '../src/auth/verify.ts';

const PASSWORD = 'correct horse battery';

let server: TestServer;
let browser: Browser;
let appServer: http.Server;
let redirectUri: string;
const callbacks: URL[] = [];
let clientId: string;
let wilma: string;
let fred: string;

function kiln(...args: string[]): string {
  return execFileSync('npx', ['tsx', 'src/cli.ts', 'auth', ...args], {
    env: { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort), KILN_AUTH_PASSWORD: PASSWORD },
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  });
}

const observation = (patient: string, value: number) => ({
  resourceType: 'Observation', status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
  subject: { reference: `Patient/${patient}` }, effectiveDateTime: '2024-05-01T10:00:00Z',
  valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
});

describe('SMART standalone launch in a real browser', () => {
  before(async () => {
    server = await startTestServer({ auth: 'smart' });
    const admin = { authorization: `Bearer ${(await mintAdminToken(server.db, { tenant: 'default', audience: server.url })).accessToken}` };
    wilma = (await fhir(server.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ given: ['Wilma'], family: 'Flintstone' }], birthDate: '1980-03-02' }, admin)).json.id;
    fred = (await fhir(server.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ given: ['Fred'], family: 'Flintstone' }] }, admin)).json.id;
    for (const [p, v] of [[wilma, 61], [wilma, 64], [fred, 90]] as const) {
      assert.equal((await fhir(server.url, 'POST', 'Observation', observation(p, v), admin)).status, 201);
    }
    // The app: its redirect_uri captures the code and serves the page the app runs in.
    appServer = http.createServer((req, res) => {
      callbacks.push(new URL(req.url!, redirectUri));
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><title>Growth Chart</title><p>launching...</p>');
    });
    await new Promise<void>((r) => appServer.listen(0, '127.0.0.1', r));
    redirectUri = `http://127.0.0.1:${(appServer.address() as AddressInfo).port}/callback`;
    clientId = /client_id: (\S+)/.exec(kiln('client', 'add', '--tenant', 'default', '--name', 'Growth Chart', '--public', '--redirect-uri', redirectUri,
      '--scope', 'patient/*.rs offline_access'))![1];
    kiln('user', 'add', '--tenant', 'default', 'nurse.joy', '--fhir-user', 'Practitioner/12');
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  });
  after(async () => {
    await browser?.close();
    await server.stop();
    appServer.close();
    removeDataDir(server.dataDir);
  });

  it('authorize, login, patient pick, consent, code exchange with PKCE, then reads the patient\'s Observations', async () => {
    // What the app does: discovery, PKCE pair, state.
    const config = await (await fetch(`${server.url}/.well-known/smart-configuration`)).json();
    const verifier = crypto.randomBytes(48).toString('base64url');
    const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
    const state = crypto.randomUUID();
    const authorize = new URL(config.authorization_endpoint);
    for (const [k, v] of Object.entries({
      response_type: 'code', client_id: clientId, redirect_uri: redirectUri, state, aud: server.url,
      scope: 'launch/patient openid fhirUser patient/Observation.rs patient/Patient.rs', code_challenge: challenge, code_challenge_method: 'S256',
    })) authorize.searchParams.set(k, v);

    const page = await browser.newPage();
    await page.goto(authorize.toString());
    assert.match(await page.textContent('h1') ?? '', /Sign in/);
    assert.match(await page.textContent('body') ?? '', /Growth Chart/);
    await page.fill('#username', 'nurse.joy');
    await page.fill('#password', 'not the password');
    await page.click('#sign-in');
    assert.match(await page.textContent('[role=alert]') ?? '', /Wrong username or password/);
    await page.fill('#password', PASSWORD);
    await page.click('#sign-in');

    await page.waitForSelector('text=Choose a patient');
    await page.fill('#name', 'flint');
    await page.click('#search');
    await page.waitForSelector(`button[name=patient][value="${wilma}"]`);
    assert.match(await page.textContent('table') ?? '', /Fred Flintstone/);
    await page.click(`tr:has-text("Wilma Flintstone") button[name=patient]`);

    await page.waitForSelector('#approve');
    const scopesListed = await page.textContent('#scopes') ?? '';
    assert.match(scopesListed, /patient\/Observation\.rs/);
    assert.match(scopesListed, /launch\/patient/);
    await Promise.all([page.waitForURL((u) => u.toString().startsWith(redirectUri)), page.click('#approve')]);

    const landed = new URL(page.url());
    assert.equal(landed.searchParams.get('state'), state);
    const code = landed.searchParams.get('code')!;
    assert.ok(code);
    assert.ok(callbacks.some((u) => u.pathname === '/callback' && u.searchParams.get('code') === code), 'the redirect_uri server received the code');

    // The app exchanges the code from its own page (cross-origin to Kiln).
    const tokens = await page.evaluate(async ([tokenEndpoint, form]) => {
      const res = await fetch(tokenEndpoint, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form) });
      return { status: res.status, body: await res.json() };
    }, [config.token_endpoint, { grant_type: 'authorization_code', code, redirect_uri: redirectUri, client_id: clientId, code_verifier: verifier }] as const);
    assert.equal(tokens.status, 200, JSON.stringify(tokens.body));
    assert.equal(tokens.body.patient, wilma);
    assert.ok(tokens.body.id_token);
    const ctx = await verifyAccessToken(`Bearer ${tokens.body.access_token}`, { audience: server.url, tenant: 'default' });
    assert.equal(ctx.patient, wilma);
    assert.equal(ctx.fhirUser, 'Practitioner/12');

    // The app reads the FHIR API from its page: a bearer header makes the browser send a
    // CORS preflight first, and only exposed headers (ETag) are readable.
    const read = await page.evaluate(async ([base, token, patient]) => {
      const headers = { authorization: `Bearer ${token}`, accept: 'application/fhir+json' };
      const obs = await fetch(`${base}/Observation?patient=${patient}`, { headers });
      const pat = await fetch(`${base}/Patient/${patient}`, { headers });
      return { status: obs.status, body: await obs.json(), patientStatus: pat.status, etag: pat.headers.get('etag') };
    }, [server.url, tokens.body.access_token, tokens.body.patient] as const);
    assert.equal(read.status, 200, JSON.stringify(read.body));
    const values = read.body.entry.map((e: any) => e.resource.valueQuantity.value).sort();
    assert.deepEqual(values, [61, 64]);
    for (const e of read.body.entry) assert.equal(e.resource.subject.reference, `Patient/${wilma}`);
    assert.equal(read.patientStatus, 200);
    assert.equal(read.etag, 'W/"1"');
    await page.close();
  });
});
