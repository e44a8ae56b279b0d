// ANALYZE of one tenant's partitions after a bulk load (`kiln import`, `kiln demo`). Until
// autovacuum reaches them (a minute or more, and only past its change threshold), the planner
// sizes freshly filled partitions from stale statistics: `_total=estimate` beyond its exact
// bound and every plan's choice between index and scan depend on them. Runs as the owner.
import pg from 'pg';
import { TABLES } from '../../mappings/postgres/index.ts';
import { SPECS } from './searchIndex.ts';

/** Analyzes the tenant partition (with its time sub-partitions) of each table the types live in, and of the search index tables. */
export async function analyzeTenant(owner: pg.Pool, orgId: number, types: Iterable<string>): Promise<string[]> {
  if (!Number.isInteger(orgId)) throw new Error(`bad tenant id ${orgId}`);
  const tables = new Set([...types].filter((t) => Object.hasOwn(TABLES, t)).map((t) => TABLES[t]));
  if (!tables.size) return [];
  const analyzed: string[] = [];
  for (const table of [...tables, ...SPECS.map((s) => s.table)]) {
    const partition = `${table}_o${orgId}`;
    // A tenant made before a table existed may have no partition of it (its rows are in DEFAULT).
    const { rows } = await owner.query('SELECT to_regclass($1) IS NOT NULL AS present', [partition]);
    if (!rows[0].present) continue;
    await owner.query(`ANALYZE ${pg.escapeIdentifier(partition)}`);
    analyzed.push(partition);
  }
  return analyzed;
}
