// ViewDefinitions as flat BigQuery tables, end to end: a real Kiln server with stored views and
// data -> `kiln bigquery sync` (syncTenant) -> the real @google-cloud/bigquery client -> the local
// BigQuery endpoint. The fake runs no queries, so what `view_<name>_latest` shows is computed
// here by the rule its SQL states (asserted below): per resource, the rows of its latest export.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { startFakeBigQuery, type FakeBigQuery } from './support/bigqueryServer.ts';
import { findOrg } from '../src/store/tenants.ts';
import { pendingRun, watermarks } from '../src/store/bigquerySync.ts';
import type { BigQueryTarget } from '../src/bigquery/load.ts';
import { syncTenant } from '../src/bigquery/sync.ts';
import { definitionHash } from '../src/bigquery/views.ts';
import type { ViewDefinition } from '../src/views/index.ts';

type BqRow = Record<string, any>;

const patientsView: ViewDefinition = {
  resourceType: 'ViewDefinition', name: 'patients', status: 'active', resource: 'Patient',
  select: [{
    column: [
      { name: 'id', path: 'getResourceKey()', type: 'id' },
      { name: 'family', path: "name.where(use = 'official').family.first()", type: 'string' },
      { name: 'given', path: 'name.given', type: 'string', collection: true },
      { name: 'birth_date', path: 'birthDate', type: 'date' },
      { name: 'active', path: 'active', type: 'boolean' },
      { name: 'children', path: 'multipleBirth.ofType(integer)', type: 'integer' },
    ],
  }],
};

const heartRateView: ViewDefinition = {
  resourceType: 'ViewDefinition', name: 'heart_rate', status: 'active', resource: 'Observation',
  where: [{ path: "code.coding.where(system = 'http://loinc.org' and code = '8867-4').exists()" }],
  select: [{
    column: [
      { name: 'id', path: 'getResourceKey()', type: 'id' },
      { name: 'patient', path: 'subject.getReferenceKey(Patient)', type: 'id' },
      { name: 'bpm', path: 'value.ofType(Quantity).value', type: 'decimal' },
      { name: 'unit', path: 'value.ofType(Quantity).unit', type: 'string' },
      { name: 'time', path: 'effective.ofType(dateTime)', type: 'dateTime' },
    ],
  }],
};

