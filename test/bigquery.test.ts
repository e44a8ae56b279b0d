// BigQuery contract: generated schemas, the row transform on all shared data, and load
// jobs through the real @google-cloud/bigquery client against a local BigQuery REST
// endpoint (test/support/bigqueryServer.ts) with offline application-default credentials.
import { TABLES } from '../mappings/postgres/index.ts';
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startFakeBigQuery, rowError, type FakeBigQuery, type TableField } from './support/bigqueryServer.ts';
import { SHARED_DATA, EXAMPLES_DIR } from './support/data.ts';
import { BIGQUERY_TYPES, MAX_DEPTH, columnCount, schemaTree, tableSchema, type BqField, type SchemaNode } from '../src/bigquery/schema.ts';
import { parseLossless, resourceToRow, rowToResource, stringifyLossless } from '../src/bigquery/rows.ts';
import { BigQuerySetupError, LoadJobError, latestViewSql, loadExport, loadJobId, targetFromEnv, type BigQueryTarget, type ExportFile } from '../src/bigquery/load.ts';

const TX = '2024-03-01T10:00:00.000Z';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bq-'));

/** Every resource of the BigQuery types in the shared data, as its JSON text. */
function sharedResources(): string[] {
  const texts: string[] = [];
  const push = (r: any) => { if ((BIGQUERY_TYPES as readonly string[]).includes(r.resourceType)) texts.push(JSON.stringify(r)); };
  for (const f of fs.readdirSync(path.join(SHARED_DATA, 'synthea-r4'))) {
    for (const e of JSON.parse(fs.readFileSync(path.join(SHARED_DATA, 'synthea-r4', f), 'utf8')).entry) push(e.resource);
  }
  for (const dir of fs.readdirSync(EXAMPLES_DIR)) {
    for (const f of fs.readdirSync(path.join(EXAMPLES_DIR, dir))) {
      const text = fs.readFileSync(path.join(EXAMPLES_DIR, dir, f), 'utf8');
      const r = JSON.parse(text);
      if (r.resourceType === 'Bundle') for (const e of r.entry ?? []) { if (e.resource) push(e.resource); }
      // The file's own text, so number lexemes (1.0, 1E-22) reach the transform as written.
      else if ((BIGQUERY_TYPES as readonly string[]).includes(r.resourceType)) texts.push(text.replace(/\n\s*/g, ' '));
    }
  }
  return texts;
}

function field(fields: BqField[] | TableField[], dotted: string): BqField {
  let list = fields as BqField[];
  let found: BqField | undefined;
  for (const name of dotted.split('.')) {
    found = list.find((f) => f.name === name);
    assert.ok(found, `no column ${dotted}`);
    list = found.fields ?? [];
  }
  return found!;
}

