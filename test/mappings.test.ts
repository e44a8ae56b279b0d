// Unit tests of the pure resource -> row mappings, on the official R4 examples.
import assert from 'node:assert/strict';
import { EXAMPLES_DIR } from './support/data.ts';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { AuditEvent, Encounter, MedicationStatement, Observation, Patient, Resource } from '@medplum/fhirtypes';
import {
  identifierTokens, metaTokens, toEndInstant, toInstant, tokensOfCodeableConcepts,
} from '../mappings/postgres/common.ts';
import { mapAuditEvent } from '../mappings/postgres/auditEvent.ts';
import { mapEncounter } from '../mappings/postgres/encounter.ts';
import { mapMedicationStatement } from '../mappings/postgres/medicationStatement.ts';
import { mapObservation } from '../mappings/postgres/observation.ts';
import { mapPatient } from '../mappings/postgres/patient.ts';
import { collectReferences, referenceId, TABLES, TIME_PARTITIONED, toRow } from '../mappings/postgres/index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const EXAMPLES = EXAMPLES_DIR;

function example<T extends Resource>(rel: string): T {
  return JSON.parse(fs.readFileSync(path.join(EXAMPLES, rel), 'utf8')) as T;
}

describe('common: tokens', () => {
  it('emits system|code and |code per coding, |code only without system, deduplicated', () => {
    assert.deepEqual(
      tokensOfCodeableConcepts([
        { coding: [{ system: 'http://loinc.org', code: '1-8' }, { code: 'x' }, { system: 'http://loinc.org', code: '1-8' }] },
        { coding: [{ system: 'http://other', code: '1-8' }, { display: 'no code' }] },
        { text: 'text only' },
        undefined,
      ]),
      ['http://loinc.org|1-8', '|1-8', '|x', 'http://other|1-8'],
    );
    assert.deepEqual(tokensOfCodeableConcepts(undefined), []);
  });

  it('builds identifier tokens', () => {
    assert.deepEqual(identifierTokens([{ system: 'urn:s', value: 'v' }, { value: 'w' }, { system: 'urn:s' }]), [
      'urn:s|v', '|v', '|w',
    ]);
    assert.deepEqual(identifierTokens(undefined), []);
  });

  it('puts meta.tag and meta.security into tags', () => {
    assert.deepEqual(
      metaTokens({
        profile: ['http://p/1', 'http://p/1'],
        tag: [{ system: 'http://t', code: 'a' }],
        security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'R' }],
      }),
      {
        profiles: ['http://p/1'],
        tags: ['http://t|a', '|a', 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R', '|R'],
      },
    );
    assert.deepEqual(metaTokens(undefined), { profiles: [], tags: [] });
  });
});

describe('common: toInstant / toEndInstant', () => {
  const cases: [string, string, string][] = [
    ['2013', '2013-01-01T00:00:00.000Z', '2014-01-01T00:00:00.000Z'],
    ['2013-04', '2013-04-01T00:00:00.000Z', '2013-05-01T00:00:00.000Z'],
    ['2013-12', '2013-12-01T00:00:00.000Z', '2014-01-01T00:00:00.000Z'],
    ['2013-04-02', '2013-04-02T00:00:00.000Z', '2013-04-03T00:00:00.000Z'],
    ['2012-02-29', '2012-02-29T00:00:00.000Z', '2012-03-01T00:00:00.000Z'],
    ['2013-12-31', '2013-12-31T00:00:00.000Z', '2014-01-01T00:00:00.000Z'],
    ['2013-04-02T09:30:10', '2013-04-02T09:30:10.000Z', '2013-04-02T09:30:10.000Z'],
    ['2013-04-02T09:30:10Z', '2013-04-02T09:30:10.000Z', '2013-04-02T09:30:10.000Z'],
    ['2013-04-02T09:30:10+01:00', '2013-04-02T08:30:10.000Z', '2013-04-02T08:30:10.000Z'],
    ['2013-04-02T00:30:00+10:00', '2013-04-01T14:30:00.000Z', '2013-04-01T14:30:00.000Z'],
    ['2013-12-31T23:30:00-05:30', '2014-01-01T05:00:00.000Z', '2014-01-01T05:00:00.000Z'],
    ['2015-02-07T13:28:17.239+02:00', '2015-02-07T11:28:17.239Z', '2015-02-07T11:28:17.239Z'],
    ['2015-02-07T13:28:17.029Z', '2015-02-07T13:28:17.029Z', '2015-02-07T13:28:17.029Z'],
    ['2015-02-07T13:28:17.1234567Z', '2015-02-07T13:28:17.123Z', '2015-02-07T13:28:17.123Z'],
    ['0001-01-01', '0001-01-01T00:00:00.000Z', '0001-01-02T00:00:00.000Z'],
  ];
  for (const [input, start, end] of cases) {
    it(`${input} -> [${start}, ${end}]`, () => {
      assert.equal(toInstant(input), start);
      assert.equal(toEndInstant(input), end);
    });
  }

  it('returns undefined for absent and malformed values', () => {
    for (const bad of [undefined, '', 'yesterday', '2013-13', '2013-02-29', '2013-04-31', '2013-04-02T25:00:00Z',
      '2013-04-02T10:00:00+15:00', '13-04-02', '2013-04-02 10:00:00']) {
      assert.equal(toInstant(bad), undefined, String(bad));
      assert.equal(toEndInstant(bad), undefined, String(bad));
    }
  });
});

