// The authorization-code flow's rows (sql/011_auth.sql): pending authorize requests,
// single-use codes, rotated refresh tokens and EHR launch contexts (single use, bound to a client). Everything runs in
// the tenant's transaction (app pool, RLS) except launch registration by the CLI.
import type pg from 'pg';
import type { Tx } from './resources.ts';

const ORG = `current_setting('app.org_id')::integer`;

/** Who and what a grant is about, carried from request to code to refresh token. */
export interface GrantContext {
  username?: string;
  fhirUser?: string;
  patient?: string;
  encounter?: string;
}

export interface RequestRow<P> extends GrantContext {
  requestHash: string;
  browserHash: string;
  clientId: string;
  params: P;
}

export async function insertRequest<P>(tx: Tx, r: RequestRow<P>, seconds: number): Promise<void> {
  await tx.query(`DELETE FROM auth_requests WHERE org_id = ${ORG} AND expires_at < now()`);
  await tx.query(
    `INSERT INTO auth_requests (org_id, request_hash, browser_hash, client_id, params, username, fhir_user, patient, encounter, expires_at)
     VALUES (${ORG}, $1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))`,
    [r.requestHash, r.browserHash, r.clientId, JSON.stringify(r.params), r.username ?? null, r.fhirUser ?? null, r.patient ?? null, r.encounter ?? null, seconds]);
}

export async function findRequest<P>(tx: Tx, requestHash: string): Promise<RequestRow<P> | undefined> {
  const { rows } = await tx.query(
    `SELECT request_hash, browser_hash, client_id, params, username, fhir_user, patient, encounter
       FROM auth_requests WHERE org_id = ${ORG} AND request_hash = $1 AND expires_at > now()`, [requestHash]);
  const r = rows[0];
  if (!r) return undefined;
  return {
    requestHash: r.request_hash, browserHash: r.browser_hash, clientId: r.client_id, params: r.params,
    username: r.username ?? undefined, fhirUser: r.fhir_user ?? undefined, patient: r.patient ?? undefined, encounter: r.encounter ?? undefined,
  };
}

export async function updateRequest(tx: Tx, requestHash: string, set: GrantContext): Promise<void> {
  await tx.query(
    `UPDATE auth_requests SET username = coalesce($2, username), fhir_user = coalesce($3, fhir_user),
            patient = coalesce($4, patient), encounter = coalesce($5, encounter)
      WHERE org_id = ${ORG} AND request_hash = $1`,
    [requestHash, set.username ?? null, set.fhirUser ?? null, set.patient ?? null, set.encounter ?? null]);
}

export async function deleteRequest(tx: Tx, requestHash: string): Promise<void> {
  await tx.query(`DELETE FROM auth_requests WHERE org_id = ${ORG} AND request_hash = $1`, [requestHash]);
}

export interface CodeRow extends GrantContext {
  codeHash: string;
  clientId: string;
  redirectUri: string;
  codeChallenge: string;
  scopes: string[];
  nonce?: string;
}

export async function insertCode(tx: Tx, c: CodeRow, seconds: number): Promise<void> {
  await tx.query(`DELETE FROM auth_codes WHERE org_id = ${ORG} AND expires_at < now() - interval '1 day'`);
  await tx.query(
    `INSERT INTO auth_codes (org_id, code_hash, client_id, redirect_uri, code_challenge, scopes, username, fhir_user, patient, encounter, nonce, expires_at)
     VALUES (${ORG}, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))`,
    [c.codeHash, c.clientId, c.redirectUri, c.codeChallenge, c.scopes, c.username ?? null, c.fhirUser ?? null, c.patient ?? null, c.encounter ?? null, c.nonce ?? null, seconds]);
}

function toCode(r: Record<string, any>): CodeRow {
  return {
    codeHash: r.code_hash, clientId: r.client_id, redirectUri: r.redirect_uri, codeChallenge: r.code_challenge, scopes: r.scopes,
    username: r.username ?? undefined, fhirUser: r.fhir_user ?? undefined, patient: r.patient ?? undefined, encounter: r.encounter ?? undefined,
    nonce: r.nonce ?? undefined,
  };
}

/** Marks a code used. 'reused' when it had been exchanged before (the caller revokes what
 *  that exchange issued), 'expired', or undefined when unknown. */
export async function consumeCode(tx: Tx, codeHash: string): Promise<{ code: CodeRow; status: 'ok' | 'reused' | 'expired' } | undefined> {
  const { rows } = await tx.query(
    `UPDATE auth_codes SET used_at = now() WHERE org_id = ${ORG} AND code_hash = $1 AND used_at IS NULL
     RETURNING *, expires_at > now() AS live`, [codeHash]);
  if (rows[0]) return { code: toCode(rows[0]), status: rows[0].live ? 'ok' : 'expired' };
  const old = await tx.query(`SELECT * FROM auth_codes WHERE org_id = ${ORG} AND code_hash = $1`, [codeHash]);
  return old.rows[0] ? { code: toCode(old.rows[0]), status: 'reused' } : undefined;
}

