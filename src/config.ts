// Runtime settings, all from the environment so the same build runs everywhere.
import path from 'node:path';
import { loadAuthSettings, type AuthSettings } from './auth/settings.ts';

export interface Config {
  port: number;
  host: string;
  /** Owner connection: runs migrations and partition maintenance. Unset = embedded PostgreSQL. */
  databaseUrl?: string;
  /** Optional explicit connection for request traffic (must be the non-owner kiln_app role). */
  appDatabaseUrl?: string;
  dataDir: string;
  embeddedPort: number;
  /** Public base URL; when unset it is derived from each request's Host header. */
  baseUrl?: string;
  bodyLimit: string;
  defaultCount: number;
  maxCount: number;
  poolSize: number;
  /** KILN_POOL_WAIT_MS: how long a request waits for a free database connection before it gets 503 + Retry-After. */
  poolWaitMs: number;
  /** KILN_STATEMENT_TIMEOUT_MS: the longest a request's database statement may run (then 503); 0 = no limit. */
  statementTimeoutMs: number;
  maxBundleEntries: number;
  /** Bulk $export: where job files go, how long they live, lines per file, worker lease, and
   * whether this process runs the export worker ('inline') or leaves it to `kiln export-worker` ('off'). */
  /** Unset: <dataDir>/exports. */
  exportDir?: string;
  exportTtlSeconds: number;
  exportMaxLines: number;
  exportLeaseSeconds: number;
  exportWorker: 'inline' | 'off';
  /** SMART auth: token lifetimes and an optional external issuer (src/auth/settings.ts). */
  auth: AuthSettings;
  /** KILN_AUTH: 'smart' (default) needs a bearer token on every FHIR request but metadata and discovery; 'off' trusts everyone. */
  authMode: 'smart' | 'off';
  /** KILN_AUDIT: 'on' (default) records an AuditEvent for every access; 'off' only for benchmarks. */
  audit: 'on' | 'off';
  /** KILN_AUDIT_WINDOW_MS: how long a read's AuditEvent waits to share one insert with others (group commit). */
  auditWindowMs: number;
  /** KILN_EXPORT_USER_SCOPES=on: $export also accepts user/ scopes (default: system/ only). */
  exportUserScopes: boolean;
  /** KILN_CORS_ORIGINS: origins browsers may call /fhir from, comma-separated; default '*' (src/http/cors.ts). */
  corsOrigins: string[];
  /** KILN_STOP_GRACE_MS: how long a stop waits for handlers still running (clients that hung up) before it closes the database. */
  stopGraceMs: number;
  /** KILN_TRUST_PROXY: the proxies whose X-Forwarded-For/-Proto are believed, as Express's 'trust proxy' takes them
   *  ('loopback', addresses or CIDRs, comma-separated, or a hop count); unset = none, the socket peer is the client. */
  trustProxy: false | number | string;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return {
    port: Number(env.PORT ?? 8080),
    host: env.HOST ?? '0.0.0.0',
    databaseUrl: env.DATABASE_URL || undefined,
    appDatabaseUrl: env.APP_DATABASE_URL || undefined,
    dataDir: path.resolve(env.KILN_DATA_DIR ?? '.kiln-data'),
    embeddedPort: Number(env.KILN_PG_PORT ?? 54329),
    baseUrl: env.BASE_URL || undefined,
    bodyLimit: env.KILN_BODY_LIMIT ?? '10mb',
    defaultCount: Number(env.KILN_DEFAULT_COUNT ?? 50),
    maxCount: Number(env.KILN_MAX_COUNT ?? 1000),
    poolSize: Number(env.KILN_POOL_SIZE ?? 16),
    poolWaitMs: Number(env.KILN_POOL_WAIT_MS ?? 5000),
    statementTimeoutMs: Number(env.KILN_STATEMENT_TIMEOUT_MS ?? 30_000),
    maxBundleEntries: Number(env.KILN_MAX_BUNDLE_ENTRIES ?? 10000),
    exportDir: env.KILN_EXPORT_DIR ? path.resolve(env.KILN_EXPORT_DIR) : undefined,
    exportTtlSeconds: Number(env.KILN_EXPORT_TTL ?? 86400),
    exportMaxLines: Number(env.KILN_EXPORT_MAX_LINES ?? 100000),
    exportLeaseSeconds: Number(env.KILN_EXPORT_LEASE ?? 30),
    exportWorker: env.KILN_EXPORT_WORKER === 'off' ? 'off' : 'inline',
    auth: loadAuthSettings(env),
    authMode: env.KILN_AUTH === 'off' ? 'off' : 'smart',
    audit: env.KILN_AUDIT === 'off' ? 'off' : 'on',
    auditWindowMs: Number(env.KILN_AUDIT_WINDOW_MS ?? 0),
    exportUserScopes: env.KILN_EXPORT_USER_SCOPES === 'on',
    stopGraceMs: Number(env.KILN_STOP_GRACE_MS ?? 60_000),
    trustProxy: trustProxy(env.KILN_TRUST_PROXY),
    corsOrigins: (env.KILN_CORS_ORIGINS ?? '*').split(',').map((s) => s.trim().replace(/\/+$/, '')).filter(Boolean),
  };
}

function trustProxy(v: string | undefined): false | number | string {
  const s = (v ?? '').trim();
  if (s === '' || s === 'off') return false;
  return /^\d+$/.test(s) ? Number(s) : s;
}
