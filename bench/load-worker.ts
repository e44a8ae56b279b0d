// The HTTP load generator, forked by bench/crud.ts so that autocannon's client
// work does not share an event loop with the Kiln server it is measuring.
// Protocol (IPC): parent sends RunRequest, child answers RunResponse.
import autocannon, { type RequestSpec } from 'autocannon';
import { observationBody, patientBody, seedMrn } from './fixtures.ts';
import { summarize, type LatencySummary } from './stats.ts';

export type Op = 'createPatient' | 'readPatient' | 'updatePatient' | 'createObservation';

export interface RunRequest {
  kind: 'run';
  runId: number;
  op: Op;
  origin: string; // http://127.0.0.1:port
  connections: number;
  seconds: number;
  ids: string[]; // seeded Patient ids
  tag: string; // unique per bench invocation (MRN prefix)
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
  | { kind: 'result'; runId: number; stats: HttpStats }
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

process.on('message', (msg: RunRequest) => {
  if (msg?.kind !== 'run') return;
  run(msg).then(
    (stats) => process.send!({ kind: 'result', runId: msg.runId, stats } satisfies RunResponse),
    (e: unknown) => process.send!({ kind: 'error', runId: msg.runId, message: String((e as Error)?.stack ?? e) } satisfies RunResponse),
  );
});
process.on('disconnect', () => process.exit(0));
