// Users who log in on the authorize page (sql/011_auth.sql): read in their tenant at
// login, registered, listed, disabled and given new passwords by the CLI through the owner pool.
import type pg from 'pg';
import { withTenant, type Tx } from './resources.ts';

export interface UserRow {
  orgId: number;
  username: string;
  passwordHash: string;
  fhirUser?: string;
  createdAt: string;
  disabledAt?: string;
}

function toUser(r: Record<string, any>): UserRow {
  return {
    orgId: r.org_id, username: r.username, passwordHash: r.password_hash, fhirUser: r.fhir_user ?? undefined,
    createdAt: r.created_at, disabledAt: r.disabled_at ?? undefined,
  };
}

export async function findUser(tx: Tx, username: string): Promise<UserRow | undefined> {
  const { rows } = await tx.query(
    `SELECT org_id, username, password_hash, fhir_user, created_at, disabled_at
       FROM auth_users WHERE org_id = current_setting('app.org_id')::integer AND username = $1`, [username]);
  return rows[0] ? toUser(rows[0]) : undefined;
}

export async function insertUser(owner: pg.Pool, u: { orgId: number; username: string; passwordHash: string; fhirUser?: string }): Promise<void> {
  await owner.query('INSERT INTO auth_users (org_id, username, password_hash, fhir_user) VALUES ($1, $2, $3, $4)',
    [u.orgId, u.username, u.passwordHash, u.fhirUser ?? null]);
}

export async function listUsers(owner: pg.Pool, orgId?: number): Promise<(UserRow & { tenant: string })[]> {
  const { rows } = await owner.query(
    `SELECT u.org_id, u.username, u.password_hash, u.fhir_user, u.created_at, u.disabled_at, o.slug AS tenant
       FROM auth_users u JOIN organizations o ON o.id = u.org_id
      WHERE $1::integer IS NULL OR u.org_id = $1 ORDER BY o.slug, u.username`, [orgId ?? null]);
  return rows.map((r) => ({ ...toUser(r), tenant: r.tenant }));
}

/** Disables (or enables) a user; a disabled user's refresh tokens are revoked with it. False when no such user. */
export async function setUserDisabled(owner: pg.Pool, orgId: number, username: string, disabled: boolean): Promise<boolean> {
  return withTenant(owner, orgId, async (c) => {
    const { rowCount } = await c.query(
      `UPDATE auth_users SET disabled_at = CASE WHEN $3 THEN coalesce(disabled_at, now()) END WHERE org_id = $1 AND username = $2`,
      [orgId, username, disabled]);
    if (rowCount && disabled) await revokeUserRefreshTokens(c, orgId, username);
    return rowCount === 1;
  });
}

/** A new password; the user's refresh tokens are revoked (a password change often follows a leak). */
export async function setUserPassword(owner: pg.Pool, orgId: number, username: string, passwordHash: string): Promise<boolean> {
  return withTenant(owner, orgId, async (c) => {
    const { rowCount } = await c.query('UPDATE auth_users SET password_hash = $3 WHERE org_id = $1 AND username = $2', [orgId, username, passwordHash]);
    if (rowCount) await revokeUserRefreshTokens(c, orgId, username);
    return rowCount === 1;
  });
}

async function revokeUserRefreshTokens(c: Tx, orgId: number, username: string): Promise<void> {
  await c.query('UPDATE auth_refresh_tokens SET revoked_at = now() WHERE org_id = $1 AND username = $2 AND revoked_at IS NULL', [orgId, username]);
}

/** `tenant|username` of every disabled user, all tenants: their access tokens are refused. */
export async function disabledUserKeys(owner: pg.Pool): Promise<string[]> {
  const { rows } = await owner.query(
    `SELECT o.slug || '|' || u.username AS key FROM auth_users u JOIN organizations o ON o.id = u.org_id WHERE u.disabled_at IS NOT NULL`);
  return rows.map((r) => r.key as string);
}
