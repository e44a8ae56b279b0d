// `kiln healthie ...`: pull a tenant from Healthie (progress bar + summary), push the
// outbox once, process the webhook queue once, show outbox/webhook status.
import cliProgress from 'cli-progress';
import { cliConfig } from '../runtime.ts';
import { openDatabase } from '../store/database.ts';
import { findOrg } from '../store/tenants.ts';
import { withTenant } from '../store/resources.ts';
import { listOutbox, countWebhooks } from '../store/healthieSync.ts';
import { loadDefinitions } from '../fhir/validate.ts';
import { healthieSettings, clientFor } from './settings.ts';
import { pull, PHASES } from './pull.ts';
import { pushOutbox } from './push.ts';
import { processWebhooks } from './webhooks.ts';
import { withPullLease, describeHolder } from './lease.ts';
import { commandWords, usageError, usageOf, wantsHelp } from '../cliUsage.ts';

const USAGE = `usage:
  kiln healthie pull --tenant <slug> [--full]    import Healthie patients, appointments, metric entries, medications
    [--sweep-medications]                        read every client's medications (else only changed clients', or when a sweep is due)
  kiln healthie push --tenant <slug>             send the due outbox rows (FHIR changes) to Healthie once
  kiln healthie webhooks --tenant <slug>         process the queued webhook deliveries once
  kiln healthie status --tenant <slug>           outbox (push) and webhook queue status`;

export async function healthieCommand(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (wantsHelp(args) || command === 'help') {
    console.log(usageOf(USAGE, ['healthie', ...commandWords(args)].filter((w) => w !== 'help')));
    return 0;
  }
  if (!['pull', 'push', 'webhooks', 'status'].includes(command)) {
    return usageError(USAGE, [], command === undefined ? 'a healthie command is required' : `unknown command 'kiln healthie ${command}'`);
  }
  let slug = 'default';
  let full = false;
  let sweepMedications = false;
  // An option a command does not take, or one without its value, is an error: never ignored.
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--tenant' && rest[i + 1] && !rest[i + 1].startsWith('-')) slug = rest[++i];
    else if (rest[i] === '--full' && command === 'pull') full = true;
    else if (rest[i] === '--sweep-medications' && command === 'pull') sweepMedications = true;
    else return usageError(USAGE, ['healthie', command], rest[i] === '--tenant' ? '--tenant needs a slug' : `kiln healthie ${command} does not take '${rest[i]}'`);
  }
  const db = await openDatabase(await cliConfig());
  try {
    const org = await findOrg(db.owner, slug);
    if (!org) {
      console.error(`unknown tenant '${slug}'`);
      return 2;
    }
    if (command === 'status') {
      const rows = await withTenant(db.app, org.id, (tx) => listOutbox(tx, 50));
      for (const r of rows) console.log(`${r.id}\t${r.status}\t${r.resourceType}/${r.resourceId}\tattempts ${r.attempts}${r.leasedBy ? `\tsending (${r.leasedBy})` : ''}${r.lastError ? `\t${r.lastError}` : ''}`);
      console.log('webhooks:', JSON.stringify(await withTenant(db.app, org.id, countWebhooks)));
      return 0;
    }
    const settings = healthieSettings(slug);
    if (!settings.apiKey) {
      console.error(`no Healthie API key for '${slug}': set HEALTHIE_API_KEY_${slug.toUpperCase().replace(/-/g, '_')} or HEALTHIE_API_KEY_FILE`);
      return 2;
    }
    loadDefinitions();
    if (command === 'push') {
      const s = await pushOutbox({ db, orgId: org.id, client: clientFor(settings) });
      console.log(`pushed '${slug}': ${s.claimed} claimed, ${s.done} sent, ${s.skipped} skipped, ${s.superseded} superseded (Healthie newer), ${s.retried} to retry, ${s.failed} failed${s.lost ? `, ${s.lost} taken over by another worker` : ''}`);
      for (const e of s.errors) console.log(`  ${e}`);
      return s.failed ? 1 : 0;
    }
    if (command === 'webhooks') {
      const s = await processWebhooks({ db, orgId: org.id, client: clientFor(settings) });
      console.log(`webhooks '${slug}': ${s.claimed} claimed, ${s.done} processed ${JSON.stringify(s.outcomes)}, ${s.ignored} ignored, ${s.retried} to retry, ${s.failed} failed${s.lost ? `, ${s.lost} taken over by another worker` : ''}`);
      return s.failed ? 1 : 0;
    }
    const bar = new cliProgress.MultiBar({ format: 'healthie {phase} | {value} seen | {created} new {updated} changed {unchanged} same {failed} failed', stream: process.stderr, noTTYOutput: false, clearOnComplete: false },
      cliProgress.Presets.shades_classic);
    const bars = new Map<string, cliProgress.SingleBar>();
    // One pull per tenant at a time across processes: a second one says who runs and stands aside.
    const leased = await withPullLease(db, org.id, () => pull({
      db, orgId: org.id, client: clientFor(settings), full, sweepMedications,
      onProgress: (phase, c) => {
        let b = bars.get(phase);
        if (!b) { b = bar.create(0, 0, { phase }); bars.set(phase, b); }
        b.update(c.seen, { phase, ...c });
      },
    })).finally(() => bar.stop());
    if (!leased.ran) {
      console.log(describeHolder(slug, leased.holder));
      return 0;
    }
    const summary = leased.result;
    const rate = summary.seconds > 0 ? Math.round(summary.objects / summary.seconds) : summary.objects;
    console.log(`pulled ${summary.objects} Healthie objects into '${slug}' in ${summary.seconds.toFixed(1)} s (${rate} objects/s; ${summary.requests} requests, ${summary.retries} retries)`);
    for (const p of PHASES) {
      const c = summary.phases[p];
      console.log(`  ${p}: ${c.created} created, ${c.updated} updated, ${c.unchanged} unchanged, ${c.keptFhir} kept (newer FHIR change), ${c.skipped} skipped, ${c.failed} failed`);
    }
    for (const f of summary.failures) console.log(`  failed: ${f.phase} ${f.healthieId}: ${f.reason}`);
    return summary.failures.length ? 1 : 0;
  } finally {
    await db.close();
  }
}
