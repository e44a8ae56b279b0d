#!/usr/bin/env -S npx tsx
// `npm run kiln -- <command>`: operator commands that work beside a running server
// (the embedded PostgreSQL is shared when it is already up) or against DATABASE_URL.
import { VERSION } from './version.ts';
import cliProgress from 'cli-progress';
import { cliConfig, serverBaseUrl } from './runtime.ts';
import { tenantBase } from './auth/urls.ts';
import { openDatabase, type Database } from './store/database.ts';
import type { Config } from './config.ts';
import { createOrg, findOrg, listOrgs } from './store/tenants.ts';
import { importFiles } from './importer.ts';
import { loadDefinitions } from './fhir/validate.ts';
import { EXPORT_USAGE, exportCli } from './export/cli.ts';
import { commandWords, usageError, usageOf, wantsHelp } from './cliUsage.ts';
import { StartupError } from './store/database.ts';

const USAGE = `usage:
  kiln tenant create <slug> [name]              create a tenant (organization) and its partitions
  kiln tenant list                              list tenants
  kiln import [--tenant <slug>] <file>...       load FHIR Bundles (.json) and NDJSON (.ndjson) files
  kiln demo [--data <dir>]                      a 'demo' tenant with the Synthea data, a token and example requests
  kiln auth client add|list|revoke ...          SMART apps and backend services
  kiln auth user add|list|disable|enable|password ...   people who sign in on the authorize page
  kiln auth token [revoke] ...                  mint a local access token, or revoke one
  kiln auth launch ...                          an EHR launch id for one app's authorize request
  kiln auth rotate-keys                         a new token signing key
  kiln bigquery sync [--tenant <slug>]          load the tenant's changes into BigQuery
  kiln healthie pull|push|webhooks|status --tenant <slug>   sync with the Healthie EHR
  kiln views install|materialize|refresh [--tenant <slug>]   starter ViewDefinitions; active views as SQL views for an analytics role
${EXPORT_USAGE}
  kiln --help | --version
  kiln <command> --help                         the usage of one command (kiln auth --help, kiln auth client add --help, ...)`;

const SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;

async function tenantCommand(db: Database, command: string, rest: string[]): Promise<number> {
  if (command === 'list') {
    for (const org of await listOrgs(db.owner)) console.log(`${org.id}\t${org.slug}\t${org.name}`);
    return 0;
  }
  try {
    const org = await createOrg(db.owner, rest[0], rest.slice(1).join(' ') || rest[0]);
    console.log(`created tenant ${org.slug} (id ${org.id}); its FHIR base is /fhir/${org.slug}`);
    return 0;
  } catch (e) {
    const err = e as { code?: string; message: string };
    console.error(err.code === '23505' ? `tenant '${rest[0]}' already exists` : err.message);
    return 1;
  }
}

async function importCommand(db: Database, config: Config, args: string[]): Promise<number> {
  let slug = 'default';
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--tenant') slug = args[++i] ?? '';
    else files.push(args[i]);
  }
  const org = await findOrg(db.owner, slug);
  if (!org) {
    console.error(`unknown tenant '${slug}'`);
    return 2;
  }
  loadDefinitions();
  const bar = new cliProgress.SingleBar({
    format: 'import [{bar}] {value}/{total} files | {resources} resources | {file}',
    stream: process.stderr,
    noTTYOutput: false,
  }, cliProgress.Presets.shades_classic);
  bar.start(files.length, 0, { resources: 0, file: '' });
  let lastFile = '';
  const summary = await importFiles(files, {
    db, orgId: org.id, base: tenantBase(serverBaseUrl(config), slug),
    maxEntries: Number.MAX_SAFE_INTEGER, maxCount: config.maxCount,
    onProgress: (resources, file) => {
      if (file !== lastFile) { lastFile = file; bar.increment(1, { resources, file }); } else bar.update({ resources, file });
    },
  });
  bar.update(files.length, { resources: summary.resources, file: 'done' });
  bar.stop();
  const rate = summary.seconds > 0 ? Math.round(summary.resources / summary.seconds) : summary.resources;
  console.log(`imported ${summary.resources} resources from ${summary.files} files into '${slug}' in ${summary.seconds.toFixed(1)} s (${rate} resources/s); ` +
    `skipped ${summary.skipped} of types Kiln does not store; ${summary.failures.length} failures`);
  for (const f of summary.failures) console.log(`  failed: ${f.file} ${f.what}: ${f.reason}`);
  return summary.failures.length ? 1 : 0;
}

/** Why the arguments of `kiln import` cannot run, if they cannot: no files, or --tenant without a slug. */
function importArgsError(args: string[]): string | undefined {
  let files = 0;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--tenant') {
      if (!args[++i] || args[i].startsWith('-')) return '--tenant needs a slug';
    } else if (args[i].startsWith('--')) return `unknown option '${args[i]}'`;
    else files++;
  }
  return files ? undefined : 'no files to import';
}

async function main(argv: string[]): Promise<number> {
  const [group, command, ...rest] = argv;
  // Asked for, usage is an answer (stdout, 0); a wrong command still gets it on stderr with 2.
  if (group === '--help' || group === '-h' || group === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (group === '--version' || group === '-v') {
    console.log(`kiln ${VERSION}`);
    return 0;
  }
  if (group === 'bigquery') return (await import('./bigquery/cli.ts')).bigqueryCommand(argv.slice(1));
  if (group === 'views') return (await import('./analytics/cli.ts')).viewsCommand(argv.slice(1));
  if (group === 'healthie') return (await import('./healthie/cli.ts')).healthieCommand(argv.slice(1));
  if (group === 'auth') return (await import('./auth/cli.ts')).authCommand(argv.slice(1));
  if (group === 'demo') return (await import('./demo.ts')).demoCommand(argv.slice(1));
  if (group === 'export' || group === 'export-worker') return exportCli(argv);
  if (group !== 'tenant' && group !== 'import') return usageError(USAGE, [], group === undefined ? undefined : `unknown command '${group}'`);
  if (wantsHelp(argv)) {
    console.log(usageOf(USAGE, commandWords(argv)));
    return 0;
  }
  const words = commandWords(argv);
  if (group === 'tenant') {
    if (command !== 'list' && command !== 'create') return usageError(USAGE, ['tenant'], command === undefined ? 'a tenant command is required' : `unknown tenant command '${command}'`);
    if (command === 'list' && rest.length) return usageError(USAGE, words, `unexpected '${rest[0]}'`);
    if (command === 'create' && !SLUG.test(rest[0] ?? '')) {
      return usageError(USAGE, ['tenant', 'create'], 'A tenant slug is 1-63 lowercase letters, digits or hyphens, starting with a letter or digit.');
    }
  } else {
    const bad = importArgsError(argv.slice(1));
    if (bad) return usageError(USAGE, ['import'], bad);
  }
  const isImport = group === 'import';
  const config = await cliConfig();
  const db = await openDatabase(config);
  try {
    return isImport ? await importCommand(db, config, argv.slice(1)) : await tenantCommand(db, command, rest);
  } finally {
    await db.close();
  }
}

// A database that cannot be reached or started is one line naming the cause and the remedy.
process.exit(await main(process.argv.slice(2)).catch((e: unknown) => {
  if (!(e instanceof StartupError)) throw e;
  console.error(e.message);
  return e.exitCode;
}));