describe('BigQuery schema generation', () => {
  test('Observation: nested records, repeated fields, choice types as separate columns, decimals exact', () => {
    const s = tableSchema('Observation');
    assert.deepEqual(field(s, 'code'), { ...field(s, 'code'), type: 'RECORD', mode: 'NULLABLE' });
    assert.equal(field(s, 'code.coding').mode, 'REPEATED');
    assert.equal(field(s, 'code.coding.system').type, 'STRING');
    assert.equal(field(s, 'code.coding.userSelected').type, 'BOOLEAN');
    assert.equal(field(s, 'valueQuantity').type, 'RECORD');
    assert.equal(field(s, 'valueQuantity.value').type, 'BIGNUMERIC');
    assert.equal(field(s, 'valueString').type, 'STRING');
    assert.equal(field(s, 'valueBoolean').type, 'BOOLEAN');
    assert.equal(field(s, 'valueInteger').type, 'INTEGER');
    assert.equal(field(s, 'valueCodeableConcept.coding.code').type, 'STRING');
    assert.equal(field(s, 'effectiveDateTime').type, 'STRING', 'partial dates do not fit a BigQuery date type');
    assert.equal(field(s, 'effectivePeriod.start').type, 'STRING');
    assert.equal(field(s, 'issued').type, 'TIMESTAMP');
    assert.equal(field(s, 'meta.lastUpdated').type, 'TIMESTAMP');
    assert.equal(field(s, 'component').mode, 'REPEATED');
    assert.equal(field(s, 'component.valueQuantity.value').type, 'BIGNUMERIC');
    // component.referenceRange is a contentReference to Observation.referenceRange
    assert.equal(field(s, 'component.referenceRange.low.value').type, 'BIGNUMERIC');
    assert.equal(field(s, 'contained').type, 'STRING');
    assert.equal(field(s, 'contained').mode, 'REPEATED');
    assert.ok(!s.some((f) => f.name === 'value[x]' || f.name === 'value'));
    assert.equal(field(s, '_kiln_transaction_time').mode, 'REQUIRED');
  });

  test('Patient: repeated names, extensions with url and value[x], sub-extensions, primitive extensions', () => {
    const s = tableSchema('Patient');
    assert.equal(field(s, 'name').mode, 'REPEATED');
    assert.equal(field(s, 'name.given').mode, 'REPEATED');
    assert.equal(field(s, 'name.given').type, 'STRING');
    assert.equal(field(s, 'birthDate').type, 'STRING');
    assert.equal(field(s, 'deceasedBoolean').type, 'BOOLEAN');
    assert.equal(field(s, 'deceasedDateTime').type, 'STRING');
    assert.equal(field(s, 'multipleBirthInteger').type, 'INTEGER');
    assert.equal(field(s, 'extension').mode, 'REPEATED');
    assert.equal(field(s, 'extension.url').type, 'STRING');
    assert.equal(field(s, 'extension.valueCoding.code').type, 'STRING');
    assert.equal(field(s, 'extension.valueDecimal').type, 'BIGNUMERIC');
    assert.equal(field(s, 'extension.valueAddress.city').type, 'STRING');
    assert.equal(field(s, 'extension.extension.url').type, 'STRING', 'US Core race/ethnicity sub-extensions');
    assert.equal(field(s, 'extension.extension.valueCoding.display').type, 'STRING');
    assert.equal(field(s, 'extension.extension.extension').type, 'STRING', 'third level is JSON');
    assert.equal(field(s, 'extension.valueTiming').type, 'STRING', 'rare, wide value types are JSON');
    assert.equal(field(s, 'name.extension').type, 'STRING', 'data-type extensions are JSON');
    assert.equal(field(s, '_unmapped').type, 'STRING', 'primitive extensions (_birthDate) go to _unmapped');
    assert.equal(field(s, 'contact.name.family').type, 'STRING');
    assert.equal(field(s, 'link.other.reference').type, 'STRING');
  });

  test('recursion is cut at the fixed depth with JSON strings; every table fits BigQuery limits', () => {
    for (const type of BIGQUERY_TYPES) {
      const tree = schemaTree(type);
      let cut = 0;
      const walk = (nodes: SchemaNode[], depth: number) => {
        for (const n of nodes) {
          if (n.kind === 'record') { assert.ok(depth <= MAX_DEPTH, `${type}.${n.name} record at depth ${depth}`); walk(n.children!, depth + 1); }
          if (n.kind === 'json' && n.fhirType !== 'Extension' && n.fhirType !== 'Resource') cut++;
        }
      };
      walk(tree, 1);
      assert.ok(cut > 0, `${type} has depth-cut JSON columns`);
      assert.ok(columnCount(tableSchema(type)) < 10000);
    }
    // Reference.identifier.assigner is a Reference again: the cycle ends in a JSON column.
    const s = tableSchema('Observation');
    assert.equal(field(s, 'subject.identifier.assigner.identifier.assigner').type, 'RECORD');
    assert.equal(field(s, 'subject.identifier.assigner.identifier.assigner.identifier').type, 'STRING');
  });
});

