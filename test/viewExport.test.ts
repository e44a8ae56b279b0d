// $viewdefinition-export (SQL on FHIR v2) over real HTTP against real PostgreSQL: kick-off
// with inline and stored views, polling to a 303 and the result's outputs, NDJSON / CSV / JSON
// files holding $run's rows, patient filter, a patient token's compartment, who may read a
// job, cancel, refusals before anything is queued, and a kill -9 in the middle of a job.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startServerProcess, type ChildServer } from './support/childServer.ts';
import { startTestServer, removeDataDir, fhir, freePort, token, bearer, type TestServer } from './support/server.ts';

type Json = Record<string, any>;

const patientView: Json = {
  resourceType: 'ViewDefinition', url: 'http://example.org/views/patients', name: 'patients', status: 'active', resource: 'Patient',
  select: [{ column: [
    { name: 'id', path: 'getResourceKey()', type: 'id' },
    { name: 'family', path: 'name.first().family', type: 'string' },
  ] }],
};

const observationView: Json = {
  resourceType: 'ViewDefinition', name: 'vitals', status: 'active', resource: 'Observation',
  select: [{ column: [
    { name: 'id', path: 'getResourceKey()', type: 'id' },
    { name: 'patient', path: 'subject.getReferenceKey(Patient)', type: 'string' },
    { name: 'note', path: 'code.text', type: 'string' },
    { name: 'value', path: 'value.ofType(Quantity).value', type: 'decimal' },
  ] }],
};

const viewPart = (part: Json[]) => ({ name: 'view', part });
const inline = (view: Json, name?: string) => viewPart([...(name ? [{ name: 'name', valueString: name }] : []), { name: 'viewResource', resource: view }]);
const byRef = (ref: string, name?: string) => viewPart([...(name ? [{ name: 'name', valueString: name }] : []), { name: 'viewReference', valueReference: { reference: ref } }]);

