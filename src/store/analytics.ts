// `kiln views materialize`: a tenant's active ViewDefinitions as PostgreSQL views (or materialized
// views) in its schema analytics_<slug>, read by its role kiln_analytics_<slug> with plain SQL.
//
// Isolation holds twice: each view's SQL names the tenant's id as a literal (the compiled query's
// `current_setting('app.org_id')`, which the role could set itself, is replaced), and a plain view
// is security_invoker, so the tables are read as the analytics role under sql/035's policies,
// which bind it to its own tenant whatever it sets. A materialized view holds the rows computed
// by the owner at creation or refresh: the literal is its only filter, and the role can read
// nothing else of it. DDL takes no bind parameters, so the compiled query's parameters are
// inlined as quoted literals (pg's escapeLiteral, PostgreSQL's format('%L')) by inlineParams.
import crypto from 'node:crypto';
import pg from 'pg';
import { compileView, ViewCompileError } from './views/index.ts';
import { inTransaction } from './transaction.ts';
import type { ViewDefinition } from '../views/types.ts';

export interface AnalyticsNames { schema: string; role: string }

/** The schema and role of a tenant's analytics: `-` becomes `_` (slugs have no `_`, so no two tenants share a name). */
export function analyticsNames(slug: string): AnalyticsNames {
  const base = slug.replaceAll('-', '_');
  const names = { schema: `analytics_${base}`, role: `kiln_analytics_${base}` };
  // PostgreSQL cuts longer names to 63 bytes, which could make two tenants' names one.
  if (Buffer.byteLength(names.role) > 63) throw new Error(`tenant slug '${slug}' is too long for an analytics role name (at most 48 characters)`);
  return names;
}

const ORG_SETTING = "current_setting('app.org_id')::integer";

/**
 * `sql` with each `$n` replaced by params[n-1] as a quoted literal and the tenant setting by the
 * tenant's id. Quoted strings, quoted identifiers, dollar quotes and comments are copied as they
 * are. Every parameter the compiler binds is cast where it is used (`$3::jsonpath`), so a literal
 * takes the type the parameter took.
 */
export function inlineParams(sql: string, params: readonly unknown[], orgId: number): string {
  let out = '';
  let i = 0;
  const upTo = (end: number) => { out += sql.slice(i, end); i = end; };
  while (i < sql.length) {
    const ch = sql[i];
    if (sql.startsWith(ORG_SETTING, i)) {
      out += `(${Number(orgId)})`;
      i += ORG_SETTING.length;
    } else if (ch === "'" || ch === '"') {
      let j = i + 1;
      for (; j < sql.length; j++) {
        if (sql[j] === ch) {
          if (sql[j + 1] === ch) j++;
          else break;
        }
        // An E'...' string escapes with backslashes.
        if (ch === "'" && sql[j] === '\\' && /[eE]/.test(sql[i - 1] ?? '')) j++;
      }
      if (j >= sql.length) throw new Error('unterminated quote in compiled SQL');
      upTo(j + 1);
    } else if (ch === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i);
      upTo(end < 0 ? sql.length : end);
    } else if (ch === '/' && sql[i + 1] === '*') {
      const end = sql.indexOf('*/', i + 2);
      if (end < 0) throw new Error('unterminated comment in compiled SQL');
      upTo(end + 2);
    } else if (ch === '$') {
      const param = /^\$(\d+)/.exec(sql.slice(i, i + 12));
      const tag = param ? null : /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 70));
      if (param) {
        const n = Number(param[1]);
        if (n < 1 || n > params.length) throw new Error(`compiled SQL names $${n} but has ${params.length} parameters`);
        out += literal(params[n - 1]);
        i += param[0].length;
      } else if (tag) {
        const end = sql.indexOf(tag[0], i + tag[0].length);
        if (end < 0) throw new Error('unterminated dollar quote in compiled SQL');
        upTo(end + tag[0].length);
      } else upTo(i + 1);
    } else upTo(i + 1);
  }
  return out;
}

function literal(value: unknown): string {
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error('a compiled parameter is not a finite number');
    return pg.escapeLiteral(String(value));
  }
  if (typeof value === 'boolean' || typeof value === 'string') return pg.escapeLiteral(String(value));
  throw new Error(`a compiled parameter of type ${typeof value} cannot be inlined`);
}

