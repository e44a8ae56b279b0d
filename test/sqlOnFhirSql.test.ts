// SQL on FHIR v2: the specification's official test suite (../shared/sql-on-fhir-v2/tests, as
// published) run through the PostgreSQL compiler (src/store/views): each file's resources are
// written into a tenant of their own through the server's write path (HTTP PUT with their ids,
// so they are stored, indexed and partitioned exactly as any client's), then each view is
// compiled and run as kiln_app in that tenant (row-level security on). Rows are compared as the
// suite says: in any order. The results are the report
// conformance/sql-on-fhir-test-report-postgres.json, rewritten with KILN_UPDATE_REPORTS=1 and
// compared otherwise.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';
import { withTenant } from '../src/store/resources.ts';
import { compileView, runCompiledView } from '../src/store/views/index.ts';
import { SEVERAL_VALUES } from '../src/store/views/compile.ts';
import type { ViewDefinition } from '../src/views/types.ts';
import { validateView } from '../src/views/validate.ts';
import { FhirError } from '../src/fhir/outcome.ts';

const SUITE = path.join(import.meta.dirname, '../../shared/sql-on-fhir-v2/tests');
const REPORT = path.join(import.meta.dirname, '../conformance/sql-on-fhir-test-report-postgres.json');

interface SuiteTest { title: string; tags?: string[]; view: ViewDefinition; expect?: Record<string, unknown>[]; expectColumns?: string[]; expectError?: boolean }
interface SuiteFile { title: string; resources: { resourceType: string; id?: string }[]; tests: SuiteTest[] }

const files = fs.readdirSync(SUITE).filter((f) => f.endsWith('.json')).sort();
const suites = new Map(files.map((f) => [f, JSON.parse(fs.readFileSync(path.join(SUITE, f), 'utf8')) as SuiteFile]));

/** A row as text with its keys sorted, so rows compare as a multiset whatever their key order. */
function canonical(row: Record<string, unknown>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(row).sort(([a], [b]) => a.localeCompare(b))));
}

let srv: TestServer;
const orgs = new Map<string, number>();
const results = new Map<string, { name: string; result: { passed: boolean } }[]>();

before(async () => {
  srv = await startTestServer();
  for (const [file, suite] of suites) {
    const slug = `sof-${file.replace(/\.json$/, '').replace(/_/g, '-')}`;
    const org = await createOrg(srv.db.owner, slug, `SQL on FHIR ${suite.title}`);
    orgs.set(file, org.id);
    const placeholders: string[] = [];
    for (const resource of suite.resources) {
      // fn_first.json's Patient has no id: it is created (the views there read no id).
      const put = () => resource.id === undefined
        ? fhir(srv.url, 'POST', `${slug}/${resource.resourceType}`, resource)
        : fhir(srv.url, 'PUT', `${slug}/${resource.resourceType}/${resource.id}`, resource);
      let r = await put();
      // Kiln refuses a reference to a resource it does not hold; fn_reference_keys.json links
      // Patient/p2 to a Patient/p3 it does not contain. The target is created, the resource
      // written, and the target deleted again, so the tenant's current resources are the file's.
      const missing = r.status === 422 ? /References? not found: (.*)$/.exec(r.json?.issue?.[0]?.diagnostics ?? '')?.[1] : undefined;
      if (missing) {
        for (const ref of missing.split(', ')) {
          const [type, id] = ref.split('/');
          assert.equal((await fhir(srv.url, 'PUT', `${slug}/${ref}`, { resourceType: type, id })).status, 201);
          placeholders.push(ref);
        }
        r = await put();
      }
      assert.ok(r.status === 201 || r.status === 200, `${file}: PUT ${resource.resourceType}/${resource.id}: ${r.status} ${r.text}`);
    }
    for (const ref of placeholders) assert.equal((await fhir(srv.url, 'DELETE', `${slug}/${ref}`)).status, 204, `DELETE ${ref}`);
  }
});

after(async () => {
  await srv?.stop();
  if (srv) removeDataDir(srv.dataDir);
});

async function run(file: string, t: SuiteTest): Promise<void> {
  if (t.expectError) {
    // Refused by the validator, the compiler, or the query as it runs (several values in a non-collection column).
    if (validateView(t.view).length > 0) return;
    await assert.rejects(withTenant(srv.db.app, orgs.get(file)!, (tx) => runCompiledView(tx, t.view)),
      (e: unknown) => e instanceof FhirError && e.status === 400 && /^ViewDefinition: /.test(e.message));
    return;
  }
  assert.deepEqual(validateView(t.view), [], 'the validator accepts the view');
  const rows = await withTenant(srv.db.app, orgs.get(file)!, (tx) => runCompiledView(tx, t.view));
  if (t.expectColumns) assert.deepEqual(compileView(t.view).columns.map((c) => c.name), t.expectColumns);
  assert.deepEqual(rows.map(canonical).sort(), (t.expect ?? []).map(canonical).sort());
}

