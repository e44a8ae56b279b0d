// The SQL on FHIR v2 conformance suite (../shared/sql-on-fhir-v2/tests, the specification's files as
// they are) against the in-memory runner: one case per suite test. Rows compare as multisets (the
// suite's rows are in any order); expectColumns also checks the column order; an expectError view
// must be refused by validateView, or by the runner when only the data shows the error. The run
// writes the specification's report format; conformance/sql-on-fhir-test-report.json must equal it
// (KILN_UPDATE_REPORTS=1 rewrites the file).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Resource } from '@medplum/fhirtypes';
import { SHARED_DATA } from './support/data.ts';
import { ViewError, prepareView, runView } from '../src/views/run.ts';
import { validateView } from '../src/views/validate.ts';
import type { Row } from '../src/views/types.ts';

const SUITE_DIR = path.join(path.dirname(SHARED_DATA), 'sql-on-fhir-v2', 'tests');
const REPORT_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../conformance/sql-on-fhir-test-report.json');

interface SuiteTest {
  title: string;
  view: unknown;
  expect?: Row[];
  expectCount?: number;
  expectError?: boolean;
  expectColumns?: string[];
}
interface Suite {
  title: string;
  resources: Resource[];
  tests: SuiteTest[];
}

type Report = Record<string, { tests: { name: string; result: { passed: boolean } }[] }>;
const report: Report = {};

/** JSON with object keys sorted, so rows compare whatever order their columns came in. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function check(suite: Suite, t: SuiteTest): void {
  if (t.expectError) {
    const problems = validateView(t.view);
    if (problems.length) return;
    assert.throws(() => runView(t.view, suite.resources), ViewError, 'a valid-looking view the suite expects to be refused ran');
    return;
  }
  assert.deepEqual(validateView(t.view), [], 'the view is valid');
  const rows = runView(t.view, suite.resources);
  if (t.expect) assert.deepEqual(rows.map(canonical).sort(), t.expect.map(canonical).sort());
  if (t.expectCount !== undefined) assert.equal(rows.length, t.expectCount);
  if (t.expectColumns) {
    assert.deepEqual(prepareView(t.view).columns.map((c) => c.name), t.expectColumns);
    for (const row of rows) assert.deepEqual(Object.keys(row), t.expectColumns);
  }
}

const files = fs.readdirSync(SUITE_DIR).filter((f) => f.endsWith('.json')).sort();

for (const file of files) {
  const suite = JSON.parse(fs.readFileSync(path.join(SUITE_DIR, file), 'utf8')) as Suite;
  report[file] = { tests: [] };
  describe(`${file}: ${suite.title}`, () => {
    for (const t of suite.tests) {
      test(t.title, () => {
        const entry = { name: t.title, result: { passed: false } };
        report[file].tests.push(entry);
        check(suite, t);
        entry.result.passed = true;
      });
    }
  });
}

test('the suite has its 134 tests, and the committed report is what this run produced', () => {
  assert.equal(Object.values(report).reduce((n, f) => n + f.tests.length, 0), 134);
  const produced = `${JSON.stringify(report, null, 2)}\n`;
  if (process.env.KILN_UPDATE_REPORTS === '1') {
    fs.mkdirSync(path.dirname(REPORT_FILE), { recursive: true });
    fs.writeFileSync(REPORT_FILE, produced);
  }
  const committed = fs.existsSync(REPORT_FILE) ? fs.readFileSync(REPORT_FILE, 'utf8') : '';
  assert.equal(committed, produced, 'conformance/sql-on-fhir-test-report.json differs from this run (KILN_UPDATE_REPORTS=1 rewrites it)');
});

describe('beyond the suite', () => {
  const patient = { resourceType: 'Patient', id: 'p1', name: [{ family: 'A' }, { family: 'B' }] } as Resource;

  test('validateView names problems and where they are, and never throws on garbage', () => {
    for (const garbage of [undefined, null, 0, 'x', [], { resource: 1, select: {} }, { resource: 'Patient', select: [null] }]) {
      const problems = validateView(garbage);
      assert.ok(problems.length > 0, JSON.stringify(garbage));
    }
    assert.deepEqual(validateView({ resource: 'Patient', select: [{ column: [{ name: '_id', path: 'id' }, { name: 'n', path: 'name.foo(' }] }] }), [
      'select[0].column[0].name: must be letters, digits or _, starting with a letter',
    ]);
    assert.match(validateView({ resource: 'Patient', select: [{ column: [{ name: 'n', path: 'name.foo(' }] }] })[0], /^select\[0\]\.column\[0\]\.path: invalid FHIRPath/);
    assert.deepEqual(validateView({ resource: 'Patient', select: [{ column: [{ name: 'a', path: 'id' }] }, { column: [{ name: 'a', path: 'id' }] }] }), [
      'column a: the name is used by more than one column of the view',
    ]);
    assert.deepEqual(validateView({ resource: 'Patient', select: [{ forEach: 'name', repeat: ['link'], column: [{ name: 'a', path: 'nope(1)' }] }] }), [
      'select[0]: at most one of forEach, forEachOrNull and repeat (has forEach, repeat)',
      'select[0].column[0].path: unknown FHIRPath function nope()',
    ]);
    assert.deepEqual(validateView({ resource: 'Patientt', select: [{ column: [{ name: 'a', path: 'id' }] }] }), ['resource: Patientt is not a FHIR R4 resource type']);
  });

  test('a runtime error names the resource and the column, not the data', () => {
    const view = { resource: 'Patient', select: [{ column: [{ name: 'family', path: 'name.family' }] }] };
    assert.throws(() => runView(view, [patient]), (e: unknown) => e instanceof ViewError
      && e.message === 'Patient/p1: select[0].column[0]: 2 values for column family, which is not a collection (set collection: true)');
  });

  test('a column giving a complex type must declare its type', () => {
    const view = { resource: 'Patient', select: [{ forEach: 'name', column: [{ name: 'n', path: '$this' }] }] };
    assert.throws(() => runView(view, [patient]), /select\[0\]\.column\[0\]: column n gives a HumanName, not a primitive/);
    const typed = { resource: 'Patient', select: [{ forEach: 'name', column: [{ name: 'n', path: '$this', type: 'HumanName' }] }] };
    assert.deepEqual(runView(typed, [patient]), [{ n: { family: 'A' } }, { n: { family: 'B' } }]);
  });

  test('rowsOf streams one resource at a time, the same rows as runView', () => {
    const view = { resource: 'Patient', select: [{ column: [{ name: 'id', path: 'getResourceKey()' }] }, { forEach: 'name', column: [{ name: 'family', path: 'family' }] }] };
    const prepared = prepareView(view);
    assert.deepEqual([...prepared.rowsOf(patient)], [{ id: 'p1', family: 'A' }, { id: 'p1', family: 'B' }]);
    assert.deepEqual([...prepared.rowsOf({ resourceType: 'Observation', id: 'o1' } as Resource)], []);
    assert.deepEqual(runView(view, [patient]), [...prepared.rowsOf(patient)]);
  });
});