export interface StoredView { id: string; view: ViewDefinition }

/** The tenant's stored ViewDefinitions, by id (deleted ones are not in the table). */
export async function tenantViews(owner: pg.Pool, orgId: number): Promise<StoredView[]> {
  const { rows } = await owner.query(
    `SELECT id, resource::text AS json FROM resources WHERE org_id = $1 AND resource_type = 'ViewDefinition' ORDER BY id`, [orgId]);
  return rows.map((r) => ({ id: r.id as string, view: JSON.parse(r.json) as ViewDefinition }));
}

export interface MaterializeOptions {
  /** Materialized views (a snapshot, refreshed by refreshTenant) instead of views read live. */
  materialized: boolean;
  /** Also refresh materialized views whose definition did not change. */
  refresh: boolean;
  /** Makes the role LOGIN with this password (otherwise it is created NOLOGIN and left as it is). */
  password?: string;
}

export interface MaterializeResult {
  names: AnalyticsNames;
  created: string[];
  kept: string[];
  refreshed: string[];
  dropped: string[];
  skipped: { id: string; name?: string; reason: string }[];
}

const MARK = 'kiln ViewDefinition/';
const LOCK = 7_201_035; // advisory lock class: one materialize per tenant at a time
const VIEW_NAME = /^[A-Za-z][A-Za-z0-9_]{0,62}$/;

interface Wanted { id: string; name: string; sql: string; comment: string }

/** The statement body of each active view, with the comment that identifies its definition. */
function wantedViews(views: StoredView[], orgId: number, kind: string, result: MaterializeResult): Wanted[] {
  const wanted: Wanted[] = [];
  const taken = new Map<string, string>();
  for (const { id, view } of views) {
    if (view.status !== 'active') continue;
    const name = view.name;
    if (typeof name !== 'string' || !VIEW_NAME.test(name)) {
      result.skipped.push({ id, name, reason: 'its name is not a database name (a letter, then letters, digits or _)' });
      continue;
    }
    const other = taken.get(name.toLowerCase());
    if (other) {
      result.skipped.push({ id, name, reason: `ViewDefinition/${other} has the same name` });
      continue;
    }
    let compiled;
    try {
      compiled = compileView(view);
    } catch (e) {
      if (!(e instanceof ViewCompileError)) throw e;
      result.skipped.push({ id, name, reason: `not compiled to SQL: ${e.message}` });
      continue;
    }
    // The view must not depend on the reader's session: the tenant is the literal, or the view is not made.
    const body = inlineParams(compiled.sql, compiled.params, orgId);
    if (!compiled.sql.includes(ORG_SETTING) || body.includes('current_setting(')) {
      result.skipped.push({ id, name, reason: 'its compiled SQL does not name the tenant as this command expects' });
      continue;
    }
    taken.set(name.toLowerCase(), id);
    const columns = compiled.columns.map((c) => `v.${c.alias} AS ${pg.escapeIdentifier(c.name)}`).join(', ');
    const sql = `SELECT ${columns} FROM (${body}) v`;
    const hash = crypto.createHash('sha256').update(`${kind}\n${sql}`).digest('hex').slice(0, 32);
    wanted.push({ id, name, sql, comment: `${MARK}${id} ${hash}` });
  }
  return wanted;
}

/** A failed CREATE in words that quote no row (a data error can name a value). */
function createFailure(e: unknown): string {
  const err = e as { code?: string; message?: string };
  if (err.message?.includes('kiln_several_values_')) return 'a column has several values in a row; declare it collection: true';
  if (err.code?.startsWith('22')) return `a value does not fit its column (SQLSTATE ${err.code})`;
  return `${err.message ?? String(e)}${err.code ? ` (SQLSTATE ${err.code})` : ''}`;
}

/**
 * Makes the tenant's analytics schema hold exactly its active views: new and changed ones
 * created, retired, deleted and renamed ones dropped, unchanged ones kept, in one transaction
 * (readers see the old set or the new). Runs as the owner.
 */
