// The authorize flow's server-rendered pages: login, patient picker, consent, error.
// Pure HTML builders; every value is escaped. Forms post to sibling endpoints
// (relative URLs), so the pages work behind a proxy that rewrites the host. No script;
// the one inline style is allowed by its hash in the pages' Content-Security-Policy.
import crypto from 'node:crypto';
import type { PatientChoice } from '../store/authPatients.ts';

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password],input[type=search]{width:100%;padding:.4rem;box-sizing:border-box}
button{margin-top:1rem;padding:.45rem 1.1rem}.error{color:#a00}.muted{color:#666;font-size:.9rem}ul{padding-left:1.2rem}li{margin:.3rem 0}
table{border-collapse:collapse;width:100%}td{padding:.3rem;border-bottom:1px solid #ddd}`;

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

export function patientLabel(p: PatientChoice): string {
  const name = [p.given, p.family].filter(Boolean).join(' ') || '(no name)';
  return p.birthDate ? `${name} (born ${p.birthDate})` : name;
}

export function pickerPage(p: { request: string; clientName: string; name: string; patients: PatientChoice[]; limit: number }): string {
  const rows = p.patients.map((pt) => `<tr><td>${escapeHtml(patientLabel(pt))}</td><td class="muted">Patient/${escapeHtml(pt.id)}</td>
<td><button type="submit" name="patient" value="${escapeHtml(pt.id)}">Select</button></td></tr>`).join('\n');
  return page('Choose a patient', `<h1>Choose a patient</h1>
<p><strong>${escapeHtml(p.clientName)}</strong> will see the data of the patient you choose.</p>
<form method="post" action="pick">${hidden('request', p.request)}
<label for="name">Search by name</label><input type="search" id="name" name="name" value="${escapeHtml(p.name)}">
<button type="submit" name="action" value="search" id="search">Search</button></form>
<form method="post" action="pick">${hidden('request', p.request)}
${p.patients.length ? `<table>${rows}</table>` : '<p class="muted">No patient matches.</p>'}
${p.patients.length === p.limit ? `<p class="muted">Showing the first ${p.limit}; refine the search.</p>` : ''}</form>`);
}

/** A scope in words, for the consent page. */
export function describeScope(scope: string): string {
  const fixed: Record<string, string> = {
    openid: 'Confirm your identity (OpenID Connect)',
    fhirUser: 'Know which FHIR user you are',
    profile: 'Read your profile',
    launch: 'Receive the launch context from the EHR',
    'launch/patient': 'Know which patient is selected',
    'launch/encounter': 'Know which encounter is selected',
    offline_access: 'Keep access when you are not using the app (offline)',
    online_access: 'Keep access while you are signed in',
  };
  if (fixed[scope]) return fixed[scope];
  const m = /^(patient|user|system)\/([^.]+)\.([a-z*]+)(\?.*)?$/.exec(scope);
  if (!m) return scope;
  const perms = m[3] === 'read' ? 'rs' : m[3] === 'write' ? 'cud' : m[3] === '*' ? 'cruds' : m[3];
  const verbs = [...perms].map((c) => ({ c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' })[c]).filter(Boolean).join(', ');
  const what = m[2] === '*' ? 'all data' : `${m[2]} data`;
  const whose = m[1] === 'patient' ? 'of the selected patient' : m[1] === 'user' ? 'you can access' : 'of the whole system';
  return `${verbs} ${what} ${whose}${m[4] ? ` (only ${m[4].slice(1)})` : ''}`;
}

/** Scopes a user may untick: data access and refresh; context and identity scopes the app needs. */
export const OPTIONAL_SCOPE = (s: string) => s.includes('/') && !s.startsWith('launch') || s === 'offline_access' || s === 'online_access';

export function consentPage(p: { request: string; clientName: string; username: string; scopes: string[]; patient?: string }): string {
  const items = p.scopes.map((s) => OPTIONAL_SCOPE(s)
    ? `<li><label><input type="checkbox" name="scope" value="${escapeHtml(s)}" checked> ${escapeHtml(describeScope(s))} <code class="muted">${escapeHtml(s)}</code></label></li>`
    : `<li>${escapeHtml(describeScope(s))} <code class="muted">${escapeHtml(s)}</code></li>`).join('\n');
  return page('Allow access', `<h1>Allow ${escapeHtml(p.clientName)}?</h1>
<p>Signed in as <strong>${escapeHtml(p.username)}</strong>${p.patient ? `; patient: <strong>${escapeHtml(p.patient)}</strong>` : ''}.</p>
<form method="post" action="consent">${hidden('request', p.request)}
<p>The app asks to:</p><ul id="scopes">${items}</ul>
<button type="submit" name="decision" value="approve" id="approve">Allow</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button></form>`);
}

export function errorPage(title: string, message: string): string {
  return page(title, `<h1>${escapeHtml(title)}</h1><p class="error" role="alert">${escapeHtml(message)}</p>`);
}
