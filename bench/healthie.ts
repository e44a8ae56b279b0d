// Healthie pull at practice scale: `npm run bench:healthie [-- --scale 0.1]`.
// A fake Healthie (test/support/healthieServer.ts: Healthie's schema executed by graphql-js)
// runs in a child process holding a generated practice of 5,000 clients, 40,000 appointments,
// 400,000 metric entries and 10,000 medications (times --scale). Kiln pulls it into an
// embedded PostgreSQL: a first pull, then an incremental pull after ~1% of every kind changed.
// Beside them, the direct write of the same FHIR resources through the store's write path
// (validation, then create one by one or createMany per page; one transaction per page of
// 100, no Healthie), as a ratio. `--first-only` runs the first pull alone (for --cpu-prof). CPU is
// split between this process (Kiln: GraphQL client, mapping, validation, pg client), the
// fake and PostgreSQL; peak RSS is this process's (the fake holds the practice by design).
import { fork, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Resource } from '@medplum/fhirtypes';
import { startTestServer, removeDataDir } from '../test/support/server.ts';
import { FakeHealthie } from '../test/support/healthieServer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { createMany, withTenant } from '../src/store/resources.ts';
import { markSyncWrite } from '../src/store/healthieSync.ts';
import { checkResource, create } from '../src/interactions/write.ts';
import { loadDefinitions } from '../src/fhir/validate.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { pull, PHASES, type PullSummary } from '../src/healthie/pull.ts';
import {
  loadMaps, userToPatient, appointmentToEncounter, entryToObservation, medicationToStatement,
} from '../mappings/healthie/index.ts';
import { procSnapshot, treeOf, cpuMsOf, machineCpu } from './cpu.ts';

const SELF = fileURLToPath(import.meta.url);
const scaleArg = process.argv.indexOf('--scale');
const SCALE = scaleArg >= 0 ? Number(process.argv[scaleArg + 1]) : 1;
if (!(SCALE > 0)) throw new Error(`--scale must be a number > 0, got '${process.argv[scaleArg + 1]}'`);
const N = {
  clients: Math.max(1, Math.round(5_000 * SCALE)),
  appointments: Math.round(40_000 * SCALE),
  entries: Math.round(400_000 * SCALE),
  medications: Math.round(10_000 * SCALE),
};
const CHANGED = 0.01;
/** --first-only: the first pull alone (e.g. under --cpu-prof, so the profile is the pull's). */
const FIRST_ONLY = process.argv.includes('--first-only');

// ---------------------------------------------------------------- the practice

