// `kiln bigquery sync [--tenant <slug>]`: one incremental export-and-load of a tenant.
import { cliConfig } from '../runtime.ts';
import { openDatabase } from '../store/database.ts';
import { findOrg } from '../store/tenants.ts';
import { loadDefinitions } from '../fhir/validate.ts';
import { BigQuerySetupError, LoadJobError, targetFromEnv } from './load.ts';
import { syncTenant } from './sync.ts';
import { usageError, wantsHelp } from '../cliUsage.ts';

const USAGE = `usage:
  kiln bigquery sync [--tenant <slug>]          export what changed since the last sync and load it into BigQuery
                                                (a table per resource type and per active ViewDefinition)
                                                (KILN_BIGQUERY_PROJECT, KILN_BIGQUERY_DATASET, KILN_BIGQUERY_LOCATION;
                                                 credentials: Google application-default credentials)`;

export async function bigqueryCommand(args: string[]): Promise<number> {
  if (wantsHelp(args) || args[0] === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (args[0] !== 'sync') return usageError(USAGE, [], args[0] === undefined ? 'a bigquery command is required' : `unknown command 'kiln bigquery ${args[0]}'`);
  let slug = 'default';
  for (let i = 1; i < args.length; i++) {
    if (args[i] === '--tenant' && args[i + 1]) slug = args[++i];
    else return usageError(USAGE, [], args[i] === '--tenant' ? '--tenant needs a slug' : `unexpected '${args[i]}'`);
  }
  let target;
  try {
    target = targetFromEnv();
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const config = await cliConfig();
  loadDefinitions();
  const db = await openDatabase(config);
  try {
    const org = await findOrg(db.owner, slug);
    if (!org) { console.error(`unknown tenant '${slug}'`); return 2; }
    const started = Date.now();
    const result = await syncTenant(db, config, { orgId: org.id, tenant: slug, target });
    for (const l of result.loads) {
      console.log(`  ${l.type.padEnd(20)} ${String(l.rows).padStart(9)} rows  ${l.state}${l.jobId ? `  (job ${l.jobId})` : ''}`);
    }
    for (const v of result.views) {
      console.log(`  ${v.table.padEnd(20)} ${String(v.rows).padStart(9)} rows  ${v.state}${v.jobId ? `  (job ${v.jobId})` : ''}`
        + `${v.errors ? `  ${v.errors} resources the view could not read (_kiln_error)` : ''}${v.reason ? `  ${v.view}: ${v.reason}` : ''}`);
    }
    const total = result.loads.reduce((n, l) => n + (l.state === 'loaded' ? l.rows : 0), 0);
    console.log(`${result.resumed ? 'resumed run' : 'synced'} '${slug}' into ${target.projectId}:${target.datasetId}: ${total} rows loaded, `
      + `changes ${result.since ? `after ${result.since} ` : ''}through ${result.transactionTime} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return 0;
  } catch (e) {
    if (e instanceof BigQuerySetupError) { console.error(e.message); return 2; }
    const hint = 'nothing was lost: the watermark stays where it was, and the next `kiln bigquery sync` resumes this run';
    console.error(`BigQuery sync failed: ${(e as Error).message ?? e}\n${e instanceof LoadJobError ? `job ${e.jobId}: ` : ''}${hint}`);
    return 1;
  } finally {
    await db.close();
  }
}
