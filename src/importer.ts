// `kiln import`: loads FHIR Bundles (.json) and NDJSON files (.ndjson) into a tenant.
// A Bundle becomes one transaction run by the same code as `POST /fhir`
// (src/interactions/bundle.ts); entries of a type Kiln does not store (Parameters, or a
// name that is no R4 type) are counted as skipped. NDJSON lines are written one
// transaction each, keeping their ids (update-as-create).
import fs from 'node:fs';
import readline from 'node:readline';
import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import type { Database } from './store/database.ts';
import { withTenant } from './store/resources.ts';
import { TABLES } from '../mappings/postgres/index.ts';
import { transaction } from './interactions/bundle.ts';
import * as write from './interactions/write.ts';
import { FhirError } from './fhir/outcome.ts';
import { analyzeTenant } from './store/analyze.ts';

export interface ImportSummary {
  files: number;
  resources: number;
  skipped: number;
  failures: { file: string; what: string; reason: string }[];
  seconds: number;
  /** The types of the resources loaded (their tenant partitions are analyzed at the end). */
  types: Set<string>;
}

export interface ImportOptions {
  db: Database;
  orgId: number;
  base: string;
  maxEntries: number;
  maxCount: number;
  onProgress?: (done: number, file: string) => void;
}

const NDJSON_BATCH = 250;

function reason(e: unknown): string {
  if (e instanceof FhirError) return `${e.status} ${e.issues.map((i) => i.diagnostics ?? i.details?.text).join('; ')}`;
  return (e as Error).message;
}

async function importBundle(file: string, opts: ImportOptions, summary: ImportSummary) {
  const bundle = JSON.parse(fs.readFileSync(file, 'utf8')) as Bundle;
  if (bundle.resourceType !== 'Bundle') throw new Error('not a Bundle');
  const all = bundle.entry ?? [];
  const entries: BundleEntry[] = all.filter((e) => e.resource && TABLES[e.resource.resourceType]).map((e) => ({
    fullUrl: e.fullUrl,
    resource: e.resource,
    // Collections and searchsets carry no requests: create what they hold.
    request: e.request ?? (e.resource!.id ? { method: 'PUT', url: `${e.resource!.resourceType}/${e.resource!.id}` } : { method: 'POST', url: e.resource!.resourceType }),
  }));
  summary.skipped += all.length - entries.length;
  await transaction({ resourceType: 'Bundle', type: 'transaction', entry: entries }, {
    base: opts.base, maxEntries: opts.maxEntries, maxCount: opts.maxCount,
    inTenant: (fn) => withTenant(opts.db.app, opts.orgId, fn),
  });
  summary.resources += entries.length;
  for (const e of entries) summary.types.add(e.resource!.resourceType);
  opts.onProgress?.(summary.resources, file);
}

async function importNdjson(file: string, opts: ImportOptions, summary: ImportSummary) {
  const lines = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let batch: { n: number; resource: Resource; text: string }[] = [];
  let n = 0;
  const flush = async () => {
    const chunk = batch;
    batch = [];
    for (const { n: line, resource, text } of chunk) {
      // One transaction per line keeps a bad line from taking its neighbours down.
      try {
        await withTenant(opts.db.app, opts.orgId, (tx) => {
          const checked = write.checkResource(resource, resource.resourceType);
          return checked.id ? write.update(tx, checked.resourceType, checked.id, checked, text) : write.create(tx, checked.resourceType, checked, text);
        });
        summary.resources++;
        summary.types.add(resource.resourceType);
      } catch (e) {
        summary.failures.push({ file, what: `line ${line}`, reason: reason(e) });
      }
    }
    opts.onProgress?.(summary.resources, file);
  };
  for await (const text of lines) {
    n++;
    if (!text.trim()) continue;
    let resource: Resource;
    try {
      resource = JSON.parse(text);
    } catch (e) {
      summary.failures.push({ file, what: `line ${n}`, reason: `malformed JSON: ${(e as Error).message}` });
      continue;
    }
    if (!TABLES[resource.resourceType]) {
      summary.skipped++;
      continue;
    }
    batch.push({ n, resource, text });
    if (batch.length >= NDJSON_BATCH) await flush();
  }
  await flush();
}

export async function importFiles(files: string[], opts: ImportOptions): Promise<ImportSummary> {
  const started = Date.now();
  const summary: ImportSummary = { files: 0, resources: 0, skipped: 0, failures: [], seconds: 0, types: new Set() };
  for (const file of files) {
    summary.files++;
    try {
      if (file.endsWith('.ndjson')) await importNdjson(file, opts, summary);
      else await importBundle(file, opts, summary);
    } catch (e) {
      summary.failures.push({ file, what: 'file', reason: reason(e) });
    }
  }
  // Fresh statistics for what was loaded, so plans and `_total=estimate` fit the new rows at once.
  await analyzeTenant(opts.db.owner, opts.orgId, summary.types);
  summary.seconds = (Date.now() - started) / 1000;
  return summary;
}