describe('kiln bigquery sync: ViewDefinitions as flat tables', () => {
  let server: TestServer;
  let fake: FakeBigQuery;
  let target: BigQueryTarget;
  let orgId: number;
  const gcloud = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-gcloud-'));
  const ids: Record<string, string> = {};

  const sync = () => syncTenant(server.db, server.config, { orgId, tenant: 'default', target });
  const table = (name: string) => fake.rows('kiln-test', 'fhir', name) as BqRow[];
  const tableOf = (view: ViewDefinition) => `view_${view.name}_${definitionHash(view)}`;
  const uploads = (from: number) => fake.requests.slice(from).filter((r) => r.upload)
    .map((r) => ({ table: r.upload!.metadata.configuration.load.destinationTable.tableId as string, rows: r.upload!.data.split('\n').filter(Boolean).length }));
  /** What `view_<name>_latest` selects: per tenant and resource, the rows ranked first by (transaction time, lastUpdated, versionId) descending, if they are rows. */
  function latest(rows: BqRow[]): BqRow[] {
    const key = (r: BqRow) => `${r._kiln_tenant}|${r._kiln_resource_id}`;
    const rank = (r: BqRow) => [Date.parse(r._kiln_transaction_time), r._kiln_last_updated ? Date.parse(r._kiln_last_updated) : -Infinity, r._kiln_version_id ?? -Infinity];
    const best = new Map<string, number[]>();
    const cmp = (a: number[], b: number[]) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
    for (const r of rows) if (!best.has(key(r)) || cmp(rank(r), best.get(key(r))!) > 0) best.set(key(r), rank(r));
    return rows.filter((r) => cmp(rank(r), best.get(key(r))!) === 0 && r._kiln_row !== undefined && r._kiln_row !== null);
  }
  const byId = (rows: BqRow[]) => Object.fromEntries(rows.map((r) => [r.id, r]));

  async function create(body: Record<string, unknown>): Promise<string> {
    const res = await fhir(server.url, 'POST', body.resourceType as string, body);
    assert.equal(res.status, 201, res.text);
    return res.json.id;
  }
  const observation = (patient: string, value: number, effective: string, code = '8867-4') => ({
    resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patient}` },
    code: { coding: [{ system: 'http://loinc.org', code }] },
    effectiveDateTime: effective, valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  });

  before(async () => {
    server = await startTestServer();
    fake = await startFakeBigQuery();
    fake.createDataset('kiln-test', 'fhir');
    delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
    process.env.CLOUDSDK_CONFIG = gcloud;
    process.env.GCE_METADATA_HOST = fake.metadataHost;
    target = { projectId: 'kiln-test', datasetId: 'fhir', location: 'US', apiEndpoint: fake.url };
    orgId = (await findOrg(server.db.owner, 'default'))!.id;
    ids.patientsView = await create(patientsView);
    ids.heartRateView = await create(heartRateView);
    await create({ ...heartRateView, name: 'draft_view', status: 'draft' });
    ids.ann = await create({ resourceType: 'Patient', name: [{ use: 'official', family: 'Alpha', given: ['Ann', 'Marie'] }], birthDate: '1970-03-01', active: true, multipleBirthInteger: 2 });
    ids.bob = await create({ resourceType: 'Patient', name: [{ use: 'official', family: 'Bravo', given: ['Bob'] }], birthDate: '1981-07' });
    ids.hr1 = await create(observation(ids.ann, 61.5, '2024-02-01T10:00:00Z'));
    ids.hr2 = await create(observation(ids.bob, 72, '2024-02'));
    ids.weight = await create(observation(ids.ann, 70, '2024-02-01T10:00:00Z', '29463-7'));
  });
  after(async () => {
    await fake.close();
    await server.stop();
    removeDataDir(server.dataDir);
  });

  test('the first sync makes a typed flat table per active view, its rows, and a _latest view', async () => {
    const result = await sync();
    assert.deepEqual(result.views.map((v) => [v.table, v.state, v.rows]).sort(),
      [[tableOf(heartRateView), 'loaded', 3], [tableOf(patientsView), 'loaded', 2]], 'the draft view is not loaded');
    const schema = fake.tables.get(`kiln-test:fhir.${tableOf(patientsView)}`)!.resource.schema.fields
      .map((f: BqRow) => `${f.name} ${f.type} ${f.mode}`);
    assert.deepEqual(schema, [
      'id STRING NULLABLE', 'family STRING NULLABLE', 'given STRING REPEATED', 'birth_date DATE NULLABLE', 'active BOOLEAN NULLABLE', 'children INTEGER NULLABLE',
      '_kiln_tenant STRING REQUIRED', '_kiln_resource_type STRING REQUIRED', '_kiln_resource_id STRING REQUIRED', '_kiln_version_id INTEGER NULLABLE',
      '_kiln_last_updated TIMESTAMP NULLABLE', '_kiln_transaction_time TIMESTAMP REQUIRED', '_kiln_deleted BOOLEAN NULLABLE', '_kiln_row INTEGER NULLABLE',
      '_kiln_unfit STRING NULLABLE', '_kiln_error STRING NULLABLE',
    ]);
    const hrSchema = fake.tables.get(`kiln-test:fhir.${tableOf(heartRateView)}`)!.resource.schema.fields.slice(0, 5).map((f: BqRow) => `${f.name} ${f.type}`);
    assert.deepEqual(hrSchema, ['id STRING', 'patient STRING', 'bpm FLOAT', 'unit STRING', 'time TIMESTAMP']);

    const people = byId(latest(table(tableOf(patientsView))));
    assert.deepEqual(Object.keys(people).sort(), [ids.ann, ids.bob].sort());
    assert.equal(people[ids.ann].family, 'Alpha');
    assert.deepEqual(people[ids.ann].given, ['Ann', 'Marie']);
    assert.equal(people[ids.ann].birth_date, '1970-03-01');
    assert.equal(people[ids.ann].active, true);
    assert.equal(people[ids.ann].children, 2);
    assert.equal(people[ids.ann]._kiln_tenant, 'default');
    assert.equal(people[ids.ann]._kiln_version_id, 1);
    assert.equal(people[ids.ann]._kiln_transaction_time, result.transactionTime);
    assert.equal(people[ids.bob].birth_date, undefined, 'a partial date is NULL in the DATE column');
    assert.deepEqual(JSON.parse(people[ids.bob]._kiln_unfit), { birth_date: '1981-07' });

    const rates = table(tableOf(heartRateView));
    const hr = byId(latest(rates));
    assert.deepEqual(Object.keys(hr).sort(), [ids.hr1, ids.hr2].sort());
    assert.deepEqual([hr[ids.hr1].patient, hr[ids.hr1].bpm, hr[ids.hr1].unit, hr[ids.hr1].time], [ids.ann, 61.5, '/min', '2024-02-01T10:00:00Z']);
    assert.equal(hr[ids.hr2].time, undefined);
    assert.deepEqual(JSON.parse(hr[ids.hr2]._kiln_unfit), { time: '2024-02' });
    const weight = rates.filter((r) => r._kiln_resource_id === ids.weight);
    assert.equal(weight.length, 1, 'a resource the view excludes leaves one row saying so');
    assert.equal(weight[0]._kiln_row, undefined);

    const view = fake.tables.get('kiln-test:fhir.view_heart_rate_latest')!.resource;
    assert.equal(view.type, 'VIEW');
    assert.match(view.view.query, new RegExp(`FROM \`kiln-test\\.fhir\\.${tableOf(heartRateView)}\` AS v`));
    assert.match(view.view.query, /RANK\(\) OVER \(\s*PARTITION BY v\._kiln_tenant, v\._kiln_resource_id\s*ORDER BY v\._kiln_transaction_time DESC, v\._kiln_last_updated DESC, v\._kiln_version_id DESC/);
    assert.match(view.view.query, /WHERE _kiln_rank = 1 AND _kiln_row IS NOT NULL/);
    const marks = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    assert.equal(marks[`ViewDefinition/${ids.heartRateView}#${definitionHash(heartRateView)}`], result.transactionTime);
  });

  test('an update replaces a resource\'s rows, a deletion removes them, a re-run adds nothing', async () => {
    const ann = (await fhir(server.url, 'GET', `Patient/${ids.ann}`)).json;
    assert.equal((await fhir(server.url, 'PUT', `Patient/${ids.ann}`, { ...ann, name: [{ use: 'official', family: 'Adams', given: ['Ann'] }] })).status, 200);
    const hr1 = (await fhir(server.url, 'GET', `Observation/${ids.hr1}`)).json;
    assert.equal((await fhir(server.url, 'PUT', `Observation/${ids.hr1}`, { ...hr1, valueQuantity: { ...hr1.valueQuantity, value: 64 } })).status, 200);
    assert.equal((await fhir(server.url, 'DELETE', `Observation/${ids.hr2}`)).status, 204);
    const hr3 = await create(observation(ids.bob, 80.25, '2024-03-01T08:30:00+01:00'));
    const before = table(tableOf(heartRateView)).length;

    const result = await sync();
    assert.deepEqual(result.views.map((v) => [v.table, v.rows]).sort(), [[tableOf(heartRateView), 3], [tableOf(patientsView), 1]]);
    const people = byId(latest(table(tableOf(patientsView))));
    assert.equal(people[ids.ann].family, 'Adams');
    assert.deepEqual(people[ids.ann].given, ['Ann']);
    assert.equal(people[ids.ann]._kiln_version_id, 2);
    assert.equal(people[ids.bob]._kiln_version_id, 1, 'unchanged: its rows from the first sync');
    const rows = table(tableOf(heartRateView));
    assert.equal(rows.length, before + 3);
    const hr = byId(latest(rows));
    assert.deepEqual(Object.keys(hr).sort(), [ids.hr1, hr3].sort(), 'the deleted Observation is gone');
    assert.equal(hr[ids.hr1].bpm, 64);
    assert.equal(hr[hr3].time, '2024-03-01T08:30:00+01:00');
    const tombstone = rows.find((r) => r._kiln_resource_id === ids.hr2 && r._kiln_deleted);
    assert.ok(tombstone && tombstone._kiln_transaction_time === result.transactionTime && tombstone._kiln_row === undefined);

    const mark = fake.requests.length;
    const idle = await sync();
    assert.deepEqual(uploads(mark), [], 'nothing changed: no load job');
    assert.ok(idle.views.every((v) => v.state === 'empty' && v.rows === 0));
  });

  test('a failed view load keeps its watermark; the resumed run loads its rows once', async () => {
    const key = `ViewDefinition/${ids.heartRateView}#${definitionHash(heartRateView)}`;
    const markBefore = (await watermarks(server.db.owner, orgId, 'kiln-test:fhir'))[key];
    const obs = await create(observation(ids.bob, 90, '2024-04-01T09:00:00Z'));
    const count = table(tableOf(heartRateView)).length;
    fake.failNextLoad(tableOf(heartRateView), 'job-error');
    await assert.rejects(sync());
    assert.equal((await watermarks(server.db.owner, orgId, 'kiln-test:fhir'))[key], markBefore);
    assert.equal(table(tableOf(heartRateView)).length, count);
    const pending = (await pendingRun(server.db.owner, orgId, 'kiln-test:fhir'))!;
    assert.ok(pending.loaded.Observation && !pending.loaded[key], 'the per-type tables were loaded');

    const mark = fake.requests.length;
    const result = await sync();
    assert.equal(result.resumed, true);
    assert.deepEqual(uploads(mark), [{ table: tableOf(heartRateView), rows: 1 }]);
    assert.deepEqual(table(tableOf(heartRateView)).slice(count).map((r) => r._kiln_resource_id), [obs]);
    const again = fake.requests.length;
    await sync();
    assert.deepEqual(uploads(again), []);
  });

  test('a changed definition gets a new table filled from a full export; _latest moves to it once loaded', async () => {
    const oldTable = tableOf(heartRateView);
    const oldRows = table(oldTable).length;
    const changed: ViewDefinition = {
      ...heartRateView,
      select: [{ column: [...heartRateView.select[0].column!, { name: 'status', path: 'status', type: 'code' }] }],
    };
    const stored = (await fhir(server.url, 'GET', `ViewDefinition/${ids.heartRateView}`)).json;
    assert.equal((await fhir(server.url, 'PUT', `ViewDefinition/${ids.heartRateView}`, { ...stored, select: changed.select })).status, 200);
    assert.notEqual(tableOf(changed), oldTable);

    const mark = fake.requests.length;
    const result = await sync();
    assert.deepEqual(uploads(mark), [{ table: tableOf(changed), rows: 4 }], 'no per-type rows; the new table gets every current Observation');
    assert.equal(table(oldTable).length, oldRows, 'the old table is left as it was');
    const hr = latest(table(tableOf(changed)));
    assert.equal(hr.length, 3);
    assert.ok(hr.every((r) => r.status === 'final'));
    assert.match(fake.tables.get('kiln-test:fhir.view_heart_rate_latest')!.resource.view.query, new RegExp(tableOf(changed)));
    const marks = await watermarks(server.db.owner, orgId, 'kiln-test:fhir');
    const through = marks[`ViewDefinition/${ids.heartRateView}#${definitionHash(changed)}`];
    assert.ok(through > result.transactionTime, 'its watermark is the full export\'s time');

    const quiet = fake.requests.length;
    await sync();
    assert.deepEqual(uploads(quiet), []);
  });
});
