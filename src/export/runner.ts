// Runs one claimed $export job to completion, resuming where a previous attempt
// stopped. The work is split into units (one per resource type, plus `deleted`); a
// unit's files are written under temporary names, fsynced, renamed, and then
// registered together with the unit's "done" mark in one transaction. A restart
// therefore keeps every committed unit, deletes any file no committed unit owns and
// redoes the rest: each resource ends up in exactly one registered file.
// A $viewdefinition-export job (params.views) has one unit per view: the rows of the view
// over the same rows a $export of its type reads (src/export/viewRows.ts), exactly once too.
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable, Transform } from 'node:stream';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import { databaseUnavailable, withTenant, type Tx } from '../store/resources.ts';
import {
  commitUnit, completeJob, listFiles, renewLease, setTransactionTime,
  type ExportFile, type ExportJob, type ExportProgress,
} from '../store/exportJobs.ts';
import {
  backendPid, bindScope, cancelBackend, committedTransactionTime, copyDeleted, copyRows, type RowScope,
} from '../store/exportRows.ts';
import { runSearch } from '../store/searchRun.ts';
import { parseSearch } from '../search/query.ts';
import { subset } from '../fhir/subset.ts';
import { FhirError } from '../fhir/outcome.ts';
import { elementsFor, type ExportParams } from './params.ts';
import { LineFiles, copyTextDecoder, mapLines, ownerOnlyDir, syncDir } from './ndjson.ts';
import { ViewRecords, recordSink } from './viewRows.ts';
import type { Resource } from '@medplum/fhirtypes';
import type { Writable } from 'node:stream';

export function exportRoot(config: Config): string {
  return config.exportDir ?? path.join(config.dataDir, 'exports');
}

export function jobDir(config: Config, jobId: string): string {
  return path.join(exportRoot(config), jobId);
}

export interface RunOptions {
  db: Database;
  config: Config;
  /** Lease owner name of this worker. */
  worker: string;
  /** Aborting stops the job where it is (shutdown); it is resumed later. */
  signal?: AbortSignal;
  onProgress?: (p: ExportProgress) => void;
}

export type RunResult = 'completed' | 'aborted';

class Aborted extends Error {}

/** KILN_EXPORT_TIMING=1: one log line per unit with where its time went (the export bench sets it). */
const timing = process.env.KILN_EXPORT_TIMING ? (msg: string) => console.log(`export timing: ${msg}`) : undefined;
const since = (t0: number) => ((performance.now() - t0) / 1000).toFixed(2);

function unitsOf(p: ExportParams): string[] {
  if (p.views) return p.views.outputs.map((_, i) => `view:${i}`);
  return [...p.types.map((t) => `output:${t}`), ...(p.since ? ['deleted'] : [])];
}

function rowScope(p: ExportParams): RowScope {
  return { since: !!p.since, patients: p.level === 'system' ? undefined : p.patients ? 'list' : 'any' };
}

/** A line of the stored JSON as exported: raw CR/LF (insignificant whitespace in JSON) removed. */
export function exportLine(json: string): string {
  return json.replace(/[\r\n]/g, '');
}

