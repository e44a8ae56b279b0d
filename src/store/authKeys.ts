// Kiln's token signing keys (sql/011_auth.sql). Owner pool only: kiln_app cannot read
// private keys. The server reads them into memory; the CLI rotates them.
import type pg from 'pg';
import type { JWK } from 'jose';
import { inTransaction } from './transaction.ts';

export interface SigningKeyRow {
  kid: string;
  alg: string;
  privateJwk: JWK;
  publicJwk: JWK;
  createdAt: string;
  retiredAt?: string;
}

const COLUMNS = 'kid, alg, private_jwk, public_jwk, created_at, retired_at';

function toKey(r: Record<string, unknown>): SigningKeyRow {
  return {
    kid: r.kid as string, alg: r.alg as string, privateJwk: r.private_jwk as JWK, publicJwk: r.public_jwk as JWK,
    createdAt: r.created_at as string, retiredAt: (r.retired_at as string | null) ?? undefined,
  };
}

/** The active key and the retired keys still inside their grace period, newest first. */
export async function liveSigningKeys(owner: pg.Pool, graceSeconds: number): Promise<SigningKeyRow[]> {
  const { rows } = await owner.query(
    `SELECT ${COLUMNS} FROM auth_signing_keys
      WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
      ORDER BY retired_at DESC NULLS FIRST, created_at DESC`, [graceSeconds]);
  return rows.map(toKey);
}

/** Stores a first key unless another process stored one first; true when this one won. */
export async function insertFirstSigningKey(owner: pg.Pool, key: { kid: string; alg: string; privateJwk: JWK; publicJwk: JWK }): Promise<boolean> {
  const { rowCount } = await owner.query(
    `INSERT INTO auth_signing_keys (kid, alg, private_jwk, public_jwk) VALUES ($1, $2, $3, $4)
     ON CONFLICT ((true)) WHERE retired_at IS NULL DO NOTHING`,
    [key.kid, key.alg, JSON.stringify(key.privateJwk), JSON.stringify(key.publicJwk)]);
  return rowCount === 1;
}

/** Retires the active key and makes the new one active, in one transaction; drops keys
 *  retired longer than the grace period (no live token can name them). */
export async function rotateSigningKey(owner: pg.Pool, key: { kid: string; alg: string; privateJwk: JWK; publicJwk: JWK }, graceSeconds: number): Promise<{ retired: string[]; dropped: number }> {
  return inTransaction(owner, async (client) => {
    const retired = await client.query('UPDATE auth_signing_keys SET retired_at = now() WHERE retired_at IS NULL RETURNING kid');
    await client.query('INSERT INTO auth_signing_keys (kid, alg, private_jwk, public_jwk) VALUES ($1, $2, $3, $4)',
      [key.kid, key.alg, JSON.stringify(key.privateJwk), JSON.stringify(key.publicJwk)]);
    const dropped = await client.query('DELETE FROM auth_signing_keys WHERE retired_at < now() - make_interval(secs => $1)', [graceSeconds]);
    return { retired: retired.rows.map((r) => r.kid), dropped: dropped.rowCount ?? 0 };
  });
}

/** client_ids revoked with `kiln auth client revoke` (all tenants): their tokens stop working. */
export async function revokedClientIds(owner: pg.Pool): Promise<string[]> {
  const { rows } = await owner.query('SELECT client_id FROM auth_clients WHERE revoked_at IS NOT NULL');
  return rows.map((r) => r.client_id);
}
