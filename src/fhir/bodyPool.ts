// Big request bodies are parsed and validated in worker threads, so one client's 10 MB
// body delays only its own request: on the main thread the parse, the duplicate-key scan
// and above all Medplum's validation take seconds and would stall every tenant. Small
// bodies (the common case, and the benchmarked hot path) stay inline: a round trip to a
// worker costs more than they do. The workers are started once and kept warm (each loads
// the R4 definitions); they are unref'd, so they never keep the process from exiting.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Resource } from '@medplum/fhirtypes';
import { FhirError } from './outcome.ts';
import { errorOf, readBody, type BodyUse, type ReadBody, type Refusal } from './body.ts';
import { validate } from './validate.ts';

/** Bodies (and resources to validate, by their JSON size) from this size go to a worker. */
export const OFF_THREAD_BYTES = 64 * 1024;
/** One worker per core the main thread leaves free (at least one, at most four). */
const WORKERS = Math.max(1, Math.min(4, os.availableParallelism() - 1));
/** Jobs that may wait for a worker; beyond, 503 (each holds a body of up to KILN_BODY_LIMIT). */
const MAX_WAITING = 8 * WORKERS;
const RETRY_AFTER_SECONDS = 1;

export type Task = { op: 'read'; bytes: Uint8Array; use: BodyUse } | { op: 'validate'; resource: Resource };

type Reply = { id: number; result?: ReadBody | null; refusal?: Refusal; bug?: string };

interface Job {
  id: number;
  task: Task;
  transfer: ArrayBuffer[];
  resolve: (r: ReadBody | null) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job?: Job;
}

/** Every worker busy and the queue full: the client may retry shortly. */
export class BodyPoolBusy extends FhirError {
  readonly retryAfter = RETRY_AFTER_SECONDS;
  constructor() {
    super(503, 'transient', 'The server is busy reading other large request bodies; retry shortly');
  }
}

// Run from src/ under tsx (tests, benches), a worker needs bodyWorker.mjs to register tsx first;
// compiled (`npm start`), the emitted bodyWorker.js runs as it is.
const WORKER_ENTRY = new URL(import.meta.url.endsWith('.ts') ? './bodyWorker.mjs' : './bodyWorker.js', import.meta.url);

let slots: Slot[] | undefined;
const waiting: Job[] = [];
let nextId = 1;

function start(slot: Slot): void {
  const worker = new Worker(WORKER_ENTRY);
  slot.worker = worker;
  worker.on('message', (reply: Reply) => {
    const job = slot.job;
    if (!job || job.id !== reply.id) return;
    slot.job = undefined;
    if (reply.refusal) job.reject(errorOf(reply.refusal));
    else if (reply.bug !== undefined) job.reject(new Error(`body worker: ${reply.bug}`));
    else job.resolve(reply.result ?? null);
    dispatch();
  });
  // A worker that dies (a bug, out of memory) fails its job as a server error and is replaced.
  const lost = (why: string) => {
    if (slot.worker !== worker || !slots) return;
    const job = slot.job;
    slot.job = undefined;
    job?.reject(new Error(`body worker stopped: ${why}`));
    start(slot);
    dispatch();
  };
  worker.on('error', (e) => lost(e.message));
  worker.on('exit', (code) => lost(`exit ${code}`));
  worker.unref(); // after the listeners: a 'message' listener refs the worker's port again
}

function pool(): Slot[] {
  if (!slots) {
    slots = Array.from({ length: WORKERS }, () => ({}) as Slot);
    for (const slot of slots) start(slot);
  }
  return slots;
}

function dispatch(): void {
  for (const slot of pool()) {
    if (!waiting.length) return;
    if (slot.job) continue;
    const job = waiting.shift()!;
    slot.job = job;
    slot.worker.postMessage({ id: job.id, task: job.task }, job.transfer);
  }
}

/** Throws BodyPoolBusy when every worker is busy and MAX_WAITING jobs wait already. */
function admit(): void {
  if (waiting.length >= MAX_WAITING && pool().every((s) => s.job)) throw new BodyPoolBusy();
}

function run(task: Task, transfer: ArrayBuffer[] = []): Promise<ReadBody | null> {
  admit();
  return new Promise((resolve, reject) => {
    waiting.push({ id: nextId++, task, transfer, resolve, reject });
    dispatch();
  });
}

/** src/fhir/body.ts readBody, in a worker for a big body (Bundle entries validated there too). */
export async function readRequestBody(bytes: Uint8Array, use: BodyUse): Promise<ReadBody> {
  if (bytes.length < OFF_THREAD_BYTES) return readBody(bytes, use);
  admit(); // before the copy
  const copy = new Uint8Array(bytes); // the worker's own copy, moved rather than cloned
  return (await run({ op: 'read', bytes: copy, use }, [copy.buffer as ArrayBuffer]))!;
}

/** validate() (src/fhir/validate.ts), in a worker when the resource's JSON is `size` bytes or more. */
export async function validateSized(resource: Resource, size: number): Promise<void> {
  if (size < OFF_THREAD_BYTES) return validate(resource);
  await run({ op: 'validate', resource });
}

/** Starts the workers ahead of the first big body (each takes a second or so to load the definitions). */
export function warmBodyPool(): void {
  pool();
}

/** Stops the workers; jobs still waiting fail. The next big body starts them again. */
export async function stopBodyPool(): Promise<void> {
  const all = slots;
  slots = undefined;
  for (const job of waiting.splice(0)) job.reject(new Error('body workers stopped'));
  if (!all) return;
  for (const s of all) s.job?.reject(new Error('body workers stopped'));
  await Promise.all(all.map((s) => s.worker.terminate()));
}