describe('common: referenceId', () => {
  it('accepts Type/id, absolute URLs and strips _history', () => {
    assert.equal(referenceId({ reference: 'Patient/example' }, 'Patient'), 'example');
    assert.equal(referenceId({ reference: 'Patient/example/_history/1' }, 'Patient'), 'example');
    assert.equal(referenceId({ reference: 'https://fhir.example.org/r4/Patient/p-1.a' }, 'Patient'), 'p-1.a');
    assert.equal(referenceId({ reference: 'http://x.org/fhir/Patient/23/_history/4' }, 'Patient'), '23');
  });

  it('rejects other types, fragments, conditional and identifier-only references', () => {
    assert.equal(referenceId({ reference: 'Group/herd1' }, 'Patient'), undefined);
    assert.equal(referenceId({ reference: 'RelatedPatient/x' }, 'Patient'), undefined);
    assert.equal(referenceId({ reference: '#newborn' }, 'Patient'), undefined);
    assert.equal(referenceId({ reference: 'Patient?identifier=urn:s|1' }, 'Patient'), undefined);
    assert.equal(referenceId({ reference: 'Patient/' }, 'Patient'), undefined);
    assert.equal(referenceId({ reference: 'foo/Patient/1' }, 'Patient'), undefined);
    assert.equal(referenceId({ identifier: { value: '95' } }, 'Patient'), undefined);
    assert.equal(referenceId(undefined, 'Patient'), undefined);
  });
});

describe('Patient', () => {
  it('maps patient-example.json', () => {
    const row = mapPatient(example<Patient>('Patient/patient-example.json'));
    assert.deepEqual(row.columns, {
      identifier_tokens: ['urn:oid:1.2.36.146.595.217.0.1|12345', '|12345'],
      profiles: [],
      tags: [],
      mrn: 'urn:oid:1.2.36.146.595.217.0.1|12345',
      family_name: 'Chalmers',
      given_names: 'Peter James',
      birth_date: '1974-12-25',
      sex: 'male',
      active: true,
      deceased: false,
    });
    assert.equal(row.clinicalTime, undefined);
  });

  it('fills a partial birth date, and has no MRN without an MR-typed identifier', () => {
    const { columns } = mapPatient(example<Patient>('Patient/json-edge-cases.json'));
    assert.equal(columns.birth_date, '1974-12-01');
    assert.equal(columns.mrn, null);
    assert.equal(columns.deceased, true);
    assert.equal(columns.active, null);
    assert.equal(mapPatient({ resourceType: 'Patient', birthDate: '1970' }).columns.birth_date, '1970-01-01');
    assert.equal(mapPatient({ resourceType: 'Patient', birthDate: '1970-05' }).columns.birth_date, '1970-05-01');
  });

  it('treats deceasedDateTime as deceased', () => {
    const { columns } = mapPatient(example<Patient>('Patient/patient-example-c.json'));
    assert.equal(columns.deceased, true);
    assert.equal(columns.mrn, 'urn:oid:0.1.2.3.4.5.6.7|123457');
    assert.equal(columns.family_name, 'Notsowell');
  });

  it('falls back to the first name when none is official, and to nulls when there is none', () => {
    const { columns } = mapPatient(example<Patient>('Patient/patient-example-f001-pieter.json'));
    assert.equal(columns.family_name, 'van de Heuvel');
    assert.equal(columns.given_names, 'Pieter');
    const empty = mapPatient({ resourceType: 'Patient' }).columns;
    assert.deepEqual(empty, {
      identifier_tokens: [], profiles: [], tags: [], mrn: null, family_name: null, given_names: null,
      birth_date: null, sex: null, active: null, deceased: null,
    });
  });
});

