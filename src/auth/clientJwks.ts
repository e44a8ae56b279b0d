// A client's remote JWKS (private_key_jwt with a registered jwks_uri). It is fetched while
// no database connection is held (src/auth/clientAuth.ts), so a slow or hostile URL delays
// only the requests of that client. The URL must be https (plain http only to a loopback
// address, and only with KILN_AUTH_ALLOW_HTTP_JWKS=on for development); a fetch follows no
// redirect, stops at 64 KiB and at 5 s. jose's remote key set keeps the keys 5 minutes,
// refetches for an unknown kid at most once per cooldown and shares one fetch per URL
// between concurrent requests; a failed fetch is not retried within the cooldown either.
import { createRemoteJWKSet, customFetch, type JWTVerifyGetKey } from 'jose';
import { log } from '../log.ts';

export const JWKS_MAX_BYTES = 64 * 1024;
const TIMEOUT_MS = 5_000;
const CACHE_MS = 5 * 60_000;
const COOLDOWN_MS = 5_000;
/** Key sets kept: one per registered URL, so this only bounds memory against odd registrations. */
const MAX_SETS = 1_000;

/** Why a client's keys could not be fetched (the client cannot authenticate: invalid_client). */
export class JwksUnavailable extends Error {}

const isLoopback = (host: string) => host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);

/** Why a JWKS URL may not be fetched, or undefined when it may. */
export function jwksUrlRefusal(uri: string, allowHttp: boolean): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return 'is not a URL';
  }
  if (url.protocol === 'https:') return undefined;
  if (url.protocol === 'http:' && allowHttp && isLoopback(url.hostname)) return undefined;
  return allowHttp ? 'must use https (http only to a loopback address)' : 'must use https';
}

interface RemoteSet { keys: JWTVerifyGetKey; failure?: { at: number; error: JwksUnavailable } }
const sets = new Map<string, RemoteSet>();

/** The key resolver for jwtVerify; call jwksUrlRefusal first. */
export function remoteClientKeys(uri: string): JWTVerifyGetKey {
  let set = sets.get(uri);
  if (!set) {
    if (sets.size >= MAX_SETS) sets.delete(sets.keys().next().value!);
    const entry: RemoteSet = { keys: undefined as never };
    entry.keys = createRemoteJWKSet(new URL(uri), {
      timeoutDuration: TIMEOUT_MS, cacheMaxAge: CACHE_MS, cooldownDuration: COOLDOWN_MS,
      [customFetch]: (url, init) => boundedFetch(entry, url, init),
    });
    sets.set(uri, entry);
    set = entry;
  }
  return set.keys;
}

/** fetch for jose: refuses what is not a 200 JSON key set of at most JWKS_MAX_BYTES. */
async function boundedFetch(entry: RemoteSet, url: string, init: RequestInit): Promise<Response> {
  if (entry.failure && Date.now() - entry.failure.at < COOLDOWN_MS) throw entry.failure.error;
  try {
    const jwks = await readJwks(url, init);
    entry.failure = undefined;
    return Response.json(jwks);
  } catch (e) {
    const error = e instanceof JwksUnavailable ? e
      : (e as Error).name === 'TimeoutError' || (e as Error).name === 'AbortError' ? new JwksUnavailable(`did not answer within ${TIMEOUT_MS / 1000} s`)
      : new JwksUnavailable('could not be reached');
    entry.failure = { at: Date.now(), error };
    // The client only hears invalid_client; the operator learns why (once per cooldown).
    log.warn(`a client's JWKS at ${new URL(url).origin} ${error.message}`);
    throw error;
  }
}

async function readJwks(url: string, init: RequestInit): Promise<unknown> {
  const res = await fetch(url, init);
  if (res.status !== 200) {
    await res.body?.cancel();
    throw new JwksUnavailable(`answered HTTP ${res.status}, not 200`);
  }
  const tooLarge = () => new JwksUnavailable(`is larger than ${JWKS_MAX_BYTES / 1024} KiB`);
  if (Number(res.headers.get('content-length')) > JWKS_MAX_BYTES) {
    await res.body?.cancel();
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body ?? []) {
    size += chunk.byteLength;
    if (size > JWKS_MAX_BYTES) throw tooLarge(); // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  let jwks: { keys?: unknown };
  try {
    jwks = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new JwksUnavailable('is not JSON');
  }
  if (!jwks || typeof jwks !== 'object' || !Array.isArray(jwks.keys)) throw new JwksUnavailable('is not a JSON Web Key Set');
  return jwks;
}