const DAY = 86_400_000;
const T0 = Date.parse('2024-01-01T00:00:00Z');
const pad = (n: number) => String(n).padStart(2, '0');
/** A Healthie time in US Central, spread over two years by index. */
function when(i: number, spread: number): string {
  const d = new Date(T0 + Math.floor((i / Math.max(1, spread)) * 730) * DAY + (i % 600) * 60_000 + 6 * 3_600_000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours() - 6)}:${pad(d.getUTCMinutes())}:00 -0600`;
}
const clientId = (i: number) => String(2_000_000 + i);
const CONTACT = ['Healthie Video Call', 'In Person', 'Phone Call', 'Secure Videochat'];
const STATUS = ['Occurred', 'Occurred', 'Occurred', 'No-Show', 'Cancelled', null];
const CATEGORIES: [string, number, number][] = [['Weight', 120, 100], ['Heart Rate', 55, 50], ['Steps', 2_000, 12_000], ['Blood Glucose', 70, 80]];
const PROVIDER = { id: '388120', full_name: 'Dana Okafor, RD' };

function user(i: number): Record<string, any> {
  return {
    id: clientId(i), first_name: `Given${i}`, last_name: `Family${i}`, legal_name: null, dob: `19${50 + (i % 50)}-0${1 + (i % 9)}-1${i % 10}`,
    gender: i % 2 ? 'Male' : 'Female', email: `p${i}@example.com`, phone_number: `555-${String(i % 1000).padStart(3, '0')}-0000`,
    active: i % 100 !== 99, record_identifier: `MRN-${i}`, timezone: 'America/Chicago', preferred_language: 'en', dietitian_id: PROVIDER.id,
    location: null, locations: [],
  };
}
function appointment(j: number): Record<string, any> {
  const uid = clientId(j % N.clients);
  const blocker = j % 200 === 199;
  return {
    id: String(30_000_000 + j), date: when(j, N.appointments), length: 30, contact_type: CONTACT[j % CONTACT.length], pm_status: STATUS[j % STATUS.length],
    user_id: blocker ? null : Number(uid), user: blocker ? null : { id: uid }, attendees: blocker ? [] : [{ id: uid }],
    provider: PROVIDER, providers: [PROVIDER], appointment_type: { id: '41877', name: 'Follow-up' }, is_blocker: blocker,
  };
}
function entry(k: number): Record<string, any> {
  const [category, base, range] = CATEGORIES[k % CATEGORIES.length];
  return {
    id: String(40_000_000 + k), type: 'MetricEntry', category, metric_stat: base + (k % range), created_at: when(k, N.entries),
    poster: { id: clientId(Math.floor(k / CATEGORIES.length) % N.clients) }, subentries: [],
  };
}
function medication(m: number): Record<string, any> {
  return {
    id: String(50_000_000 + m), name: m % 2 ? 'metformin 500 MG' : 'lisinopril 10 MG', active: m % 7 !== 0, code: m % 2 ? '861007' : '314076',
    dosage: m % 2 ? '500 MG' : '10 MG', frequency: 'daily', start_date: '2024-11-01', mirrored: false, user_id: clientId(m % N.clients),
  };
}

// ---------------------------------------------------------------- the fake, in a child process

type Kind = 'users' | 'appointments' | 'entries' | 'medications';
const MAKE: Record<Kind, [number, (i: number) => Record<string, any>]> = {
  users: [N.clients, user], appointments: [N.appointments, appointment], entries: [N.entries, entry], medications: [N.medications, medication],
};

async function fakeChild(): Promise<void> {
  const fake = new FakeHealthie('bench');
  for (const kind of ['users', 'appointments', 'entries', 'medications'] as Kind[]) {
    const [n, make] = MAKE[kind];
    for (let i = 0; i < n; i++) fake.put(kind, make(i) as any);
  }
  await fake.start();
  process.on('message', (m: any) => {
    if (m.op === 'cpu') {
      const c = process.cpuUsage();
      process.send!({ op: 'cpu', us: c.user + c.system, rssMb: Math.round(process.resourceUsage().maxRSS / 1024), requests: fake.requests.length });
      fake.requests.length = 0; // recorded requests are not needed here: keep the fake's memory flat
    } else if (m.op === 'change') {
      // ~1% of every kind changed in Healthie (the fake's clock moves past the last pull).
      const counts: Record<string, number> = {};
      for (const kind of ['users', 'appointments', 'entries', 'medications'] as Kind[]) {
        const ids = [...fake[kind].keys()];
        const step = Math.max(1, Math.round(1 / m.fraction));
        let n = 0;
        for (let i = m.offset % step; i < ids.length; i += step, n++) {
          const o = fake[kind].get(ids[i])!;
          const patch = kind === 'users' ? { phone_number: '555-999-0000' } : kind === 'appointments' ? { pm_status: 'Occurred', actual_duration: 31 }
            : kind === 'entries' ? { metric_stat: Number(o.metric_stat) + 1 } : { dosage: '1000 MG' };
          fake.put(kind, { ...o, ...patch });
        }
        counts[kind] = n;
      }
      process.send!({ op: 'changed', counts });
    }
  });
  process.send!({ op: 'ready', url: fake.url });
}

// ---------------------------------------------------------------- the bench

function ask<T>(child: ChildProcess, msg: object, reply: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: any) => { if (m.op === reply) { child.off('message', on); resolve(m); } };
    child.on('message', on);
    child.send(msg);
  });
}

interface Measured<T> { result: T; wallS: number; selfMs: number; fakeMs: number; pgMs: number; machineBusyPct: number | null }

async function measured<T>(child: ChildProcess | undefined, fn: () => Promise<T>): Promise<Measured<T>> {
  const p0 = procSnapshot();
  const m0 = machineCpu();
  const c0 = process.cpuUsage();
  const f0 = child ? (await ask<{ us: number }>(child, { op: 'cpu' }, 'cpu')).us : 0;
  const t0 = performance.now();
  const result = await fn();
  const wallS = (performance.now() - t0) / 1000;
  const f1 = child ? (await ask<{ us: number }>(child, { op: 'cpu' }, 'cpu')).us : 0;
  const c1 = process.cpuUsage(c0);
  const p1 = procSnapshot();
  const m1 = machineCpu();
  const selfMs = (c1.user + c1.system) / 1000;
  const fakeMs = (f1 - f0) / 1000;
  let pgMs = 0;
  if (p0 && p1) {
    const tree = treeOf(p1, process.pid);
    tree.delete(process.pid);
    if (child?.pid) for (const pid of treeOf(p1, child.pid)) tree.delete(pid);
    pgMs = cpuMsOf(p0, p1, tree);
  }
  const machineBusyPct = m0 && m1 && m1.total > m0.total ? Math.round(((m1.busy - m0.busy) / (m1.total - m0.total)) * 100) : null;
  return { result, wallS, selfMs, fakeMs, pgMs, machineBusyPct };
}

const rssMb = () => Math.round(process.memoryUsage().rss / 1024 / 1024);
const peakMb = () => Math.round(process.resourceUsage().maxRSS / 1024);

function cpuLine(m: Measured<unknown>, objects: number): string {
  const pct = (ms: number) => `${Math.round((ms / 1000 / m.wallS) * 100)}%`;
  const per = (ms: number) => (ms / Math.max(1, objects)).toFixed(2);
  return `CPU (% of one core over the wall time): Kiln process ${pct(m.selfMs)}, PostgreSQL ${pct(m.pgMs)}, fake Healthie ${pct(m.fakeMs)}`
    + `; machine busy ${m.machineBusyPct ?? '?'}% of 2 cores\n  CPU ms per object: Kiln ${per(m.selfMs)}, PostgreSQL ${per(m.pgMs)}, fake ${per(m.fakeMs)}`;
}

function pullLines(name: string, m: Measured<PullSummary>, rss: number[]): string[] {
  const s = m.result;
  const lines = [`${name}: ${s.objects} objects in ${m.wallS.toFixed(1)} s = ${Math.round(s.objects / m.wallS)} objects/s; ${s.requests} requests, ${s.retries} retries${s.medicationSweep ? ', medication sweep' : ''}`];
  for (const p of PHASES) {
    const c = s.phases[p];
    lines.push(`  ${p.padEnd(12)} ${c.seen} seen: ${c.created} created, ${c.updated} updated, ${c.unchanged} unchanged, ${c.skipped} skipped, ${c.failed} failed`);
  }
  if (s.failures.length) lines.push(`  first failure: ${JSON.stringify(s.failures[0])}`);
  lines.push(`  ${cpuLine(m, s.objects)}`);
  lines.push(`  RSS of this process at each phase's end: ${rss.join(' / ')} MB`);
  return lines;
}

