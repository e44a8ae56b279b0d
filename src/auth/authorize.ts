// The authorization endpoint and its pages (SMART App Launch 2.x, RFC 6749 4.1, PKCE
// RFC 7636): authorize (GET or POST) validates the request and shows the login page;
// login, the patient picker (standalone launch/patient) and consent follow as form
// posts; consent ends with a redirect carrying the code and state. Until redirect_uri is
// known to be registered, errors are shown as a page, never redirected.
import type { Tx } from '../store/resources.ts';
import { findClient, type ClientRow } from '../store/authClients.ts';
import { findUser } from '../store/authUsers.ts';
import { forgiveLoginAttempt, lockLoginCounters, recordLoginFailure, type LoginKey } from '../store/authLoginFailures.ts';
import { deleteRequest, findRequest, insertCode, insertRequest, updateRequest, useLaunch, type RequestRow } from '../store/authFlow.ts';
import { findPatientChoice, patientExists, searchPatients } from '../store/authPatients.ts';
import { decodeCursor, encodeCursor, pageOf, type Cursor } from '../http/paging.ts';
import { inOrg, type AuthCtx } from './context.ts';
import { inTurn } from './inTurn.ts';
import { asPatientScopes, grantScopes, parseClinicalScope, patientUser, splitScope } from './scopeGrant.ts';
import { randomToken, sha256, verifyPassword } from './secrets.ts';
import { consentPage, errorPage, loginPage, OPTIONAL_SCOPE, pickerPage } from './pages.ts';
import { auditGranted, auditRefused } from './audit.ts';
import { noStore } from './oauthError.ts';

const REQUEST_SECONDS = 15 * 60;
export const CODE_SECONDS = 120;
/** Patients per picker page. */
const PICKER_PAGE = 20;
const BROWSER_COOKIE = 'kiln_authz';
const CHALLENGE = /^[A-Za-z0-9\-._~]{43,128}$/;

/** The validated authorize parameters kept with the pending request. */
export interface PendingAuthorization {
  redirectUri: string;
  scopes: string[];
  state?: string;
  nonce?: string;
  codeChallenge: string;
  /** A patient must be picked (launch/patient or patient/ scopes, no EHR launch context). */
  needsPatient: boolean;
  /** The user the EHR launch was made for: nobody else may complete this request. */
  launchUser?: string;
}

type Outcome =
  | { kind: 'page'; status: number; html: string; retryAfter?: number }
  | { kind: 'redirect'; url: string };

const page = (status: number, html: string, retryAfter?: number): Outcome => ({ kind: 'page', status, html, retryAfter });

function redirectWith(redirectUri: string, params: Record<string, string | undefined>): Outcome {
  const url = new URL(redirectUri);
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
  return { kind: 'redirect', url: url.toString() };
}

function cookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return out;
}

function send(a: AuthCtx, outcome: Outcome, browser?: string): void {
  noStore(a.res);
  if (browser) {
    a.res.append('Set-Cookie', `${BROWSER_COOKIE}=${browser}; Path=/; HttpOnly; SameSite=Lax${a.req.protocol === 'https' ? '; Secure' : ''}`);
  }
  if (outcome.kind === 'redirect') {
    // 303 after a form post, so the browser GETs the redirect_uri.
    a.res.redirect(a.req.method === 'POST' ? 303 : 302, outcome.url);
    return;
  }
  if (outcome.retryAfter !== undefined) a.res.set('Retry-After', String(outcome.retryAfter));
  a.res.status(outcome.status).type('html').send(outcome.html);
}

const trimSlash = (s: string) => s.replace(/\/+$/, '');

