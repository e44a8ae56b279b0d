// Applies sql/NNN_*.sql in order, each once, recorded in schema_migrations.
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { fromRoot } from '../paths.ts';

const SQL_DIR = fromRoot('sql');
const MIGRATION_LOCK = 7_201_001; // advisory lock key: one migrator at a time

/** The migration files in sql/, in the order they apply. */
function migrationFiles(): string[] {
  return fs.readdirSync(SQL_DIR).filter((f) => /^\d+_.*\.sql$/.test(f)).sort();
}

/** Migration files in sql/ that the database has not recorded as applied (all of them before the first migrate). */
export async function pendingMigrations(db: pg.Pool | pg.ClientBase): Promise<string[]> {
  const rows = await db.query('SELECT version FROM schema_migrations').then((r) => r.rows, (e: { code?: string }) => {
    if (e.code === '42P01') return []; // undefined_table: never migrated
    throw e;
  });
  const done = new Set<string>(rows.map((r) => r.version));
  return migrationFiles().filter((f) => !done.has(f));
}

export async function migrate(pool: pg.Pool): Promise<string[]> {
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = new Set((await client.query('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
    for (const file of migrationFiles()) {
      if (done.has(file)) continue;
      await client.query('BEGIN');
      try {
        await client.query(fs.readFileSync(path.join(SQL_DIR, file), 'utf8'));
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [file]);
        await client.query('COMMIT');
        applied.push(file);
      } catch (e) {
        await client.query('ROLLBACK');
        throw new Error(`migration ${file} failed: ${(e as Error).message}`);
      }
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {});
    client.release();
  }
  return applied;
}