export async function runJob(opts: RunOptions, job: ExportJob): Promise<RunResult> {
  const { db, config, worker } = opts;
  const p = job.params;
  const dir = jobDir(config, job.id);
  ownerOnlyDir(dir); // PHI: 0700
  const stop = new AbortController();
  const onOuterAbort = () => stop.abort();
  opts.signal?.addEventListener('abort', onOuterAbort);
  if (opts.signal?.aborted) stop.abort();

  let progress: ExportProgress = { ...job.progress };
  const report = () => opts.onProgress?.({ ...progress });
  // The lease is renewed while the job runs; losing it (cancel, or another worker took
  // over after a stall) stops this attempt.
  const heartbeat = setInterval(() => {
    renewLease(db.owner, job, worker, config.exportLeaseSeconds, progress)
      .then((ok) => { if (!ok) stop.abort(); })
      .catch(() => {});
  }, Math.max(200, (config.exportLeaseSeconds * 1000) / 3));
  try {
    let until = job.transactionTime;
    if (!until) {
      until = await committedTransactionTime(db.app);
      // No up-front count: it would cost a scan of every type; progress counts what was written.
      progress = { exported: 0, unitsTotal: unitsOf(p).length, unitsDone: 0 };
      if (!await setTransactionTime(db.owner, job, worker, until, progress)) return 'aborted';
      job.transactionTime = until;
    }
    // Resume: keep what committed units registered, drop everything else.
    const registered = await listFiles(db.owner, job.orgId, job.id);
    removeUnregistered(dir, registered);
    progress.exported = registered.reduce((n, f) => n + (f.kind === 'output' ? f.count : 0), 0);
    progress.unitsDone = job.doneUnits.length;
    progress.unitsTotal = unitsOf(p).length;
    report();

    for (const unit of unitsOf(p)) {
      if (job.doneUnits.includes(unit)) continue;
      if (stop.signal.aborted) return 'aborted';
      progress.current = unit === 'deleted' ? 'deleted resources'
        : unit.startsWith('view:') ? p.views!.outputs[Number(unit.slice('view:'.length))].name : unit.slice('output:'.length);
      if (!await renewLease(db.owner, job, worker, config.exportLeaseSeconds, progress)) return 'aborted';
      const t0 = performance.now();
      const files = await (unit.startsWith('view:') ? runViewUnit : runUnit)(opts, job, unit, until, dir, stop.signal, (n) => {
        if (unit !== 'deleted') progress.exported = (progress.exported ?? 0) + n;
        report();
      });
      if (!files) return 'aborted';
      syncDir(dir);
      progress.unitsDone = (progress.unitsDone ?? 0) + 1;
      if (!await commitUnit(db.owner, job, worker, unit, files, progress)) {
        for (const f of files) fs.rmSync(path.join(dir, f.name), { force: true });
        return 'aborted';
      }
      timing?.(`${unit}: unit done in ${since(t0)} s (${files.reduce((n, f) => n + f.count, 0)} lines, ${files.length} files)`);
      job.doneUnits.push(unit);
    }
    removeUnregistered(dir, await listFiles(db.owner, job.orgId, job.id));
    delete progress.current;
    if (!await completeJob(db.owner, job, worker, config.exportTtlSeconds, progress)) return 'aborted';
    report();
    return 'completed';
  } catch (e) {
    throw clientSafe(e);
  } finally {
    clearInterval(heartbeat);
    opts.signal?.removeEventListener('abort', onOuterAbort);
  }
}

/**
 * A failed job's error becomes its status text, which clients read: a FHIR error keeps its
 * message; anything else (a database or file error) gets a fixed one, the original kept as
 * `cause` for the server log. A lost database passes as it is: the worker retries the job.
 */
function clientSafe(e: unknown): unknown {
  if (e instanceof FhirError || e instanceof Aborted || databaseUnavailable(e)) return e;
  return new Error('internal error while exporting (the server log has the details)', { cause: e });
}

function removeUnregistered(dir: string, registered: ExportFile[]): void {
  const keep = new Set(registered.map((f) => f.name));
  for (const name of fs.readdirSync(dir)) {
    if (!keep.has(name)) fs.rmSync(path.join(dir, name), { force: true, recursive: true });
  }
}

/** Writes one unit's files; undefined when the job was stopped meanwhile. */
async function runUnit(opts: RunOptions, job: ExportJob, unit: string, until: string, dir: string,
  signal: AbortSignal, onLines: (n: number) => void): Promise<ExportFile[] | undefined> {
  const p = job.params;
  const deleted = unit === 'deleted';
  const type = deleted ? 'Bundle' : unit.slice('output:'.length);
  const writer = new LineFiles(dir, `${deleted ? 'deleted' : type}-${job.attempts}`, opts.config.exportMaxLines, onLines);
  const noPatients = p.level !== 'system' && p.patients !== undefined && p.patients.length === 0;
  const t0 = performance.now();
  try {
    if (!noPatients) {
      await withTenant(opts.db.app, job.orgId, async (tx) => {
        await bindScope(tx, { until, since: p.since, patients: p.patients, types: p.types });
        if (!deleted && p.typeFilters[type]) {
          await searchInto(tx, writer, type, p, until, signal);
          return;
        }
        const elements = deleted ? undefined : elementsFor(p.elements, type);
        await streamInto(opts, tx, () => deleted ? copyDeleted(tx, p.level !== 'system') : copyRows(tx, type, rowScope(p)),
          elements ? [mapLines((line) => subset(line, undefined, elements))] : [], writer.writable(), signal);
      });
    }
    if (signal.aborted) throw new Aborted();
    const t1 = performance.now();
    const files = await writer.finish();
    timing?.(`${unit}: rows read and written ${((t1 - t0) / 1000).toFixed(2)} s, then waited ${since(t1)} s for the last fsync and renames`);
    return files.map((f, i) => ({ kind: deleted ? 'deleted' : 'output', type, seq: i + 1, name: f.name, count: f.count, bytes: f.bytes }));
  } catch (e) {
    await writer.discard();
    if (signal.aborted || e instanceof Aborted) return undefined;
    throw e;
  }
}

