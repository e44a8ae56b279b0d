// BigQuery sync end to end: a real Kiln server with data -> exportNow -> loads through the
// real @google-cloud/bigquery client into the local BigQuery endpoint; watermarks in PostgreSQL.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { startFakeBigQuery, type FakeBigQuery } from './support/bigqueryServer.ts';
import { findOrg } from '../src/store/tenants.ts';
import { pendingRun, watermarks } from '../src/store/bigquerySync.ts';
import { parseLossless, rowToResource } from '../src/bigquery/rows.ts';
import { LoadJobError, type BigQueryTarget } from '../src/bigquery/load.ts';
import { syncTenant } from '../src/bigquery/sync.ts';

const run = promisify(execFile);
const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

describe('kiln bigquery sync', () => {
  let server: TestServer;
  let fake: FakeBigQuery;
  let target: BigQueryTarget;
  let orgId: number;
  const gcloud = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-gcloud-'));
  const patients: string[] = [];

  const sync = () => syncTenant(server.db, server.config, { orgId, tenant: 'default', target });
  const uploadsSince = (n: number) => fake.requests.slice(n).filter((r) => r.upload);
  const uploadedRows = (reqs: typeof fake.requests, type: string) => reqs
    .filter((r) => r.upload!.metadata.configuration.load.destinationTable.tableId === type)
    .flatMap((r) => r.upload!.data.split('\n').filter(Boolean).map((l) => JSON.parse(l)));
  /** What Kiln serves for a resource, parsed like the loader parses export lines. */
  const served = async (ref: string) => parseLossless((await fhir(server.url, 'GET', ref)).text);

  async function createPatient(family: string): Promise<string> {
    const res = await fhir(server.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family, given: ['Ann'] }], birthDate: '1970-01-01', active: true });
    assert.equal(res.status, 201);
    patients.push(res.json.id);
    return res.json.id;
  }
  async function createObservation(patient: string, value: number): Promise<string> {
    const res = await fhir(server.url, 'POST', 'Observation', {
      resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patient}` },
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      effectiveDateTime: '2024-02-01T10:00:00Z', valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
    assert.equal(res.status, 201, res.text);
    return res.json.id;
  }

  before(async () => {
    server = await startTestServer();
    fake = await startFakeBigQuery();
    fake.createDataset('kiln-test', 'fhir');
    delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
    process.env.CLOUDSDK_CONFIG = gcloud;
    process.env.GCE_METADATA_HOST = fake.metadataHost;
    target = { projectId: 'kiln-test', datasetId: 'fhir', location: 'US', apiEndpoint: fake.url };
    orgId = (await findOrg(server.db.owner, 'default'))!.id;
    for (const name of ['Alpha', 'Bravo', 'Charlie']) await createPatient(name);
    for (const [i, p] of patients.entries()) await createObservation(p, 60.5 + i);
  });
  after(async () => {
    await fake.close();
    await server.stop();
    removeDataDir(server.dataDir);
  });

  test('the first sync exports everything and the loaded rows equal what Kiln serves', async () => {
    const result = await sync();
    assert.equal(result.since, undefined);
    const uploads = uploadsSince(0);
    const patientRows = uploadedRows(uploads, 'Patient');
    const obsRows = uploadedRows(uploads, 'Observation');
    assert.equal(patientRows.length, 3);
    assert.equal(obsRows.length, 3);
    for (const row of [...patientRows, ...obsRows]) {
      assert.equal(row._kiln_transaction_time, result.transactionTime);
      assert.deepEqual(rowToResource(row), await served(`${row.resourceType}/${row.id}`));
    }
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, 3);
    const marks = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    assert.equal(marks.Patient, result.transactionTime);
    assert.equal(marks.Observation, result.transactionTime);
    assert.equal(await pendingRun(server.db.owner, orgId, 'kiln-test:fhir'), undefined);
  });

  test('a second sync after more writes loads only the new versions, and deletions as tombstones', async () => {
    const before = (await watermarks(server.db.owner, orgId, 'kiln-test:fhir')).Patient;
    const mark = fake.requests.length;
    const p0 = (await fhir(server.url, 'GET', `Patient/${patients[0]}`)).json;
    assert.equal((await fhir(server.url, 'PUT', `Patient/${patients[0]}`, { ...p0, active: false })).status, 200);
    const obs = await createObservation(patients[1], 72.25);
    const victim = await createObservation(patients[2], 80);
    assert.equal((await fhir(server.url, 'DELETE', `Observation/${victim}`)).status, 204);
    const result = await sync();
    assert.equal(result.since, before);
    const uploads = uploadsSince(mark);
    const patientRows = uploadedRows(uploads, 'Patient');
    assert.equal(patientRows.length, 1);
    assert.equal(patientRows[0].id, patients[0]);
    assert.equal(patientRows[0].meta.versionId, '2');
    assert.equal(patientRows[0].active, false);
    const obsRows = uploadedRows(uploads, 'Observation');
    assert.deepEqual(obsRows.filter((r) => !r._kiln_deleted).map((r) => r.id), [obs]);
    assert.deepEqual(rowToResource(obsRows.find((r) => r.id === obs)), await served(`Observation/${obs}`));
    const tombstones = obsRows.filter((r) => r._kiln_deleted);
    assert.deepEqual(tombstones.map((r) => r.id), [victim], 'created and deleted in the window: only the deletion');
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, 4, 'versions accumulate; Patient_latest picks one');
  });

  test('a sync whose load fails keeps the watermark; the re-run loads everything exactly once', async () => {
    const marksBefore = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    const newPatient = await createPatient('Delta');
    const newObs = await createObservation(newPatient, 99.9);
    const obsCount = fake.rows('kiln-test', 'fhir', 'Observation').length;
    const patientCount = fake.rows('kiln-test', 'fhir', 'Patient').length;
    fake.failNextLoad('Observation', 'job-error');
    await assert.rejects(sync(), (e: unknown) => e instanceof LoadJobError && e.type === 'Observation');
    const marksFailed = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    assert.equal(marksFailed.Observation, marksBefore.Observation, 'the failed type keeps its watermark');
    assert.equal(fake.rows('kiln-test', 'fhir', 'Observation').length, obsCount);
    const pending = await pendingRun(server.db.owner, orgId, 'kiln-test:fhir');
    assert.ok(pending && pending.loaded.Patient && !pending.loaded.Observation);

    const mark = fake.requests.length;
    const result = await sync();
    assert.equal(result.resumed, true);
    assert.equal(result.transactionTime, pending.transactionTime, 'the same export, not a new one');
    assert.equal(uploadedRows(uploadsSince(mark), 'Patient').length, 0, 'Patient was loaded by the failed run');
    assert.deepEqual(uploadedRows(uploadsSince(mark), 'Observation').map((r) => r.id), [newObs]);
    assert.equal(fake.rows('kiln-test', 'fhir', 'Observation').length, obsCount + 1);
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, patientCount + 1);
    const marks = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    assert.equal(marks.Observation, result.transactionTime);
    assert.equal(marks.Patient, result.transactionTime);

    // Nothing changed since: the next sync loads nothing.
    const quiet = fake.requests.length;
    const idle = await sync();
    assert.equal(uploadsSince(quiet).length, 0);
    assert.ok(idle.loads.every((l) => l.state === 'empty'));
  });

  test('a failed run whose files were removed is abandoned; the new export skips what the loaded types already hold', async () => {
    const p = await createPatient('Echo');
    const o = await createObservation(p, 42);
    const patientCount = fake.rows('kiln-test', 'fhir', 'Patient').length;
    fake.failNextLoad('Observation', 'http-503');
    await assert.rejects(sync());
    const pending = (await pendingRun(server.db.owner, orgId, 'kiln-test:fhir'))!;
    for (const f of pending.files) fs.rmSync(f.path, { force: true });
    fs.rmSync(pending.stagingDir, { recursive: true, force: true });
    const mark = fake.requests.length;
    const result = await sync();
    assert.equal(result.resumed, false);
    assert.equal(uploadedRows(uploadsSince(mark), 'Patient').length, 0, 'Patient versions up to the failed run are not loaded twice');
    assert.deepEqual(uploadedRows(uploadsSince(mark), 'Observation').map((r) => r.id), [o]);
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, patientCount + 1);
  });

  test('the CLI syncs, and reports missing settings, credentials and dataset clearly', async () => {
    const base: NodeJS.ProcessEnv = { ...process.env, KILN_DATA_DIR: server.dataDir, KILN_PG_PORT: String(server.pgPort), CLOUDSDK_CONFIG: gcloud };
    delete base.GOOGLE_APPLICATION_CREDENTIALS;
    const kiln = (env: NodeJS.ProcessEnv) => run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'bigquery', 'sync'], { cwd: REPO, env })
      .then((r) => ({ code: 0, ...r }), (e) => ({ code: e.code as number, stdout: e.stdout as string, stderr: e.stderr as string }));
    const bq = { KILN_BIGQUERY_PROJECT: 'kiln-test', KILN_BIGQUERY_DATASET: 'fhir', KILN_BIGQUERY_LOCATION: 'US', KILN_BIGQUERY_API_ENDPOINT: fake.url };

    const unset = await kiln({ ...base, KILN_BIGQUERY_PROJECT: '', KILN_BIGQUERY_DATASET: '' });
    assert.equal(unset.code, 2);
    assert.match(unset.stderr, /BigQuery is not configured: set KILN_BIGQUERY_PROJECT and KILN_BIGQUERY_DATASET/);

    const noCreds = await kiln({ ...base, ...bq, GCE_METADATA_HOST: '', METADATA_SERVER_DETECTION: 'none' });
    assert.equal(noCreds.code, 2, noCreds.stderr);
    assert.match(noCreds.stderr, /No Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS/);
    assert.doesNotMatch(noCreds.stderr, /\n\s+at /, 'no stack trace');

    const badFile = await kiln({ ...base, ...bq, GOOGLE_APPLICATION_CREDENTIALS: '/nonexistent/key.json' });
    assert.equal(badFile.code, 2);
    assert.match(badFile.stderr, /Google credentials could not be read: .*GOOGLE_APPLICATION_CREDENTIALS/);

    const noDataset = await kiln({ ...base, ...bq, KILN_BIGQUERY_DATASET: 'missing', GCE_METADATA_HOST: fake.metadataHost });
    assert.equal(noDataset.code, 2);
    assert.match(noDataset.stderr, /BigQuery dataset kiln-test:missing does not exist/);

    await sync(); // whatever earlier tests left (this test may run alone)
    await createPatient('Foxtrot');
    const ok = await kiln({ ...base, ...bq, GCE_METADATA_HOST: fake.metadataHost });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /Patient\s+1 rows\s+loaded/);
    assert.match(ok.stdout, /synced 'default' into kiln-test:fhir: 1 rows loaded/);
  });
});
