// Values PostgreSQL refuses (a NUL byte, out-of-range numbers and dates, malformed cursors and
// version ids) are client errors: each is a 4xx OperationOutcome from the parse step, never a
// 500 with a database message, and changes nothing stored. Probes cover every search parameter
// type, conditional URLs (headers, query, Bundle entries, conditional references), $export
// _typeFilter, path ids, history and vread.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { startTestServer, removeDataDir, fhir, freePort, type TestServer } from './support/server.ts';
import crypto from 'node:crypto';
import fs from 'node:fs';
import pg from 'pg';
import { createJob } from '../src/export/run.ts';
import { jobDir, runJob } from '../src/export/runner.ts';
import { databaseUnavailable } from '../src/store/resources.ts';
import { tapLog } from '../src/log.ts';
import type { ExportJob } from '../src/store/exportJobs.ts';

let srv: TestServer;
let patientId: string;
let observationId: string;

before(async () => {
  // Auditing on: a refused request's AuditEvent (query text included) is written too.
  srv = await startTestServer({ audit: 'on' });
  const p = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', identifier: [{ system: 'http://x', value: '1' }], name: [{ family: 'Probe' }], birthDate: '1980-01-01' });
  patientId = p.json.id;
  const o = await fhir(srv.url, 'POST', 'Observation', {
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: `Patient/${patientId}` }, effectiveDateTime: '2020-01-01', valueQuantity: { value: 60, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  });
  observationId = o.json.id;
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

/** What is stored apart from AuditEvents: every version of every resource. */
async function stored(): Promise<string> {
  const { rows } = await srv.db.owner.query(
    `SELECT resource_type, id, version_id FROM resource_history ORDER BY resource_type, id, version_id`);
  return rows.map((r) => `${r.resource_type}/${r.id}/${r.version_id}`).join(' ');
}

type Probe = [method: string, path: string, body?: unknown, headers?: Record<string, string>];

const PATIENT = { resourceType: 'Patient', name: [{ family: 'Never' }] };
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const transaction = (...entry: unknown[]) => ({ resourceType: 'Bundle', type: 'transaction', entry });

/** Search values refused by PostgreSQL or out of any valid range, per parameter type. */
const SEARCH_VALUES: Record<string, string[]> = {
  // string
  'Patient?name': ['%00', 'a%00b'],
  'Patient?name:exact': ['%00'],
  'Patient?name:contains': ['%00'],
  'Patient?address-city': ['x%00'],
  // token
  'Patient?identifier': ['%00', 'http://x%00|1', 'http://x|%00', '%00|'],
  'Patient?gender:text': ['%00'],
  'Patient?gender:not': ['%00'],
  'Patient?identifier:of-type': ['%00|MR|1'],
  'Patient?_id': ['%00', 'a%00'],
  'Patient?_tag': ['%00'],
  // date
  'Patient?birthdate': ['%00', '1980%00', '0000-01-01', 'gt0000-01-01', '99999', '99999-01-01', '0000-00-00', '2020-01-01T25:00', '2020-01-01T10:00+99:00'],
  'Patient?_lastUpdated': ['gt0000-01-01T00:00:00Z', 'lt10000-01-01'],
  'Observation?date': ['ap0000-01-01', 'sa%00'],
  // reference
  'Observation?subject': ['%00', 'Patient/%00', 'http://other/Patient/%00', 'Patient/a%00b'],
  'Observation?subject:Patient': ['%00'],
  'Observation?subject:identifier': ['%00', 'http://x|%00'],
  'Patient?general-practitioner': ['Practitioner/%00'],
  // quantity (numbers: no stored type has a number parameter; quantities take the same path)
  'Observation?value-quantity': ['%00', '1e999', 'gt1e999', '-1e999', '1e99999999999', '5|%00|mg', '5||%00', '9'.repeat(400), 'ap1e999', 'NaN', 'Infinity'],
  'Encounter?length': ['1e999', 'lt-1e999'],
  // uri
  'Patient?_profile': ['%00', 'http://x/%00'],
  'Patient?_profile:below': ['%00'],
  'Patient?_profile:above': ['%00'],
  'Patient?_source': ['%00'],
  // composite
  'Observation?code-value-quantity': ['%00$5', 'x$%00', 'x$1e999', 'x$5|%00|y'],
  'Observation?code-value-string': ['x$%00'],
  'Observation?code-value-date': ['x$%00', 'x$0000-01-01', 'x$99999'],
  'Group?characteristic-value': ['%00$x'],
  // chains and _has
  'Observation?subject:Patient.name': ['%00'],
  'Observation?subject:Patient.birthdate': ['0000-01-01'],
  'Patient?_has:Observation:patient:code': ['%00'],
};

const searchProbes: Probe[] = Object.entries(SEARCH_VALUES).flatMap(([param, values]) => values.map((v): Probe => ['GET', `${param}=${v}`]));

const otherProbes: Probe[] = [
  // names and result parameters
  ['GET', 'Patient?fo%00o=1'],
  ['GET', 'Patient?name%00=x'],
  ['GET', 'Patient?_sort=%00'],
  ['GET', 'Patient?_elements=%00'],
  ['GET', 'Patient?_include=Observation:subject%00'],
  ['GET', 'Patient?_count=%00'],
  ['GET', 'Patient?_count=1e3'],
  ['GET', 'Patient?_count=-1'],
  ['GET', 'Patient?_count=1.5'],
  ['GET', 'Patient?_page=%00'],
  ['GET', `Patient?_page=${b64(['\u0000'])}`],
  ['GET', `Patient?_page=${b64(['x', 'y', 'z', 'w'])}`],
  ['GET', `Patient?_sort=birthdate&_page=${b64(['0000-01-01', 'x'])}`],
  ['GET', `Observation?_sort=value-quantity&_page=${b64(['1e999x', 'x'])}`],
  ['GET', `AuditEvent?_page=${b64(['\u0000'])}`],
  ['GET', '?_type=Patient&name=%00'],
  ['GET', '?_type=Patient%00'],
  // POST _search form bodies
  ['POST', 'Patient/_search', 'name=%00', FORM],
  ['POST', 'Patient/_search', 'identifier=http://x|%00', FORM],
  ['POST', 'Observation/_search', 'value-quantity=1e999', FORM],
  ['POST', 'Patient/_search', 'birthdate=0000-01-01', FORM],
  // path ids and tenants
  ['GET', 'Patient/%00'],
  ['GET', 'Patient/a%00b'],
  ['PUT', 'Patient/a%00b', { ...PATIENT, id: 'a\u0000b' }],
  ['DELETE', 'Patient/a%00b'],
  ['GET', 'Patient/a%00b/_history'],
  ['GET', 'Patient/a%00b/_history/1'],
  ['GET', 'Patient/%00/$everything'],
  ['GET', 'Group/%00/$export'],
  ['GET', '%00/Patient'],
  // history
  ['GET', '_history?_since=0000-01-01'],
  ['GET', '_history?_since=0000-00-00'],
  ['GET', '_history?_since=%00'],
  ['GET', '_history?_since=2020-01-01T00:00:00%2B23:00'],
  ['GET', 'Patient/_history?_since=0000-01-01T00:00:00Z'],
  ['GET', `_history?_page=${b64(['2020-01-01T00:00:00.000Z', 'Patient', 'x', 1e20])}`],
  ['GET', `_history?_page=${b64(['not-a-time', 'Patient', 'x', 1])}`],
  ['GET', `_history?_page=${b64(['2020-01-01T00:00:00.000Z', 'Patient', 'a\u0000', 1])}`],
  ['GET', `_history?_page=${b64(['2020-01-01T00:00:00.000Z', 'Pat\u0000', 'x', 1])}`],
  ['GET', `_history?_page=${b64(['0000-01-01T00:00:00.000Z', 'Patient', 'x', 1])}`],
  ['GET', '_history?_count=1e3'],
  // conditional create, update and delete
  ['POST', 'Patient', PATIENT, { 'if-none-exist': 'identifier=%00' }],
  ['POST', 'Patient', PATIENT, { 'if-none-exist': 'Patient?name=a%00' }],
  ['POST', 'Patient', PATIENT, { 'if-none-exist': 'birthdate=0000-01-01' }],
  ['POST', 'Patient', PATIENT, { 'if-none-exist': 'identifier%00=x' }],
  ['PUT', 'Patient?identifier=%00', PATIENT],
  ['PUT', 'Patient?identifier=http://x|1&name=%00', PATIENT],
  ['DELETE', 'Patient?identifier=%00'],
  ['DELETE', 'Patient?birthdate=0000-01-01'],
  // transactions: conditional URLs, ifNoneExist and conditional references
  ['POST', '', transaction({ request: { method: 'POST', url: 'Patient', ifNoneExist: 'identifier=%00' }, resource: PATIENT })],
  ['POST', '', transaction({ request: { method: 'POST', url: 'Patient', ifNoneExist: 'birthdate=0000-01-01' }, resource: PATIENT })],
  ['POST', '', transaction({ request: { method: 'PUT', url: 'Patient?identifier=%00' }, resource: PATIENT })],
  ['POST', '', transaction({ request: { method: 'DELETE', url: 'Patient?identifier=%00' } })],
  ['POST', '', transaction({ request: { method: 'GET', url: 'Patient?name=%00' } })],
  ['POST', '', transaction({ request: { method: 'GET', url: 'Patient/x/_history/99999999999999999999' } })],
  ['POST', '', transaction({ request: { method: 'GET', url: 'Patient/x/_history/abc' } })],
  ['POST', '', transaction({ request: { method: 'GET', url: 'Patient/a%00b' } })],
  ['POST', '', transaction({
    request: { method: 'POST', url: 'Observation' },
    resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient?identifier=%00' } },
  })],
  ['POST', '', transaction({
    request: { method: 'POST', url: 'Observation' },
    resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient?identifier=http://x|1&birthdate=0000-01-01' } },
  })],
  // $export kick-off: _typeFilter and _since
  ['GET', '$export?_typeFilter=Patient%3Fname%3D%2500', undefined, { prefer: 'respond-async' }],
  ['GET', '$export?_typeFilter=Patient%3Fbirthdate%3D0000-01-01', undefined, { prefer: 'respond-async' }],
  ['GET', '$export?_typeFilter=Observation%3Fvalue-quantity%3D1e999', undefined, { prefer: 'respond-async' }],
  ['GET', '$export?_since=0000-01-01T00:00:00Z', undefined, { prefer: 'respond-async' }],
  ['POST', '$export', { resourceType: 'Parameters', parameter: [{ name: '_typeFilter', valueString: 'Patient?name=%00' }] }, { prefer: 'respond-async' }],
  ['POST', '$export', { resourceType: 'Parameters', parameter: [{ name: '_typeFilter', valueString: 'Patient?name=a\u0000' }] }, { prefer: 'respond-async' }],
];

/** Version ids that cannot exist are 400; integers that name no version are 404. */
const VERSIONS: [string, number][] = [
  ['99999999999999999999', 400], ['2147483648', 400], ['-1', 400], ['1e3', 400], ['1.5', 400], ['%00', 400], ['abc', 400],
  ['0', 404], ['2147483647', 404], ['99', 404],
];

/** Error lines the server logs meanwhile: an internal error (a 500's stack trace) or a lost AuditEvent. */
async function logsOf<T>(fn: () => Promise<T>): Promise<{ result: T; bad: string[] }> {
  const bad: string[] = [];
  const untap = tapLog((line) => { if (/internal error|audit.*fail/i.test(line)) bad.push(line.slice(0, 300)); });
  try {
    return { result: await fn(), bad };
  } finally {
    untap();
  }
}

async function refused(probes: Probe[]): Promise<string[]> {
  const { result, bad } = await logsOf(() => answers(probes));
  return [...result, ...bad.map((l) => `logged: ${l}`)];
}

async function answers(probes: Probe[]): Promise<string[]> {
  const problems: string[] = [];
  for (const [method, path, body, headers] of probes) {
    const r = await fhir(srv.url, method, path, body, headers);
    const what = `${method} ${path}${headers?.['if-none-exist'] ? ` If-None-Exist: ${headers['if-none-exist']}` : ''}${body && typeof body === 'object' ? ' ' + JSON.stringify(body).slice(0, 200) : ''}`;
    if (r.status < 400 || r.status >= 500) problems.push(`${what} -> ${r.status} ${r.text.slice(0, 300)}`);
    else if (r.json?.resourceType !== 'OperationOutcome') problems.push(`${what}: not an OperationOutcome: ${r.text.slice(0, 300)}`);
    else if (/\.ts:\d+|node_modules|at [A-Za-z.]+ \(|invalid byte sequence|out of range for type|syntax for type/.test(r.text)) problems.push(`${what} leaks internals: ${r.text}`);
  }
  return problems;
}

describe('NUL bytes and out-of-range values are 400 at the parse step', () => {
  test('every search parameter type: NUL, huge numbers and out-of-range dates give a 4xx OperationOutcome and change nothing', async () => {
    const before = await stored();
    assert.deepEqual(await refused(searchProbes), []);
    assert.equal(await stored(), before);
  });

  test('names, result parameters, cursors, _search forms, path ids, history, conditional writes, transactions and $export kick-off', async () => {
    const before = await stored();
    assert.deepEqual(await refused(otherProbes), []);
    assert.equal(await stored(), before);
    // No export job was queued by a refused kick-off.
    const { rows } = await srv.db.owner.query('SELECT count(*)::int AS n FROM export_jobs');
    assert.equal(rows[0].n, 0);
  });

  test('a batch answers each bad entry with its own 4xx, never a 500', async () => {
    const entries = [
      { request: { method: 'GET', url: 'Patient?name=%00' } },
      { request: { method: 'GET', url: 'Patient/a%00b' } },
      { request: { method: 'GET', url: 'Patient/x/_history/99999999999999999999' } },
      { request: { method: 'POST', url: 'Patient', ifNoneExist: 'identifier=%00' }, resource: PATIENT },
      { request: { method: 'DELETE', url: 'Patient?birthdate=0000-01-01' } },
    ];
    const before = await stored();
    const r = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: entries });
    assert.equal(r.status, 200, r.text);
    const statuses = r.json.entry.map((e: any) => e.response.status);
    assert.ok(statuses.every((s: string) => /^4\d\d/.test(s)), statuses.join(', '));
    assert.equal(await stored(), before);
  });

  test('the search still finds what it should around the refusals', async () => {
    const r = await fhir(srv.url, 'GET', 'Patient?identifier=http://x|1&birthdate=1980-01-01');
    assert.equal(r.json.entry?.length, 1);
    const q = await fhir(srv.url, 'GET', 'Observation?value-quantity=gt1e300');
    assert.equal(q.status, 200);
    assert.equal(q.json.entry?.length ?? 0, 0);
    const o = await fhir(srv.url, 'GET', `Observation?subject=Patient/${patientId}&date=ge0001-01-01&value-quantity=lt1e300`);
    assert.deepEqual(o.json.entry.map((e: any) => e.resource.id), [observationId]);
    // `ap` near the ends of the calendar: its window is cut at years 1 and 9999.
    for (const q of ['Observation?date=ap0001', 'Patient?_lastUpdated=ap9999-12-31', 'Patient?_has:Observation:patient:date=ap0001']) {
      assert.equal((await fhir(srv.url, 'GET', q)).status, 200, q);
    }
    // Very long values (100 KB, through a _search form) are answered, matching nothing.
    const long = 'x'.repeat(100_000);
    for (const body of [`name=${long}`, `identifier=http://x|${long}`, `_profile=${long}`, `general-practitioner=Practitioner/${long}`, `_id=${long}`]) {
      const l = await fhir(srv.url, 'POST', 'Patient/_search', body, FORM);
      assert.ok(l.status === 200 || l.status === 400, `${body.slice(0, 30)}: ${l.status} ${l.text.slice(0, 200)}`);
      assert.equal(l.json.entry?.length ?? 0, 0);
    }
  });
});

describe('resource types named like Object.prototype members', () => {
  test('are unknown types in paths, _type lists and Bundle entries: a 4xx, never a 500', async () => {
    const before = await stored();
    const probes: [string, string, unknown?][] = [];
    for (const name of ['toString', 'constructor', 'hasOwnProperty', 'valueOf', '__proto__', 'isPrototypeOf']) {
      probes.push(['GET', `${name}/1`], ['GET', `${name}/1/_history`], ['GET', `${name}/_history`], ['GET', name], ['POST', name, { resourceType: name }],
        ['DELETE', `${name}/1`], ['GET', `?_type=${name}`], ['GET', `Patient/${patientId}/$everything?_type=${name}`], ['GET', `$export?_type=${name}`],
        ['POST', '', { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: `${name}/1` } }] }]);
    }
    for (const [method, path, body] of probes) {
      const r = await fhir(srv.url, method, path, body, { prefer: 'respond-async' });
      assert.ok(r.status >= 400 && r.status < 500 || (path === '' && r.status === 200), `${method} /${path}: ${r.status} ${r.text.slice(0, 200)}`);
      if (path === '') assert.match(r.json.entry[0].response.status, /^4/, `${method} ${JSON.stringify(body)}`);
      else assert.equal(r.json?.resourceType, 'OperationOutcome', `${method} /${path}`);
    }
    assert.equal(await stored(), before);
  });
});

