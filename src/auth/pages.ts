// The authorize flow's server-rendered pages: login, patient picker, consent, error.
// Pure HTML builders; every value is escaped. Forms post to sibling endpoints
// (relative URLs), so the pages work behind a proxy that rewrites the host. No script;
// the one inline style is allowed by its hash in the pages' Content-Security-Policy.
import crypto from 'node:crypto';
import type { PatientChoice } from '../store/authPatients.ts';

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password],input[type=search]{width:100%;padding:.4rem;box-sizing:border-box}
button{margin-top:1rem;padding:.45rem 1.1rem}.error{color:#a00}.muted{color:#666;font-size:.9rem}ul{padding-left:1.2rem}li{margin:.3rem 0}
table{border-collapse:collapse;width:100%}td,th{padding:.3rem;border-bottom:1px solid #ddd;text-align:left}h2{font-size:1.1rem}`;

const STYLE_SOURCE = `'sha256-${crypto.createHash('sha256').update(STYLE).digest('base64')}'`;

/**
 * The pages' Content-Security-Policy: nothing loads or runs but the inline style, no site
 * may frame them (clickjacking the consent), and forms go to this server only, plus
 * `formTargets` where a consent can follow (browsers apply form-action to the redirect
 * after the post, which goes to the app's redirect_uri).
 */
export function pagePolicy(formTargets: string[] = []): string {
  return [
    "default-src 'none'", `style-src ${STYLE_SOURCE}`, `form-action ${["'self'", ...formTargets].join(' ')}`,
    "frame-ancestors 'none'", "base-uri 'none'",
  ].join('; ');
}

/** A redirect_uri as a CSP source: its origin, or for a native app's private scheme the scheme. */
export function redirectSource(redirectUri: string): string | undefined {
  try {
    const url = new URL(redirectUri);
    if (url.protocol === 'https:' || url.protocol === 'http:') return url.origin;
    return /^[a-z][a-z0-9+.-]*:$/i.test(url.protocol) ? url.protocol : undefined;
  } catch {
    return undefined;
  }
}

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} - Kiln</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

const hidden = (name: string, value: string) => `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`;

export function loginPage(p: { request: string; clientName: string; tenant: string; error?: string; username?: string }): string {
  return page('Sign in', `<h1>Sign in to Kiln</h1>
<p><strong>${escapeHtml(p.clientName)}</strong> asks to access <strong>${escapeHtml(p.tenant)}</strong> data on your behalf.</p>
${p.error ? `<p class="error" role="alert">${escapeHtml(p.error)}</p>` : ''}
<form method="post" action="login">${hidden('request', p.request)}
<label for="username">Username</label><input type="text" id="username" name="username" autocomplete="username" required value="${escapeHtml(p.username ?? '')}">
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign in</button></form>`);
}

const fullName = (p: PatientChoice) => [p.given, p.family].filter(Boolean).join(' ') || '(no name)';

/** Age on `today` from a full birth date: years, or months and days for an infant. */
export function ageText(birthDate: string | undefined, today = new Date()): string | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(birthDate ?? '');
  if (!m) return undefined;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [ty, tmo, td] = [today.getUTCFullYear(), today.getUTCMonth() + 1, today.getUTCDate()];
  const months = (ty - y) * 12 + (tmo - mo) - (td < d ? 1 : 0);
  if (months < 0) return undefined;
  if (months >= 24) return `${Math.floor(months / 12)} years`;
  if (months >= 1) return `${months} month${months === 1 ? '' : 's'}`;
  const days = Math.round((Date.UTC(ty, tmo - 1, td) - Date.UTC(y, mo - 1, d)) / 86_400_000);
  return `${days} day${days === 1 ? '' : 's'}`;
}

const birthText = (p: PatientChoice) => {
  const age = ageText(p.birthDate);
  return p.birthDate ? `${p.birthDate}${age ? ` (age ${age})` : ''}` : 'unknown';
};
const genderText = (p: PatientChoice) => (p.gender ? p.gender[0].toUpperCase() + p.gender.slice(1) : 'Unknown');
const identifierHtml = (p: PatientChoice) => !p.identifier ? '<span class="muted">none</span>'
  : `${escapeHtml(p.identifier.value)}${p.identifier.isMrn ? '' : ` <span class="muted">(${escapeHtml(p.identifier.label ?? 'identifier')}, not an MRN)</span>`}`;

