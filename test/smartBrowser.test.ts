// A real browser performs a SMART standalone launch: headless Chromium (the build shipped
// in the @sparticuz/chromium npm package, driven by playwright-core) opens the authorize
// URL an app builds, signs in, finds the patient in the picker (same-named patients told
// apart, search by MRN, paging), reads the consent page's words, consents, and lands on
// the app's redirect_uri (a local server that
// captures the code); the app, running in that page, exchanges the code with its PKCE
// verifier (cross-origin, as a browser app does), and with the token the page reads the
// patient's Observations from the FHIR API (cross-origin too: CORS preflight and exposed headers).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { mintAdminToken, verifyAccessToken } from '../src/auth/verify.ts';

const PASSWORD = 'correct horse battery';
const MR = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] };
const mrn = (value: string) => ({ system: 'urn:oid:2.16.840.1.113883.19.5', type: MR, value });

let server: TestServer;
let browser: Browser;
let appServer: http.Server;
let redirectUri: string;
const callbacks: URL[] = [];
let clientId: string;
let wilma: string;
let fred: string;
let shots: string;

/** The picker's rows as text, one string a row. */
const pickerRows = (page: Page) => page.locator('#patients tbody tr').allTextContents();

/** A PNG screenshot of the page, checked for its signature and size. */
async function screenshot(page: Page, name: string): Promise<void> {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const png = fs.readFileSync(file);
  assert.ok(png.length > 1000, `${name}.png has ${png.length} bytes`);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${name}.png is a PNG`);
}

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
    wilma = (await fhir(server.url, 'POST', 'Patient', {
      resourceType: 'Patient', name: [{ given: ['Wilma'], family: 'Flintstone' }], birthDate: '1980-03-02', gender: 'female',
      identifier: [{ system: 'http://hl7.org/fhir/sid/us-ssn', value: '999-01-0001' }, mrn('W-1001')],
    }, admin)).json.id;
    // Fred has no MRN: the picker shows his first identifier and says it is not one.
    fred = (await fhir(server.url, 'POST', 'Patient', {
      resourceType: 'Patient', name: [{ given: ['Fred'], family: 'Flintstone' }], gender: 'male',
      identifier: [{ type: { text: 'Passport' }, value: 'P-77' }],
    }, admin)).json.id;
    // Two patients of the same name, and 22 of one family to page through (a page holds 20).
    const patients = [
      { resourceType: 'Patient', name: [{ given: ['Sam'], family: 'Rubble' }], birthDate: '1990-01-05', gender: 'female', identifier: [mrn('R-2001')] },
      { resourceType: 'Patient', name: [{ given: ['Sam'], family: 'Rubble' }], birthDate: '1962-09-30', gender: 'male', identifier: [mrn('R-2002')] },
      ...Array.from({ length: 22 }, (_, i) => ({ resourceType: 'Patient', name: [{ given: [`Pat${String(i + 1).padStart(2, '0')}`], family: 'Slate' }], identifier: [mrn(`S-${3001 + i}`)] })),
    ];
    const loaded = await fhir(server.url, 'POST', '', {
      resourceType: 'Bundle', type: 'transaction', entry: patients.map((resource) => ({ resource, request: { method: 'POST', url: 'Patient' } })),
    }, admin);
    assert.equal(loaded.status, 200, JSON.stringify(loaded.json));
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
    // The Chromium build in the npm package: `npm install` is all the test needs.
    const shipped = (await import('@sparticuz/chromium')).default;
    browser = await chromium.launch({ executablePath: await shipped.executablePath(), args: shipped.args, headless: true });
    shots = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-smart-shots-'));
  });
  after(async () => {
    await browser?.close();
    await server.stop();
    appServer.close();
    removeDataDir(server.dataDir);
    if (shots) fs.rmSync(shots, { recursive: true, force: true });
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
      scope: 'launch/patient openid fhirUser patient/Observation.rs patient/Patient.rs offline_access', code_challenge: challenge, code_challenge_method: 'S256',
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
    // The first page: 20 of the 26 patients, a next page and no previous one.
    assert.equal((await pickerRows(page)).length, 20);
    assert.equal(await page.locator('#next').count(), 1);
    assert.equal(await page.locator('#previous').count(), 0);

    // Two Sam Rubbles, told apart by birth date (with age), gender and MRN.
    await page.fill('#name', 'sam rubble');
    await page.click('#search');
    await page.waitForSelector('text=R-2002');
    const sams = (await pickerRows(page)).sort((x, y) => x.localeCompare(y));
    assert.equal(sams.length, 2, sams.join('\n'));
    assert.match(sams[0], /Sam Rubble.*1962-09-30 \(age \d+ years\).*Male.*R-2002/s);
    assert.match(sams[1], /Sam Rubble.*1990-01-05 \(age \d+ years\).*Female.*R-2001/s);
    assert.equal(await page.locator('#paging').count(), 0, 'two rows: no other page');

    // Paging through the Slates: 20, then the last 2, then back.
    await page.fill('#name', 'slate');
    await page.click('#search');
    await page.waitForSelector('text=Pat01');
    const first = await pickerRows(page);
    assert.equal(first.length, 20);
    assert.match(first[0], /Pat01 Slate.*S-3001/s);
    assert.match(first[19], /Pat20 Slate.*S-3020/s);
    await page.click('#next');
    await page.waitForSelector('text=Pat22');
    const second = await pickerRows(page);
    assert.deepEqual(second.map((r) => /Pat\d\d/.exec(r)![0]), ['Pat21', 'Pat22']);
    assert.equal(await page.locator('#next').count(), 0);
    assert.equal(await page.inputValue('#name'), 'slate', 'the search stays while paging');
    await page.click('#previous');
    await page.waitForSelector('text=Pat01');
    assert.deepEqual(await pickerRows(page), first);

    // Fred's only identifier is not an MRN, and the picker says so.
    await page.fill('#name', 'flint');
    await page.click('#search');
    await page.waitForSelector('text=Fred Flintstone');
    assert.match((await pickerRows(page)).find((r) => r.includes('Fred'))!, /Male.*P-77 \(Passport, not an MRN\)/s);

    // Searching by MRN narrows to the one patient; her SSN (listed first) is not what is shown.
    await page.fill('#name', 'W-1001');
    await page.click('#search');
    await page.waitForSelector('text=W-1001');
    const found = await pickerRows(page);
    assert.equal(found.length, 1, found.join('\n'));
    assert.match(found[0], /Wilma Flintstone.*1980-03-02 \(age \d+ years\).*Female.*W-1001/s);
    assert.doesNotMatch(found[0], /999-01-0001|Patient\//);
    await screenshot(page, 'picker');
    await page.click(`tr:has-text("Wilma Flintstone") button[name=patient]`);

    // The consent names the patient and says what each scope allows, in words.
    await page.waitForSelector('#approve');
    const patientShown = await page.textContent('#patient') ?? '';
    assert.match(patientShown, /Wilma Flintstone/);
    assert.match(patientShown, /Born 1980-03-02 \(age \d+ years\)/);
    assert.match(patientShown, /MRN W-1001/);
    assert.doesNotMatch(patientShown, new RegExp(wilma));
    const scopesListed = await page.textContent('#scopes') ?? '';
    assert.match(scopesListed, /Read and search this patient's observations\s*patient\/Observation\.rs/);
    assert.match(scopesListed, /Read and search this patient's record \(demographics\)\s*patient\/Patient\.rs/);
    assert.match(scopesListed, /Know which patient is selected \(the patient named above\)\s*launch\/patient/);
    assert.match(scopesListed, /Confirm to the app that it is you who signed in/);
    assert.match(scopesListed, /Tell the app which user record you are/);
    assert.match(scopesListed, /a refresh token that lasts 90 days from its last use, until revoked\s*offline_access/);
    await screenshot(page, 'consent');
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
