// Kiln's signing keys in memory: generated at first use (stored owner-only in
// auth_signing_keys), refreshed from the database so a `kiln auth rotate-keys` run
// beside the server takes effect, and published as a JWKS.
import type pg from 'pg';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose';
import { insertFirstSigningKey, liveSigningKeys, revokedClientIds, rotateSigningKey } from '../store/authKeys.ts';
import { revokedTokenIds } from '../store/authRevocation.ts';
import { disabledUserKeys } from '../store/authUsers.ts';

/** Algorithm of Kiln's own tokens: RS256 is what every OIDC relying party can verify. */
export const TOKEN_ALG = 'RS256';
/** No JWT Kiln signs lives longer than this; a retired key stays published this long. */
export const MAX_TOKEN_SECONDS = 24 * 3600;
const REFRESH_MS = 60_000;
/** Revoked clients and access tokens are re-read this often: the longest a revocation
 *  by another process (the CLI, another server) takes to be seen here. */
export const REVOKED_REFRESH_MS = 5_000;
const MIN_RELOAD_MS = 1_000;

export interface LoadedKey {
  kid: string;
  alg: string;
  retired: boolean;
  publicJwk: JWK;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

export async function newSigningKey(): Promise<{ kid: string; alg: string; privateJwk: JWK; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(TOKEN_ALG, { modulusLength: 2048, extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub);
  return {
    kid,
    alg: TOKEN_ALG,
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg: TOKEN_ALG },
    publicJwk: { ...pub, kid, alg: TOKEN_ALG, use: 'sig' },
  };
}

export interface Revocations {
  /** client_ids of revoked clients. */
  clients: Set<string>;
  /** jti of access tokens revoked one by one (not yet expired). */
  tokens: Set<string>;
  /** `tenant|username` of disabled users: their access tokens stop working too. */
  users: Set<string>;
}

export class KeyRing {
  private cache?: { at: number; keys: LoadedKey[] };
  private loading?: Promise<LoadedKey[]>;
  private revoked?: Revocations & { at: number };
  private revokedLoading?: Promise<Revocations>;
  private generation = 0;

  constructor(readonly owner: pg.Pool) {}

  /** Live keys (active first), from memory unless older than maxAgeMs. */
  async keys(maxAgeMs = REFRESH_MS): Promise<LoadedKey[]> {
    if (this.cache && Date.now() - this.cache.at < maxAgeMs) return this.cache.keys;
    this.loading ??= this.load().finally(() => { this.loading = undefined; });
    return this.loading;
  }

  private async load(): Promise<LoadedKey[]> {
    let rows = await liveSigningKeys(this.owner, MAX_TOKEN_SECONDS);
    if (!rows.some((r) => !r.retiredAt)) {
      await insertFirstSigningKey(this.owner, await newSigningKey());
      rows = await liveSigningKeys(this.owner, MAX_TOKEN_SECONDS);
    }
    const keys = await Promise.all(rows.map(async (r) => ({
      kid: r.kid,
      alg: r.alg,
      retired: Boolean(r.retiredAt),
      publicJwk: r.publicJwk,
      privateKey: await importJWK(r.privateJwk, r.alg) as CryptoKey,
      publicKey: await importJWK(r.publicJwk, r.alg) as CryptoKey,
    })));
    this.cache = { at: Date.now(), keys };
    return keys;
  }

  async signingKey(): Promise<LoadedKey> {
    return (await this.keys()).find((k) => !k.retired)!;
  }

  /** The key a token names; an unknown kid reloads once (a rotation by another process). */
  async find(kid: string): Promise<LoadedKey | undefined> {
    const hit = (await this.keys()).find((k) => k.kid === kid);
    if (hit) return hit;
    return (await this.keys(MIN_RELOAD_MS)).find((k) => k.kid === kid);
  }

  async jwks(): Promise<{ keys: JWK[] }> {
    return { keys: (await this.keys()).map((k) => k.publicJwk) };
  }

  async rotate(): Promise<{ kid: string; retired: string[]; dropped: number }> {
    const key = await newSigningKey();
    const r = await rotateSigningKey(this.owner, key, MAX_TOKEN_SECONDS);
    this.cache = undefined;
    return { kid: key.kid, ...r };
  }

  /** Revoked clients and access tokens, disabled users (cached a few seconds: this runs on every request). */
  async revocations(): Promise<Revocations> {
    if (this.revoked && Date.now() - this.revoked.at <= REVOKED_REFRESH_MS) return this.revoked;
    if (!this.revokedLoading) {
      const generation = this.generation;
      this.revokedLoading = Promise.all([revokedClientIds(this.owner), revokedTokenIds(this.owner), disabledUserKeys(this.owner)])
        .then(([clients, tokens, users]) => {
          const loaded = { at: Date.now(), clients: new Set(clients), tokens: new Set(tokens), users: new Set(users) };
          // A load that started before a revocation in this process must not hide it.
          if (generation === this.generation) this.revoked = loaded;
          return loaded;
        })
        .finally(() => { if (generation === this.generation) this.revokedLoading = undefined; });
    }
    return this.revokedLoading;
  }

  /** Forget cached revocations (after a revoke in this process): the next check reads them anew. */
  forgetRevocations(): void {
    this.generation++;
    this.revoked = undefined;
    this.revokedLoading = undefined;
  }
}

// One ring per database (owner pool), shared by the routes, the admin-token minting and
// verifyAccessToken. Several servers in one process (tests) each register theirs; a
// token is checked against the keys of every live one (kids are key thumbprints).
const rings = new Map<pg.Pool, KeyRing>();

export function keyRingFor(owner: pg.Pool): KeyRing {
  let ring = rings.get(owner);
  if (!ring) {
    ring = new KeyRing(owner);
    rings.set(owner, ring);
  }
  return ring;
}

export function liveKeyRings(): KeyRing[] {
  for (const [pool] of rings) if (pool.ending || pool.ended) rings.delete(pool);
  return [...rings.values()];
}