export async function authorize(a: AuthCtx, params: Map<string, string>): Promise<void> {
  const existing = cookies(a.req.get('cookie')).get(BROWSER_COOKIE);
  const browser = existing && /^[A-Za-z0-9_-]{43}$/.test(existing) ? existing : randomToken();
  const outcome = await inOrg(a, async (tx): Promise<Outcome> => {
    const clientId = params.get('client_id');
    if (!clientId) return page(400, errorPage('Invalid request', 'client_id is missing.'));
    const client = await findClient(tx, clientId);
    if (!client || client.revokedAt) return page(400, errorPage('Unknown application', `No active client '${clientId}' is registered here.`));
    if (client.redirectUris.length === 0) return page(400, errorPage('Invalid request', 'This client has no redirect URIs: it cannot use the authorization code flow.'));
    const redirectUri = params.get('redirect_uri') ?? (client.redirectUris.length === 1 ? client.redirectUris[0] : undefined);
    if (!redirectUri || !client.redirectUris.includes(redirectUri)) {
      return page(400, errorPage('Invalid request', 'redirect_uri is missing or not registered for this client.'));
    }
    const state = params.get('state');
    const fail = (error: string, description: string) => redirectWith(redirectUri, { error, error_description: description, state });

    if (params.get('response_type') !== 'code') return fail('unsupported_response_type', 'response_type must be code');
    const method = params.get('code_challenge_method');
    if (method !== 'S256') return fail('invalid_request', method ? `code_challenge_method ${method} is not supported; use S256` : 'PKCE is required: code_challenge_method=S256');
    const codeChallenge = params.get('code_challenge') ?? '';
    if (!CHALLENGE.test(codeChallenge)) return fail('invalid_request', 'code_challenge is missing or malformed');
    const aud = params.get('aud');
    if (!aud || trimSlash(aud) !== a.base) return fail('invalid_request', `aud must be this FHIR server's base URL, ${a.base}`);

    let requested = splitScope(params.get('scope'));
    const launchParam = params.get('launch');
    let launch: { patient?: string; encounter?: string; username?: string } | undefined;
    if (launchParam !== undefined) {
      // Used up here, whatever follows: a launch id opens one authorization, of its own client.
      launch = await useLaunch(tx, sha256(launchParam), clientId);
      if (!launch) return fail('invalid_request', 'The launch parameter is unknown, expired, already used or made for another application');
    } else {
      requested = requested.filter((s) => s !== 'launch'); // EHR launch scope without a launch: nothing to resolve
    }
    const { granted } = grantScopes(requested, client.scopes, 'app');
    if (!granted.some((s) => parseClinicalScope(s) || s === 'openid')) return fail('invalid_scope', 'None of the requested scopes is allowed for this client');

    const usesLaunchPatient = launch && (granted.includes('launch') || granted.includes('launch/patient')) ? launch.patient : undefined;
    const wantsPatient = granted.includes('launch/patient') || granted.some((s) => parseClinicalScope(s)?.context === 'patient');
    const pending: PendingAuthorization = {
      redirectUri, scopes: granted, state, nonce: params.get('nonce'), codeChallenge,
      needsPatient: wantsPatient && !usesLaunchPatient, launchUser: launch?.username,
    };
    const requestId = randomToken();
    await insertRequest<PendingAuthorization>(tx, {
      requestHash: sha256(requestId), browserHash: sha256(browser), clientId, params: pending,
      patient: usesLaunchPatient, encounter: launch && granted.includes('launch') ? launch.encounter : undefined,
    }, REQUEST_SECONDS);
    return page(200, loginPage({ request: requestId, clientName: client.name, tenant: a.org.name }));
  });
  send(a, outcome, browser === existing ? undefined : browser);
}

interface Loaded { request: RequestRow<PendingAuthorization>; client: ClientRow; requestId: string }

/** The pending request a page posts back, checked against the browser that started it. */
async function loadRequest(tx: Tx, a: AuthCtx, form: URLSearchParams): Promise<Loaded | Outcome> {
  const requestId = form.get('request') ?? '';
  const request = requestId ? await findRequest<PendingAuthorization>(tx, sha256(requestId)) : undefined;
  const browser = cookies(a.req.get('cookie')).get(BROWSER_COOKIE);
  if (!request || !browser || sha256(browser) !== request.browserHash) {
    return page(400, errorPage('Sign-in expired', 'This authorization request is unknown or expired. Start again from the application.'));
  }
  const client = await findClient(tx, request.clientId);
  if (!client || client.revokedAt) return page(400, errorPage('Unknown application', 'The client of this request was revoked.'));
  return { request, client, requestId };
}

/**
 * Why the signed-in user cannot have what this request asks: an EHR launch made for
 * another user, or a Patient user with another patient's context. A Patient user acts
 * for themselves only, whatever the launch or the scopes say (see patientUser).
 */
function refusal(l: Loaded): string | undefined {
  const { params, username, fhirUser, patient } = l.request;
  if (params.launchUser && params.launchUser !== username) return 'The launch was made for another user';
  const own = patientUser(fhirUser);
  if (own && patient && patient !== own) return "A patient's sign-in gives access to their own record only, not to the launch's patient";
  return undefined;
}