async function bench(): Promise<void> {
  console.log(`practice (scale ${SCALE}): ${N.clients} clients, ${N.appointments} appointments, ${N.entries} metric entries, ${N.medications} medications`);
  const t0 = performance.now();
  const child = fork(SELF, ['--fake', '--scale', String(SCALE)], { execArgv: ['--import', 'tsx', '--max-old-space-size=4096'], stdio: 'inherit' });
  const ready = await new Promise<{ url: string }>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`fake Healthie exited (${code})`)));
    child.on('message', (m: any) => { if (m.op === 'ready') resolve(m); });
  });
  console.log(`fake Healthie seeded in its own process in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const srv = await startTestServer();
  try {
    loadDefinitions();
    const maps = loadMaps();
    const client = new HealthieClient({ url: ready.url, apiKey: 'bench', baseDelayMs: 50 });
    const org = await createOrg(srv.db.owner, 'bench-pull', 'bench-pull');
    const rss: number[] = [];
    let phase = '';
    const onProgress = (p: string) => { if (p !== phase) { if (phase) rss.push(rssMb()); phase = p; } };

    const first = await measured(child, () => pull({ db: srv.db, orgId: org.id, client, maps, onProgress }));
    rss.push(rssMb());
    const out = pullLines('first pull', first, rss.splice(0));
    out.push(`  peak RSS of this process so far: ${peakMb()} MB`);
    console.log(out.join('\n'));
    if (FIRST_ONLY) return;

    const changed = await ask<{ counts: Record<string, number> }>(child, { op: 'change', fraction: CHANGED, offset: 7 }, 'changed');
    console.log(`changed in Healthie: ${JSON.stringify(changed.counts)}`);
    phase = '';
    const incr = await measured(child, () => pull({ db: srv.db, orgId: org.id, client, maps, onProgress }));
    rss.push(rssMb());
    console.log(pullLines('incremental pull', incr, rss.splice(0)).join('\n'));

    // The same resources written directly: no Healthie, no lookups, one transaction per page of
    // 100; one by one (validate + create) and batched (validate + createMany, as the pull now does).
    const source = ready.url;
    const directWrite = (slug: string, batched: boolean) => measured(undefined, async () => {
      const direct = await createOrg(srv.db.owner, slug, slug);
      const patients = new Map<string, string>();
      let n = 0;
      const page = async (resources: Resource[]) => {
        if (!resources.length) return [];
        n += resources.length;
        return withTenant(srv.db.app, direct.id, async (tx) => {
          await markSyncWrite(tx);
          if (batched) {
            const reqs = resources.map((r) => ({ type: r.resourceType, resource: checkResource(r, r.resourceType), method: 'POST' as const }));
            return (await createMany(tx, reqs)).map((w) => w.resource.id!);
          }
          const ids: string[] = [];
          for (const r of resources) ids.push((await create(tx, r.resourceType, checkResource(r, r.resourceType), undefined)).id);
          return ids;
        });
      };
      const each = async (count: number, map: (i: number) => Resource | undefined, after?: (i: number, id: string) => void) => {
        for (let i = 0; i < count; i += 100) {
          const batch: { i: number; r: Resource }[] = [];
          for (let k = i; k < Math.min(count, i + 100); k++) { const r = map(k); if (r) batch.push({ i: k, r }); }
          const ids = await page(batch.map((b) => b.r));
          if (after) ids.forEach((id, x) => after(batch[x].i, id));
        }
      };
      const now = () => new Date().toISOString();
      await each(N.clients, (i) => userToPatient(user(i) as any, { source, now: now() }), (i, id) => patients.set(clientId(i), id));
      await each(N.appointments, (j) => {
        const a = appointment(j) as any;
        return a.user ? appointmentToEncounter(a, maps, { source, now: now(), patientId: patients.get(a.user.id)! }) : undefined;
      });
      await each(N.entries, (k) => { const e = entry(k) as any; return entryToObservation(e, maps, { source, now: now(), patientId: patients.get(e.poster.id)! }); });
      await each(N.medications, (m) => { const x = medication(m) as any; return medicationToStatement(x, { source, now: now(), patientId: patients.get(x.user_id)! }); });
      return n;
    });
    const firstRate = first.result.objects / first.wallS;
    // On a shared machine the wall-time ratio moves with the neighbours' load; the CPU per
    // object (Kiln process + PostgreSQL) does not, so both are printed.
    const cpuPer = (m: Measured<unknown>, n: number) => (m.selfMs + m.pgMs) / Math.max(1, n);
    for (const [name, batched] of [['direct write of the same resources, one by one', false], ['direct write of the same resources, createMany per page', true]] as const) {
      const write = await directWrite(batched ? 'bench-direct-batched' : 'bench-direct', batched);
      const directRate = write.result / write.wallS;
      console.log(`${name}: ${write.result} in ${write.wallS.toFixed(1)} s = ${Math.round(directRate)} resources/s`);
      console.log(`  ${cpuLine(write, write.result)}`);
      console.log(`  first pull / this write: ${(firstRate / directRate).toFixed(2)} in objects/s; `
        + `${(cpuPer(write, write.result) / cpuPer(first, first.result.objects)).toFixed(2)} in CPU per object (Kiln + PostgreSQL, direct / pull)`);
    }
    console.log(`peak RSS of this process: ${peakMb()} MB; fake Healthie's: ${(await ask<{ rssMb: number }>(child, { op: 'cpu' }, 'cpu')).rssMb} MB`);
  } finally {
    child.removeAllListeners('exit');
    child.kill();
    await srv.stop();
    removeDataDir(srv.dataDir);
  }
}

if (process.argv.includes('--fake')) await fakeChild();
else await bench();