/** The patient in one line of words: name, birth date, gender, MRN. */
export function patientLabel(p: PatientChoice): string {
  const id = p.identifier ? `, ${p.identifier.isMrn ? 'MRN' : (p.identifier.label ?? 'identifier')} ${p.identifier.value}` : '';
  return `${fullName(p)}, born ${birthText(p)}, ${genderText(p).toLowerCase()}${id}`;
}

export interface PickerView {
  request: string;
  clientName: string;
  /** The search text (name words or an MRN). */
  name: string;
  patients: PatientChoice[];
  /** Cursors of the pages after and before this one, when there are such pages. */
  next?: string;
  previous?: string;
}

export function pickerPage(p: PickerView): string {
  const rows = p.patients.map((pt) => `<tr><td><strong>${escapeHtml(fullName(pt))}</strong></td><td>${escapeHtml(birthText(pt))}</td>
<td>${escapeHtml(genderText(pt))}</td><td>${identifierHtml(pt)}</td>
<td><button type="submit" name="patient" value="${escapeHtml(pt.id)}" aria-label="${escapeHtml(`Select ${patientLabel(pt)}`)}">Select</button></td></tr>`).join('\n');
  const paging = [
    p.previous ? `<button type="submit" name="page" value="${escapeHtml(p.previous)}" id="previous">Previous page</button>` : '',
    p.next ? `<button type="submit" name="page" value="${escapeHtml(p.next)}" id="next">Next page</button>` : '',
  ].join(' ');
  return page('Choose a patient', `<h1>Choose a patient</h1>
<p><strong>${escapeHtml(p.clientName)}</strong> will see the data of the patient you choose. Check the birth date and MRN.</p>
<form method="post" action="pick">${hidden('request', p.request)}
<label for="name">Search by name or MRN</label><input type="search" id="name" name="name" value="${escapeHtml(p.name)}">
<button type="submit" name="action" value="search" id="search">Search</button></form>
<form method="post" action="pick">${hidden('request', p.request)}${hidden('name', p.name)}
${p.patients.length ? `<table id="patients"><thead><tr><th>Name</th><th>Birth date</th><th>Gender</th><th>MRN</th><th></th></tr></thead>
<tbody>${rows}</tbody></table>` : '<p class="muted">No patient matches.</p>'}
${paging.trim() ? `<p id="paging">${paging}</p>` : ''}</form>`);
}

/** How long refresh tokens last, for the consent page's words (AuthSettings). */
export interface RefreshLifetimes { offlineSeconds: number; onlineSeconds: number }

export function durationText(seconds: number): string {
  const units: [number, string][] = [[86_400, 'day'], [3600, 'hour'], [60, 'minute']];
  for (const [size, unit] of units) {
    if (seconds >= size && seconds % size === 0 || unit === 'minute') {
      const n = Math.max(1, Math.round(seconds / size));
      return `${n} ${unit}${n === 1 ? '' : 's'}`;
    }
  }
  return `${seconds} seconds`;
}