export interface RefreshRow extends GrantContext {
  tokenHash: string;
  family: string;
  clientId: string;
  scopes: string[];
  /** Seconds since the epoch. */
  expiresAt: number;
}

export async function insertRefreshToken(tx: Tx, t: RefreshRow): Promise<void> {
  await tx.query(
    `INSERT INTO auth_refresh_tokens (org_id, token_hash, family, client_id, scopes, username, fhir_user, patient, encounter, expires_at)
     VALUES (${ORG}, $1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9))`,
    [t.tokenHash, t.family, t.clientId, t.scopes, t.username ?? null, t.fhirUser ?? null, t.patient ?? null, t.encounter ?? null, t.expiresAt]);
}

function toRefresh(r: Record<string, any>): RefreshRow & { status: 'ok' | 'used' | 'revoked' | 'expired' } {
  return {
    tokenHash: r.token_hash, family: r.family, clientId: r.client_id, scopes: r.scopes,
    username: r.username ?? undefined, fhirUser: r.fhir_user ?? undefined, patient: r.patient ?? undefined, encounter: r.encounter ?? undefined,
    expiresAt: Number(r.expires_epoch),
    status: r.revoked_at ? 'revoked' : r.used_at ? 'used' : r.live ? 'ok' : 'expired',
  };
}

const REFRESH_COLUMNS = `*, extract(epoch FROM expires_at)::bigint AS expires_epoch, expires_at > now() AS live`;

/** Marks a live refresh token used (it is being rotated) or reports why it is not usable. */
export async function useRefreshToken(tx: Tx, tokenHash: string): Promise<(RefreshRow & { status: 'ok' | 'used' | 'revoked' | 'expired' }) | undefined> {
  const { rows } = await tx.query(
    `UPDATE auth_refresh_tokens SET used_at = now()
      WHERE org_id = ${ORG} AND token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
     RETURNING ${REFRESH_COLUMNS}`, [tokenHash]);
  if (rows[0]) return { ...toRefresh(rows[0]), status: 'ok' };
  return findRefreshToken(tx, tokenHash);
}

export async function findRefreshToken(tx: Tx, tokenHash: string): Promise<(RefreshRow & { status: 'ok' | 'used' | 'revoked' | 'expired' }) | undefined> {
  const { rows } = await tx.query(`SELECT ${REFRESH_COLUMNS} FROM auth_refresh_tokens WHERE org_id = ${ORG} AND token_hash = $1`, [tokenHash]);
  return rows[0] ? toRefresh(rows[0]) : undefined;
}

/** Revokes every refresh token of a family (a replayed token or code betrays a leak). */
export async function revokeFamily(tx: Tx, family: string): Promise<number> {
  const { rowCount } = await tx.query(
    `UPDATE auth_refresh_tokens SET revoked_at = now() WHERE org_id = ${ORG} AND family = $1 AND revoked_at IS NULL`, [family]);
  return rowCount ?? 0;
}

export interface LaunchRow {
  patient?: string;
  encounter?: string;
  /** The user the launch was made for, when the EHR named one. */
  username?: string;
}

/**
 * Takes an EHR launch for `clientId`: marks it used and returns its context, or undefined
 * when it is unknown, expired, already used or made for another client. One statement, so
 * two requests presenting the same launch cannot both get it.
 */
export async function useLaunch(tx: Tx, launchHash: string, clientId: string): Promise<LaunchRow | undefined> {
  const { rows } = await tx.query(
    `UPDATE auth_launches SET used_at = now()
      WHERE org_id = ${ORG} AND launch_hash = $1 AND client_id = $2 AND used_at IS NULL AND expires_at > now()
     RETURNING patient, encounter, username`, [launchHash, clientId]);
  const r = rows[0];
  return r ? { patient: r.patient ?? undefined, encounter: r.encounter ?? undefined, username: r.username ?? undefined } : undefined;
}

/** Registers a launch for a client of the tenant (false when the tenant has no such active client). */
export async function insertLaunch(owner: pg.Pool, l: { orgId: number; launchHash: string; clientId: string; username?: string; patient?: string; encounter?: string; minutes: number }): Promise<boolean> {
  await owner.query(`DELETE FROM auth_launches WHERE expires_at < now()`);
  const { rowCount } = await owner.query(
    `INSERT INTO auth_launches (org_id, launch_hash, client_id, username, patient, encounter, expires_at)
     SELECT $1, $2, $3, $4, $5, $6, now() + make_interval(mins => $7)
      WHERE EXISTS (SELECT 1 FROM auth_clients WHERE org_id = $1 AND client_id = $3 AND revoked_at IS NULL)`,
    [l.orgId, l.launchHash, l.clientId, l.username ?? null, l.patient ?? null, l.encounter ?? null, l.minutes]);
  return (rowCount ?? 0) > 0;
}
