// Starts a real Kiln server on a private embedded PostgreSQL for a test file.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { SignJWT } from 'jose';
import { startServer, type RunningServer } from '../../src/server.ts';
import type { Config } from '../../src/config.ts';
import { keyRingFor } from '../../src/auth/keys.ts';
import { signAccessToken } from '../../src/auth/tokens.ts';
import { log } from '../../src/log.ts';

// In-process servers log an access line per request: quiet unless asked (KILN_LOG_LEVEL=info);
// errors (a 500 is a bug) still show. test/logs.test.ts reads a server process's own lines.
log.level = process.env.KILN_LOG_LEVEL || 'error';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface TestServer extends RunningServer {
  dataDir: string;
  pgPort: number;
}

/**
 * A server with its own data dir; pass dataDir/pgPort to restart on the same data.
 * Authorization is off unless `auth: 'smart'`; auditing follows it unless `audit` says otherwise
 * (the suites written before SMART run unchanged, without AuditEvents among their data).
 */
export async function startTestServer(opts: { dataDir?: string; pgPort?: number; bodyLimit?: string; auth?: 'smart' | 'off'; audit?: 'on' | 'off'; exportUserScopes?: boolean; auditWindowMs?: number; stopGraceMs?: number; config?: Partial<Config> } = {}): Promise<TestServer> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-test-'));
  const pgPort = opts.pgPort ?? await freePort();
  const server = await startServer({
    port: 0, host: '127.0.0.1', dataDir, embeddedPort: pgPort, databaseUrl: undefined, appDatabaseUrl: undefined,
    baseUrl: undefined, ...(opts.bodyLimit ? { bodyLimit: opts.bodyLimit } : {}),
    authMode: opts.auth ?? 'off', audit: opts.audit ?? (opts.auth === 'smart' ? 'on' : 'off'),
    ...(opts.exportUserScopes !== undefined ? { exportUserScopes: opts.exportUserScopes } : {}),
    ...(opts.auditWindowMs !== undefined ? { auditWindowMs: opts.auditWindowMs } : {}),
    ...(opts.stopGraceMs !== undefined ? { stopGraceMs: opts.stopGraceMs } : {}),
    ...opts.config, // any other setting (poolSize, auth, ...)
  });
  return { ...server, dataDir, pgPort };
}

export function removeDataDir(dir: string) {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** fetch against the server with FHIR JSON defaults. */
export async function fhir(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}/${path}`, {
    method,
    headers: { accept: 'application/fhir+json', ...(body !== undefined ? { 'content-type': 'application/fhir+json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
  return { status: res.status, headers: res.headers, json, text };
}

// ---------------------------------------------------------------- access tokens
// Signed by the test server's own key with the claims the authorization server issues,
// so the server verifies them for real (for servers started with `auth: 'smart'`).

export interface TokenSpec {
  scope: string;
  patient?: string;
  clientId?: string;
  subject?: string;
  /** Type/id on this server. */
  fhirUser?: string;
  tenant?: string;
  /** The FHIR base the token is for (default: the server's default tenant base). */
  audience?: string;
}

export async function token(srv: TestServer, spec: TokenSpec): Promise<string> {
  const audience = spec.audience ?? srv.url;
  const signed = await signAccessToken(keyRingFor(srv.db.owner), {
    tenant: spec.tenant ?? 'default', audience, clientId: spec.clientId ?? 'test-app', subject: spec.subject ?? spec.clientId ?? 'test-app',
    scopes: spec.scope.split(' ').filter(Boolean), patient: spec.patient,
    fhirUser: spec.fhirUser ? `${audience}/${spec.fhirUser}` : undefined,
  }, 600);
  return signed.token;
}

/** A token with any claims and header, signed with the server's key (expired, wrong audience, ...). */
export async function rawToken(srv: TestServer, claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const key = await keyRingFor(srv.db.owner).signingKey();
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: srv.url, aud: srv.url, sub: 'test-app', iat: now - 10, exp: now + 300, jti: crypto.randomUUID(),
    scope: 'system/*.cruds', client_id: 'test-app', tenant: 'default', ...claims,
  }).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt', ...header }).sign(key.privateKey);
}

export const bearer = (t: string): Record<string, string> => ({ authorization: `Bearer ${t}` });
