// Bulk Data $export (IG v2) over real HTTP against real PostgreSQL: kick-off checks,
// the async flow, manifest and files, _type/_since/_typeFilter/_elements, Patient and
// Group scope, cancel, expiry, tenant isolation, and a kill -9 in the middle of a job.
import { TABLES } from '../mappings/postgres/index.ts';
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startServerProcess, type ChildServer } from './support/childServer.ts';
import { startTestServer, removeDataDir, fhir, freePort, type TestServer } from './support/server.ts';
import { SHARED_DATA } from './support/data.ts';
import { startServer } from '../src/server.ts';
import { importFiles } from '../src/importer.ts';
import { createOrg } from '../src/store/tenants.ts';
import { exportNow } from '../src/export/run.ts';
import { stageRows } from '../src/bigquery/load.ts';

let srv: TestServer;
const KICKOFF = { accept: 'application/fhir+json', prefer: 'respond-async' };

async function loadSynthea(db: TestServer['db'], orgId: number, base: string, n: number): Promise<void> {
  const dir = path.join(SHARED_DATA, 'synthea-r4');
  const files = fs.readdirSync(dir).filter((f) => !/Information/.test(f)).sort().slice(0, n).map((f) => path.join(dir, f));
  const summary = await importFiles(files, { db, orgId, base, maxEntries: Number.MAX_SAFE_INTEGER, maxCount: 1000 });
  assert.deepEqual(summary.failures, []);
}