for (const [file, suite] of suites) {
  describe(`${file}: ${suite.title}`, () => {
    for (const t of suite.tests) {
      const shareable = t.tags?.includes('shareable') ?? false;
      test(`${t.title}${shareable ? '' : ` [${(t.tags ?? []).join(', ')}]`}`, async () => {
        let passed = false;
        try {
          await run(file, t);
          passed = true;
        } finally {
          const list = results.get(file) ?? [];
          list.push({ name: t.title, result: { passed } });
          results.set(file, list);
        }
      });
    }
  });
}

describe('what the compiler refuses or checks itself', () => {
  const patients = { resource: 'Patient', select: [{ column: [{ name: 'id', path: 'id', type: 'id' }] }] };
  const rejects400 = (file: string, view: object, message: RegExp) => assert.rejects(
    withTenant(srv.db.app, orgs.get(file)!, (tx) => runCompiledView(tx, view as ViewDefinition)),
    (e: unknown) => e instanceof FhirError && e.status === 400 && message.test(e.message));

  test('a where path giving a string is refused as the query runs, not taken as true', async () => {
    await rejects400('validate.json', { ...patients, where: [{ path: 'name.family' }] }, /where\[0\] gives a value that is not one boolean/);
  });

  test('a function outside the subset is refused, not compiled wrongly', async () => {
    await rejects400('basic.json', { ...patients, select: [{ column: [{ name: 'x', path: 'name.family.upper()' }] }] }, /unsupported FHIRPath function upper/);
    await rejects400('basic.json', { ...patients, select: [{ column: [{ name: 'x', path: 'birthDate.lowBoundary()' }] }] }, /lowBoundary\(\) and highBoundary\(\) need the input type/);
    await rejects400('basic.json', { ...patients, select: [{ column: [{ name: 'x', path: 'name.descendants()' }] }] }, /unsupported FHIRPath function descendants/);
  });

  test('no text of the view reaches the SQL: element names, literals and constants are bind parameters', () => {
    const view = { resource: 'Patient', constant: [{ name: 'c', valueString: "x'); DROP TABLE patients; --" }],
      select: [{ column: [{ name: "n'); --", path: "name.where(family = %c or given = 'it\\'s').family" }] }] };
    const compiled = compileView(view as unknown as ViewDefinition);
    assert.doesNotMatch(compiled.sql, /DROP|it's|family|given|n'\)/);
    assert.ok(compiled.params.includes("x'); DROP TABLE patients; --") && compiled.params.includes("it's"));
    assert.throws(() => compileView({ ...patients, select: [{ column: [{ name: 'x', path: '`a"b`' }] }] } as ViewDefinition), /not an element name/);
  });

  test('getReferenceKey() of a 0..1 Reference (the one-row form): type checked, _history dropped', async () => {
    const org = await createOrg(srv.db.owner, 'sof-extra', 'SQL on FHIR extra');
    assert.equal((await fhir(srv.url, 'PUT', 'sof-extra/Patient/p1', { resourceType: 'Patient', id: 'p1' })).status, 201);
    for (const [id, reference] of [['o1', 'Patient/p1'], ['o2', 'Patient/p1/_history/1']]) {
      const r = await fhir(srv.url, 'PUT', `sof-extra/Observation/${id}`, { resourceType: 'Observation', id, status: 'final', code: { text: 'x' }, subject: { reference } });
      assert.equal(r.status, 201, r.text);
    }
    const view = { resource: 'Observation', select: [{ column: [{ name: 'id', path: 'id', type: 'id' },
      { name: 'patient', path: 'subject.getReferenceKey(Patient)', type: 'string' }, { name: 'any', path: 'subject.getReferenceKey()', type: 'string' },
      { name: 'wrong', path: 'subject.getReferenceKey(Group)', type: 'string' }] }] } as ViewDefinition;
    const rows = await withTenant(srv.db.app, org.id, (tx) => runCompiledView(tx, view));
    assert.deepEqual(rows.sort((a, b) => String(a.id).localeCompare(String(b.id))),
      [{ id: 'o1', patient: 'p1', any: 'p1', wrong: null }, { id: 'o2', patient: 'p1', any: 'p1', wrong: null }]);
  });

  test('vital_signs: a forEach over where() keeps its items\' type, so 0..1 chains need no check for several values and a repeating element still has one', async () => {
    const view = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, '../conformance/views/vital_signs.json'), 'utf8')) as ViewDefinition;
    const { sql } = compileView(view);
    // Before, the forEach items had no type: every component column built an array and checked it for several values.
    assert.doesNotMatch(sql, new RegExp(SEVERAL_VALUES));
    assert.doesNotMatch(sql, /jsonb_build_object/, 'path variables are one bind parameter, not built per row');
    const org = await createOrg(srv.db.owner, 'sof-vitals', 'SQL on FHIR vitals');
    assert.equal((await fhir(srv.url, 'PUT', 'sof-vitals/Patient/p1', { resourceType: 'Patient', id: 'p1' })).status, 201);
    const loinc = (code: string, display: string) => ({ coding: [{ system: 'http://snomed.info/sct', code: '1' }, { system: 'http://loinc.org', code, display }] });
    const mmHg = (value: number) => ({ value, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' });
    const observations = [
      { id: 'w', code: loinc('29463-7', 'Body weight'), valueQuantity: { value: 70.5, unit: 'kg', code: 'kg' }, effectiveDateTime: '2026-01-02T03:04:05Z' },
      { id: 'bp', code: loinc('85354-9', 'Blood pressure panel'), component: [
        { code: loinc('8480-6', 'Systolic'), valueQuantity: mmHg(120) }, { code: loinc('8462-4', 'Diastolic'), valueQuantity: mmHg(80) },
        { code: loinc('8480-6', 'Systolic'), valueString: 'not measured' }] },
      { id: 'hb', code: loinc('718-7', 'Hemoglobin'), valueQuantity: { value: 13.5, unit: 'g/dL' } },
      { id: 'txt', code: loinc('8867-4', 'Heart rate'), valueString: 'fast' },
    ];
    for (const o of observations) {
      const r = await fhir(srv.url, 'PUT', `sof-vitals/Observation/${o.id}`, { resourceType: 'Observation', status: 'final', subject: { reference: 'Patient/p1' }, ...o });
      assert.equal(r.status, 201, r.text);
    }
    const rows = await withTenant(srv.db.app, org.id, (tx) => runCompiledView(tx, view));
    const row = (id: string, panel: string, code: string, display: string, value: number, unit: string, unitCode: string | null, time: string | null = null) => ({
      observation_id: id, patient_id: 'p1', encounter_id: null, status: 'final', effective_time: time, panel_code: panel,
      code, display, value, unit, unit_code: unitCode });
    assert.deepEqual(rows.map(canonical).sort(), [
      row('w', '29463-7', '29463-7', 'Body weight', 70.5, 'kg', 'kg', '2026-01-02T03:04:05Z'),
      row('bp', '85354-9', '8480-6', 'Systolic', 120, 'mm[Hg]', 'mm[Hg]'),
      row('bp', '85354-9', '8462-4', 'Diastolic', 80, 'mm[Hg]', 'mm[Hg]'),
    ].map(canonical).sort());
    // coding repeats: a non-collection column over it still gives the several-values error, inside a forEach over where() too.
    const codes = { resource: 'Observation', select: [{ forEach: 'component.where(value.ofType(Quantity).exists())',
      column: [{ name: 'code', path: 'code.coding.code', type: 'code' }] }] } as ViewDefinition;
    await assert.rejects(withTenant(srv.db.app, org.id, (tx) => runCompiledView(tx, codes)),
      (e: unknown) => e instanceof FhirError && e.status === 400 && /column code has several values/.test(e.message));
  });

  test("the query reads the tenant's partitions only, as kiln_app", async () => {
    const view = { resource: 'Observation', select: [{ column: [{ name: 'id', path: 'id' }] }] } as ViewDefinition;
    const org = orgs.get('view_resource.json')!;
    const { sql, params } = compileView(view);
    const plan = await withTenant(srv.db.app, org, async (tx) => (await tx.query(`EXPLAIN (FORMAT JSON) ${sql}`, params)).rows[0]['QUERY PLAN']);
    const relations = JSON.stringify(plan).match(/"Relation Name":"[^"]+"/g) ?? [];
    assert.ok(relations.length > 0);
    for (const r of relations) assert.match(r, new RegExp(`"observations_o${org}_`), r);
    const rows = await withTenant(srv.db.app, org, (tx) => runCompiledView(tx, view));
    assert.deepEqual(rows, [{ id: 'ob1' }]);
  });
});

describe('report', () => {
  test('conformance/sql-on-fhir-test-report-postgres.json is the result of this run', () => {
    const report = Object.fromEntries([...suites.keys()].map((f) => [f, { tests: results.get(f) ?? [] }]));
    const text = `${JSON.stringify(report, null, 2)}\n`;
    if (process.env.KILN_UPDATE_REPORTS === '1') fs.writeFileSync(REPORT, text);
    assert.equal(fs.readFileSync(REPORT, 'utf8'), text, 'rerun with KILN_UPDATE_REPORTS=1 after a change in what passes');
  });
});