describe('row transform', () => {
  test('every Patient, Encounter, Observation, MedicationStatement and AuditEvent in the shared data becomes a valid row that gives the resource back', () => {
    const texts = sharedResources();
    const byType: Record<string, number> = {};
    for (const text of texts) {
      const resource = parseLossless(text) as any;
      byType[resource.resourceType] = (byType[resource.resourceType] ?? 0) + 1;
      const row = resourceToRow(resource, { tenant: 'default', transactionTime: TX });
      // Through JSON, as the upload carries it.
      const sent = JSON.parse(JSON.stringify(row));
      const err = rowError(tableSchema(resource.resourceType) as TableField[], sent);
      assert.equal(err, undefined, `${resource.resourceType}/${resource.id}: ${err}`);
      assert.deepEqual(rowToResource(sent), resource, `${resource.resourceType}/${resource.id} round trip`);
    }
    for (const type of ['Patient', 'Encounter', 'Observation', 'MedicationStatement', 'AuditEvent']) assert.ok(byType[type] > 0, type);
    assert.ok(texts.length > 3000);
  });

  test('numbers keep their exact text; primitive extensions and nulls in arrays are kept deliberately', () => {
    const text = '{"resourceType":"Observation","id":"n","status":"final","code":{"text":"x"},'
      + '"valueQuantity":{"value":3.14159265358979323846264338327950288,"unit":"g"},'
      + '"component":[{"code":{"text":"a"},"valueQuantity":{"value":1.50}},{"code":{"text":"b"},"valueQuantity":{"value":1E-22}},{"code":{"text":"c"},"valueInteger":7}],'
      + '"issued":"2020-01-02T03:04:05.123456789+02:00"}';
    const resource = parseLossless(text);
    const row = resourceToRow(resource, { tenant: 't', transactionTime: TX }) as any;
    assert.equal(row.valueQuantity.value, '3.14159265358979323846264338327950288');
    assert.equal(row.component[0].valueQuantity.value, '1.50');
    assert.equal(row.component[1].valueQuantity.value, '0.0000000000000000000001');
    assert.equal(JSON.parse(row.component[1].valueQuantity._unmapped).value, 1e-22, 'the exponent form is kept too');
    assert.equal(row.component[2].valueInteger, 7);
    assert.equal(row.issued, '2020-01-02T03:04:05.123456+02:00', 'TIMESTAMP keeps microseconds');
    assert.match(row._unmapped, /"issued":"2020-01-02T03:04:05.123456789\+02:00"/);
    assert.deepEqual(rowToResource(JSON.parse(JSON.stringify(row))), resource);
    assert.match(stringifyLossless(rowToResource(JSON.parse(JSON.stringify(row)))), /"value":1E-22/);

    const patient = parseLossless('{"resourceType":"Patient","id":"p","birthDate":"1974-12-25","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1974-12-25T14:35:45-05:00"}]},'
      + '"name":[{"given":["Peter",null],"_given":[null,{"extension":[{"url":"http://example.org/x","valueString":"y"}]}]}]}');
    const prow = resourceToRow(patient, { tenant: 't', transactionTime: TX }) as any;
    assert.equal(prow.birthDate, '1974-12-25');
    assert.deepEqual(JSON.parse(prow._unmapped)._birthDate.extension[0].valueDateTime, '1974-12-25T14:35:45-05:00');
    assert.deepEqual(prow.name[0].given, ['Peter'], 'BigQuery arrays cannot hold NULL');
    assert.deepEqual(JSON.parse(prow.name[0]._unmapped).given, ['Peter', null]);
    assert.equal(rowError(tableSchema('Patient') as TableField[], JSON.parse(JSON.stringify(prow))), undefined);
    assert.deepEqual(rowToResource(JSON.parse(JSON.stringify(prow))), patient);
  });

  test('the fake validates like BigQuery: unknown fields, wrong types, NULL in arrays, missing required fields are refused', () => {
    const s = tableSchema('Patient') as TableField[];
    const ok = { resourceType: 'Patient', id: 'x', _kiln_tenant: 't', _kiln_transaction_time: TX };
    assert.equal(rowError(s, ok), undefined);
    assert.match(rowError(s, { ...ok, nickname: 'x' })!, /No such field: nickname/);
    assert.match(rowError(s, { ...ok, active: 'yes' })!, /Could not convert value 'yes' to BOOLEAN/);
    assert.match(rowError(s, { ...ok, name: [null] })!, /Only optional fields can be set to NULL/);
    assert.match(rowError(s, { ...ok, name: { family: 'x' } })!, /Non-array value specified for repeated field: name/);
    assert.match(rowError(s, { resourceType: 'Patient', _kiln_tenant: 't' })!, /Missing required field: _kiln_transaction_time/);
    assert.match(rowError(s, { ...ok, meta: { lastUpdated: '2012' } })!, /Could not parse '2012' as a timestamp/);
  });
});

