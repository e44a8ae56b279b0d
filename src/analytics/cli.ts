// `kiln views install|materialize|refresh`: the starter views into a tenant (through the same
// transaction code as `POST /fhir`, one conditional update by url each), and a tenant's active
// views as SQL views for its read-only analytics role (src/store/analytics.ts).
import { cliConfig, serverBaseUrl } from '../runtime.ts';
import { openDatabase, type Database } from '../store/database.ts';
import { findOrg, type Org } from '../store/tenants.ts';
import { withTenant } from '../store/resources.ts';
import { analyticsNames, materializeTenant, refreshTenant } from '../store/analytics.ts';
import { transaction } from '../interactions/bundle.ts';
import { tenantBase } from '../auth/urls.ts';
import { loadDefinitions } from '../fhir/validate.ts';
import { FhirError } from '../fhir/outcome.ts';
import { starterViews } from '../views/starter.ts';
import { usageError, usageOf, wantsHelp } from '../cliUsage.ts';
import type { Config } from '../config.ts';

export const VIEWS_USAGE = `usage:
  kiln views install [--tenant <slug>]          create or update (by url) the starter ViewDefinitions of conformance/views
  kiln views materialize [--tenant <slug>] [--materialized] [--refresh] [--login]
                                                each active ViewDefinition as a view in schema analytics_<slug>, readable
                                                by the role kiln_analytics_<slug> (NOLOGIN; --login: password from
                                                KILN_ANALYTICS_PASSWORD or a line of stdin); retired views dropped.
                                                --materialized: materialized views; --refresh: refresh unchanged ones too
  kiln views refresh [--tenant <slug>]          refresh the tenant's materialized views`;

const STDIN_WAIT_MS = 10_000;

/** KILN_ANALYTICS_PASSWORD, else the first line of stdin (never echoed, never a prompt). */
async function password(): Promise<string | undefined> {
  if (process.env.KILN_ANALYTICS_PASSWORD) return process.env.KILN_ANALYTICS_PASSWORD;
  if (process.stdin.isTTY) return undefined;
  return new Promise((resolve) => {
    let text = '';
    const done = () => {
      clearTimeout(timer);
      process.stdin.removeAllListeners('data').removeAllListeners('end').pause();
      process.stdin.unref?.();
      resolve(text.split(/\r?\n/)[0] || undefined);
    };
    const timer = setTimeout(done, STDIN_WAIT_MS);
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk: string) => { text += chunk; if (text.includes('\n')) done(); });
    process.stdin.on('end', done);
    process.stdin.on('error', done);
  });
}

async function install(db: Database, config: Config, org: Org): Promise<number> {
  loadDefinitions();
  const views = starterViews();
  const entry = views.map((v) => ({ resource: v, request: { method: 'PUT', url: `ViewDefinition?url=${encodeURIComponent(v.url!)}` } }));
  try {
    const results = await transaction({ resourceType: 'Bundle', type: 'transaction', entry }, {
      base: tenantBase(serverBaseUrl(config), org.slug), maxEntries: entry.length, maxCount: config.maxCount,
      inTenant: (fn) => withTenant(db.app, org.id, fn),
    });
    results.forEach((r, i) => console.log(`  ${views[i].name!.padEnd(24)} ${r.status.startsWith('201') ? 'created' : 'updated'}  ${r.location ?? ''}`));
    console.log(`installed ${views.length} starter views into '${org.slug}'`);
    return 0;
  } catch (e) {
    if (!(e instanceof FhirError)) throw e;
    console.error(`nothing installed: ${e.status} ${e.issues.map((i) => i.diagnostics).join('; ')}`);
    return 1;
  }
}

async function materialize(db: Database, org: Org, flags: Set<string>): Promise<number> {
  let secret: string | undefined;
  if (flags.has('--login')) {
    secret = await password();
    if (!secret || secret.length < 12) {
      console.error('--login needs a password of at least 12 characters in KILN_ANALYTICS_PASSWORD or as a line of stdin');
      return 2;
    }
  }
  const r = await materializeTenant(db.owner, org, { materialized: flags.has('--materialized'), refresh: flags.has('--refresh'), password: secret });
  const kind = flags.has('--materialized') ? 'materialized view' : 'view';
  for (const n of r.created) console.log(`  ${r.names.schema}.${n}  created (${kind})`);
  for (const n of r.kept) console.log(`  ${r.names.schema}.${n}  unchanged${r.refreshed.includes(n) ? ', refreshed' : ''}`);
  for (const n of r.dropped) console.log(`  ${r.names.schema}.${n}  dropped (its view is gone or no longer active)`);
  for (const s of r.skipped) console.log(`  ViewDefinition/${s.id}${s.name ? ` (${s.name})` : ''}  skipped: ${s.reason}`);
  console.log(`'${org.slug}': ${r.created.length + r.kept.length} views in schema ${r.names.schema} for role ${r.names.role}`
    + `${secret ? ' (LOGIN, password set)' : ''}; ${r.dropped.length} dropped, ${r.skipped.length} skipped`);
  return r.skipped.length ? 1 : 0;
}

export async function viewsCommand(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (wantsHelp(args) || command === 'help') {
    console.log(command && command !== 'help' ? usageOf(VIEWS_USAGE, ['views', command]) : VIEWS_USAGE);
    return 0;
  }
  if (command !== 'install' && command !== 'materialize' && command !== 'refresh') {
    return usageError(VIEWS_USAGE, ['views'], command === undefined ? 'a views command is required' : `unknown command 'kiln views ${command}'`);
  }
  const allowed = command === 'materialize' ? ['--materialized', '--refresh', '--login'] : [];
  let slug = 'default';
  const flags = new Set<string>();
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--tenant' && rest[i + 1] && !rest[i + 1].startsWith('-')) slug = rest[++i];
    else if (allowed.includes(rest[i])) flags.add(rest[i]);
    else return usageError(VIEWS_USAGE, ['views', command], rest[i] === '--tenant' ? '--tenant needs a slug' : `unexpected '${rest[i]}'`);
  }
  try {
    analyticsNames(slug);
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const config = await cliConfig();
  const db = await openDatabase(config);
  try {
    const org = await findOrg(db.owner, slug);
    if (!org) { console.error(`unknown tenant '${slug}'`); return 2; }
    if (command === 'install') return await install(db, config, org);
    if (command === 'materialize') return await materialize(db, org, flags);
    const done = await refreshTenant(db.owner, org.slug);
    console.log(`refreshed ${done.length} materialized views of '${org.slug}'${done.length ? `: ${done.join(', ')}` : ''}`);
    return 0;
  } finally {
    await db.close();
  }
}
