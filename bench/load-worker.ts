// The HTTP load generator, forked by bench/crud.ts so that autocannon's client
// work does not share an event loop with the Kiln server it is measuring.
// Protocol (IPC): parent sends RunRequest, child answers RunResponse. With `versus`, one
// run alternates between two ops every `everyMs`, so the two share the host's drift.
import { performance } from 'node:perf_hooks';
import autocannon, { type RequestSpec } from 'autocannon';
import { HEART_RATE, HYPERTENSION, conditionBody, observationBody, patientBody, searchPath, seedMrn } from './fixtures.ts';
import { summarize, type LatencySummary } from './stats.ts';

export type Op = 'createPatient' | 'readPatient' | 'updatePatient' | 'createObservation'
  | 'readObservation' | 'searchObservation' | 'createCondition' | 'readCondition' | 'searchCondition';

export interface RunRequest {
  kind: 'run';
  runId: number;
  op: Op;
  origin: string; // http://127.0.0.1:port
  connections: number;
  seconds: number;
  ids: string[]; // seeded Patient ids
  tag: string; // unique per bench invocation (MRN prefix)
  targets?: string[]; // read*: the ids to read; search*: the patients to search by
  versus?: { op: Op; targets?: string[]; everyMs: number }; // the op to alternate with
}

export interface HttpStats {
  op: Op;
  seconds: number;
  ok: number; // 2xx responses
  reqPerSec: number; // 2xx / seconds
  latency: LatencySummary; // 2xx only, ms
  autocannonLatency: { p50: number; p97_5: number; p99: number; mean: number };
  non2xx: number;
  statusCodes: Record<string, number>;
  errors: number;
  timeouts: number;
  firstErrorBody?: string;
}

export type RunResponse =
  | { kind: 'result'; runId: number; stats: HttpStats; versus?: HttpStats }
  | { kind: 'error'; runId: number; message: string };

const FHIR_HEADERS = { accept: 'application/fhir+json', 'content-type': 'application/fhir+json' };
let seq = 0; // process-wide: unique across connections, warmups and runs

function requestFor(r: RunRequest): RequestSpec {
  const n = r.ids.length;
  switch (r.op) {
    case 'createPatient':
      return {
        method: 'POST', path: '/fhir/Patient', headers: FHIR_HEADERS,
        setupRequest: (req) => {
          const s = seq++;
          return { ...req, body: JSON.stringify(patientBody(`${r.tag}-h-${s}`, s)) };
        },
      };
    case 'readPatient':
      return {
        method: 'GET', path: '/fhir/Patient', headers: { accept: 'application/fhir+json' },
        setupRequest: (req) => ({ ...req, path: `/fhir/Patient/${r.ids[seq++ % n]}` }),
      };
    case 'updatePatient':
      return {
        method: 'PUT', path: '/fhir/Patient', headers: FHIR_HEADERS,
        setupRequest: (req) => {
          const s = seq++;
          const i = s % n;
          return { ...req, path: `/fhir/Patient/${r.ids[i]}`, body: JSON.stringify(patientBody(seedMrn(r.tag, i), s, r.ids[i])) };
        },
      };
    case 'createObservation':
      return {
        method: 'POST', path: '/fhir/Observation', headers: FHIR_HEADERS,
        setupRequest: (req) => {
          const s = seq++;
          return { ...req, body: JSON.stringify(observationBody(r.ids[s % n], s, new Date().toISOString())) };
        },
      };
    case 'createCondition':
      return {
        method: 'POST', path: '/fhir/Condition', headers: FHIR_HEADERS,
        setupRequest: (req) => ({ ...req, body: JSON.stringify(conditionBody(r.ids[seq++ % n], new Date().toISOString())) }),
      };
    case 'readObservation':
    case 'readCondition': {
      const type = r.op === 'readObservation' ? 'Observation' : 'Condition';
      const targets = r.targets!;
      return {
        method: 'GET', path: `/fhir/${type}`, headers: { accept: 'application/fhir+json' },
        setupRequest: (req) => ({ ...req, path: `/fhir/${type}/${targets[seq++ % targets.length]}` }),
      };
    }
    case 'searchObservation':
    case 'searchCondition': {
      const [type, code] = r.op === 'searchObservation' ? ['Observation', HEART_RATE] : ['Condition', HYPERTENSION];
      const targets = r.targets!;
      return {
        method: 'GET', path: `/fhir/${type}`, headers: { accept: 'application/fhir+json' },
        setupRequest: (req) => ({ ...req, path: searchPath(type, targets[seq++ % targets.length], code) }),
      };
    }
  }
}