describe('vread and history version ids', () => {
  test('GET [type]/[id]/_history/[vid]: a vid that cannot be a version is 400, an integer that names none is 404', async () => {
    const problems: string[] = [];
    for (const [vid, want] of VERSIONS) {
      const r = await fhir(srv.url, 'GET', `Patient/${patientId}/_history/${vid}`);
      if (r.status !== want || r.json?.resourceType !== 'OperationOutcome') problems.push(`${vid} -> ${r.status} (want ${want}) ${r.text.slice(0, 200)}`);
    }
    assert.deepEqual(problems, []);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${patientId}/_history/1`)).status, 200);
  });
});

describe('$export jobs', () => {
  async function failedStatus(params: Parameters<typeof createJob>[3]): Promise<string> {
    // Queued directly, as a job stored before kick-off validation existed would be.
    const id = await createJob(srv.db, 1, `${srv.url}/$export`, params);
    let r: Awaited<ReturnType<typeof fhir>>;
    const deadline = Date.now() + 30_000;
    do {
      await new Promise((res) => setTimeout(res, 100));
      r = await fhir(srv.url, 'GET', `$export-status/${id}`);
    } while (r.status === 202 && Date.now() < deadline);
    assert.ok(r.status >= 400, r.text);
    return r.json.issue[0].diagnostics as string;
  }
  const RAW_DB_TEXT = /byte sequence|UTF8|0x00|out of range|syntax|relation|column|postgres|SQL/i;

  test('a stored _typeFilter with a NUL fails its job with a FHIR message, not PostgreSQL text', async () => {
    const text = await failedStatus({ level: 'system', types: ['Patient'], typeFilters: { Patient: ['name=a%00'] } });
    assert.doesNotMatch(text, RAW_DB_TEXT, text);
    assert.match(text, /NUL/);
  });

  test('a job that loses the database fails with that error itself, so the worker retries the job instead of failing it', async () => {
    // A real pool to a port nothing listens on: every query fails as a lost database does.
    const gone = new pg.Pool({ connectionString: `postgres://kiln@127.0.0.1:${await freePort()}/kiln`, connectionTimeoutMillis: 2000 });
    gone.on('error', () => {});
    const job: ExportJob = {
      orgId: 1, id: crypto.randomUUID(), status: 'running', request: `${srv.url}/$export`,
      params: { level: 'system', types: ['Patient'], typeFilters: {} }, progress: {}, doneUnits: [], attempts: 1,
    };
    try {
      await assert.rejects(runJob({ db: { ...srv.db, app: gone }, config: srv.config, worker: 'badinput' }, job),
        (e) => databaseUnavailable(e) !== undefined);
    } finally {
      await gone.end();
      fs.rmSync(jobDir(srv.config, job.id), { recursive: true, force: true });
    }
  });

  test('a job failing in the database reports a fixed text in its status, the detail only in the server log', async () => {
    const text = await failedStatus({ level: 'system', types: ['Patient'], typeFilters: {}, since: '0000-01-01T00:00:00.000Z' });
    assert.doesNotMatch(text, RAW_DB_TEXT, text);
    assert.match(text, /internal error/);
  });
});

describe('property: random search values never give a 500', () => {
  test('any string as the value of any parameter type is a 200 or a 4xx OperationOutcome', async () => {
    const params = Object.keys(SEARCH_VALUES);
    const value = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 30 }),
      fc.stringMatching(/^(eq|ne|gt|lt|ge|le|sa|eb|ap)?-?\d{0,6}(\.\d{0,4})?(e[-+]?\d{1,5})?$/),
      fc.stringMatching(/^(gt|lt|ap)?\d{1,5}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2})?([+-]\d{2}:\d{2}|Z)?)?)?)?$/),
    );
    await fc.assert(fc.asyncProperty(fc.constantFrom(...params), value, async (param, v) => {
      const r = await fhir(srv.url, 'GET', `${param}=${encodeURIComponent(v)}`);
      return r.status === 200 || (r.status >= 400 && r.status < 500 && r.json?.resourceType === 'OperationOutcome');
    }), { numRuns: 300 });
  });
});