const refused = (l: Loaded, why: string) => redirectWith(l.request.params.redirectUri, { error: 'access_denied', error_description: why, state: l.request.params.state });

/** The scopes the user may grant: a Patient user's act in their own compartment (asPatientScopes). */
const offered = (l: Loaded) => (patientUser(l.request.fhirUser) ? asPatientScopes(l.request.params.scopes) : l.request.params.scopes);

async function nextStep(tx: Tx, a: AuthCtx, l: Loaded): Promise<Outcome> {
  const why = refusal(l);
  if (why) {
    await deleteRequest(tx, l.request.requestHash);
    return refused(l, why);
  }
  if (l.request.params.needsPatient && !l.request.patient) return picker(tx, a, l, 200, '');
  const id = patientUser(l.request.fhirUser) ?? l.request.patient;
  const patient = id ? (await findPatientChoice(tx, a.org.id, id)) ?? { id } : undefined;
  const { offlineRefreshSeconds, onlineRefreshSeconds } = a.config.auth;
  return page(200, consentPage({
    request: l.requestId, clientName: l.client.name, username: l.request.username!, scopes: offered(l), patient,
    lifetimes: { offlineSeconds: offlineRefreshSeconds, onlineSeconds: onlineRefreshSeconds },
  }));
}

/** A picker cursor carries a row's order key: three strings (family, given, id). */
function pickerCursor(raw: string | null): Cursor | undefined {
  if (!raw) return undefined;
  try {
    return decodeCursor(raw, (key) => key.length === 3 && key.every((k) => k.length <= 1000));
  } catch {
    return undefined; // a tampered or stale cursor shows the first page
  }
}

/** One page of the picker: patients matching `text` from the cursor on, with links to the pages around it. */
async function picker(tx: Tx, a: AuthCtx, l: Loaded, status: number, text: string, cursor?: Cursor): Promise<Outcome> {
  const rows = await searchPatients(tx, a.org.id, {
    text, count: PICKER_PAGE, after: cursor?.dir === 'next' ? cursor.key : undefined, before: cursor?.dir === 'previous' ? cursor.key : undefined,
  });
  const { page: patients, next, previous } = pageOf(rows, PICKER_PAGE, cursor);
  return page(status, pickerPage({
    request: l.requestId, clientName: l.client.name, name: text, patients,
    next: next && encodeCursor('next', next.key), previous: previous && encodeCursor('previous', previous.key),
  }));
}

export async function login(a: AuthCtx, form: URLSearchParams): Promise<void> {
  const username = (form.get('username') ?? '').slice(0, 200);
  const limit = a.config.auth.loginLimit;
  const keys: [LoginKey, LoginKey] = [{ kind: 'user', key: username }, { kind: 'ip', key: a.req.ip ?? '' }];
  // The attempt counts as a failure before the password is checked (under a lock per key, so
  // concurrent guesses are counted one by one); no connection is held while it is hashed.
  const checked = await inTurn(keys.map((k) => `${a.org.id}/${k.kind}/${k.key}`), () => inOrg(a, async (tx) => {
    const l = await loadRequest(tx, a, form);
    if ('kind' in l) return l;
    const user = username ? await findUser(tx, username) : undefined;
    const counters = await lockLoginCounters(tx, keys, limit.windowSeconds);
    const blocked = counters.find((c) => c.failures >= (c.kind === 'user' ? limit.userFailures : limit.ipFailures));
    if (blocked) {
      const minutes = Math.ceil(blocked.secondsLeft / 60);
      return page(429, errorPage('Too many sign-in attempts',
        `Too many failed sign-ins ${blocked.kind === 'user' ? 'for this username' : 'from this network address'}. Try again in ${minutes} minute${minutes === 1 ? '' : 's'}.`), blocked.secondsLeft);
    }
    await recordLoginFailure(tx, counters, limit.windowSeconds);
    return { l, user };
  }));
  if ('kind' in checked) {
    if (checked.kind === 'page' && checked.status === 429) await auditRefused(a, 'login', { status: 429, reason: 'too many failed sign-ins', agent: { subject: username || undefined } });
    return send(a, checked);
  }
  const { l, user } = checked;
  const ok = await verifyPassword(form.get('password') ?? '', user?.passwordHash);
  if (!ok || !user || user.disabledAt) {
    await auditRefused(a, 'login', { status: 401, reason: 'wrong username or password, or a disabled user', agent: { subject: username || undefined, clientId: l.client.clientId } });
    return send(a, page(401, loginPage({ request: l.requestId, clientName: l.client.name, tenant: a.org.name, username, error: 'Wrong username or password.' })));
  }
  const outcome = await inOrg(a, async (tx): Promise<Outcome> => {
    await forgiveLoginAttempt(tx, ...keys);
    await auditGranted(a, tx, 'login', { status: 200, agent: { subject: user.username, clientId: l.client.clientId, fhirUser: user.fhirUser } });
    // A patient signing in is the patient context: no picker, and no other patient.
    const own = /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(user.fhirUser ?? '')?.[1];
    let patient: string | undefined;
    if (own && l.request.params.needsPatient && !l.request.patient) {
      if (!await patientExists(tx, own)) return page(403, errorPage('No patient record', `Your patient record (Patient/${own}) is not on this server.`));
      patient = own;
    }
    await updateRequest(tx, l.request.requestHash, { username: user.username, fhirUser: user.fhirUser, patient });
    return nextStep(tx, a, { ...l, request: { ...l.request, username: user.username, fhirUser: user.fhirUser, patient: patient ?? l.request.patient } });
  });
  send(a, outcome);
}

