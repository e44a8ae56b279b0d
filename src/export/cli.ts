// `kiln export` (one export now, with a progress bar) and `kiln export-worker` (the
// export worker as its own process, for a server started with KILN_EXPORT_WORKER=off).
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { cliConfig } from '../runtime.ts';
import { openDatabase } from '../store/database.ts';
import { findOrg } from '../store/tenants.ts';
import { withTenant } from '../store/resources.ts';
import { bindScope, countRows } from '../store/exportRows.ts';
import { loadDefinitions } from '../fhir/validate.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { exportWithProgress } from './run.ts';
import { ExportWorker } from './worker.ts';
import { ownerOnlyDir } from './ndjson.ts';
import { usageError, usageOf, wantsHelp } from '../cliUsage.ts';

export const EXPORT_USAGE = `  kiln export [--tenant <slug>] [--type T,...] [--since <instant>] [--out <dir>]
                                                export a tenant to NDJSON files now (progress on stderr)
  kiln export-worker                            run $export jobs (for a server with KILN_EXPORT_WORKER=off)`;

const USAGE = `usage:\n${EXPORT_USAGE}`;

export async function exportCli(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    console.log(usageOf(USAGE, [argv[0]]));
    return 0;
  }
  if (argv[0] === 'export-worker') return argv.length > 1 ? usageError(USAGE, ['export-worker'], `unexpected '${argv[1]}'`) : workerCommand();
  return exportCommand(argv.slice(1));
}

async function exportCommand(args: string[]): Promise<number> {
  let slug = 'default';
  let since: string | undefined;
  let out: string | undefined;
  let types: string[] | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    // An option without its value is an error, not a silent default (an export of everything).
    if (['--tenant', '--since', '--out', '--type'].includes(a) && (args[i + 1] === undefined || args[i + 1].startsWith('--'))) {
      return usageError(USAGE, ['export'], `${a} needs a value`);
    }
    if (a === '--tenant') slug = args[++i] ?? '';
    else if (a === '--since') since = args[++i];
    else if (a === '--out') out = args[++i];
    else if (a === '--type') types = [...(types ?? []), ...(args[++i] ?? '').split(',').filter(Boolean)];
    else {
      return usageError(USAGE, ['export'], `unknown option '${a}'`);
    }
  }
  const unknown = (types ?? []).filter((t) => !TABLES[t]);
  if (unknown.length) {
    console.error(`Kiln does not store ${unknown.join(', ')}; types: ${Object.keys(TABLES).join(', ')}`);
    return 2;
  }
  if (since !== undefined && Number.isNaN(Date.parse(since))) {
    console.error(`--since '${since}' is not an instant (e.g. 2024-01-01T00:00:00Z)`);
    return 2;
  }
  const config = await cliConfig();
  const db = await openDatabase(config);
  try {
    const org = await findOrg(db.owner, slug);
    if (!org) {
      console.error(`unknown tenant '${slug}'`);
      return 2;
    }
    const chosen = types ?? Object.keys(TABLES);
    // The bar's total: a count taken now (the export itself counts as it writes).
    const total = await withTenant(db.app, org.id, async (tx) => {
      await bindScope(tx, { until: new Date(Date.now() + 60_000).toISOString(), since: since && new Date(since).toISOString() });
      let n = 0;
      for (const t of chosen) n += await countRows(tx, t, { since: !!since });
      return n;
    });
    const bar = new cliProgress.SingleBar({
      format: 'export [{bar}] {percentage}% | {value}/{total} resources | {current}',
      stream: process.stderr,
    }, cliProgress.Presets.shades_classic);
    bar.start(total, 0, { current: '' });
    const t0 = performance.now();
    const result = await exportWithProgress(db, config, { orgId: org.id, since, types }, (p) => {
      bar.setTotal(Math.max(total, p.exported ?? 0));
      bar.update(p.exported ?? 0, { current: p.current ?? 'done' });
    });
    bar.stop();
    const seconds = (performance.now() - t0) / 1000;
    let files = result.files.map((f) => f.path);
    if (out) {
      ownerOnlyDir(out); // the copies are PHI like the job's files (which copyFileSync keeps at 0600)
      files = result.files.map((f) => {
        const dest = path.join(out!, path.basename(f.path));
        fs.copyFileSync(f.path, dest);
        return dest;
      });
    }
    const count = result.files.reduce((n, f) => n + f.count, 0);
    console.log(`exported ${count} resources from '${slug}' in ${seconds.toFixed(1)} s (${Math.round(count / Math.max(seconds, 0.001))} resources/s); ` +
      `job ${result.jobId}, transactionTime ${result.transactionTime}`);
    for (const f of files) console.log(`  ${f}`);
    return 0;
  } finally {
    await db.close();
  }
}

async function workerCommand(): Promise<number> {
  const config = await cliConfig();
  loadDefinitions(); // _elements needs the resource definitions
  const db = await openDatabase(config);
  const worker = new ExportWorker(db, config, (msg) => console.log(msg));
  worker.start();
  console.log(`export worker ${worker.name} running; files in ${config.exportDir ?? path.join(config.dataDir, 'exports')}`);
  await new Promise<void>((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
  });
  await worker.stop(); // the running job is handed back and resumes on the next worker
  await db.close();
  return 0;
}
