// Access tokens revoked one by one, by jti (sql/015_auth_revocation.sql): the revocation
// endpoint records them in the tenant's transaction, the CLI through the owner pool, and
// every server reads the live ones (all tenants) into memory through the owner pool.
import type pg from 'pg';
import type { Tx } from './resources.ts';

export interface RevokedToken {
  jti: string;
  clientId: string;
  /** Seconds since the epoch (the token's exp): the row is useless after it. */
  expiresAt: number;
}


/** Records a revoked token of the transaction's tenant; rows of expired tokens go first. */
export async function insertRevokedToken(tx: Tx, t: RevokedToken): Promise<void> {
  await tx.query(`DELETE FROM auth_revoked_tokens WHERE org_id = current_setting('app.org_id')::integer AND expires_at < now() - interval '1 minute'`);
  await tx.query(
    `INSERT INTO auth_revoked_tokens (org_id, jti, client_id, expires_at)
     VALUES (current_setting('app.org_id')::integer, $1, $2, to_timestamp($3)) ON CONFLICT (org_id, jti) DO NOTHING`,
    [t.jti, t.clientId, t.expiresAt]);
}

/** The CLI's revocation (any tenant); false when the jti was already revoked. */
export async function revokeTokenAsOwner(owner: pg.Pool, orgId: number, t: RevokedToken): Promise<boolean> {
  await owner.query('DELETE FROM auth_revoked_tokens WHERE expires_at < now() - interval \'1 minute\'');
  const { rowCount } = await owner.query(
    `INSERT INTO auth_revoked_tokens (org_id, jti, client_id, expires_at)
     VALUES ($1, $2, $3, to_timestamp($4)) ON CONFLICT (org_id, jti) DO NOTHING`,
    [orgId, t.jti, t.clientId, t.expiresAt]);
  return rowCount === 1;
}

/** jti of every revoked token not yet expired, all tenants (jti are random UUIDs). */
export async function revokedTokenIds(owner: pg.Pool): Promise<string[]> {
  const { rows } = await owner.query('SELECT jti FROM auth_revoked_tokens WHERE expires_at > now() - interval \'1 minute\'');
  return rows.map((r) => r.jti);
}