describe('Encounter', () => {
  it('maps encounter-example-f001-heart.json (no period)', () => {
    const row = mapEncounter(example<Encounter>('Encounter/encounter-example-f001-heart.json'));
    assert.deepEqual(row.columns, {
      identifier_tokens: ['http://www.amc.nl/zorgportal/identifiers/visits|v1451', '|v1451'],
      profiles: [],
      tags: [],
      patient_id: 'f001',
      status: 'finished',
      class_code: 'AMB',
      type_tokens: ['http://snomed.info/sct|270427003', '|270427003'],
      period_start: null,
      period_end: null,
    });
    assert.equal(row.clinicalTime, undefined);
  });

  it('widens a date-only period end to the end of that day', () => {
    const row = mapEncounter(example<Encounter>('Encounter/encounter-example-f203-20130311.json'));
    assert.equal(row.columns.period_start, '2013-03-11T00:00:00.000Z');
    assert.equal(row.columns.period_end, '2013-03-21T00:00:00.000Z');
    assert.equal(row.clinicalTime, '2013-03-11T00:00:00.000Z');
  });

  it('converts a period with a timezone to UTC', () => {
    const row = mapEncounter(example<Encounter>('Encounter/encounter-example-home.json'));
    assert.equal(row.columns.period_start, '2015-01-17T06:00:00.000Z');
    assert.equal(row.columns.period_end, '2015-01-17T06:30:00.000Z');
    assert.equal(row.clinicalTime, '2015-01-17T06:00:00.000Z');
  });
});

describe('Observation', () => {
  it('maps observation-example-bloodpressure.json', () => {
    const row = mapObservation(example<Observation>('Observation/observation-example-bloodpressure.json'));
    assert.deepEqual(row.columns, {
      identifier_tokens: ['urn:ietf:rfc:3986|urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281', '|urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281'],
      profiles: ['http://hl7.org/fhir/StructureDefinition/vitalsigns'],
      tags: [],
      patient_id: 'example',
      encounter_id: null,
      status: 'final',
      category_tokens: ['http://terminology.hl7.org/CodeSystem/observation-category|vital-signs', '|vital-signs'],
      // component codes are not the observation's code
      code_tokens: ['http://loinc.org|85354-9', '|85354-9'],
      effective_start: '2012-09-17T00:00:00.000Z',
      effective_end: '2012-09-18T00:00:00.000Z',
      issued: null,
      value_quantity: null,
      value_unit: null,
      value_code_tokens: [],
      value_string: null,
    });
    assert.equal(row.clinicalTime, '2012-09-17T00:00:00.000Z');
  });

  it('maps observation-example-f001-glucose.json', () => {
    const row = mapObservation(example<Observation>('Observation/observation-example-f001-glucose.json'));
    assert.equal(row.columns.patient_id, 'f001');
    assert.deepEqual(row.columns.code_tokens, ['http://loinc.org|15074-8', '|15074-8']);
    assert.deepEqual(row.columns.category_tokens, []);
    assert.equal(row.columns.effective_start, '2013-04-02T08:30:10.000Z');
    assert.equal(row.columns.effective_end, null);
    assert.equal(row.columns.issued, '2013-04-03T14:30:10.000Z');
    assert.equal(row.columns.value_quantity, 6.3);
    assert.equal(row.columns.value_unit, 'mmol/L'); // UCUM code wins over the display unit 'mmol/l'
    assert.equal(row.clinicalTime, '2013-04-02T08:30:10.000Z');
  });

  it('maps encounter, valueCodeableConcept, valueString and falls back to issued', () => {
    const weight = mapObservation(example<Observation>('Observation/observation-example.json'));
    assert.equal(weight.columns.encounter_id, 'example');
    assert.equal(weight.columns.value_quantity, 185);
    assert.equal(weight.columns.value_unit, '[lb_av]');

    const eye = mapObservation(example<Observation>('Observation/observation-example-eye-color.json'));
    assert.equal(eye.columns.value_string, 'blue');
    assert.deepEqual(eye.columns.code_tokens, []); // code with text only

    const haplo = mapObservation(example<Observation>('Observation/observation-example-TPMT-haplotype-one.json'));
    assert.deepEqual(haplo.columns.value_code_tokens, ['http://pharmakb.org|PA166128347', '|PA166128347']);
    assert.equal(haplo.columns.effective_start, null);
    assert.equal(haplo.clinicalTime, '2013-04-03T14:30:10.000Z');
  });

  it('does not take a Group or contained subject as patient_id', () => {
    assert.equal(mapObservation(example<Observation>('Observation/observation-example-herd1.json')).columns.patient_id, null);
    assert.equal(mapObservation(example<Observation>('Observation/observation-example-1minute-apgar-score.json')).columns.patient_id, null);
  });

  it('handles effectiveInstant and effectiveTiming', () => {
    const base: Observation = { resourceType: 'Observation', status: 'final', code: { text: 'x' } };
    const inst = mapObservation({ ...base, effectiveInstant: '2020-01-02T03:04:05.678+01:00' });
    assert.equal(inst.columns.effective_start, '2020-01-02T02:04:05.678Z');
    assert.equal(inst.columns.effective_end, '2020-01-02T02:04:05.678Z');
    const timing = mapObservation({ ...base, effectiveTiming: { event: ['2020-03-05', '2020-03-01'] } });
    assert.equal(timing.columns.effective_start, '2020-03-01T00:00:00.000Z');
    assert.equal(timing.columns.effective_end, '2020-03-06T00:00:00.000Z');
    assert.equal(timing.clinicalTime, '2020-03-01T00:00:00.000Z');
    assert.equal(mapObservation(base).clinicalTime, undefined);
  });
});

