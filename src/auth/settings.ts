// SMART auth settings from the environment (part of Config, see src/config.ts).

export interface ExternalIssuer {
  /** `iss` of the trusted tokens, e.g. https://keycloak.example/realms/kiln */
  issuer: string;
  jwksUrl: string;
  /** Accepted `aud` values besides the tenant's FHIR base URL (Keycloak puts client ids there). */
  audiences: string[];
  algorithms: string[];
  /** Claim names (dotted paths reach into objects, e.g. `ext.tenant`). */
  scopeClaim: string;
  tenantClaim: string;
  patientClaim: string;
  fhirUserClaim: string;
  clientIdClaim: string;
  /** Tenant of tokens that carry no tenant claim; unset = such tokens are refused. */
  defaultTenant?: string;
}

export interface AuthSettings {
  /** Lifetime of access tokens from the authorization-code flow. */
  accessTokenSeconds: number;
  /** Lifetime of Backend Services (client_credentials) access tokens. */
  backendTokenSeconds: number;
  /** Refresh tokens: offline_access ones last this long from their last use; online_access ones this long from the sign-in. */
  offlineRefreshSeconds: number;
  onlineRefreshSeconds: number;
  external?: ExternalIssuer;
  /** KILN_TOKEN_CACHE: keep verified access tokens in memory (default on; 'off' for comparisons). */
  tokenCache: boolean;
  loginLimit: LoginLimit;
  /** KILN_AUTH_ALLOW_HTTP_JWKS=on: a client's JWKS URL may be plain http to a loopback address (development); otherwise https only. */
  allowHttpJwks: boolean;
}

/** Failed sign-ins allowed per username and per client IP (in a tenant) within a window. */
export interface LoginLimit {
  userFailures: number;
  ipFailures: number;
  windowSeconds: number;
}

function positive(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const v = Number(env[name] ?? fallback);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a whole number of at least 1`);
  return v;
}

const list = (v: string | undefined) => (v ?? '').split(',').map((s) => s.trim()).filter(Boolean);

export function loadAuthSettings(env: NodeJS.ProcessEnv = process.env): AuthSettings {
  const issuer = env.KILN_AUTH_ISSUER?.trim();
  const jwksUrl = env.KILN_AUTH_JWKS_URL?.trim();
  if (Boolean(issuer) !== Boolean(jwksUrl)) throw new Error('KILN_AUTH_ISSUER and KILN_AUTH_JWKS_URL go together: set both or neither');
  return {
    accessTokenSeconds: Number(env.KILN_AUTH_TOKEN_MINUTES ?? 60) * 60,
    backendTokenSeconds: Number(env.KILN_AUTH_BACKEND_TOKEN_MINUTES ?? 5) * 60,
    offlineRefreshSeconds: 90 * 24 * 3600,
    onlineRefreshSeconds: 8 * 3600,
    tokenCache: env.KILN_TOKEN_CACHE !== 'off',
    allowHttpJwks: env.KILN_AUTH_ALLOW_HTTP_JWKS === 'on',
    loginLimit: {
      userFailures: positive(env, 'KILN_LOGIN_MAX_FAILURES', 5),
      ipFailures: positive(env, 'KILN_LOGIN_MAX_FAILURES_IP', 20),
      windowSeconds: positive(env, 'KILN_LOGIN_WINDOW_MINUTES', 15) * 60,
    },
    external: issuer && jwksUrl ? {
      issuer,
      jwksUrl,
      audiences: list(env.KILN_AUTH_AUDIENCE),
      algorithms: env.KILN_AUTH_ALGORITHMS ? list(env.KILN_AUTH_ALGORITHMS) : ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'ES256', 'ES384'],
      scopeClaim: env.KILN_AUTH_SCOPE_CLAIM || 'scope',
      tenantClaim: env.KILN_AUTH_TENANT_CLAIM || 'tenant',
      patientClaim: env.KILN_AUTH_PATIENT_CLAIM || 'patient',
      fhirUserClaim: env.KILN_AUTH_FHIRUSER_CLAIM || 'fhirUser',
      clientIdClaim: env.KILN_AUTH_CLIENT_ID_CLAIM || 'client_id',
      defaultTenant: env.KILN_AUTH_DEFAULT_TENANT || undefined,
    } : undefined,
  };
}