/** Polls a status URL (without following the 303) until the job is done; the polls' headers too. */
async function waitDone(statusUrl: string, headers: Record<string, string>, timeoutMs = 120_000) {
  const polls: { status: number; progress: string | null; retry: string | null; body: Json }[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(statusUrl, { headers: { accept: 'application/fhir+json', ...headers }, redirect: 'manual' });
    const text = await res.text();
    polls.push({ status: res.status, progress: res.headers.get('x-progress'), retry: res.headers.get('retry-after'), body: text ? JSON.parse(text) : undefined });
    if (res.status !== 202) return { status: res.status, location: res.headers.get('location'), polls };
    if (Date.now() > deadline) throw new Error(`export at ${statusUrl} did not finish`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const param = (p: Json, name: string) => p.parameter.filter((x: Json) => x.name === name);
const outputsOf = (result: Json) => Object.fromEntries(param(result, 'output').map((o: Json) => [
  o.part.find((x: Json) => x.name === 'name').valueString, o.part.filter((x: Json) => x.name === 'location').map((x: Json) => x.valueUri as string),
]));

async function getJson(url: string, headers: Record<string, string>) {
  const res = await fetch(url, { headers: { accept: 'application/fhir+json', ...headers } });
  return { status: res.status, json: await res.json() as Json };
}

async function download(url: string, headers: Record<string, string>) {
  const res = await fetch(url, { headers });
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
}

/** The concatenated text of each output's files. */
async function filesOf(result: Json, headers: Record<string, string>): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const [name, urls] of Object.entries(outputsOf(result))) {
    out[name] = [];
    for (const url of urls as string[]) {
      const f = await download(url, headers);
      assert.equal(f.status, 200, f.text);
      out[name].push(f.text);
    }
  }
  return out;
}

describe('$viewdefinition-export', () => {
  let srv: TestServer;
  let system: Record<string, string>;
  let alice: string;
  let bob: string;
  let storedId: string;

  async function kickoff(p: Json[], headers: Record<string, string> = system, at = 'ViewDefinition/$viewdefinition-export') {
    return fhir(srv.url, 'POST', at, { resourceType: 'Parameters', parameter: p }, { prefer: 'respond-async', ...headers });
  }

  /** Kick-off, poll to the 303, GET the result: the result Parameters and the polls. */
  async function exportViews(p: Json[], headers: Record<string, string> = system, at?: string) {
    const k = await kickoff(p, headers, at);
    assert.equal(k.status, 202, k.text);
    const statusUrl = k.headers.get('content-location')!;
    assert.equal(param(k.json, 'location')[0].valueUri, statusUrl);
    assert.equal(param(k.json, 'status')[0].valueCode, 'accepted');
    const done = await waitDone(statusUrl, headers);
    assert.equal(done.status, 303, JSON.stringify(done.polls.at(-1)));
    const result = await getJson(done.location!, headers);
    assert.equal(result.status, 200, JSON.stringify(result.json));
    return { statusUrl, result: result.json, polls: done.polls, id: param(k.json, 'exportId')[0].valueString as string };
  }

  /** $run's answer for the same view and parameters. */
  async function run(p: Json[], headers: Record<string, string> = system) {
    const res = await fetch(`${srv.url}/ViewDefinition/$run`, {
      method: 'POST', headers: { 'content-type': 'application/fhir+json', ...headers }, body: JSON.stringify({ resourceType: 'Parameters', parameter: p }),
    });
    assert.equal(res.status, 200);
    return res.text();
  }

  before(async () => {
    // Small files: a view's rows span several.
    srv = await startTestServer({ auth: 'smart', config: { exportMaxLines: 7 } });
    system = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'analyst' }));
    const create = async (r: Json) => {
      const res = await fhir(srv.url, 'POST', r.resourceType, r, system);
      assert.equal(res.status, 201, res.text);
      return res.json.id as string;
    };
    alice = await create({ resourceType: 'Patient', name: [{ family: 'Alice' }] });
    bob = await create({ resourceType: 'Patient', name: [{ family: 'Bob, "Jr"' }] });
    for (const [who, n] of [[alice, 9], [bob, 6]] as const) {
      for (let i = 0; i < n; i++) {
        await create({ resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${who}` },
          code: { text: i === 0 ? 'two\nlines, "quoted"' : `obs ${i}` }, valueQuantity: { value: i + 0.5 } });
      }
    }
    storedId = await create(patientView);
  });
  after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

  test('kick-off with an inline view and a stored one: 202, polls, 303, outputs whose NDJSON rows are $run\'s', async () => {
    const { result, polls, id } = await exportViews([inline(observationView), byRef(`ViewDefinition/${storedId}`, 'people'), { name: 'clientTrackingId', valueString: 'monthly-1' }]);
    for (const p of polls.slice(0, -1)) {
      assert.equal(p.retry, '2');
      assert.match(p.progress ?? '', /^(queued|\d+ rows written)/);
      assert.match(param(p.body, 'status')[0].valueCode, /^(accepted|in-progress)$/);
    }
    assert.equal(param(result, 'exportId')[0].valueString, id);
    assert.equal(param(result, 'clientTrackingId')[0].valueString, 'monthly-1');
    assert.equal(param(result, '_format')[0].valueCode, 'ndjson');
    const outputs = outputsOf(result);
    assert.deepEqual(Object.keys(outputs), ['vitals', 'people']);
    assert.equal(outputs.vitals.length, 3, '15 rows in files of at most 7');
    const files = await filesOf(result, system);
    const lines = (texts: string[]) => texts.join('').split('\n').filter(Boolean).sort();
    assert.ok(files.vitals.every((t) => t.endsWith('\n')));
    assert.equal(lines(files.vitals).length, 15);
    assert.deepEqual(lines(files.vitals), lines([await run([{ name: 'viewResource', resource: observationView }, { name: '_format', valueCode: 'ndjson' }])]));
    assert.deepEqual(lines(files.people), lines([await run([{ name: 'viewReference', valueReference: { reference: `ViewDefinition/${storedId}` } }, { name: '_format', valueCode: 'ndjson' }])]));
    const file = await download(outputs.vitals[0], system);
    assert.match(file.type, /^application\/x-ndjson/);
    // A view job is not a bulk $export job: its id means nothing at $export-status.
    assert.equal((await fhir(srv.url, 'GET', `$export-status/${id}`, undefined, system)).status, 404);
  });

  test('system level, CSV (with and without header) and JSON: the same rows as $run', async () => {
    const csv = await exportViews([inline(observationView), { name: '_format', valueCode: 'csv' }], system, '$viewdefinition-export');
    const texts = (await filesOf(csv.result, system)).vitals;
    const header = 'id,patient,note,value\r\n';
    assert.ok(texts.every((t) => t.startsWith(header)), 'each file starts with the header');
    const expected = await run([{ name: 'viewResource', resource: observationView }, { name: '_format', valueCode: 'csv' }]);
    const body = (t: string) => t.slice(header.length);
    // Records compared whole: one note holds a line break and quotes inside a quoted field.
    const records = (t: string) => t.split(/\r\n(?=[^,\r\n]+,[^,\r\n]+,)/).filter(Boolean).sort();
    assert.deepEqual(records(texts.map(body).join('')), records(body(expected)));
    assert.ok(texts.join('').includes('"two\nlines, ""quoted"""'));
    const bare = await exportViews([inline(observationView), { name: '_format', valueCode: 'csv' }, { name: 'header', valueBoolean: false }]);
    const bareTexts = (await filesOf(bare.result, system)).vitals;
    assert.ok(bareTexts.every((t) => !t.startsWith('id,')));
    assert.deepEqual(records(bareTexts.join('')), records(body(expected)));
    const json = await exportViews([inline(observationView), { name: '_format', valueCode: 'json' }]);
    const rows = (await filesOf(json.result, system)).vitals.flatMap((t) => JSON.parse(t) as Json[]);
    assert.deepEqual(rows.map((r) => r.id).sort(), (JSON.parse(await run([{ name: 'viewResource', resource: observationView }])) as Json[]).map((r) => r.id).sort());
  });

  test('patient filter: the rows of that patient\'s compartment', async () => {
    const { result } = await exportViews([inline(observationView), { name: 'patient', valueReference: { reference: `Patient/${bob}` } }]);
    const rows = (await filesOf(result, system)).vitals.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(rows.length, 6);
    assert.ok(rows.every((r) => r.patient === bob));
    // A patient without observations: the view's output still has a file, the CSV header alone.
    const carol = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Carol' }] }, system)).json.id;
    const empty = await exportViews([inline(observationView), { name: 'patient', valueReference: { reference: `Patient/${carol}` } }, { name: '_format', valueCode: 'csv' }]);
    assert.deepEqual((await filesOf(empty.result, system)).vitals, ['id,patient,note,value\r\n']);
    const none = await kickoff([inline(observationView), { name: 'group', valueReference: { reference: 'Group/none' } }]);
    assert.equal(none.status, 400, 'an unknown group is refused');
    assert.match(none.text, /not-found/);
  });

  test('a patient token exports its own compartment; its job is for it alone', async () => {
    const own = bearer(await token(srv, { scope: 'patient/*.rs', patient: alice }));
    const { result, statusUrl } = await exportViews([inline(observationView), inline(patientView)], own);
    const files = await filesOf(result, own);
    const obs = files.vitals.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(obs.length, 9);
    assert.ok(obs.every((r) => r.patient === alice));
    assert.deepEqual(files.patients.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l).id), [alice]);
    // Same client app, another patient; another client: neither sees the job or its files.
    const other = bearer(await token(srv, { scope: 'patient/*.rs', patient: bob }));
    assert.equal((await fetch(statusUrl, { headers: other, redirect: 'manual' })).status, 403);
    assert.equal((await download(outputsOf(result).vitals[0], other)).status, 403);
    assert.equal((await download(outputsOf(result).vitals[0], system)).status, 403);
    // Another patient named by a patient token is not found, as a read of it would be.
    assert.equal((await kickoff([inline(observationView), { name: 'patient', valueReference: { reference: `Patient/${bob}` } }], own)).status, 404);
  });

  test('DELETE cancels: 202, then the status and files are gone', async () => {
    const { statusUrl, result, id } = await exportViews([inline(observationView)]);
    const url = outputsOf(result).vitals[0];
    const del = await fetch(statusUrl, { method: 'DELETE', headers: system });
    assert.equal(del.status, 202);
    assert.equal((await fetch(statusUrl, { headers: system, redirect: 'manual' })).status, 404);
    assert.equal((await download(url, system)).status, 404);
    assert.ok(!fs.existsSync(path.join(srv.config.dataDir, 'exports', id)), 'files removed');
  });

  test('refused before anything is queued: invalid view, unknown reference, no Prefer, parquet, source, duplicate names', async () => {
    const jobs = async () => (await srv.db.owner.query('SELECT count(*)::integer AS n FROM export_jobs')).rows[0].n as number;
    const before = await jobs();
    const invalid = await kickoff([inline(observationView), inline({ ...patientView, select: [{ column: [{ name: 'a', path: 'name.(' }] }] })]);
    assert.equal(invalid.status, 400, invalid.text);
    assert.equal(invalid.json.resourceType, 'OperationOutcome');
    assert.match(invalid.text, /select\[0\]\.column\[0\]\.path/);
    assert.equal((await kickoff([byRef('ViewDefinition/nope')])).status, 404);
    const noPrefer = await fhir(srv.url, 'POST', 'ViewDefinition/$viewdefinition-export', { resourceType: 'Parameters', parameter: [inline(observationView)] }, system);
    assert.equal(noPrefer.status, 400);
    assert.match(noPrefer.text, /respond-async/);
    assert.equal((await kickoff([inline(observationView), { name: '_format', valueCode: 'parquet' }])).status, 400);
    assert.equal((await kickoff([inline(observationView), { name: 'source', valueString: 's3://bucket' }])).status, 400);
    assert.equal((await kickoff([inline(observationView), inline(observationView)])).status, 400);
    assert.equal((await kickoff([])).status, 400);
    assert.equal((await kickoff([inline(observationView)], bearer(await token(srv, { scope: 'system/Patient.rs' })))).status, 403);
    assert.equal(await jobs(), before, 'no job was queued');
  });

  test('granular scopes filter the rows, through search, as in $run', async () => {
    for (const value of [100, 101]) {
      const r = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'amended', subject: { reference: `Patient/${bob}` },
        code: { text: 'amended' }, valueQuantity: { value } }, system);
      assert.equal(r.status, 201, r.text);
    }
    const amended = bearer(await token(srv, { scope: 'system/Observation.rs?status=amended', clientId: 'narrow' }));
    const { result } = await exportViews([inline(observationView)], amended);
    const rows = (await filesOf(result, amended)).vitals.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => r.value).sort(), [100, 101]);
    const viaRun = JSON.parse(await run([{ name: 'viewResource', resource: observationView }], amended)) as Json[];
    assert.deepEqual(rows.map((r) => r.id).sort(), viaRun.map((r) => r.id).sort());
  });

  test('a view the data cannot fit fails the job: the status still 303s, the result is a 500 OperationOutcome naming it', async () => {
    const r = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ given: ['Ann', 'Marie'] }] }, system);
    assert.equal(r.status, 201);
    const several = { ...patientView, select: [{ column: [{ name: 'given', path: 'name.given' }] }] };
    const k = await kickoff([inline(several)]);
    assert.equal(k.status, 202, k.text);
    const done = await waitDone(k.headers.get('content-location')!, system);
    assert.equal(done.status, 303);
    const result = await getJson(done.location!, system);
    assert.equal(result.status, 500);
    assert.equal(result.json.resourceType, 'OperationOutcome');
    assert.match(result.json.issue[0].diagnostics, /values for column given, which is not a collection/);
  });

  test('the CapabilityStatement lists the operation at the system level and on ViewDefinition', async () => {
    const cs = (await fhir(srv.url, 'GET', 'metadata')).json;
    assert.ok(cs.rest[0].operation.some((o: Json) => o.name === 'viewdefinition-export'));
    const vd = cs.rest[0].resource.find((r: Json) => r.type === 'ViewDefinition');
    assert.ok(vd.operation.some((o: Json) => o.name === 'viewdefinition-export' && o.definition === 'urn:kiln:OperationDefinition:ViewDefinition-export'));
  });
});

// kill -9 in the middle of a view export, then a restart on the same data dir.

test('kill -9 mid-export: after a restart the job resumes; every row exactly once', async () => {
  const port = await freePort();
  const pgPort = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-viewkill-'));
  const env = { PORT: String(port), KILN_PG_PORT: String(pgPort), KILN_DATA_DIR: dataDir, DATABASE_URL: '', KILN_EXPORT_MAX_LINES: '100', KILN_EXPORT_LEASE: '2' };
  const base = `http://127.0.0.1:${port}/fhir`;
  const first = startServerProcess(env);
  let second: ChildServer | undefined;
  let locker: pg.Client | undefined;
  try {
    await first.ready;
    const entry: Json[] = [];
    for (let i = 0; i < 50; i++) {
      entry.push({ resource: { resourceType: 'Patient', id: `k${i}`, name: [{ family: `Kill${i}` }] }, request: { method: 'PUT', url: `Patient/k${i}` } });
      for (let o = 0; o < 8; o++) entry.push({ resource: { resourceType: 'Observation', id: `k${i}-o${o}`, status: 'final', code: { text: 'x' }, subject: { reference: `Patient/k${i}` }, valueQuantity: { value: o } }, request: { method: 'PUT', url: `Observation/k${i}-o${o}` } });
    }
    assert.equal((await fhir(base, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry })).status, 200);
    // Hold the commit of the second view's files (the first view committed, the second's
    // files written and renamed): a test-only trigger waits for an advisory lock held here.
    const password = fs.readFileSync(path.join(dataDir, 'pg-superuser-password'), 'utf8').trim();
    locker = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', password, database: 'kiln' });
    await locker.connect();
    await locker.query(`CREATE FUNCTION test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.type = 'vitals' THEN PERFORM pg_advisory_xact_lock_shared(4243); END IF; RETURN NEW; END $$`);
    await locker.query('CREATE TRIGGER test_hold_commit BEFORE INSERT ON export_files FOR EACH ROW EXECUTE FUNCTION test_hold_commit()');
    await locker.query('SELECT pg_advisory_lock(4243)');
    const k = await fhir(base, 'POST', '$viewdefinition-export', { resourceType: 'Parameters', parameter: [inline(patientView), inline(observationView)] }, { prefer: 'respond-async' });
    assert.equal(k.status, 202, k.text);
    const statusUrl = k.headers.get('content-location')!;
    const dir = path.join(dataDir, 'exports', statusUrl.split('/').pop()!);
    const vitals = () => (fs.existsSync(dir) ? fs.readdirSync(dir) : []).filter((f) => /^vitals-1\.\d+\.ndjson$/.test(f));
    const deadline = Date.now() + 60_000;
    while (vitals().length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(vitals().length, 4, 'the second view\'s files written, their commit held');
    const progress = (await fetch(statusUrl, { redirect: 'manual' })).headers.get('x-progress') ?? '';
    assert.match(progress, /^\d+ rows written; exporting vitals \(2 of 2\)/);
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    fs.writeFileSync(path.join(dir, 'vitals-1.5.ndjson.part'), '{"id":"k0-o0"}\n{"id":"k0');
    await locker.query('SELECT pg_advisory_unlock(4243)');
    await locker.end();
    locker = undefined;

    second = startServerProcess(env);
    await second.ready;
    const done = await waitDone(statusUrl, {});
    assert.equal(done.status, 303);
    const result = (await getJson(done.location!, {})).json;
    const outputs = outputsOf(result);
    assert.ok(outputs.patients.every((u: string) => /\/patients-1\.\d+\.ndjson$/.test(u)), 'the first view\'s files were kept (resumed, not restarted)');
    assert.ok(outputs.vitals.every((u: string) => /\/vitals-2\.\d+\.ndjson$/.test(u)), 'the interrupted view was redone by attempt 2');
    assert.deepEqual(fs.readdirSync(dir).sort(), [...outputs.patients, ...outputs.vitals].map((u: string) => u.split('/').pop()).sort(), 'only the result\'s files remain');
    const files = await filesOf(result, {});
    const ids = (texts: string[]) => texts.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l).id as string);
    for (const [name, n] of [['patients', 50], ['vitals', 400]] as const) {
      assert.equal(ids(files[name]).length, n, `${name} rows`);
      assert.equal(new Set(ids(files[name])).size, n, `${name}: each row once`);
    }
  } finally {
    await locker?.end().catch(() => {});
    for (const c of [first, second]) if (c && c.child.exitCode === null) c.child.kill('SIGKILL');
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