async function run(r: RunRequest): Promise<HttpStats> {
  const latencies: number[] = [];
  const statusCodes: Record<string, number> = {};
  let firstErrorBody: string | undefined;
  const req = requestFor(r);
  req.onResponse = (status, body) => {
    if ((status < 200 || status >= 300) && firstErrorBody === undefined) firstErrorBody = body.slice(0, 500);
  };
  const instance = autocannon({ url: r.origin, connections: r.connections, duration: r.seconds, timeout: 30, requests: [req] });
  instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
    statusCodes[status] = (statusCodes[status] ?? 0) + 1;
    if (status >= 200 && status < 300) latencies.push(ms);
  });
  const res = await instance;
  const ok = res['2xx'];
  return {
    op: r.op,
    seconds: res.duration,
    ok,
    reqPerSec: Math.round((ok / res.duration) * 10) / 10,
    latency: summarize(latencies),
    autocannonLatency: { p50: res.latency.p50, p97_5: res.latency.p97_5, p99: res.latency.p99, mean: res.latency.mean },
    non2xx: res.non2xx,
    statusCodes,
    errors: res.errors,
    timeouts: res.timeouts,
    ...(firstErrorBody !== undefined ? { firstErrorBody } : {}),
  };
}

/**
 * `r.op` and `r.versus.op` in one autocannon run, switching every `everyMs` (from the op
 * of the first slot): each request counts for the op of the slot it was sent in, its
 * latency from when it was built. Each op gets half the run's time.
 */
async function runAlternating(r: RunRequest & { versus: NonNullable<RunRequest['versus']> }): Promise<[HttpStats, HttpStats]> {
  const specs = [requestFor(r), requestFor({ ...r, op: r.versus.op, targets: r.versus.targets })];
  const acc = specs.map(() => ({ latencies: [] as number[], statusCodes: {} as Record<string, number>, ok: 0, non2xx: 0, firstErrorBody: undefined as string | undefined }));
  const start = performance.now();
  const slot = () => Math.floor((performance.now() - start) / r.versus.everyMs) % 2;
  const req: RequestSpec = {
    method: specs[0].method, path: specs[0].path, headers: specs[0].headers,
    setupRequest: (base, context) => {
      const k = slot();
      context.k = k;
      context.t0 = performance.now();
      const { method, path, headers } = specs[k];
      return specs[k].setupRequest!({ ...base, method, path, headers, body: undefined }, context);
    },
    onResponse: (status, body, context) => {
      const a = acc[(context.k as number | undefined) ?? 0];
      a.statusCodes[status] = (a.statusCodes[status] ?? 0) + 1;
      if (status >= 200 && status < 300) {
        a.ok++;
        if (typeof context.t0 === 'number') a.latencies.push(performance.now() - context.t0);
      } else {
        a.non2xx++;
        a.firstErrorBody ??= body.slice(0, 500);
      }
    },
  };
  const res = await autocannon({ url: r.origin, connections: r.connections, duration: r.seconds, timeout: 30, requests: [req] });
  const half = res.duration / 2;
  const stats = (op: Op, a: (typeof acc)[number]): HttpStats => ({
    op,
    seconds: half,
    ok: a.ok,
    reqPerSec: Math.round((a.ok / half) * 10) / 10,
    latency: summarize(a.latencies),
    autocannonLatency: { p50: res.latency.p50, p97_5: res.latency.p97_5, p99: res.latency.p99, mean: res.latency.mean }, // both ops
    non2xx: a.non2xx,
    statusCodes: a.statusCodes,
    errors: res.errors, // transport errors and timeouts are not split by op
    timeouts: res.timeouts,
    ...(a.firstErrorBody !== undefined ? { firstErrorBody: a.firstErrorBody } : {}),
  });
  return [stats(r.op, acc[0]), stats(r.versus.op, acc[1])];
}

process.on('message', (msg: RunRequest) => {
  if (msg?.kind !== 'run') return;
  if (msg.versus) {
    runAlternating({ ...msg, versus: msg.versus }).then(
      ([stats, versus]) => process.send!({ kind: 'result', runId: msg.runId, stats, versus } satisfies RunResponse),
      (e: unknown) => process.send!({ kind: 'error', runId: msg.runId, message: String((e as Error)?.stack ?? e) } satisfies RunResponse),
    );
    return;
  }
  run(msg).then(
    (stats) => process.send!({ kind: 'result', runId: msg.runId, stats } satisfies RunResponse),
    (e: unknown) => process.send!({ kind: 'error', runId: msg.runId, message: String((e as Error)?.stack ?? e) } satisfies RunResponse),
  );
});
process.on('disconnect', () => process.exit(0));