export async function materializeTenant(owner: pg.Pool, org: { id: number; slug: string }, opts: MaterializeOptions): Promise<MaterializeResult> {
  const names = analyticsNames(org.slug);
  const kind = opts.materialized ? 'MATERIALIZED VIEW' : 'VIEW';
  const result: MaterializeResult = { names, created: [], kept: [], refreshed: [], dropped: [], skipped: [] };
  const wanted = wantedViews(await tenantViews(owner, org.id), org.id, kind, result);
  const schema = pg.escapeIdentifier(names.schema);
  const role = pg.escapeIdentifier(names.role);
  const toRefresh: string[] = [];
  await inTransaction(owner, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK, org.id]);
    const exists = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [names.role]);
    if (!exists.rowCount) await client.query(`CREATE ROLE ${role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS IN ROLE kiln_analytics`);
    else await client.query(`GRANT kiln_analytics TO ${role}`);
    if (opts.password !== undefined) await client.query(`ALTER ROLE ${role} LOGIN PASSWORD ${pg.escapeLiteral(opts.password)}`);
    // Plain `SELECT * FROM vital_signs` after logging in; writes refused even before privileges are checked.
    await client.query(`ALTER ROLE ${role} SET search_path = ${schema}`);
    await client.query(`ALTER ROLE ${role} SET default_transaction_read_only = on`);
    await client.query(
      `INSERT INTO kiln_analytics_roles (role_name, org_id) VALUES ($1, $2)
       ON CONFLICT (org_id) DO UPDATE SET role_name = excluded.role_name`, [names.role, org.id]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
    await client.query(`REVOKE ALL ON SCHEMA ${schema} FROM PUBLIC`);
    await client.query(`GRANT USAGE ON SCHEMA ${schema} TO ${role}`);
    const { rows: present } = await client.query(
      `SELECT c.relname AS name, c.relkind AS kind, obj_description(c.oid, 'pg_class') AS comment
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('v', 'm')`, [names.schema]);
    const relkind = opts.materialized ? 'm' : 'v';
    const byName = new Map(wanted.map((w) => [w.name, w]));
    const kept = new Set<string>();
    for (const p of present) {
      if (typeof p.comment !== 'string' || !p.comment.startsWith(MARK)) continue; // not Kiln's: left alone
      const w = byName.get(p.name);
      if (w && w.comment === p.comment && p.kind === relkind) {
        kept.add(p.name);
        continue;
      }
      await client.query(`DROP ${p.kind === 'm' ? 'MATERIALIZED VIEW' : 'VIEW'} ${schema}.${pg.escapeIdentifier(p.name)}`);
      if (!w) result.dropped.push(p.name);
    }
    for (const w of wanted) {
      const target = `${schema}.${pg.escapeIdentifier(w.name)}`;
      if (kept.has(w.name)) {
        result.kept.push(w.name);
        if (opts.materialized && opts.refresh) toRefresh.push(w.name);
        continue;
      }
      await client.query('SAVEPOINT view');
      try {
        await client.query(opts.materialized
          ? `CREATE MATERIALIZED VIEW ${target} AS ${w.sql} WITH DATA`
          : `CREATE VIEW ${target} WITH (security_invoker = true) AS ${w.sql}`);
        await client.query(`COMMENT ON ${kind} ${target} IS ${pg.escapeLiteral(w.comment)}`);
        await client.query(`GRANT SELECT ON ${target} TO ${role}`);
        await client.query('RELEASE SAVEPOINT view');
        result.created.push(w.name);
      } catch (e) {
        await client.query('ROLLBACK TO SAVEPOINT view');
        result.skipped.push({ id: w.id, name: w.name, reason: createFailure(e) });
      }
    }
  });
  for (const name of toRefresh) {
    await owner.query(`REFRESH MATERIALIZED VIEW ${schema}.${pg.escapeIdentifier(name)}`);
    result.refreshed.push(name);
  }
  return result;
}

/** Refreshes each of the tenant's materialized views (each in its own statement: readers wait for one at a time). */
export async function refreshTenant(owner: pg.Pool, slug: string): Promise<string[]> {
  const names = analyticsNames(slug);
  const { rows } = await owner.query(
    `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relkind = 'm' AND obj_description(c.oid, 'pg_class') LIKE $2 ORDER BY c.relname`,
    [names.schema, `${MARK}%`]);
  const done: string[] = [];
  for (const r of rows) {
    await owner.query(`REFRESH MATERIALIZED VIEW ${pg.escapeIdentifier(names.schema)}.${pg.escapeIdentifier(r.name)}`);
    done.push(r.name);
  }
  return done;
}