before(async () => {
  srv = await startTestServer();
  await loadSynthea(srv.db, 1, srv.url, 12);
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

async function kickoff(base: string, pathAndQuery: string, opts: { method?: string; body?: unknown; headers?: Record<string, string> } = {}) {
  return fhir(base, opts.method ?? 'GET', pathAndQuery, opts.body, { ...KICKOFF, ...(opts.headers ?? {}) });
}

/** Polls a status URL until the manifest (or a failure) arrives. */
async function waitDone(statusUrl: string, timeoutMs = 120_000): Promise<{ status: number; json: any; headers: Headers; polls: { status: number; progress: string | null; retry: string | null }[] }> {
  const polls: { status: number; progress: string | null; retry: string | null }[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(statusUrl, { headers: { accept: 'application/json' } });
    const text = await res.text();
    polls.push({ status: res.status, progress: res.headers.get('x-progress'), retry: res.headers.get('retry-after') });
    if (res.status !== 202) return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers, polls };
    if (Date.now() > deadline) throw new Error(`export at ${statusUrl} did not finish`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function exportAll(base: string, pathAndQuery: string, opts: Parameters<typeof kickoff>[2] = {}) {
  const k = await kickoff(base, pathAndQuery, opts);
  assert.equal(k.status, 202, k.text);
  const statusUrl = k.headers.get('content-location')!;
  const done = await waitDone(statusUrl);
  assert.equal(done.status, 200, JSON.stringify(done.json));
  return { statusUrl, manifest: done.json, polls: done.polls };
}

/** Every line of every output file of a manifest, by type. */
async function linesOf(manifest: any, kind: 'output' | 'deleted' = 'output'): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const f of manifest[kind] ?? []) {
    const res = await fetch(f.url, { headers: { accept: 'application/fhir+ndjson' } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/fhir\+ndjson/);
    const text = await res.text();
    assert.ok(text.endsWith('\n'), `${f.url} ends with a complete line`);
    const lines = text.slice(0, -1).split('\n');
    assert.equal(lines.length, f.count, `${f.url} count`);
    out.set(f.type, [...(out.get(f.type) ?? []), ...lines]);
  }
  return out;
}

async function storedCount(db: TestServer['db'], orgId: number, table: string): Promise<number> {
  return (await db.owner.query(`SELECT count(*)::integer AS n FROM ${table} WHERE org_id = $1`, [orgId])).rows[0].n;
}

describe('kick-off', () => {
  test('needs Prefer: respond-async and Accept: application/fhir+json', async () => {
    const noPrefer = await fhir(srv.url, 'GET', '$export', undefined, { accept: 'application/fhir+json' });
    assert.equal(noPrefer.status, 400);
    assert.equal(noPrefer.json.resourceType, 'OperationOutcome');
    assert.match(noPrefer.json.issue[0].diagnostics, /respond-async/);
    const noAccept = await fetch(`${srv.url}/$export`, { headers: { prefer: 'respond-async' } });
    assert.equal(noAccept.status, 400);
    assert.equal((await noAccept.json()).resourceType, 'OperationOutcome');
  });

  test('refuses bad parameters, or ignores unknown ones with handling=lenient', async () => {
    for (const q of ['_outputFormat=text/csv', 'bogus=1', 'includeAssociatedData=LatestProvenanceResources', '_type=Parameters',
      '_since=yesterday', '_typeFilter=Observation%3Fnope%3D1', '_typeFilter=Observation%3Fdate%3Dnotadate']) {
      const r = await kickoff(srv.url, `$export?${q}`);
      assert.equal(r.status, 400, `${q}: ${r.text}`);
      assert.equal(r.json.resourceType, 'OperationOutcome');
    }
    const lenient = await kickoff(srv.url, '$export?bogus=1&_type=Patient&_outputFormat=ndjson', { headers: { prefer: 'respond-async, handling=lenient' } });
    assert.equal(lenient.status, 202, lenient.text);
    assert.match(lenient.json.issue[0].diagnostics, /ignored.*bogus/);
    const done = await waitDone(lenient.headers.get('content-location')!);
    assert.equal(done.status, 200);
    assert.deepEqual(done.json.output.map((o: any) => o.type), ['Patient']);
    // Unknown routes and methods around the operation are FHIR errors too.
    assert.equal((await fhir(srv.url, 'PUT', '$export', {}, KICKOFF)).status, 405);
    assert.equal((await fhir(srv.url, 'GET', '$export-status/not-a-job')).status, 404);
  });
});

describe('system export', () => {
  test('the whole flow: 202 + Content-Location, polling, manifest, files equal to reads', async () => {
    // A resource whose text needs care: escaped quotes and backslashes, unicode, a newline
    // inside a string, and raw newlines/tabs as the client's own formatting.
    const tricky = '{"resourceType":"Patient",\n\t"name":[\r\n\t{"family":"Q\\"uo\\\\te \\u00e9 é ✓",\n "given":["line\\nbreak", "tab\\there"]}],\r\n"birthDate":"1970-01-01"}';
    const created = await fhir(srv.url, 'POST', 'Patient', tricky);
    assert.equal(created.status, 201, created.text);
    const k = await kickoff(srv.url, '$export');
    assert.equal(k.status, 202);
    const statusUrl = k.headers.get('content-location')!;
    assert.ok(statusUrl.startsWith(`${srv.url}/$export-status/`), statusUrl);
    const done = await waitDone(statusUrl);
    assert.equal(done.status, 200, JSON.stringify(done.json));
    for (const p of done.polls.filter((x) => x.status === 202)) {
      assert.ok(p.progress && p.progress.length <= 100, 'X-Progress on every 202');
      assert.equal(p.retry, '2');
    }
    const m = done.json;
    assert.match(m.transactionTime, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.equal(m.request, `${srv.url}/$export`);
    assert.equal(m.requiresAccessToken, false);
    assert.deepEqual(m.error, []);
    const lines = await linesOf(m);
    for (const [type, table] of [['Patient', 'patients'], ['Encounter', 'encounters'], ['Observation', 'observations'], ['Group', 'groups']]) {
      const count = m.output.filter((o: any) => o.type === type).reduce((n: number, o: any) => n + o.count, 0);
      assert.equal(count, await storedCount(srv.db, 1, table), `${type} count`);
      assert.equal((lines.get(type) ?? []).length, count);
    }
    assert.ok((lines.get('Observation') ?? []).length > 500, 'Synthea data exported');
    const seen = new Set<string>();
    for (const [type, list] of lines) {
      for (const line of list) {
        const r = JSON.parse(line);
        assert.equal(r.resourceType, type);
        assert.ok(!seen.has(`${type}/${r.id}`), 'each resource once');
        seen.add(`${type}/${r.id}`);
      }
    }
    // Each line is the read body, up to raw CR/LF (insignificant JSON whitespace).
    for (const [type, list] of lines) {
      for (const line of list.slice(0, 25)) {
        const id = JSON.parse(line).id;
        const read = await fetch(`${srv.url}/${type}/${id}`);
        assert.equal(line, (await read.text()).replace(/[\r\n]/g, ''));
      }
    }
    const trickyLine = lines.get('Patient')!.find((l) => JSON.parse(l).id === created.json.id)!;
    assert.equal(trickyLine, created.text.replace(/[\r\n]/g, ''));
    assert.ok(trickyLine.includes('\t'), 'formatting tabs kept as written');
    assert.deepEqual(JSON.parse(trickyLine).name[0], { family: 'Q"uo\\te é é ✓', given: ['line\nbreak', 'tab\there'] });
  });

  test('large types are split into files of at most KILN_EXPORT_MAX_LINES lines (exportNow)', async () => {
    const result = await exportNow(srv.db, { ...srv.config, exportMaxLines: 300 }, { orgId: 1, types: ['Observation', 'Patient'] });
    const obs = result.files.filter((f) => f.type === 'Observation');
    assert.ok(obs.length > 1, 'several Observation files');
    assert.ok(obs.every((f) => f.count <= 300 && f.count > 0));
    assert.equal(obs.reduce((n, f) => n + f.count, 0), await storedCount(srv.db, 1, 'observations'));
    for (const f of result.files) {
      assert.ok(path.isAbsolute(f.path));
      const text = fs.readFileSync(f.path, 'utf8');
      assert.equal(text.split('\n').length - 1, f.count);
    }
    assert.match(result.transactionTime, /Z$/);
  });

  test('export files hold PHI: files 0600 and directories 0700, whatever the umask', async () => {
    const root = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-export-modes-')), 'exports', 'nested');
    const umask = process.umask(0); // the loosest: everything would be 0666 / 0777
    let result;
    const staged = path.join(path.dirname(root), 'Patient.ndjson');
    try {
      result = await exportNow(srv.db, { ...srv.config, exportDir: root, exportMaxLines: 300 }, { orgId: 1, types: ['Patient', 'Observation'] });
      // The rows staged from them for a BigQuery load are PHI too.
      assert.ok(await stageRows(result.files, 'Patient', staged, { tenant: 'default', transactionTime: result.transactionTime }) > 0);
    } finally {
      process.umask(umask);
    }
    const mode = (p: string) => (fs.statSync(p).mode & 0o777).toString(8);
    assert.ok(result.files.length > 1);
    for (const f of [...result.files.map((x) => x.path), staged]) assert.equal(mode(f), '600', f);
    const jobDirectory = path.dirname(result.files[0].path);
    assert.deepEqual(fs.readdirSync(jobDirectory).map((n) => mode(path.join(jobDirectory, n))).filter((m) => m !== '600'), []);
    // The job's directory and the directories the export had to make for it.
    for (const d of [jobDirectory, root, path.dirname(root)]) assert.equal(mode(d), '700', d);
    fs.rmSync(path.dirname(path.dirname(root)), { recursive: true, force: true });
  });

  test('_type and _since: only changes after _since, deletes listed in deleted[]', async () => {
    const a = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'SinceA' }] });
    const b = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'SinceB' }] });
    await new Promise((r) => setTimeout(r, 20));
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    const c = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'SinceC' }] });
    assert.equal((await fhir(srv.url, 'PUT', `Patient/${a.json.id}`, { resourceType: 'Patient', id: a.json.id, name: [{ family: 'SinceA2' }] })).status, 200);
    assert.equal((await fhir(srv.url, 'DELETE', `Patient/${b.json.id}`)).status, 204);
    const obs = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'since' }, subject: { reference: `Patient/${c.json.id}` } });
    const { manifest } = await exportAll(srv.url, `$export?_type=Patient&_since=${encodeURIComponent(since)}`);
    const lines = await linesOf(manifest);
    assert.deepEqual([...lines.keys()], ['Patient']);
    const ids = lines.get('Patient')!.map((l) => JSON.parse(l).id).sort();
    assert.deepEqual(ids, [a.json.id, c.json.id].sort());
    assert.equal(JSON.parse(lines.get('Patient')!.find((l) => l.includes(a.json.id))!).name[0].family, 'SinceA2');
    const deleted = await linesOf(manifest, 'deleted');
    const bundles = (deleted.get('Bundle') ?? []).map((l) => JSON.parse(l));
    assert.deepEqual(bundles.map((x) => x.entry[0].request), [{ method: 'DELETE', url: `Patient/${b.json.id}` }]);
    assert.equal(bundles[0].type, 'transaction');
    // The next incremental export from this one's transactionTime has nothing new.
    const next = await exportAll(srv.url, `$export?_type=Patient,Observation&_since=${encodeURIComponent(manifest.transactionTime)}`);
    const nextObs = (await linesOf(next.manifest)).get('Observation') ?? [];
    assert.ok(!nextObs.some((l) => l.includes(obs.json.id)), 'not exported twice');
    assert.equal(next.manifest.output.length, 0);
  });

  test('_typeFilter runs search queries per type; several for a type are ORed', async () => {
    const code = '8302-2'; // body height, in every Synthea record
    const search = await fhir(srv.url, 'GET', `Observation?code=http://loinc.org|${code}&_count=1000`);
    const expected = search.json.entry.map((e: any) => e.resource.id).sort();
    assert.ok(expected.length > 0);
    const filter = encodeURIComponent(`Observation?code=http://loinc.org|${code}`);
    const { manifest } = await exportAll(srv.url, `$export?_type=Observation,Patient&_typeFilter=${filter}`);
    const lines = await linesOf(manifest);
    assert.deepEqual(lines.get('Observation')!.map((l) => JSON.parse(l).id).sort(), expected);
    assert.equal(lines.get('Patient')!.length, await storedCount(srv.db, 1, 'patients'), 'unfiltered types whole');
    const weight = (await fhir(srv.url, 'GET', 'Observation?code=http://loinc.org|29463-7&_count=1000')).json.entry.length;
    const both = encodeURIComponent(`Observation?code=http://loinc.org|${code}`) + '&_typeFilter=' + encodeURIComponent('Observation?code=http://loinc.org|29463-7,http://loinc.org|' + code);
    const ored = await exportAll(srv.url, `$export?_type=Observation&_typeFilter=${both}`);
    const ids = (await linesOf(ored.manifest)).get('Observation')!.map((l) => JSON.parse(l).id);
    assert.equal(new Set(ids).size, ids.length, 'a resource matching two queries is written once');
    assert.equal(ids.length, expected.length + weight);
  });

  test('_elements keeps the named elements and marks resources SUBSETTED', async () => {
    const { manifest } = await exportAll(srv.url, '$export?_type=Patient&_elements=gender');
    const lines = (await linesOf(manifest)).get('Patient')!;
    for (const l of lines) {
      const r = JSON.parse(l);
      assert.deepEqual(Object.keys(r).filter((k) => !['resourceType', 'id', 'meta', 'gender'].includes(k)), []);
      assert.ok(r.meta.tag.some((t: any) => t.code === 'SUBSETTED'));
    }
  });
});

