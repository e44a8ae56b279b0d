// Tenants (organizations): creation with their partitions, and slug lookup.
import type pg from 'pg';
import { inTransaction } from './transaction.ts';

export interface Org { id: number; slug: string; name: string }

// Partitions are made a year back (KILN_PARTITION_MONTHS_BACK) and three months ahead;
// older or later rows land in the org's DEFAULT partition, so no write ever fails for
// lack of one, and the daily top-up then gives the months found there their own.
const MONTHS_BACK = Number(process.env.KILN_PARTITION_MONTHS_BACK ?? 12);
const MONTHS_AHEAD = 3;

const PARTITION_LOCK = 7_201_002; // advisory lock class: one partition maintainer per tenant at a time

/**
 * Creates the tenant's time partitions and moves rows out of its DEFAULT partitions. Two
 * processes opening one database at once would otherwise attach the same partitions in
 * opposite orders and deadlock (40P01), so the work holds a per-tenant lock.
 */
export async function ensureOrgPartitions(owner: pg.Pool, orgId: number, monthsBack = MONTHS_BACK): Promise<void> {
  await inTransaction(owner, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', [PARTITION_LOCK, orgId]);
    await client.query('SELECT kiln_ensure_time_partitions($1, $2, $3)', [orgId, monthsBack, MONTHS_AHEAD]);
    await client.query('SELECT kiln_split_default_partitions($1)', [orgId]);
  });
}

export async function ensureAllOrgPartitions(owner: pg.Pool): Promise<void> {
  const { rows } = await owner.query('SELECT id FROM organizations ORDER BY id');
  for (const r of rows) await ensureOrgPartitions(owner, r.id);
}

export async function createOrg(owner: pg.Pool, slug: string, name: string): Promise<Org> {
  const { rows } = await owner.query(
    'INSERT INTO organizations (slug, name) VALUES ($1, $2) RETURNING id, slug, name', [slug, name]);
  await ensureOrgPartitions(owner, rows[0].id);
  return rows[0];
}

export async function listOrgs(pool: pg.Pool): Promise<Org[]> {
  return (await pool.query('SELECT id, slug, name FROM organizations ORDER BY id')).rows;
}

export async function findOrg(pool: pg.Pool, slug: string): Promise<Org | undefined> {
  return (await pool.query('SELECT id, slug, name FROM organizations WHERE slug = $1', [slug])).rows[0];
}
