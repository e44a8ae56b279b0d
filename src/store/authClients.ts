// Registered OAuth clients and the jti of accepted client assertions (sql/011_auth.sql).
// Token requests read them inside their tenant (app pool, RLS); the CLI registers and
// revokes them through the owner pool.
import type pg from 'pg';
import type { JSONWebKeySet } from 'jose';
import type { Tx } from './resources.ts';
import { inTransaction } from './transaction.ts';

export type ClientAuthMethod = 'private_key_jwt' | 'client_secret_basic' | 'none';

export interface ClientRow {
  orgId: number;
  clientId: string;
  name: string;
  authMethod: ClientAuthMethod;
  jwks?: JSONWebKeySet;
  jwksUri?: string;
  secretHash?: string;
  redirectUris: string[];
  scopes: string[];
  createdAt: string;
  revokedAt?: string;
}

const COLUMNS = 'org_id, client_id, name, auth_method, jwks, jwks_uri, secret_hash, redirect_uris, scopes, created_at, revoked_at';

function toClient(r: Record<string, any>): ClientRow {
  return {
    orgId: r.org_id, clientId: r.client_id, name: r.name, authMethod: r.auth_method,
    jwks: r.jwks ?? undefined, jwksUri: r.jwks_uri ?? undefined, secretHash: r.secret_hash ?? undefined,
    redirectUris: r.redirect_uris, scopes: r.scopes, createdAt: r.created_at, revokedAt: r.revoked_at ?? undefined,
  };
}

/** A client of the transaction's tenant (revoked ones included: callers refuse them). */
export async function findClient(tx: Tx, clientId: string): Promise<ClientRow | undefined> {
  const { rows } = await tx.query(
    `SELECT ${COLUMNS} FROM auth_clients WHERE org_id = current_setting('app.org_id')::integer AND client_id = $1`, [clientId]);
  return rows[0] ? toClient(rows[0]) : undefined;
}

/** Records an assertion's jti; false when the client already used it (a replay). Rows of
 *  assertions that expired go first: their jti can no longer be replayed anyway. */
export async function recordAssertionJti(tx: Tx, clientId: string, jti: string, expiresAt: number): Promise<boolean> {
  await tx.query(`DELETE FROM auth_assertion_jtis WHERE org_id = current_setting('app.org_id')::integer AND expires_at < now() - interval '1 minute'`);
  const { rowCount } = await tx.query(
    `INSERT INTO auth_assertion_jtis (org_id, client_id, jti, expires_at)
     VALUES (current_setting('app.org_id')::integer, $1, $2, to_timestamp($3))
     ON CONFLICT DO NOTHING`, [clientId, jti, expiresAt]);
  return rowCount === 1;
}

export type NewClient = Omit<ClientRow, 'createdAt' | 'revokedAt'>;

export async function insertClient(owner: pg.Pool, c: NewClient): Promise<ClientRow> {
  const { rows } = await owner.query(
    `INSERT INTO auth_clients (org_id, client_id, name, auth_method, jwks, jwks_uri, secret_hash, redirect_uris, scopes)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ${COLUMNS}`,
    [c.orgId, c.clientId, c.name, c.authMethod, c.jwks ? JSON.stringify(c.jwks) : null, c.jwksUri ?? null, c.secretHash ?? null, c.redirectUris, c.scopes]);
  return toClient(rows[0]);
}

export async function listClients(owner: pg.Pool, orgId?: number): Promise<(ClientRow & { tenant: string })[]> {
  const { rows } = await owner.query(
    `SELECT ${COLUMNS.split(', ').map((c) => `c.${c}`).join(', ')}, o.slug AS tenant
       FROM auth_clients c JOIN organizations o ON o.id = c.org_id
      WHERE $1::integer IS NULL OR c.org_id = $1 ORDER BY o.slug, c.created_at`, [orgId ?? null]);
  return rows.map((r) => ({ ...toClient(r), tenant: r.tenant }));
}

/** Marks a client revoked and revokes its refresh tokens; false when no such live client. */
export async function revokeClient(owner: pg.Pool, clientId: string): Promise<boolean> {
  return inTransaction(owner, async (client) => {
    const { rows } = await client.query('UPDATE auth_clients SET revoked_at = now() WHERE client_id = $1 AND revoked_at IS NULL RETURNING org_id', [clientId]);
    if (rows[0]) {
      await client.query('UPDATE auth_refresh_tokens SET revoked_at = now() WHERE org_id = $1 AND client_id = $2 AND revoked_at IS NULL', [rows[0].org_id, clientId]);
    }
    return rows.length === 1;
  });
}
