// Starts a real Kiln server on a private embedded PostgreSQL for a test file.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startServer, type RunningServer } from '../../src/server.ts';

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

/** A server with its own data dir; pass dataDir/pgPort to restart on the same data. */
export async function startTestServer(opts: { dataDir?: string; pgPort?: number; bodyLimit?: string } = {}): Promise<TestServer> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-test-'));
  const pgPort = opts.pgPort ?? await freePort();
  const server = await startServer({
    port: 0, host: '127.0.0.1', dataDir, embeddedPort: pgPort, databaseUrl: undefined, appDatabaseUrl: undefined,
    baseUrl: undefined, ...(opts.bodyLimit ? { bodyLimit: opts.bodyLimit } : {}),
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