describe('MedicationStatement', () => {
  it('maps medicationstatementexample1.json (medicationReference)', () => {
    const row = mapMedicationStatement(example<MedicationStatement>('MedicationStatement/medicationstatementexample1.json'));
    assert.deepEqual(row.columns, {
      identifier_tokens: ['http://www.bmc.nl/portal/medstatements|12345689', '|12345689'],
      profiles: [],
      tags: [],
      patient_id: 'pat1',
      encounter_id: null,
      status: 'active',
      category_tokens: ['http://terminology.hl7.org/CodeSystem/medication-statement-category|inpatient', '|inpatient'],
      medication_tokens: [],
      medication_text: null,
      effective_start: '2015-01-23T00:00:00.000Z',
      effective_end: '2015-01-24T00:00:00.000Z',
      date_asserted: '2015-02-22T00:00:00.000Z',
    });
    assert.equal(row.clinicalTime, '2015-01-23T00:00:00.000Z');
  });

  it('maps medicationCodeableConcept and context', () => {
    const five = mapMedicationStatement(example<MedicationStatement>('MedicationStatement/medicationstatementexample5.json'));
    assert.equal(five.columns.encounter_id, 'f203');
    assert.deepEqual(five.columns.medication_tokens, ['http://snomed.info/sct|27658006', '|27658006']);
    assert.equal(five.columns.medication_text, 'Amoxicillin (product)');
    const three = mapMedicationStatement(example<MedicationStatement>('MedicationStatement/medicationstatementexample3.json'));
    assert.equal(three.columns.medication_text, 'Little Pink Pill for water retention');
    assert.deepEqual(three.columns.medication_tokens, []);
  });

  it('falls back to dateAsserted, then to nothing', () => {
    const base: MedicationStatement = {
      resourceType: 'MedicationStatement', status: 'active', subject: { reference: 'Patient/p' },
      medicationReference: { reference: 'Medication/m', display: 'Aspirin' },
    };
    const asserted = mapMedicationStatement({ ...base, dateAsserted: '2020-05-06T07:08:09Z' });
    assert.equal(asserted.clinicalTime, '2020-05-06T07:08:09.000Z');
    assert.equal(asserted.columns.medication_text, 'Aspirin');
    const period = mapMedicationStatement({ ...base, effectivePeriod: { start: '2020-01', end: '2020-02' } });
    assert.equal(period.columns.effective_start, '2020-01-01T00:00:00.000Z');
    assert.equal(period.columns.effective_end, '2020-03-01T00:00:00.000Z');
    const seven = mapMedicationStatement(example<MedicationStatement>('MedicationStatement/medicationstatementexample7.json'));
    assert.equal(seven.clinicalTime, undefined);
    assert.equal(seven.columns.effective_start, null);
  });
});

