// Big request bodies against everyone else's latency: /healthz and a small Patient read are
// probed in a loop, first alone (the baseline) and then while big bodies are posted in a
// loop: refused ~10 MB Patients, accepted ~2 MB ones (photos: a few big strings), and
// accepted ~2 MB ones made of many small elements. Kiln runs in a child process, so the
// probes' timings are not the server's own event loop. See bench/README.md.
//
//   npm run bench:bodies                    # 10 s per phase
//   BENCH_SECONDS=5 BENCH_POSTERS=2 npm run bench:bodies
import { fork } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { summarize, type LatencySummary } from './stats.ts';
import { envNumber } from './env.ts';

const SECONDS = envNumber('BENCH_SECONDS', 10, 1);
const POSTERS = Math.floor(envNumber('BENCH_POSTERS', 2, 1));
const PROBERS = Math.floor(envNumber('BENCH_PROBERS', 2, 1));
const JSON_TYPE = 'application/fhir+json';

/** A Patient of many small identifiers, `bytes` long or a little more; `bogus` makes its last one invalid. */
function manyElements(bytes: number, bogus: boolean): Buffer {
  const identifier: object[] = [];
  const one = (i: number) => ({ system: 'http://example.org/mrn', value: `mrn-${String(i).padStart(7, '0')}-${'x'.repeat(30)}` });
  const per = JSON.stringify(one(0)).length + 1;
  for (let i = 0; i < (bytes - 40) / per; i++) identifier.push(one(i));
  if (bogus) (identifier[identifier.length - 1] as Record<string, unknown>).bogus = 1;
  return Buffer.from(JSON.stringify({ resourceType: 'Patient', identifier }));
}

/** A Patient with photos: a few big base64 strings (Medplum refuses a string over 1 MB). */
function withPhotos(bytes: number): Buffer {
  const count = Math.ceil(bytes / 900_000);
  const photo = { contentType: 'image/jpeg', data: Buffer.alloc(Math.floor(bytes / count * 3 / 4), 0x5a).toString('base64') };
  return Buffer.from(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Photo' }], photo: Array.from({ length: count }, () => photo) }));
}

async function timed(url: string, init?: RequestInit): Promise<{ ms: number; status: number }> {
  const t0 = performance.now();
  const res = await fetch(url, init);
  await res.arrayBuffer();
  return { ms: performance.now() - t0, status: res.status };
}

interface Phase {
  label: string;
  body?: Buffer;
  expect?: number;
}

async function runPhase(base: string, patientId: string, phase: Phase) {
  const until = performance.now() + SECONDS * 1000;
  const health: number[] = [];
  const read: number[] = [];
  const posts: number[] = [];
  const unexpected = new Map<number, number>();
  const probe = async () => {
    while (performance.now() < until) {
      const h = await timed(`${base.replace(/\/fhir$/, '')}/healthz`);
      if (h.status === 200) health.push(h.ms);
      const r = await timed(`${base}/Patient/${patientId}`, { headers: { accept: JSON_TYPE } });
      if (r.status === 200) read.push(r.ms);
    }
  };
  const post = async () => {
    while (phase.body && performance.now() < until) {
      const p = await timed(`${base}/Patient`, { method: 'POST', headers: { 'content-type': JSON_TYPE, prefer: 'return=minimal' }, body: new Uint8Array(phase.body) });
      posts.push(p.ms);
      if (p.status !== phase.expect) unexpected.set(p.status, (unexpected.get(p.status) ?? 0) + 1);
    }
  };
  await Promise.all([...Array.from({ length: PROBERS }, probe), ...Array.from({ length: phase.body ? POSTERS : 0 }, post)]);
  return { label: phase.label, health: summarize(health), read: summarize(read), posts: summarize(posts), unexpected };
}

const fmt = (s: LatencySummary) => `${String(s.p50.toFixed(1)).padStart(7)} ${String(s.p99.toFixed(1)).padStart(7)} ${String(s.max.toFixed(0)).padStart(6)}`;

async function main() {
  const child = fork(fileURLToPath(import.meta.url), ['--server'], { stdio: 'inherit' });
  const { url } = await new Promise<{ url: string }>((resolve) => child.once('message', (m) => resolve(m as { url: string })));
  try {
    const created = await fetch(`${url}/Patient`, { method: 'POST', headers: { 'content-type': JSON_TYPE }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Probe' }] }) });
    const patientId = ((await created.json()) as { id: string }).id;
    const phases: Phase[] = [
      { label: 'baseline (no big bodies)' },
      { label: 'refused ~10 MB Patients (an invalid element at the end)', body: manyElements(9_900_000, true), expect: 400 },
      { label: 'accepted ~2 MB Patients (3 photos)', body: withPhotos(2_000_000), expect: 201 },
      { label: 'accepted ~2 MB Patients (24k identifiers)', body: manyElements(2_000_000, false), expect: 201 },
    ];
    // Warm: the body workers load their definitions, the server's caches fill.
    for (const p of phases) if (p.body) await timed(`${url}/Patient`, { method: 'POST', headers: { 'content-type': JSON_TYPE }, body: new Uint8Array(p.body) });
    console.log(`# ${os.cpus().length} CPUs, node ${process.version}; ${SECONDS} s per phase, ${PROBERS} probers (healthz then read, in a loop), ${POSTERS} posters`);
    console.log(`${'phase'.padEnd(58)} ${'healthz p50/p99/max ms'.padStart(22)}   ${'read p50/p99/max ms'.padStart(22)}   posts   post p50 ms`);
    for (const phase of phases) {
      const r = await runPhase(url, patientId, phase);
      const bodyMb = phase.body ? ` [${(phase.body.length / 1e6).toFixed(1)} MB]` : '';
      console.log(`${(r.label + bodyMb).padEnd(58)} ${fmt(r.health)}   ${fmt(r.read)}   ${String(r.posts.count).padStart(5)}   ${phase.body ? r.posts.p50.toFixed(0) : '-'}`
        + (r.unexpected.size ? `   unexpected statuses: ${JSON.stringify(Object.fromEntries(r.unexpected))}` : ''));
    }
  } finally {
    child.send('stop');
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

if (process.argv[2] === '--server') {
  // The child: a Kiln server on its own embedded PostgreSQL, stopped when the parent says so.
  const { startTestServer, removeDataDir } = await import('../test/support/server.ts');
  const srv = await startTestServer();
  process.send!({ url: srv.url });
  process.on('message', async () => {
    await srv.stop();
    removeDataDir(srv.dataDir);
    process.exit(0);
  });
} else {
  await main();
}