describe('Patient and Group export', () => {
  let patientIds: string[] = [];
  before(async () => {
    const r = await fhir(srv.url, 'GET', 'Patient?family:missing=false&_count=100');
    patientIds = r.json.entry.map((e: any) => e.resource.id).filter((id: string) => !!id);
  });

  function patientOf(line: string): string | undefined {
    const r = JSON.parse(line);
    if (r.resourceType === 'Patient') return r.id;
    const ref: string | undefined = r.subject?.reference ?? r.patient?.reference;
    return ref?.replace(/^Patient\//, '');
  }

  test('Patient/$export: the compartments of all patients; POST with patient narrows it', async () => {
    const all = await exportAll(srv.url, 'Patient/$export');
    const types = all.manifest.output.map((o: any) => o.type);
    assert.ok(!types.includes('Group'), 'Group is not in the patient compartment');
    // A Synthea patient with Observations (server-assigned ids are UUIDs too: look at the data).
    const one = (await srv.db.owner.query(
      'SELECT patient_id FROM observations WHERE org_id = 1 AND patient_id IS NOT NULL GROUP BY patient_id HAVING count(*) > 10 ORDER BY patient_id LIMIT 1')).rows[0].patient_id as string;
    assert.ok(patientIds.includes(one));
    const post = await exportAll(srv.url, 'Patient/$export', {
      method: 'POST',
      body: { resourceType: 'Parameters', parameter: [{ name: 'patient', valueReference: { reference: `Patient/${one}` } }, { name: '_type', valueString: 'Patient,Encounter,Observation' }] },
    });
    const lines = await linesOf(post.manifest);
    assert.deepEqual(lines.get('Patient')!.map(patientOf), [one]);
    const obs = lines.get('Observation')!;
    assert.ok(obs.length > 10);
    assert.ok(obs.every((l) => patientOf(l) === one));
    const stored = (await srv.db.owner.query('SELECT count(*)::integer AS n FROM observations WHERE org_id = 1 AND patient_id = $1', [one])).rows[0].n;
    assert.equal(obs.length, stored);
  });

  test('compartments beyond the subject: an Observation through its performer, a Patient through its link', async () => {
    const made = async (r: { resourceType: string; [k: string]: unknown }) => {
      const c = await fhir(srv.url, 'POST', r.resourceType, r);
      assert.equal(c.status, 201, c.text);
      return c.json.id as string;
    };
    // Patients of this test only (the Synthea ones are other tests' group members).
    const a = await made({ resourceType: 'Patient', name: [{ family: 'CompartmentA' }] });
    const b = await made({ resourceType: 'Patient', name: [{ family: 'CompartmentB' }] });
    const performed = await made({ resourceType: 'Observation', status: 'final', code: { text: 'performed by b' }, subject: { reference: `Patient/${a}` }, performer: [{ reference: `Patient/${b}` }] });
    const subjectless = await made({ resourceType: 'Observation', status: 'final', code: { text: 'no subject' }, performer: [{ reference: `Patient/${b}` }] });
    const linked = await made({ resourceType: 'Patient', name: [{ family: 'LinkedToB' }], link: [{ other: { reference: `Patient/${b}` }, type: 'seealso' }] });
    const g = await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${b}` } }] });
    assert.equal(g.status, 201, g.text);
    const ids = (lines: Map<string, string[]>, type: string) => (lines.get(type) ?? []).map((l) => JSON.parse(l).id as string);
    const group = await linesOf((await exportAll(srv.url, `Group/${g.json.id}/$export?_type=Patient,Observation`)).manifest);
    assert.deepEqual(ids(group, 'Patient').sort(), [b, linked].sort(), 'the member and the Patient linking to it');
    assert.deepEqual(ids(group, 'Observation').sort(), [performed, subjectless].sort(), 'the Observations the member performed');
    const all = await linesOf((await exportAll(srv.url, 'Patient/$export?_type=Observation')).manifest);
    assert.ok(ids(all, 'Observation').includes(subjectless), 'a subjectless Observation is in its performer\'s compartment');
    const a1 = await linesOf((await exportAll(srv.url, 'Patient/$export', {
      method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'patient', valueReference: { reference: `Patient/${a}` } }, { name: '_type', valueString: 'Observation' }] },
    })).manifest);
    assert.ok(ids(a1, 'Observation').includes(performed) && !ids(a1, 'Observation').includes(subjectless));
  });

  test('Group/[id]/$export: only the members\' compartments; unknown group 404', async () => {
    const synthea = (await srv.db.owner.query(
      'SELECT DISTINCT patient_id FROM encounters WHERE org_id = 1 AND patient_id IS NOT NULL ORDER BY patient_id LIMIT 2')).rows.map((r) => r.patient_id as string);
    assert.equal(synthea.length, 2);
    const g = await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', type: 'person', actual: true, member: synthea.map((id) => ({ entity: { reference: `Patient/${id}` } })) });
    assert.equal(g.status, 201, g.text);
    const { manifest } = await exportAll(srv.url, `Group/${g.json.id}/$export?_type=Patient,Encounter`);
    const lines = await linesOf(manifest);
    assert.deepEqual(lines.get('Patient')!.map(patientOf).sort(), [...synthea].sort());
    const enc = lines.get('Encounter')!;
    assert.ok(enc.length > 0 && enc.every((l) => synthea.includes(patientOf(l)!)));
    const stored = (await srv.db.owner.query('SELECT count(*)::integer AS n FROM encounters WHERE org_id = 1 AND patient_id = ANY($1)', [synthea])).rows[0].n;
    assert.equal(enc.length, stored);
    assert.equal((await kickoff(srv.url, 'Group/no-such-group/$export')).status, 404);
    const empty = await fhir(srv.url, 'POST', 'Group', { resourceType: 'Group', type: 'person', actual: true });
    const none = await exportAll(srv.url, `Group/${empty.json.id}/$export`);
    assert.deepEqual(none.manifest.output, []);
  });
});

describe('cancel, isolation', () => {
  test('DELETE on the status URL cancels: 202, then 404, files gone', async () => {
    const k = await kickoff(srv.url, '$export');
    const statusUrl = k.headers.get('content-location')!;
    const id = statusUrl.split('/').pop()!;
    const del = await fetch(statusUrl, { method: 'DELETE' });
    assert.equal(del.status, 202);
    assert.equal((await fetch(statusUrl)).status, 404);
    assert.equal((await fetch(statusUrl, { method: 'DELETE' })).status, 404);
    await new Promise((r) => setTimeout(r, 1500)); // a worker that had started stops at its next step
    assert.ok(!fs.existsSync(path.join(srv.dataDir, 'exports', id)), 'no files left');
    // A completed export: DELETE removes its files too.
    const done = await exportAll(srv.url, '$export?_type=Patient');
    const fileUrl = done.manifest.output[0].url;
    assert.equal((await fetch(done.statusUrl, { method: 'DELETE' })).status, 202);
    assert.equal((await fetch(fileUrl)).status, 404);
    assert.ok(!fs.existsSync(path.join(srv.dataDir, 'exports', done.statusUrl.split('/').pop()!)));
  });

  test('a tenant\'s export holds only its resources; other tenants cannot see its job or files', async () => {
    await createOrg(srv.db.owner, 'exp-acme', 'Acme');
    const acme = `${srv.url}/exp-acme`;
    const p = await fhir(acme, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'AcmeOnly' }] });
    assert.equal(p.status, 201);
    const { manifest, statusUrl } = await exportAll(acme, '$export');
    assert.ok(statusUrl.startsWith(`${acme}/$export-status/`));
    const lines = await linesOf(manifest);
    assert.deepEqual([...lines.keys()], ['Patient']);
    assert.deepEqual(lines.get('Patient')!.map((l) => JSON.parse(l).id), [p.json.id]);
    const id = statusUrl.split('/').pop()!;
    assert.equal((await fetch(`${srv.url}/$export-status/${id}`)).status, 404, 'default tenant cannot poll it');
    const name = manifest.output[0].url.split('/').pop();
    assert.equal((await fetch(`${srv.url}/$export-file/${id}/${name}`)).status, 404, 'nor fetch its files');
    const def = await exportAll(srv.url, '$export?_type=Patient');
    const defLines = (await linesOf(def.manifest)).get('Patient')!;
    assert.ok(!defLines.some((l) => l.includes('AcmeOnly')));
  });
});

test('files expire after KILN_EXPORT_TTL and are removed with their job', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-test-'));
  const s = await startServer({ port: 0, host: '127.0.0.1', dataDir, embeddedPort: await freePort(), databaseUrl: undefined, appDatabaseUrl: undefined, baseUrl: undefined, exportTtlSeconds: 2, authMode: 'off', audit: 'off' });
  try {
    await fhir(s.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Expiring' }] });
    const { manifest, statusUrl } = await exportAll(s.url, '$export');
    const id = statusUrl.split('/').pop()!;
    assert.equal(manifest.output.length, 1);
    assert.ok(fs.existsSync(path.join(dataDir, 'exports', id)));
    await new Promise((r) => setTimeout(r, 3500));
    assert.equal((await fetch(statusUrl)).status, 404);
    assert.equal((await fetch(manifest.output[0].url)).status, 404);
    assert.ok(!fs.existsSync(path.join(dataDir, 'exports', id)), 'files removed');
    assert.equal((await s.db.owner.query('SELECT count(*)::integer AS n FROM export_jobs WHERE id = $1', [id])).rows[0].n, 0);
  } finally {
    await s.stop();
    removeDataDir(dataDir);
  }
});

// ---------------------------------------------------------------------------------------
// kill -9 in the middle of an export, then a restart on the same data dir.

test('kill -9 mid-export: after a restart the job resumes; every resource exactly once, no partial line', async () => {
  const port = await freePort();
  const pgPort = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-kill-'));
  const env = { PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '', KILN_EXPORT_MAX_LINES: '250', KILN_EXPORT_LEASE: '2' };
  const base = `http://127.0.0.1:${port}/fhir`;
  let first = startServerProcess(env);
  let second: ChildServer | undefined;
  let locker: pg.Client | undefined;
  try {
    await first.ready;
    // A few thousand resources: 100 patients, each with 2 encounters, 20 observations, 3 medication statements.
    for (let b = 0; b < 10; b++) {
      const entry: any[] = [];
      for (let i = b * 10; i < b * 10 + 10; i++) {
        entry.push({ resource: { resourceType: 'Patient', id: `k${i}`, name: [{ family: `Kill${i}` }] }, request: { method: 'PUT', url: `Patient/k${i}` } });
        for (let e = 0; e < 2; e++) entry.push({ resource: { resourceType: 'Encounter', id: `k${i}-e${e}`, status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/k${i}` } }, request: { method: 'PUT', url: `Encounter/k${i}-e${e}` } });
        for (let o = 0; o < 20; o++) entry.push({ resource: { resourceType: 'Observation', id: `k${i}-o${o}`, status: 'final', code: { text: 'x\\"y' }, subject: { reference: `Patient/k${i}` }, encounter: { reference: `Encounter/k${i}-e${o % 2}` }, valueQuantity: { value: 70.50 } }, request: { method: 'PUT', url: `Observation/k${i}-o${o}` } });
        for (let m = 0; m < 3; m++) entry.push({ resource: { resourceType: 'MedicationStatement', id: `k${i}-m${m}`, status: 'active', medicationCodeableConcept: { text: 'aspirin' }, subject: { reference: `Patient/k${i}` } }, request: { method: 'PUT', url: `MedicationStatement/k${i}-m${m}` } });
      }
      const r = await fhir(base, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry });
      assert.equal(r.status, 200, r.text.slice(0, 500));
    }
    // Hold the job at the commit of its MedicationStatement unit, after Patient, Encounter and
    // Observation committed and after the MedicationStatement files were written and renamed:
    // a test-only trigger makes that commit wait for an advisory lock this test holds.
    const password = fs.readFileSync(path.join(dataDir, 'pg-superuser-password'), 'utf8').trim();
    locker = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', password, database: 'kiln' });
    await locker.connect();
    await locker.query(`CREATE FUNCTION test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.type = 'MedicationStatement' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF; RETURN NEW; END $$`);
    await locker.query('CREATE TRIGGER test_hold_commit BEFORE INSERT ON export_files FOR EACH ROW EXECUTE FUNCTION test_hold_commit()');
    await locker.query('SELECT pg_advisory_lock(4242)');
    const k = await kickoff(base, '$export');
    assert.equal(k.status, 202);
    const statusUrl = k.headers.get('content-location')!;
    const id = statusUrl.split('/').pop()!;
    const dir = path.join(dataDir, 'exports', id);
    const deadline = Date.now() + 60_000;
    const msFiles = () => (fs.existsSync(dir) ? fs.readdirSync(dir) : []).filter((f) => /^MedicationStatement-1\.\d+\.ndjson$/.test(f));
    while (msFiles().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(msFiles().length, 2, 'MedicationStatement files written, their commit held');
    const progress = (await fetch(statusUrl)).headers.get('x-progress') ?? '';
    // Types are exported in the registry's order (every stored type).
    const order = Object.keys(TABLES);
    assert.match(progress, new RegExp(`^\\d+ resources written; exporting MedicationStatement \\(${order.indexOf('MedicationStatement') + 1} of ${order.length}\\)`));
    assert.ok(Number(progress.split(' ')[0]) >= 2300, progress);
    const before = fs.readdirSync(dir).sort();
    assert.equal(before.filter((f) => f.startsWith('Observation-1.')).length, 8, `Observation files committed: ${before}`);
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    // What else a crash can leave: a half-written temp file.
    fs.writeFileSync(path.join(dir, 'MedicationStatement-1.3.ndjson.part'), '{"resourceType":"MedicationStatement","id":"k0-m0"}\n{"resourceType":"Medi');
    await locker.query('SELECT pg_advisory_unlock(4242)');
    // The next server stops the PostgreSQL the killed one left running and starts its own,
    // which would cut this connection.
    await locker.end();
    locker = undefined;

    second = startServerProcess(env);
    await second.ready;
    const done = await waitDone(statusUrl);
    assert.equal(done.status, 200, JSON.stringify(done.json));
    const m = done.json;
    const files = fs.readdirSync(dir).sort();
    assert.deepEqual(files, m.output.map((o: any) => o.url.split('/').pop()).sort(), 'only the manifest\'s files remain');
    assert.ok(files.filter((f) => f.startsWith('Observation-1.')).length >= 8, 'units committed before the kill were kept (resumed, not restarted)');
    assert.ok(files.some((f) => f.startsWith('MedicationStatement-2.')), 'the interrupted unit was redone by attempt 2');
    const expected: Record<string, number> = { Patient: 100, Encounter: 200, Observation: 2000, MedicationStatement: 300 };
    const lines = await linesOf(m);
    for (const [type, n] of Object.entries(expected)) {
      const ids = lines.get(type)!.map((l) => JSON.parse(l).id);
      assert.equal(ids.length, n, `${type} count`);
      assert.equal(new Set(ids).size, n, `${type} each once`);
    }
    assert.ok(lines.get('Observation')!.every((l) => l.includes('"text":"x\\\\\\"y"')), 'escapes survive COPY');
    for (const l of lines.get('Observation')!.slice(0, 5)) assert.equal(l, await (await fetch(`${base}/Observation/${JSON.parse(l).id}`)).text());
  } finally {
    await locker?.end().catch(() => {});
    for (const c of [first, second]) if (c && c.child.exitCode === null) c.child.kill('SIGKILL');
    // The embedded PostgreSQL outlived the killed server; stop it.
    const pidFile = path.join(dataDir, 'pg', 'postmaster.pid');
    if (fs.existsSync(pidFile)) {
      const pid = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
      try { process.kill(pid, 'SIGINT'); } catch { /* already gone */ }
      const until = Date.now() + 20_000;
      while (fs.existsSync(pidFile) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    }
    removeDataDir(dataDir);
  }
});