const VERBS: Record<string, string> = { r: 'read', s: 'search', c: 'create', u: 'update', d: 'delete' };
const andList = (xs: string[]) => (xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`);

/** A resource type in words: MedicationRequest -> medication requests. */
function typeWords(type: string): string {
  const words = type.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
  return /[^aeiou]y$/.test(words) ? `${words.slice(0, -1)}ies` : /(s|x|ch|sh)$/.test(words) ? `${words}es` : `${words}s`;
}

/** A scope in plain words, for the consent page. */
export function describeScope(scope: string, lifetimes?: RefreshLifetimes): string {
  const fixed: Record<string, string> = {
    openid: 'Confirm to the app that it is you who signed in (OpenID Connect)',
    fhirUser: 'Tell the app which user record you are (your practitioner or patient record)',
    profile: 'Tell the app your user profile',
    launch: 'Receive the patient and encounter the EHR opened the app with',
    'launch/patient': 'Know which patient is selected (the patient named above)',
    'launch/encounter': 'Know which encounter is open',
    offline_access: lifetimes
      ? `Keep access after you sign out or close the app: a refresh token that lasts ${durationText(lifetimes.offlineSeconds)} from its last use, until revoked`
      : 'Keep access after you sign out or close the app (offline access)',
    online_access: lifetimes
      ? `Keep access without signing in again for up to ${durationText(lifetimes.onlineSeconds)} (online access; it does not extend with use)`
      : 'Keep access while you are signed in (online access)',
  };
  if (fixed[scope]) return fixed[scope];
  const m = /^(patient|user|system)\/([^.]+)\.([a-z*]+)(\?.*)?$/.exec(scope);
  if (!m) return scope;
  const perms = m[3] === 'read' ? 'rs' : m[3] === 'write' ? 'cud' : m[3] === '*' ? 'cruds' : m[3];
  // Reading first, as a clinician thinks of it: "read and search", then the writes.
  const verbs = andList(['r', 's', 'c', 'u', 'd'].filter((c) => perms.includes(c)).map((c) => VERBS[c]));
  const all = m[2] === '*';
  const what = m[1] === 'patient'
    ? (all ? "all of this patient's data" : m[2] === 'Patient' ? "this patient's record (demographics)" : `this patient's ${typeWords(m[2])}`)
    : m[1] === 'user'
      ? `${all ? 'all data' : typeWords(m[2])} of any patient you may access`
      : `${all ? 'all data' : `all ${typeWords(m[2])}`} on the server`;
  return `${verbs[0].toUpperCase()}${verbs.slice(1)} ${what}${m[4] ? ` (only where ${m[4].slice(1)})` : ''}`;
}

/** Scopes a user may untick: data access and refresh; context and identity scopes the app needs. */
export const OPTIONAL_SCOPE = (s: string) => s.includes('/') && !s.startsWith('launch') || s === 'offline_access' || s === 'online_access';

export interface ConsentView {
  request: string;
  clientName: string;
  username: string;
  scopes: string[];
  /** The patient context: the picker's facts, or only the id when the record is not found. */
  patient?: PatientChoice | { id: string };
  lifetimes: RefreshLifetimes;
}

function patientHtml(pt: ConsentView['patient']): string {
  if (!pt) return '';
  if (!('key' in pt)) return `<section id="patient"><h2>Patient</h2><p>Patient/${escapeHtml(pt.id)} <span class="muted">(no record found)</span></p></section>`;
  return `<section id="patient"><h2>Patient</h2><p><strong>${escapeHtml(fullName(pt))}</strong><br>Born ${escapeHtml(birthText(pt))}<br>
${escapeHtml(genderText(pt))}<br>${pt.identifier?.isMrn === false ? escapeHtml(pt.identifier.label ?? 'Identifier') : 'MRN'} ${identifierHtml(pt)}</p></section>`;
}

export function consentPage(p: ConsentView): string {
  const items = p.scopes.map((s) => OPTIONAL_SCOPE(s)
    ? `<li><label><input type="checkbox" name="scope" value="${escapeHtml(s)}" checked> ${escapeHtml(describeScope(s, p.lifetimes))} <code class="muted">${escapeHtml(s)}</code></label></li>`
    : `<li>${escapeHtml(describeScope(s, p.lifetimes))} <code class="muted">${escapeHtml(s)}</code></li>`).join('\n');
  return page('Allow access', `<h1>Allow ${escapeHtml(p.clientName)}?</h1>
<p>Signed in as <strong>${escapeHtml(p.username)}</strong>.</p>
${patientHtml(p.patient)}
<form method="post" action="consent">${hidden('request', p.request)}
<p>The app asks to:</p><ul id="scopes">${items}</ul>
${p.scopes.some(OPTIONAL_SCOPE) ? '<p class="muted">Untick what you do not want to allow.</p>' : ''}
<button type="submit" name="decision" value="approve" id="approve">Allow</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button></form>`);
}

export function errorPage(title: string, message: string): string {
  return page(title, `<h1>${escapeHtml(title)}</h1><p class="error" role="alert">${escapeHtml(message)}</p>`);
}
