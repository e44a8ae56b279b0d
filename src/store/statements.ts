// Hot statements are prepared once per connection (named by a hash of their text):
// parsing and planning them on every request cost more than running them. PgBouncer
// in transaction mode needs max_prepared_statements (1.21+), or KILN_PREPARE=off.
import crypto from 'node:crypto';
import type pg from 'pg';

const PREPARE = process.env.KILN_PREPARE !== 'off';

/** Statement texts and their names: hashing the text on every call cost ~0.75 µs.
 * Write texts vary with the resource's index shape, so the map is capped. */
const names = new Map<string, string>();
const MAX_NAMES = 2000;

export function stmt(text: string, values: unknown[]): pg.QueryConfig {
  if (!PREPARE) return { text, values };
  let name = names.get(text);
  if (!name) {
    name = `k${crypto.createHash('sha1').update(text).digest('base64url').slice(0, 20)}`;
    if (names.size < MAX_NAMES) names.set(text, name);
  }
  return { name, text, values };
}

export interface Statement {
  sql: string;
  values: unknown[];
}

/**
 * Runs `work`, whose statements (through `run`) are named and executed on their generic
 * plan: planned once per connection (and again when ANALYZE or new partitions invalidate
 * it) instead of per execution, as kiln_app otherwise plans (sql/006). For statements over
 * many partitions that no value rules out at plan time, where planning costs more than
 * running. The transaction's plan cache mode is put back afterwards: an unnamed statement
 * on a generic plan is planned every time and prunes nothing at plan time, so with
 * KILN_PREPARE=off (or `generic` false) the statements keep their custom plans.
 */
export async function onGenericPlans<T>(tx: pg.PoolClient, generic: boolean, work: (run: (s: Statement) => Promise<pg.QueryResult>) => Promise<T>): Promise<T> {
  if (!generic || !PREPARE) return work((s) => tx.query(s.sql, s.values));
  const { mode } = (await tx.query(`SELECT b.mode, set_config('plan_cache_mode', 'force_generic_plan', true)
    FROM (SELECT current_setting('plan_cache_mode') AS mode) b`)).rows[0];
  const out = await work((s) => tx.query(stmt(s.sql, s.values)));
  await tx.query(`SELECT set_config('plan_cache_mode', $1, true)`, [mode]);
  return out;
}