/** One view's rows, in files of at most exportMaxLines rows; undefined when the job was stopped meanwhile. */
async function runViewUnit(opts: RunOptions, job: ExportJob, unit: string, until: string, dir: string,
  signal: AbortSignal, onLines: (n: number) => void): Promise<ExportFile[] | undefined> {
  const p = job.params;
  const out = p.views!.outputs[Number(unit.slice('view:'.length))];
  const records = new ViewRecords(out.view, p.views!.format, p.views!.header);
  const type = records.view.view.resource;
  const writer = new LineFiles(dir, `${out.name}-${job.attempts}`, opts.config.exportMaxLines, onLines, records.fileFormat());
  const restrict = p.views!.restrict?.[type];
  try {
    if (!(p.patients !== undefined && p.patients.length === 0)) {
      await withTenant(opts.db.app, job.orgId, async (tx) => {
        await bindScope(tx, { until, since: p.since, patients: p.patients, types: p.types });
        if (restrict !== undefined) {
          // Granular scopes: the token's filters through the search engine.
          await searchPages(tx, type, [restrict], p, until, signal, (lines) => writer.writeRecords(
            lines.flatMap((line) => records.recordsOf(JSON.parse(line) as Resource))));
          return;
        }
        await streamInto(opts, tx, () => copyRows(tx, type, rowScope(p)), [records.transform()], recordSink(writer), signal);
      });
    }
    if (signal.aborted) throw new Aborted();
    const files = await writer.finish();
    return files.map((f, i) => ({ kind: 'output', type: out.name, seq: i + 1, name: f.name, count: f.count, bytes: f.bytes }));
  } catch (e) {
    await writer.discard();
    if (signal.aborted || e instanceof Aborted) return undefined;
    throw e;
  }
}

/** COPY -> unescape -> (transforms: _elements, view rows) -> files, with the COPY cancelled on abort. */
async function streamInto(opts: RunOptions, tx: Tx, source: () => Readable, transforms: Transform[],
  sink: Writable, signal: AbortSignal): Promise<void> {
  const pid = await backendPid(tx); // before the COPY: nothing else can run on this connection until it ends
  const cancel = () => { cancelBackend(opts.db.app, pid).catch(() => {}); };
  signal.addEventListener('abort', cancel);
  try {
    const stages: (Readable | Transform)[] = [source(), copyTextDecoder(), ...transforms];
    await pipeline([...stages, sink] as unknown as [Readable, NodeJS.WritableStream]);
  } catch (e) {
    if (!signal.aborted) cancel(); // a local failure: stop the server side of the COPY too
    throw e;
  } finally {
    signal.removeEventListener('abort', cancel);
  }
}

const PAGE = 1000;

/**
 * _typeFilter: each query runs through the search engine, keyset-paged in one
 * transaction; a resource matching several queries is written once. Rows changed
 * after the transaction time (or not after _since) are left out here, as in COPY.
 */
async function searchInto(tx: Tx, writer: LineFiles, type: string, p: ExportParams, until: string, signal: AbortSignal): Promise<void> {
  const elements = elementsFor(p.elements, type);
  await searchPages(tx, type, p.typeFilters[type], p, until, signal, async (lines) => {
    const out = lines.map((line) => `${elements ? subset(line, undefined, elements) : line}\n`).join('');
    if (out) await writer.write(Buffer.from(out, 'utf8'));
  });
}

/** The resources of any of the queries, each once, in the job's scope, as export lines a page at a time. */
async function searchPages(tx: Tx, type: string, queries: string[], p: ExportParams, until: string, signal: AbortSignal,
  emit: (lines: string[]) => Promise<void>): Promise<void> {
  const seen = new Set<string>();
  for (const query of queries) {
    const pairs: [string, string][] = [...new URLSearchParams(query).entries()];
    if (p.level !== 'system') {
      if (type === 'Patient') {
        if (p.patients) pairs.push(['_id', p.patients.join(',')]);
      } else {
        pairs.push(p.patients ? ['patient', p.patients.map((id) => `Patient/${id}`).join(',')] : ['patient:missing', 'false']);
      }
    }
    const parsed = parseSearch(type, pairs);
    let after: string[] | undefined;
    do {
      if (signal.aborted) throw new Aborted();
      const page = await runSearch(tx, { type, criteria: parsed.criteria, sort: [], count: PAGE, after, total: 'none' });
      const lines: string[] = [];
      for (const row of page.rows) {
        if (seen.has(row.id)) continue;
        const lastUpdated = (JSON.parse(row.json) as { meta?: { lastUpdated?: string } }).meta?.lastUpdated ?? '';
        if (lastUpdated > until || (p.since && lastUpdated <= p.since)) continue;
        seen.add(row.id);
        lines.push(exportLine(row.json));
      }
      if (lines.length) await emit(lines);
      after = page.next;
    } while (after);
  }
}
