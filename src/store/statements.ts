// Hot statements are prepared once per connection (named by a hash of their text):
// parsing and planning them on every request cost more than running them. PgBouncer
// in transaction mode needs max_prepared_statements (1.21+), or KILN_PREPARE=off.
import crypto from 'node:crypto';
import type pg from 'pg';

const PREPARE = process.env.KILN_PREPARE !== 'off';

export function stmt(text: string, values: unknown[]): pg.QueryConfig {
  if (!PREPARE) return { text, values };
  return { name: `k${crypto.createHash('sha1').update(text).digest('base64url').slice(0, 20)}`, text, values };
}