export async function pick(a: AuthCtx, form: URLSearchParams): Promise<void> {
  const outcome = await inOrg(a, async (tx): Promise<Outcome> => {
    const l = await loadRequest(tx, a, form);
    if ('kind' in l) return l;
    if (!l.request.username) return page(400, errorPage('Not signed in', 'Sign in first.'));
    // The context is chosen once (by the picker, the EHR launch or a patient's own login).
    if (!l.request.params.needsPatient || l.request.patient) return nextStep(tx, a, l);
    const chosen = form.get('patient');
    if (chosen && await patientExists(tx, chosen)) {
      await updateRequest(tx, l.request.requestHash, { patient: chosen });
      return nextStep(tx, a, { ...l, request: { ...l.request, patient: chosen } });
    }
    // A new search starts at the first page; the paging buttons carry their cursor.
    const text = (form.get('name') ?? '').trim().slice(0, 100);
    return picker(tx, a, l, chosen ? 400 : 200, text, form.get('action') === 'search' ? undefined : pickerCursor(form.get('page')));
  });
  send(a, outcome);
}

export async function consent(a: AuthCtx, form: URLSearchParams): Promise<void> {
  const outcome = await inOrg(a, async (tx): Promise<Outcome> => {
    const l = await loadRequest(tx, a, form);
    if ('kind' in l) return l;
    const p = l.request.params;
    if (!l.request.username || (p.needsPatient && !l.request.patient)) return page(400, errorPage('Not ready', 'Sign in and choose a patient first.'));
    await deleteRequest(tx, l.request.requestHash);
    const why = refusal(l);
    if (why) return refused(l, why);
    if (form.get('decision') !== 'approve') {
      return redirectWith(p.redirectUri, { error: 'access_denied', error_description: 'The user denied access', state: p.state });
    }
    // A Patient user's grant is their own compartment: patient/ scopes, their patient context.
    const own = patientUser(l.request.fhirUser);
    if (own && !await patientExists(tx, own)) return page(403, errorPage('No patient record', `Your patient record (Patient/${own}) is not on this server.`));
    // Unticked data scopes are dropped; context and identity scopes stay.
    const ticked = new Set(form.getAll('scope'));
    const scopes = offered(l).filter((s) => !OPTIONAL_SCOPE(s) || ticked.has(s));
    if (!scopes.some((s) => parseClinicalScope(s) || s === 'openid')) {
      return redirectWith(p.redirectUri, { error: 'access_denied', error_description: 'No access was allowed', state: p.state });
    }
    const code = randomToken();
    await insertCode(tx, {
      codeHash: sha256(code), clientId: l.client.clientId, redirectUri: p.redirectUri, codeChallenge: p.codeChallenge, scopes,
      username: l.request.username, fhirUser: l.request.fhirUser, patient: own ?? l.request.patient, encounter: l.request.encounter, nonce: p.nonce,
    }, CODE_SECONDS);
    return redirectWith(p.redirectUri, { code, state: p.state });
  });
  send(a, outcome);
}
