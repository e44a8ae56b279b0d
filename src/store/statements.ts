// Hot statements are prepared once per connection (named by a hash of their text):
// parsing and planning them on every request cost more than running them. PgBouncer
// in transaction mode needs max_prepared_statements (1.21+), or KILN_PREPARE=off.
import crypto from 'node:crypto';
import type pg from 'pg';

/** Whether stmt() names statements (prepared once per connection). */
export const PREPARE = process.env.KILN_PREPARE !== 'off';

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