describe('AuditEvent', () => {
  // The row is the time; searches and patient-level exports read its keys (mappings/search/rowKeys.ts).
  it('maps recorded to the clinical time, with an offset converted', () => {
    assert.deepEqual(mapAuditEvent(example<AuditEvent>('AuditEvent/audit-event-example-login.json')), { columns: {}, clinicalTime: '2013-06-20T23:41:23.000Z' });
    assert.equal(mapAuditEvent(example<AuditEvent>('AuditEvent/auditevent-example.json')).clinicalTime, '2012-10-25T11:04:27.000Z');
  });
});

describe('collectReferences', () => {
  it('finds references in elements and extensions, deduplicated in order', () => {
    assert.deepEqual(collectReferences(example('Patient/json-edge-cases.json')), ['Organization/1', '#pic1', '#org3141']);
    assert.deepEqual(collectReferences(example('AuditEvent/auditevent-example-disclosure.json')), [
      'Location/1', 'Practitioner/example', 'Patient/example', 'Patient/example/_history/1', // Location from agent.location
    ]);
  });

  it('skips references inside contained resources', () => {
    const ms = example<MedicationStatement>('MedicationStatement/medicationstatementexample1.json');
    assert.ok(ms.contained?.length);
    (ms.contained![0] as { manufacturer?: unknown }).manufacturer = { reference: 'Organization/inside-contained' };
    assert.deepEqual(collectReferences(ms), ['#med0309', 'Patient/pat1', 'MedicationRequest/medrx002']);
  });

  it('ignores non-string reference properties', () => {
    assert.deepEqual(collectReferences({ resourceType: 'Basic', a: { reference: 3 }, b: [{ reference: 'X/1' }, null] }), ['X/1']);
  });
});

// Column names and SQL types per table, read from the schema so the mapping cannot drift from it.
function schemaColumns(): Map<string, Map<string, string>> {
  const dir = path.join(ROOT, 'sql');
  const sql = fs.readdirSync(dir).filter((f) => /^\d+_.*\.sql$/.test(f)).sort().map((f) => fs.readFileSync(path.join(dir, f), 'utf8')).join('\n');
  const tables = new Map<string, Map<string, string>>();
  for (const m of sql.matchAll(/CREATE TABLE (\w+) \(\n([\s\S]*?)\n\)/g)) {
    const cols = new Map<string, string>();
    for (const line of m[2].split('\n')) {
      const c = /^\s+([a-z_][a-z0-9_]*)\s+(\w+(?:\[\])?)/.exec(line);
      if (c && !['PRIMARY', 'FOREIGN', 'UNIQUE', 'CHECK', 'CONSTRAINT'].includes(c[1].toUpperCase())) cols.set(c[1], c[2]);
    }
    tables.set(m[1], cols);
  }
  // Later migrations' ALTER TABLE ... ADD COLUMN / DROP COLUMN, in file order.
  for (const m of sql.matchAll(/ALTER TABLE (\w+)\s+((?:(?:ADD|DROP) COLUMN [^,;]+,?\s*)+);/g)) {
    const cols = tables.get(m[1]);
    for (const c of m[2].matchAll(/(ADD|DROP) COLUMN ([a-z_][a-z0-9_]*)\s*(\w+(?:\[\])?)?/g)) {
      if (c[1] === 'ADD') cols?.set(c[2], c[3]);
      else cols?.delete(c[2]);
    }
  }
  return tables;
}

