// Which requested scopes the authorization server grants a client: a clinical scope
// (v1 `patient/Observation.read`, v2 `system/*.rs`, granular `...rs?category=...`) is
// granted when one of the client's registered scopes covers it; launch and identity
// scopes go to app clients. Pure. (Enforcement on requests is src/auth/scopes.ts.)

export type ClientKind = 'backend' | 'app';

const CLINICAL = /^(patient|user|system)\/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?.+)?$/;
/** Context and identity scopes: they name what the token is about, grant no data by themselves. */
const APP_SCOPES = new Set(['openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'online_access']);

interface Clinical { context: string; type: string; perms: Set<string>; query?: string }

export function parseClinicalScope(scope: string): Clinical | undefined {
  const m = CLINICAL.exec(scope);
  if (!m || m[3] === '') return undefined;
  const p = m[3];
  const perms = p === 'read' ? 'rs' : p === 'write' ? 'cud' : p === '*' ? 'cruds' : p;
  return { context: m[1], type: m[2], perms: new Set(perms), query: m[4]?.slice(1) };
}

function covers(registered: Clinical, requested: Clinical): boolean {
  if (registered.context !== requested.context) return false;
  if (registered.type !== '*' && registered.type !== requested.type) return false;
  for (const p of requested.perms) if (!registered.perms.has(p)) return false;
  return registered.query === undefined || registered.query === requested.query;
}

export function grantScopes(requested: string[], registered: string[], kind: ClientKind): { granted: string[]; refused: string[] } {
  const mine = registered.map(parseClinicalScope).filter((c): c is Clinical => Boolean(c));
  const granted: string[] = [];
  const refused: string[] = [];
  for (const scope of new Set(requested)) {
    const clinical = parseClinicalScope(scope);
    let ok: boolean;
    if (clinical) {
      // Backend Services act for no user and no patient: only system/ scopes.
      ok = (kind === 'app' || clinical.context === 'system') && mine.some((r) => covers(r, clinical));
    } else {
      ok = kind === 'app' && (APP_SCOPES.has(scope) || registered.includes(scope));
    }
    (ok ? granted : refused).push(scope);
  }
  return { granted, refused };
}

export function splitScope(value: string | undefined): string[] {
  return (value ?? '').split(' ').filter(Boolean);
}

/** The patient a user's `fhirUser` names on this server (`Patient/<id>`), if it is a Patient. */
export function patientUser(fhirUser: string | undefined): string | undefined {
  return /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(fhirUser ?? '')?.[1];
}

/**
 * A Patient user's clinical scopes: a patient acts in their own compartment only, so a
 * user/ or system/ scope becomes the patient/ scope of the same type, permissions and
 * filter (the grant's patient context is theirs). Other scopes are unchanged.
 */
export function asPatientScopes(scopes: string[]): string[] {
  return [...new Set(scopes.map((s) => (parseClinicalScope(s) ? s.replace(/^(user|system)\//, 'patient/') : s)))];
}
