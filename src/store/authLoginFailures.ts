// Failed sign-ins per username and per client IP (sql/015_auth_revocation.sql), in the
// tenant's transactions of the login page. A window starts at a key's first failure. A
// sign-in is counted as a failure before its password is checked, under a
// transaction-level advisory lock per key, so concurrent guesses cannot overshoot the
// limit while no transaction waits on the hash (and PgBouncer transaction mode is fine);
// a sign-in that succeeds is forgiven afterwards.
import type pg from 'pg';
import type { Tx } from './resources.ts';

export type LoginKey = { kind: 'user' | 'ip'; key: string };

export interface LoginCounter extends LoginKey {
  /** Failures in the open window (0 when none is open). */
  failures: number;
  /** Seconds left in the window. */
  secondsLeft: number;
}

const ORG = `current_setting('app.org_id')::integer`;

/** Locks `keys` in the order given (callers: user, then ip) and reads their counters. */
export async function lockLoginCounters(tx: Tx, keys: LoginKey[], windowSeconds: number): Promise<LoginCounter[]> {
  const out: LoginCounter[] = [];
  for (const k of keys) {
    await tx.query(`SELECT pg_advisory_xact_lock(hashtextextended('kiln-login/' || ${ORG} || '/' || $1 || '/' || $2, 0))`, [k.kind, k.key]);
    const { rows } = await tx.query(
      `SELECT failures, ceil(extract(epoch FROM window_start + make_interval(secs => $3) - now()))::integer AS left
         FROM auth_login_failures WHERE org_id = ${ORG} AND kind = $1 AND key = $2`, [k.kind, k.key, windowSeconds]);
    const left = rows[0]?.left ?? 0;
    out.push({ ...k, failures: left > 0 ? rows[0].failures : 0, secondsLeft: Math.max(0, left) });
  }
  return out;
}

/** Counts a failure for each (locked) key; a closed window restarts at this failure. */
export async function recordLoginFailure(tx: Tx, keys: LoginKey[], windowSeconds: number): Promise<void> {
  // Rows of closed windows are dead weight; rows locked elsewhere are left for next time.
  await tx.query(
    `DELETE FROM auth_login_failures WHERE ctid IN (SELECT ctid FROM auth_login_failures
      WHERE org_id = ${ORG} AND window_start < now() - make_interval(secs => $1) LIMIT 100 FOR UPDATE SKIP LOCKED)`, [windowSeconds]);
  for (const k of keys) {
    await tx.query(
      `INSERT INTO auth_login_failures AS f (org_id, kind, key, failures, window_start) VALUES (${ORG}, $1, $2, 1, now())
       ON CONFLICT (org_id, kind, key) DO UPDATE SET
         failures = CASE WHEN f.window_start <= now() - make_interval(secs => $3) THEN 1 ELSE f.failures + 1 END,
         window_start = CASE WHEN f.window_start <= now() - make_interval(secs => $3) THEN now() ELSE f.window_start END`,
      [k.kind, k.key, windowSeconds]);
  }
}

/** A successful sign-in clears its username's counter and takes back the failure counted
 *  in advance for its IP (the IP keeps its other failures). */
export async function forgiveLoginAttempt(tx: Tx, user: LoginKey, ip: LoginKey): Promise<void> {
  await tx.query(`DELETE FROM auth_login_failures WHERE org_id = ${ORG} AND kind = $1 AND key = $2`, [user.kind, user.key]);
  await tx.query(`UPDATE auth_login_failures SET failures = greatest(failures - 1, 0) WHERE org_id = ${ORG} AND kind = $1 AND key = $2`, [ip.kind, ip.key]);
}

/** The CLI's reset of a user's counter (with a new password or re-enabling). */
export async function clearUserLoginFailures(owner: pg.Pool, orgId: number, username: string): Promise<void> {
  await owner.query(`DELETE FROM auth_login_failures WHERE org_id = $1 AND kind = 'user' AND key = $2`, [orgId, username]);
}