// Types the official examples folder lacks (Group: stored for Bulk export) get examples here.
const INLINE_EXAMPLES: Record<string, Resource[]> = {
  Group: [
    { resourceType: 'Group', type: 'person', actual: true, name: 'Diabetes cohort', identifier: [{ system: 'urn:cohorts', value: 'dm-1' }],
      member: [{ entity: { reference: 'Patient/p1' } }, { entity: { reference: 'Patient/p2' }, inactive: true }] } as Resource,
    { resourceType: 'Group', type: 'person', actual: false, meta: { tag: [{ system: 'urn:t', code: 'x' }], profile: ['http://example.org/g'] } } as Resource,
  ],
  // The generic table: shared columns and the type; a single identifier (AdverseEvent) is tokenized like a list.
  Organization: [{ resourceType: 'Organization', name: 'Ward', identifier: [{ system: 'urn:org', value: 'w1' }], meta: { security: [{ system: 'urn:s', code: 'R' }] } } as Resource],
  AdverseEvent: [{ resourceType: 'AdverseEvent', actuality: 'actual', subject: { reference: 'Patient/p1' }, identifier: { system: 'urn:ae', value: 'ae-1' } } as Resource],
};

// Columns the store fills itself rather than the mapping (an AuditEvent's keys come from its search index, its part and detail from the server's event text).
const STORE_COLUMNS = new Set(['org_id', 'id', 'version_id', 'last_updated', 'resource', 'clinical_time', 'ref_keys', 'token_keys', 'part', 'detail']);
const INSTANT = /^-?\d{4,6}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

function checkValue(sqlType: string, value: unknown, where: string): void {
  if (sqlType === 'text[]') {
    assert.ok(Array.isArray(value) && value.every((v) => typeof v === 'string'), `${where}: expected string[]`);
    return;
  }
  if (value === null) return;
  if (sqlType === 'text') assert.equal(typeof value, 'string', where);
  else if (sqlType === 'timestamptz') assert.match(String(value), INSTANT, where);
  else if (sqlType === 'date') assert.match(String(value), /^\d{4}-\d{2}-\d{2}$/, where);
  else if (sqlType === 'boolean') assert.equal(typeof value, 'boolean', where);
  else if (sqlType === 'numeric') assert.ok(typeof value === 'number' || typeof value === 'string', where);
  else assert.fail(`${where}: no check for SQL type ${sqlType}`);
}

describe('schema conformance', () => {
  const schema = schemaColumns();

  it('parses every mapped table from the schema', () => {
    for (const table of Object.values(TABLES)) assert.ok(schema.get(table)?.has('resource'), table);
    assert.deepEqual([...TIME_PARTITIONED].filter((t) => !schema.get(TABLES[t])?.has('clinical_time')), []);
  });

  // The first-class types by their official examples; the generic store's by a few (test/alltypes.test.ts stores every type).
  for (const type of Object.keys(TABLES).filter((t) => TABLES[t] !== 'resources' || INLINE_EXAMPLES[t])) {
    it(`maps every ${type} example onto exactly the columns of ${TABLES[type]}`, () => {
      const cols = schema.get(TABLES[type])!;
      const expected = [...cols.keys()].filter((c) => !STORE_COLUMNS.has(c)).sort();
      const dir = path.join(EXAMPLES, type);
      const examples: [string, Resource][] = fs.existsSync(dir)
        ? fs.readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => [f, example(`${type}/${f}`)])
        : (INLINE_EXAMPLES[type] ?? []).map((r, i) => [`inline ${type} ${i}`, r]);
      assert.ok(examples.length > 0, `no ${type} examples`);
      for (const [file, resource] of examples) {
        const row = toRow(resource);
        assert.equal(row.table, TABLES[type]);
        assert.deepEqual(Object.keys(row.columns).sort(), expected, file);
        for (const [key, value] of Object.entries(row.columns)) checkValue(cols.get(key)!, value, `${file} ${key}`);
        if (row.clinicalTime !== undefined) assert.match(row.clinicalTime, INSTANT, file);
        if (!TIME_PARTITIONED.has(type)) assert.equal(row.clinicalTime, undefined, file);
      }
    });
  }

  it('throws for a type without a table', () => {
    assert.throws(() => toRow({ resourceType: 'Parameters' } as unknown as Resource), /Parameters/);
    assert.deepEqual(toRow({ resourceType: 'AdverseEvent', identifier: { system: 'urn:ae', value: '1' } } as Resource).columns.identifier_tokens, ['urn:ae|1', '|1']);
    assert.throws(() => toRow({ resourceType: 'toString' } as unknown as Resource), /toString/);
  });
});