describe('loading exports into BigQuery', () => {
  let fake: FakeBigQuery;
  let target: BigQueryTarget;
  let files: ExportFile[];
  let exported: Map<string, any>;
  let n = 0;
  const staging = () => path.join(tmp, `staging-${++n}`);

  before(async () => {
    fake = await startFakeBigQuery();
    // Application-default credentials, offline: no key file, no gcloud config, the fake metadata server.
    delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
    process.env.CLOUDSDK_CONFIG = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-gcloud-'));
    process.env.GCE_METADATA_HOST = fake.metadataHost;
    target = { projectId: 'kiln-test', datasetId: 'fhir', location: 'US', apiEndpoint: fake.url };
    // An export as the exporter writes it: NDJSON per type, plus a deletions Bundle.
    const byType = new Map<string, string[]>();
    exported = new Map();
    for (const text of sharedResources().slice(0, 400)) {
      const r = JSON.parse(text);
      if (exported.has(`${r.resourceType}/${r.id}`) || !r.id) continue;
      exported.set(`${r.resourceType}/${r.id}`, parseLossless(text));
      byType.set(r.resourceType, [...(byType.get(r.resourceType) ?? []), text]);
    }
    const dir = path.join(tmp, 'export');
    fs.mkdirSync(dir);
    files = [...byType].map(([type, lines]) => {
      const p = path.join(dir, `${type}-1.ndjson`);
      fs.writeFileSync(p, `${lines.join('\n')}\n`);
      return { type, path: p, count: lines.length };
    });
    const deleted = path.join(dir, 'deleted-1.ndjson');
    fs.writeFileSync(deleted, `${JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'DELETE', url: 'Patient/gone-1' } }] })}\n`);
    files.push({ type: 'Bundle', path: deleted, count: 1 });
  });
  after(async () => { await fake.close(); });
  beforeEach(() => { fake.reset(); fake.createDataset('kiln-test', 'fhir'); });

  test('creates tables with the generated schema and views, sends NDJSON load jobs, and the rows equal the exported resources', async () => {
    const results = await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: staging() });
    // Tables: tables.insert carried the generated schema, for the first-class types and the
    // types this export has rows of; no empty tables for the other ~140 types.
    const tabled = BIGQUERY_TYPES.filter((t) => TABLES[t] !== 'resources' || files.some((f) => f.type === t));
    assert.deepEqual(fake.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/datasets/fhir/tables') && !r.body.view)
      .map((r) => r.body.tableReference.tableId).sort(), [...tabled].sort());
    for (const type of tabled) {
      const insert = fake.requests.find((r) => r.method === 'POST' && r.path.endsWith('/datasets/fhir/tables') && r.body.tableReference.tableId === type)!;
      assert.ok(insert, `tables.insert ${type}`);
      assert.deepEqual(insert.body.schema.fields, tableSchema(type));
      const view = fake.tables.get(`kiln-test:fhir.${type}_latest`)!.resource;
      assert.equal(view.type, 'VIEW');
      assert.equal(view.view.query, latestViewSql(target, type));
      assert.equal(view.view.useLegacySql, false);
    }
    const uploads = fake.requests.filter((r) => r.upload);
    assert.ok(uploads.every((u) => u.path === '/upload/bigquery/v2/projects/kiln-test/jobs' && u.query.uploadType === 'multipart'));
    assert.ok(uploads.every((u) => u.authorization === `Bearer ${fake.accessToken}`), 'token from the metadata server');
    const loadedTypes = uploads.map((u) => u.upload!.metadata.configuration.load.destinationTable.tableId).sort();
    assert.deepEqual(loadedTypes, [...new Set(files.filter((f) => f.type !== 'Bundle').map((f) => f.type).concat('Patient'))].sort());
    const rowsBack = new Map<string, any>();
    for (const u of uploads) {
      const load = u.upload!.metadata.configuration.load;
      const type = load.destinationTable.tableId;
      assert.deepEqual(load.destinationTable, { projectId: 'kiln-test', datasetId: 'fhir', tableId: type });
      assert.equal(load.sourceFormat, 'NEWLINE_DELIMITED_JSON');
      assert.equal(load.writeDisposition, 'WRITE_APPEND');
      assert.equal(load.createDisposition, 'CREATE_NEVER');
      assert.deepEqual(load.schema.fields, tableSchema(type));
      assert.equal(u.upload!.metadata.jobReference.jobId, loadJobId(target, 'default', type, TX, undefined, 1));
      assert.equal(u.upload!.metadata.jobReference.location, 'US');
      for (const line of u.upload!.data.split('\n').filter(Boolean)) {
        const row = JSON.parse(line);
        assert.equal(row._kiln_transaction_time, TX);
        assert.equal(row._kiln_tenant, 'default');
        if (row._kiln_deleted) { rowsBack.set(`deleted:${type}/${row.id}`, row); continue; }
        const key = `${type}/${row.id}`;
        assert.ok(!rowsBack.has(key), `one row per exported version: ${key}`);
        rowsBack.set(key, rowToResource(row));
      }
    }
    // Both ways: every exported resource has its row, every row is an exported resource.
    for (const [key, resource] of exported) assert.deepEqual(rowsBack.get(key), resource, key);
    assert.deepEqual([...rowsBack.keys()].filter((k) => !k.startsWith('deleted:')).sort(), [...exported.keys()].sort());
    assert.ok(rowsBack.has('deleted:Patient/gone-1'));
    // The fake accepted and stored every row.
    for (const r of results.filter((x) => x.state === 'loaded')) {
      assert.equal(fake.rows('kiln-test', 'fhir', r.type).length, r.rows);
    }
    assert.equal(results.find((r) => r.type === 'Group')!.state, 'empty');
  });

  test('re-running the same load (same export, fresh staging) appends nothing: the deterministic job ids already ran', async () => {
    await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: staging() });
    const counts = BIGQUERY_TYPES.map((t) => fake.rows('kiln-test', 'fhir', t).length);
    const uploadsBefore = fake.requests.filter((r) => r.upload).length;
    const again = await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: staging() });
    assert.deepEqual(BIGQUERY_TYPES.map((t) => fake.rows('kiln-test', 'fhir', t).length), counts);
    assert.equal(fake.requests.filter((r) => r.upload).length, uploadsBefore, 'no second upload');
    assert.ok(again.filter((r) => r.state !== 'empty').every((r) => r.state === 'already-loaded'));
  });

  test('a failed load job leaves nothing behind and the re-run loads under the next attempt id, exactly once', async () => {
    fake.failNextLoad('Observation', 'job-error');
    const dir = staging();
    await assert.rejects(loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: dir }), (e: unknown) => {
      assert.ok(e instanceof LoadJobError);
      assert.equal(e.type, 'Observation');
      assert.match(e.message, /Backend error/);
      return true;
    });
    assert.equal(fake.rows('kiln-test', 'fhir', 'Observation').length, 0);
    const patients = fake.rows('kiln-test', 'fhir', 'Patient').length;
    assert.ok(patients > 0, 'types before the failure were loaded');
    const results = await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: dir });
    const obs = results.find((r) => r.type === 'Observation')!;
    assert.equal(obs.state, 'loaded');
    assert.equal(obs.jobId, loadJobId(target, 'default', 'Observation', TX, undefined, 2));
    assert.equal(fake.rows('kiln-test', 'fhir', 'Observation').length, files.find((f) => f.type === 'Observation')!.count);
    assert.equal(results.find((r) => r.type === 'Patient')!.state, 'already-loaded');
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, patients);
  });

  test('a load whose response was lost is recognised on the re-run (409 / jobs.get) and not appended twice', async () => {
    fake.failNextLoad('Patient', 'lost-response');
    const dir = staging();
    await assert.rejects(loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: dir }));
    const patients = fake.rows('kiln-test', 'fhir', 'Patient').length;
    assert.ok(patients > 0, 'the job ran although the client saw an error');
    const results = await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: dir });
    assert.equal(results.find((r) => r.type === 'Patient')!.state, 'already-loaded');
    assert.equal(fake.rows('kiln-test', 'fhir', 'Patient').length, patients);
    const get = fake.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/jobs/${loadJobId(target, 'default', 'Patient', TX, undefined, 1)}`));
    assert.ok(get.length >= 1 && get.every((r) => r.query.location === 'US'));
  });

  test('a table with an older, smaller schema gains the new columns through tables.patch', async () => {
    const full = tableSchema('Patient');
    const old = full.filter((f) => f.name !== 'photo' && f.name !== 'link');
    fake.tables.set('kiln-test:fhir.Patient', { resource: { kind: 'bigquery#table', id: 'kiln-test:fhir.Patient', tableReference: { projectId: 'kiln-test', datasetId: 'fhir', tableId: 'Patient' }, schema: { fields: old }, type: 'TABLE' }, rows: [] });
    await loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: staging() });
    const patch = fake.requests.find((r) => r.method === 'PATCH' && r.path.endsWith('/tables/Patient'))!;
    assert.ok(patch, 'tables.patch sent');
    const names = (patch.body.schema.fields as BqField[]).map((f) => f.name);
    assert.ok(names.includes('photo') && names.includes('link'));
    assert.deepEqual(names.slice(0, old.length), old.map((f) => f.name), 'existing columns keep their place');
    assert.ok(fake.rows('kiln-test', 'fhir', 'Patient').length > 0);
  });

  test('a missing dataset or missing settings are clear errors', async () => {
    fake.reset();
    await assert.rejects(loadExport(target, files, { tenant: 'default', transactionTime: TX, stagingDir: staging() }), (e: unknown) => {
      assert.ok(e instanceof BigQuerySetupError);
      assert.match(e.message, /BigQuery dataset kiln-test:fhir does not exist; create it \(bq mk --dataset --location=US kiln-test:fhir\)/);
      return true;
    });
    assert.equal(fake.requests.filter((r) => r.upload).length, 0);
    assert.throws(() => targetFromEnv({ KILN_BIGQUERY_PROJECT: 'p' }), /BigQuery is not configured: set KILN_BIGQUERY_DATASET/);
    assert.throws(() => targetFromEnv({}), /set KILN_BIGQUERY_PROJECT and KILN_BIGQUERY_DATASET/);
    assert.throws(() => targetFromEnv({ KILN_BIGQUERY_PROJECT: 'p', KILN_BIGQUERY_DATASET: 'a-b' }), /not a valid dataset id/);
    assert.deepEqual(targetFromEnv({ KILN_BIGQUERY_PROJECT: 'p', KILN_BIGQUERY_DATASET: 'd', KILN_BIGQUERY_LOCATION: 'EU' }), { projectId: 'p', datasetId: 'd', location: 'EU', apiEndpoint: undefined });
  });
});
