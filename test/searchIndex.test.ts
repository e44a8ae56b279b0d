// Unit tests of the search index extraction (mappings/search), on the official R4 examples.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import type { Resource } from '@medplum/fhirtypes';
import { EXAMPLES_DIR, SHARED_DATA } from './support/data.ts';
import { loadDefinitions } from '../src/fhir/validate.ts';
import {
  restrictExpression, searchParamsFor, splitUnion, storedParams, type SearchParamDef,
} from '../mappings/search/definitions.ts';
import {
  MAX_INSTANT, MIN_INSTANT, dateRange, decimalRange, extractIndex, extractIndexWith, extractStats,
  normalizeString, parseReference, resetExtractStats, type IndexRows,
} from '../mappings/search/extract.ts';

const TYPES = ['Patient', 'Encounter', 'Observation', 'MedicationStatement', 'AuditEvent'] as const;

function example(rel: string): Resource {
  return JSON.parse(fs.readFileSync(path.join(EXAMPLES_DIR, rel), 'utf8')) as Resource;
}

function examplesOf(type: string): { file: string; resource: Resource }[] {
  const dir = path.join(EXAMPLES_DIR, type);
  return fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
    .map((file) => ({ file, resource: example(`${type}/${file}`) }));
}

const tokens = (rows: IndexRows, param: string) => rows.tokens.filter((r) => r.param === param);
const strings = (rows: IndexRows, param: string) => rows.strings.filter((r) => r.param === param);
const dates = (rows: IndexRows, param: string) => rows.dates.filter((r) => r.param === param);
const refs = (rows: IndexRows, param: string) => rows.references.filter((r) => r.param === param);
const quantities = (rows: IndexRows, param: string) => rows.quantities.filter((r) => r.param === param);
const composites = (rows: IndexRows, param: string) => rows.composites.filter((r) => r.param === param);
const codes = (rows: IndexRows, param: string) =>
  tokens(rows, param).filter((t) => t.code !== null).map((t) => `${t.system ?? ''}|${t.code}`);

/**
 * The rows of `code` as the query side reads them (src/store/searchSql.ts): its stored
 * parameters' rows (definitions.ts StoredAs), references of its target type only, named
 * `code`; modifier rows (`:identifier`, `:of-type`) under the stored names, or its own
 * when filtered by target type. Composite parts are named by its components (queries
 * match parts by position, not by name).
 */
function readAs(rows: IndexRows, type: string, code: string): IndexRows {
  const def = searchParamsFor(type).find((d) => d.code === code)!;
  const { params, targetType } = storedParams(def);
  const out = {} as Record<string, unknown[]>;
  for (const [kind, list] of Object.entries(rows) as [string, { param: string; targetType?: string | null }[]][]) {
    out[kind] = list.flatMap((r) => {
      const [base, modifier] = r.param.split(':');
      if (modifier !== undefined && targetType) return r.param === `${code}:${modifier}` ? [r] : [];
      if (!params.includes(base)) return [];
      if (kind === 'references' && targetType && r.targetType !== targetType) return [];
      const renamed = { ...r, param: modifier === undefined ? code : `${code}:${modifier}` };
      if (kind === 'composites') {
        const parts = (r as unknown as { parts: { param: string }[] }).parts;
        return [{ ...renamed, parts: parts.map((part, i) => ({ ...part, param: def.components![i].code })) }];
      }
      return [renamed];
    });
  }
  return out as unknown as IndexRows;
}

/** Synthea patient bundles' resources of the stored types, `urn:uuid:` references made `Type/id` as a transaction would. */
function syntheaResources(): Resource[] {
  const dir = path.join(SHARED_DATA, 'synthea-r4');
  const out: Resource[] = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const bundle = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
    const entries = (bundle.entry ?? []) as { fullUrl?: string; resource: Resource }[];
    const local = new Map(entries.filter((e) => e.fullUrl && e.resource.id).map((e) => [e.fullUrl!, `${e.resource.resourceType}/${e.resource.id}`]));
    const text = JSON.stringify(entries.filter((e) => (TYPES as readonly string[]).includes(e.resource.resourceType)).map((e) => e.resource));
    out.push(...JSON.parse(text.replace(/"(urn:uuid:[0-9a-f-]+)"/g, (m, u: string) => (local.has(u) ? JSON.stringify(local.get(u)) : m))));
  }
  return out;
}

function sortedJson(rows: IndexRows): Record<string, string[]> {
  return Object.fromEntries(Object.entries(rows).map(([k, v]) => [k, (v as unknown[]).map((x) => JSON.stringify(x)).sort()]));
}

before(() => loadDefinitions());

describe('search index: precision ranges', () => {
  it('gives dates the range of their precision, hi exclusive', () => {
    const r = (v: string) => { const x = dateRange(v); return x && [x.lo, x.hi]; };
    assert.deepEqual(r('2013'), ['2013-01-01T00:00:00.000Z', '2014-01-01T00:00:00.000Z']);
    assert.deepEqual(r('2013-12'), ['2013-12-01T00:00:00.000Z', '2014-01-01T00:00:00.000Z']);
    assert.deepEqual(r('2012-02'), ['2012-02-01T00:00:00.000Z', '2012-03-01T00:00:00.000Z']);
    assert.deepEqual(r('1974-12-25'), ['1974-12-25T00:00:00.000Z', '1974-12-26T00:00:00.000Z']);
    assert.deepEqual(r('2013-04-02T10:30+02:00'), ['2013-04-02T08:30:00.000Z', '2013-04-02T08:31:00.000Z']);
    assert.deepEqual(r('2013-04-02T10:30:15Z'), ['2013-04-02T10:30:15.000Z', '2013-04-02T10:30:16.000Z']);
    assert.deepEqual(r('2013-04-02T10:30:15-05:00'), ['2013-04-02T15:30:15.000Z', '2013-04-02T15:30:16.000Z']);
    assert.deepEqual(r('2013-04-02T10:30:15.5Z'), ['2013-04-02T10:30:15.500Z', '2013-04-02T10:30:15.600Z']);
    assert.deepEqual(r('2013-04-02T10:30:15.12Z'), ['2013-04-02T10:30:15.120Z', '2013-04-02T10:30:15.130Z']);
    assert.deepEqual(r('2015-02-07T13:28:17.239+02:00'), ['2015-02-07T11:28:17.239Z', '2015-02-07T11:28:17.240Z']);
    assert.deepEqual(r('2015-02-07T13:28:17.2391234Z'), ['2015-02-07T13:28:17.239Z', '2015-02-07T13:28:17.240Z']);
    assert.deepEqual(r('2013-04-02T10:30:15'), ['2013-04-02T10:30:15.000Z', '2013-04-02T10:30:16.000Z'], 'no zone: UTC');
    assert.deepEqual(r('0001'), [MIN_INSTANT, '0002-01-01T00:00:00.000Z']);
    assert.deepEqual(r('9999'), ['9999-01-01T00:00:00.000Z', MAX_INSTANT], 'capped at the open end');
    assert.equal(dateRange('2013-02-30'), undefined);
    assert.equal(dateRange('2013-13'), undefined);
    assert.equal(dateRange('2013-04-02T25:00Z'), undefined);
    assert.equal(dateRange('yesterday'), undefined);
    assert.equal(dateRange(20130402), undefined);
  });

  it('gives decimals half a unit of their last significant digit either side', () => {
    assert.deepEqual(decimalRange(5.4), { lo: 5.35, hi: 5.45 });
    assert.deepEqual(decimalRange(100), { lo: 99.5, hi: 100.5 });
    assert.deepEqual(decimalRange(107), { lo: 106.5, hi: 107.5 });
    assert.deepEqual(decimalRange(0.001), { lo: 0.0005, hi: 0.0015 });
    assert.deepEqual(decimalRange(6.3), { lo: 6.25, hi: 6.35 });
    assert.deepEqual(decimalRange(-5.4), { lo: -5.45, hi: -5.35 });
    assert.deepEqual(decimalRange(0), { lo: -0.5, hi: 0.5 });
    assert.deepEqual(decimalRange(1e-7), { lo: 5e-8, hi: 1.5e-7 });
    assert.deepEqual(decimalRange(1.5e300), { lo: 1.45e300, hi: 1.55e300 });
    assert.deepEqual(decimalRange(5.4, '5.40'), { lo: 5.395, hi: 5.405 }, 'written precision when known');
    assert.equal(decimalRange(Number.NaN), undefined);
    assert.equal(decimalRange(Infinity), undefined);
  });

  it('normalises strings: no diacritics, lower case, collapsed whitespace', () => {
    assert.equal(normalizeString('Zoë Émile'), 'zoe emile');
    assert.equal(normalizeString('  Zoë \t\n Émile  '), 'zoe emile');
    assert.equal(normalizeString('ÅNGSTRÖM'), 'angstrom');
    assert.equal(normalizeString('du Marché'), 'du marche');
    assert.equal(normalizeString('Ŝtraße'), 'straße');
    assert.equal(normalizeString('   '), '');
  });

  it('parses reference targets', () => {
    assert.deepEqual(parseReference('Patient/example'), { type: 'Patient', id: 'example' });
    assert.deepEqual(parseReference('Patient/example/_history/1'), { type: 'Patient', id: 'example' });
    assert.deepEqual(parseReference('http://x.org/fhir/Patient/123/_history/2'), { type: 'Patient', id: '123' });
    assert.equal(parseReference('#p1'), undefined);
    assert.equal(parseReference('urn:uuid:5b2b5d1d-8e1f-4f4e-9d8a-4a2e4d3c1b2a'), undefined);
    assert.equal(parseReference('Patient?identifier=x|1'), undefined);
    assert.equal(parseReference('Nonsense/1'), undefined, 'not a resource type');
  });
});

describe('search index: definitions', () => {
  it('splits unions at top level only', () => {
    assert.deepEqual(splitUnion("a.where(b = 'x | y') | (c as D) | e.where((f | g).exists())"),
      ["a.where(b = 'x | y')", '(c as D)', 'e.where((f | g).exists())']);
    assert.equal(
      restrictExpression('AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | Observation.subject.where(resolve() is Patient)', 'Observation'),
      'Observation.subject.where(resolve() is Patient)');
    assert.equal(restrictExpression('(MedicationAdministration.medication as Reference) | (MedicationStatement.medication as Reference)', 'MedicationStatement'),
      '(MedicationStatement.medication as Reference)');
    assert.equal(restrictExpression('Observation | Observation.component', 'Observation'), 'Observation | Observation.component');
    assert.equal(restrictExpression('ObservationDefinition.code', 'Observation'), '');
    assert.equal(restrictExpression('Resource.meta.tag', 'Patient'), 'Patient.meta.tag');
  });

  it('lists every R4 parameter of each type, resource-level ones included, specials and text search left out', () => {
    const counts = Object.fromEntries(TYPES.map((t) => [t, searchParamsFor(t).length]));
    console.log('search params per type:', counts);
    for (const t of TYPES) {
      const defs = searchParamsFor(t);
      const byCode = new Map(defs.map((d) => [d.code, d]));
      assert.equal(byCode.size, defs.length, `${t}: codes unique`);
      // AuditEvent: no _profile/_source (uri parameters have no row keys; mappings/search/rowKeys.ts).
      const resourceLevel = t === 'AuditEvent' ? ['_id', '_lastUpdated', '_security', '_tag'] : ['_id', '_lastUpdated', '_profile', '_security', '_source', '_tag'];
      for (const c of resourceLevel) assert.ok(byCode.has(c), `${t} has ${c}`);
      if (t === 'AuditEvent') for (const c of ['_profile', '_source']) assert.ok(!byCode.has(c), `${t} lacks ${c}`);
      for (const c of ['_text', '_content', '_query', '_list', '_has', '_type']) assert.ok(!byCode.has(c), `${t} lacks ${c}`);
      for (const d of defs) {
        assert.notEqual(d.type, 'special');
        assert.ok(d.expression, `${t}.${d.code} has an expression`);
        for (const b of splitUnion(d.expression)) assert.match(b, new RegExp(`^\\(*${t}\\b`), `${t}.${d.code}: ${b}`);
      }
      console.log(`  ${t} (${defs.length}): ${defs.map((d) => d.code).join(', ')}`);
    }
    assert.deepEqual(counts, { Patient: 29, Encounter: 29, Observation: 44, MedicationStatement: 17, AuditEvent: 12 });
    const obs = new Map(searchParamsFor('Observation').map((d) => [d.code, d]));
    assert.equal(obs.get('patient')?.expression, 'Observation.subject.where(resolve() is Patient)');
    assert.equal(obs.get('code')?.expression, 'Observation.code');
    assert.deepEqual(obs.get('subject')?.target, ['Group', 'Device', 'Patient', 'Location']);
    assert.equal(obs.get('_id')?.expression, 'Observation.id');
    assert.equal(obs.get('_id')?.url, 'http://hl7.org/fhir/SearchParameter/Resource-id');
    assert.deepEqual(obs.get('component-code-value-quantity'), {
      code: 'component-code-value-quantity', type: 'composite', expression: 'Observation.component',
      url: 'http://hl7.org/fhir/SearchParameter/Observation-component-code-value-quantity',
      components: [
        { code: 'component-code', expression: 'code', type: 'token' },
        { code: 'component-value-quantity', expression: 'value.as(Quantity)', type: 'quantity' },
      ],
    });
    assert.equal(obs.get('combo-code-value-quantity')?.expression, 'Observation | Observation.component');
    const ms = new Map(searchParamsFor('MedicationStatement').map((d) => [d.code, d]));
    assert.equal(ms.get('code')?.expression, '(MedicationStatement.medication as CodeableConcept)');
    assert.equal(ms.get('medication')?.expression, '(MedicationStatement.medication as Reference)');
    assert.ok(Object.isFrozen(searchParamsFor('Patient')), 'shared definitions are frozen');
    assert.ok(Object.isFrozen(obs.get('patient')?.storedAs?.params), 'storedAs frozen too');
    assert.equal(searchParamsFor('Patient'), searchParamsFor('Patient'), 'built once');
  });
});

describe('search index: parameters stored as others', () => {
  const stored = () => Object.fromEntries([...TYPES, 'Group'].flatMap((t) =>
    searchParamsFor(t).filter((d) => d.storedAs).map((d) => [`${t}.${d.code}`, d.storedAs])));

  it('are found from the expressions: same branches (less a shared resolve() filter), same type', () => {
    assert.deepEqual(stored(), {
      'Patient.phonetic': { params: ['name'] },
      'Encounter.patient': { params: ['subject'], targetType: 'Patient' },
      'Encounter.practitioner': { params: ['participant'], targetType: 'Practitioner' },
      'Observation.combo-code': { params: ['code', 'component-code'] },
      'Observation.combo-code-value-concept': { params: ['code-value-concept', 'component-code-value-concept'] },
      'Observation.combo-code-value-quantity': { params: ['code-value-quantity', 'component-code-value-quantity'] },
      'Observation.combo-data-absent-reason': { params: ['component-data-absent-reason', 'data-absent-reason'] },
      'Observation.combo-value-concept': { params: ['component-value-concept', 'value-concept'] },
      'Observation.combo-value-quantity': { params: ['component-value-quantity', 'value-quantity'] },
      'Observation.patient': { params: ['subject'], targetType: 'Patient' },
      'MedicationStatement.patient': { params: ['subject'], targetType: 'Patient' },
      'AuditEvent.patient': { params: ['agent', 'entity'], targetType: 'Patient' },
    });
    // Not stored as others: a different value shape, or a union whose branches no other parameter has.
    const obs = new Map(searchParamsFor('Observation').map((d) => [d.code, d]));
    for (const code of ['value-string', 'code-value-quantity', 'code', 'subject', 'component-code']) {
      assert.equal(obs.get(code)?.storedAs, undefined, code);
    }
    // A stored parameter is never itself stored as another.
    for (const t of [...TYPES, 'Group']) {
      const byCode = new Map(searchParamsFor(t).map((d) => [d.code, d]));
      for (const d of byCode.values()) for (const x of d.storedAs?.params ?? []) assert.equal(byCode.get(x)?.storedAs, undefined, `${t}.${x}`);
    }
  });

  it('sql/019 names each of them for deletion', () => {
    const sql = fs.readFileSync(path.join(import.meta.dirname, '../sql/019_aliased_index_rows.sql'), 'utf8');
    for (const [name, s] of Object.entries(stored())) {
      const [type, code] = name.split('.');
      if (s!.targetType) assert.ok(sql.includes(`('${type}', '${code}')`), `${name} deleted`);
      else assert.ok(sql.includes(`resource_type = '${type}'`) && sql.includes(`'${code}'`), `${name} deleted`);
    }
  });

  it('lose no rows: on every example and Synthea resource, their own rows are their stored parameters\' rows of their target type', () => {
    const resources = [...TYPES.flatMap((t) => examplesOf(t).map((e) => e.resource)), ...syntheaResources()];
    const compared: Record<string, number> = {};
    for (const resource of resources) {
      const type = resource.resourceType;
      const rows = extractIndex(resource);
      for (const def of searchParamsFor(type).filter((d) => d.storedAs)) {
        const own = extractIndexWith(resource, [def]);
        const label = `${type}.${def.code} ${resource.id}`;
        assert.deepEqual(sortedJson(readAs(rows, type, def.code)), sortedJson(own), label);
        // extractIndex writes none of them (but a target-typed one's `:identifier` token rows).
        for (const list of Object.values(rows) as { param: string }[][]) {
          for (const r of list) assert.ok(r.param !== def.code && (!r.param.startsWith(`${def.code}:`) || (def.storedAs!.targetType && r.param === `${def.code}:identifier`)), `${label}: ${r.param}`);
        }
        const n = Object.values(own).reduce((a, l) => a + (l as unknown[]).length, 0);
        compared[`${type}.${def.code}`] = (compared[`${type}.${def.code}`] ?? 0) + n;
      }
    }
    console.log(`  ${resources.length} resources; rows compared per parameter:`, compared);
    for (const key of ['Observation.patient', 'Observation.combo-code', 'Observation.combo-value-quantity', 'Observation.combo-value-concept',
      'Observation.combo-code-value-quantity', 'Observation.combo-code-value-concept',
      'Encounter.patient', 'MedicationStatement.patient', 'AuditEvent.patient', 'Patient.phonetic']) {
      assert.ok(compared[key] > 0, `${key} has rows to compare`);
    }
  });
});

describe('search index: Observation', () => {
  it('indexes the blood pressure example', () => {
    const rows = extractIndex(example('Observation/observation-example-bloodpressure.json'));
    assert.deepEqual(codes(rows, 'code'), ['http://loinc.org|85354-9']);
    assert.deepEqual(tokens(rows, 'code').find((t) => t.code === null),
      { param: 'code', system: null, code: null, text: 'Blood pressure systolic & diastolic' });
    assert.deepEqual(tokens(rows, 'code')[0],
      { param: 'code', system: 'http://loinc.org', code: '85354-9', text: 'Blood pressure panel with all children optional' });
    assert.deepEqual(codes(rows, 'component-code'), [
      'http://loinc.org|8480-6', 'http://snomed.info/sct|271649006', 'http://acme.org/devices/clinical-codes|bp-s', 'http://loinc.org|8462-4',
    ]);
    assert.deepEqual(codes(rows, 'combo-code'), [], 'stored as code + component-code');
    assert.deepEqual(codes(readAs(rows, 'Observation', 'combo-code'), 'combo-code').slice(0, 2), ['http://loinc.org|85354-9', 'http://loinc.org|8480-6']);
    assert.deepEqual(codes(rows, 'status'), ['|final']);
    assert.deepEqual(codes(rows, 'category'), ['http://terminology.hl7.org/CodeSystem/observation-category|vital-signs']);
    assert.deepEqual(codes(rows, '_id'), [], '_id is searched on the row itself: no index rows');
    assert.deepEqual(codes(rows, 'identifier'), ['urn:ietf:rfc:3986|urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281']);
    assert.deepEqual(rows.uris, [{ param: '_profile', value: 'http://hl7.org/fhir/StructureDefinition/vitalsigns' }]);

    assert.deepEqual(dates(rows, 'date'), [{ param: 'date', lo: '2012-09-17T00:00:00.000Z', hi: '2012-09-18T00:00:00.000Z' }]);
    const subject = { targetType: 'Patient', targetId: 'example', reference: 'Patient/example' };
    assert.deepEqual(refs(rows, 'subject'), [{ param: 'subject', ...subject }]);
    assert.deepEqual(refs(rows, 'patient'), [], 'stored as subject');
    assert.deepEqual(refs(readAs(rows, 'Observation', 'patient'), 'patient'), [{ param: 'patient', ...subject }]);
    assert.deepEqual(refs(rows, 'performer'), [{ param: 'performer', targetType: 'Practitioner', targetId: 'example', reference: 'Practitioner/example' }]);
    assert.deepEqual(tokens(rows, 'based-on:identifier'), [{ param: 'based-on:identifier', system: 'https://acme.org/identifiers', code: '1234', text: null }]);

    const systolic = { value: 107, system: 'http://unitsofmeasure.org', code: 'mm[Hg]', unit: 'mmHg', lo: 106.5, hi: 107.5 };
    assert.deepEqual(quantities(rows, 'component-value-quantity'), [
      { param: 'component-value-quantity', ...systolic },
      { param: 'component-value-quantity', value: 60, system: 'http://unitsofmeasure.org', code: 'mm[Hg]', unit: 'mmHg', lo: 59.5, hi: 60.5 },
    ]);
    assert.equal(quantities(rows, 'combo-value-quantity').length, 0);
    assert.equal(quantities(readAs(rows, 'Observation', 'combo-value-quantity'), 'combo-value-quantity').length, 2);
    assert.equal(quantities(rows, 'value-quantity').length, 0, 'no Observation.value');

    const cvq = composites(rows, 'component-code-value-quantity');
    assert.equal(cvq.length, 4, '3 systolic codings x 107 + 1 diastolic coding x 60');
    assert.deepEqual(cvq[0], {
      param: 'component-code-value-quantity',
      parts: [
        { param: 'component-code', system: 'http://loinc.org', code: '8480-6', text: 'Systolic blood pressure' },
        { param: 'component-value-quantity', ...systolic },
      ],
    });
    const pairs = (list: typeof cvq) => list.map((c) => {
      const [code, q] = c.parts as unknown as [{ code: string }, { value: number }];
      return `${code.code}=${q.value}`;
    });
    assert.deepEqual(pairs(cvq), ['8480-6=107', '271649006=107', 'bp-s=107', '8462-4=60']);
    assert.deepEqual(composites(rows, 'combo-code-value-quantity'), [], 'stored as code-value-quantity + component-code-value-quantity');
    assert.deepEqual(pairs(composites(readAs(rows, 'Observation', 'combo-code-value-quantity'), 'combo-code-value-quantity')),
      ['8480-6=107', '271649006=107', 'bp-s=107', '8462-4=60']);
    assert.equal(composites(rows, 'code-value-quantity').length, 0, 'the panel itself has no value');
  });

  it('indexes value[x] of each type and code-value composites from the Observation itself', () => {
    const glucose = extractIndex(example('Observation/observation-example-f001-glucose.json'));
    const q = quantities(glucose, 'value-quantity');
    assert.deepEqual(q, [{ param: 'value-quantity', value: 6.3, system: 'http://unitsofmeasure.org', code: 'mmol/L', unit: 'mmol/l', lo: 6.25, hi: 6.35 }]);
    assert.deepEqual(dates(glucose, 'date'), [{ param: 'date', lo: '2013-04-02T08:30:10.000Z', hi: MAX_INSTANT }], 'effectivePeriod, open end');
    const cvq = composites(glucose, 'code-value-quantity');
    assert.deepEqual(cvq.map((c) => c.parts.map((p) => ('code' in p ? p.code : null))), [['15074-8', 'mmol/L']]);
    assert.deepEqual(composites(readAs(glucose, 'Observation', 'combo-code-value-quantity'), 'combo-code-value-quantity').map((c) => c.parts[0].param), ['combo-code']);

    const lmp = extractIndex(example('Observation/observation-example-date-lastmp.json'));
    assert.deepEqual(dates(lmp, 'value-date'), [{ param: 'value-date', lo: '2016-12-30T00:00:00.000Z', hi: '2016-12-31T00:00:00.000Z' }]);
    assert.deepEqual(composites(lmp, 'code-value-date').map((c) => c.parts), [[
      { param: 'code', system: 'http://loinc.org', code: '8665-2', text: 'Date last menstrual period' },
      { param: 'value-date', lo: '2016-12-30T00:00:00.000Z', hi: '2016-12-31T00:00:00.000Z' },
    ]]);

    const all = examplesOf('Observation').map((e) => extractIndex(e.resource));
    const any = (pick: (r: IndexRows) => unknown[]) => all.some((r) => pick(r).length > 0);
    assert.ok(any((r) => tokens(r, 'value-concept')), 'value-concept');
    assert.ok(any((r) => strings(r, 'value-string')), 'value-string');
    assert.ok(any((r) => composites(r, 'code-value-concept')), 'code-value-concept');
    assert.ok(any((r) => composites(r, 'code-value-string')), 'code-value-string');
    assert.ok(any((r) => composites(r, 'component-code-value-concept')), 'component-code-value-concept');
  });

  it('filters `.where(resolve() is X)` branches by the reference type, without a repository', () => {
    const obs = (subject: object, extra: object = {}): Resource =>
      ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject, ...extra }) as Resource;
    const patientDef = searchParamsFor('Observation').filter((d) => d.code === 'patient');
    const patientRefs = (r: Resource) => refs(extractIndexWith(r, patientDef), 'patient');

    assert.deepEqual(patientRefs(obs({ reference: 'http://example.org/fhir/Patient/123/_history/2' })),
      [{ param: 'patient', targetType: 'Patient', targetId: '123', reference: 'http://example.org/fhir/Patient/123/_history/2' }]);
    assert.deepEqual(patientRefs(obs({ reference: 'Group/1' })), []);
    assert.deepEqual(refs(extractIndex(obs({ reference: 'Group/1' })), 'subject'),
      [{ param: 'subject', targetType: 'Group', targetId: '1', reference: 'Group/1' }]);
    // A contained patient: kept for `patient`, typed by the contained resource, no id of its own.
    assert.deepEqual(patientRefs(obs({ reference: '#p1' }, { contained: [{ resourceType: 'Patient', id: 'p1' }] })),
      [{ param: 'patient', targetType: 'Patient', targetId: null, reference: '#p1' }]);
    assert.deepEqual(patientRefs(obs({ reference: '#d1' }, { contained: [{ resourceType: 'Device', id: 'd1' }] })), []);
    // Reference.type decides when the reference string cannot.
    assert.deepEqual(patientRefs(obs({ reference: 'urn:uuid:5b2b5d1d-8e1f-4f4e-9d8a-4a2e4d3c1b2a', type: 'Patient' })),
      [{ param: 'patient', targetType: 'Patient', targetId: null, reference: 'urn:uuid:5b2b5d1d-8e1f-4f4e-9d8a-4a2e4d3c1b2a' }]);
    assert.deepEqual(refs(extractIndex(obs({ reference: 'urn:uuid:5b2b5d1d-8e1f-4f4e-9d8a-4a2e4d3c1b2a', type: 'Patient' })), 'subject'),
      [{ param: 'subject', targetType: 'Patient', targetId: null, reference: 'urn:uuid:5b2b5d1d-8e1f-4f4e-9d8a-4a2e4d3c1b2a' }],
      'the same type on the stored row, so filtering subject rows by type gives patient rows');
    // Identifier-only references: no reference row, a `:identifier` token row.
    const byId = extractIndex(obs({ type: 'Patient', identifier: { system: 'urn:mrn', value: '42', type: { text: 'MRN' } } }));
    assert.deepEqual(refs(byId, 'patient'), []);
    assert.deepEqual(tokens(byId, 'patient:identifier'), [{ param: 'patient:identifier', system: 'urn:mrn', code: '42', text: 'MRN' }],
      'written by extractIndex, as token rows carry no target type to filter subject:identifier by');
    assert.deepEqual(tokens(byId, 'subject:identifier'), [{ param: 'subject:identifier', system: 'urn:mrn', code: '42', text: 'MRN' }]);
    assert.deepEqual(tokens(extractIndex(obs({ identifier: { value: '42' } })), 'patient:identifier'), [], 'type unknown');
    assert.deepEqual(tokens(extractIndex(obs({ type: 'Group', identifier: { value: '42' } })), 'patient:identifier'), [], 'not a Patient');
    assert.deepEqual(refs(extractIndex(obs({ reference: 'Patient/1' })), 'patient'), [], 'references stored as subject only');
  });
});

describe('search index: Patient', () => {
  it('indexes the patient example', () => {
    const rows = extractIndex(example('Patient/patient-example.json'));
    assert.deepEqual(strings(rows, 'family').map((s) => [s.value, s.raw]), [['chalmers', 'Chalmers'], ['windsor', 'Windsor']]);
    assert.deepEqual(strings(rows, 'given').map((s) => s.value), ['peter', 'james', 'jim']);
    assert.deepEqual(strings(rows, 'name').map((s) => s.value), ['chalmers', 'peter', 'james', 'jim', 'windsor']);
    assert.deepEqual(strings(rows, 'phonetic'), [], 'stored as name');
    assert.deepEqual(strings(readAs(rows, 'Patient', 'phonetic'), 'phonetic').map((s) => s.value), ['chalmers', 'peter', 'james', 'jim', 'windsor']);
    assert.deepEqual(dates(rows, 'birthdate'), [{ param: 'birthdate', lo: '1974-12-25T00:00:00.000Z', hi: '1974-12-26T00:00:00.000Z' }]);
    assert.deepEqual(tokens(rows, 'identifier'), [{ param: 'identifier', system: 'urn:oid:1.2.36.146.595.217.0.1', code: '12345', text: null }]);
    assert.deepEqual(tokens(rows, 'identifier:of-type'),
      [{ param: 'identifier:of-type', system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR|12345', text: null }]);
    assert.deepEqual(codes(rows, 'gender'), ['|male']);
    assert.deepEqual(codes(rows, 'active'), ['|true']);
    assert.deepEqual(codes(rows, 'deceased'), ['|false']);
    assert.deepEqual(codes(rows, '_id'), []);
    assert.deepEqual(codes(rows, 'address-use'), ['|home']);
    assert.deepEqual(codes(rows, 'phone'), ['|(03) 5555 6473', '|(03) 3410 5613', '|(03) 5555 8834']);
    assert.deepEqual(codes(rows, 'telecom'), codes(rows, 'phone'));
    assert.deepEqual(codes(rows, 'email'), []);
    assert.deepEqual(strings(rows, 'address-city'), [{ param: 'address-city', value: 'pleasantville', raw: 'PleasantVille' }]);
    assert.deepEqual(strings(rows, 'address-state').map((s) => s.value), ['vic']);
    assert.deepEqual(strings(rows, 'address-postalcode').map((s) => s.value), ['3999']);
    assert.deepEqual(strings(rows, 'address').map((s) => s.value), [
      '534 erewhon st', 'pleasantville', 'rainbow', 'vic', '3999', '534 erewhon st peasantville, rainbow, vic 3999',
    ]);
    assert.deepEqual(refs(rows, 'organization'), [{ param: 'organization', targetType: 'Organization', targetId: '1', reference: 'Organization/1' }]);
  });

  it('handles deceased, death-date, diacritics, contained and extension-only primitives', () => {
    const edge = extractIndex(example('Patient/json-edge-cases.json'));
    assert.deepEqual(codes(edge, 'deceased'), ['|true']);
    assert.deepEqual(codes(edge, 'active'), [], '_active carries only an extension');
    assert.deepEqual(dates(edge, 'birthdate'), [{ param: 'birthdate', lo: '1974-12-01T00:00:00.000Z', hi: '1975-01-01T00:00:00.000Z' }]);
    assert.deepEqual(refs(edge, 'general-practitioner'), [{ param: 'general-practitioner', targetType: 'Organization', targetId: null, reference: '#org3141' }],
      'contained: typed by the contained resource');

    const p = extractIndex({
      resourceType: 'Patient', id: 'z', deceasedDateTime: '2015-02-14T13:42+10:00',
      name: [{ family: 'Zoë Émile', given: ['Ŝtefan'] }],
      telecom: [{ system: 'email', value: 'zoe@example.org' }, { system: 'phone' }],
      communication: [{ language: { coding: [{ system: 'urn:ietf:bcp:47', code: 'fr' }] } }],
      link: [{ other: { reference: 'Patient/other' }, type: 'seealso' }],
      meta: { lastUpdated: '2024-01-02T03:04:05.678Z', tag: [{ system: 'urn:t', code: 'a' }], security: [{ system: 'urn:s', code: 'R' }], source: 'http://src' },
    } as Resource);
    assert.deepEqual(strings(p, 'family'), [{ param: 'family', value: 'zoe emile', raw: 'Zoë Émile' }]);
    assert.deepEqual(strings(p, 'given').map((s) => s.value), ['stefan']);
    assert.deepEqual(codes(p, 'deceased'), ['|true']);
    assert.deepEqual(dates(p, 'death-date'), [{ param: 'death-date', lo: '2015-02-14T03:42:00.000Z', hi: '2015-02-14T03:43:00.000Z' }]);
    assert.deepEqual(codes(p, 'email'), ['|zoe@example.org']);
    assert.deepEqual(codes(p, 'language'), ['urn:ietf:bcp:47|fr']);
    assert.deepEqual(refs(p, 'link').map((r) => r.targetId), ['other']);
    assert.deepEqual(dates(p, '_lastUpdated'), [], '_lastUpdated is searched on the row itself: no index rows');
    assert.deepEqual(codes(p, '_tag'), ['urn:t|a']);
    assert.deepEqual(codes(p, '_security'), ['urn:s|R']);
    assert.deepEqual(p.uris, [{ param: '_source', value: 'http://src' }]);
  });
});

describe('search index: Encounter, MedicationStatement, AuditEvent', () => {
  it('indexes encounters', () => {
    const rows = extractIndex(example('Encounter/encounter-example-emerg.json'));
    assert.deepEqual(codes(rows, 'status'), ['|in-progress']);
    assert.deepEqual(codes(rows, 'class'), ['http://terminology.hl7.org/CodeSystem/v3-ActCode|IMP']);
    assert.deepEqual(dates(rows, 'date'), [{ param: 'date', lo: '2017-01-31T21:15:00.000Z', hi: MAX_INSTANT }], 'open period');
    assert.equal(dates(rows, 'location-period').length, 5);
    assert.deepEqual(dates(rows, 'location-period')[0], { param: 'location-period', lo: '2017-01-31T21:15:00.000Z', hi: '2017-01-31T22:45:01.000Z' });
    assert.deepEqual(refs(rows, 'subject').map((r) => r.reference), ['Patient/example']);
    assert.deepEqual(refs(rows, 'patient'), []);
    assert.deepEqual(refs(readAs(rows, 'Encounter', 'patient'), 'patient').map((r) => r.reference), ['Patient/example']);
    assert.deepEqual(refs(rows, 'location'), [], 'display-only references give no rows');

    const f201 = extractIndex(example('Encounter/encounter-example-f201-20130404.json'));
    assert.deepEqual(codes(f201, 'type'), ['http://snomed.info/sct|11429006']);
    assert.deepEqual(refs(f201, 'practitioner'), []);
    assert.deepEqual(refs(readAs(f201, 'Encounter', 'practitioner'), 'practitioner').map((r) => r.reference), ['Practitioner/f201']);
    assert.deepEqual(refs(f201, 'participant').map((r) => r.reference), ['Practitioner/f201']);
    assert.deepEqual(refs(f201, 'service-provider').map((r) => r.reference), ['Organization/f201']);
    assert.deepEqual(tokens(f201, 'reason-code').map((t) => t.text?.slice(0, 20)), ['The patient had feve']);

    const all = examplesOf('Encounter').map((e) => extractIndex(e.resource));
    assert.ok(all.some((r) => quantities(r, 'length').length), 'length');
    assert.ok(all.some((r) => refs(r, 'diagnosis').length), 'diagnosis');
    assert.ok(all.some((r) => refs(r, 'location').length), 'location');
  });

  it('indexes medication statements', () => {
    const one = extractIndex(example('MedicationStatement/medicationstatementexample1.json'));
    assert.deepEqual(codes(one, 'status'), ['|active']);
    assert.deepEqual(dates(one, 'effective'), [{ param: 'effective', lo: '2015-01-23T00:00:00.000Z', hi: '2015-01-24T00:00:00.000Z' }]);
    assert.deepEqual(refs(one, 'medication'), [{ param: 'medication', targetType: 'Medication', targetId: null, reference: '#med0309' }]);
    assert.deepEqual(refs(one, 'subject').map((r) => r.reference), ['Patient/pat1']);
    assert.deepEqual(refs(one, 'patient'), []);
    assert.deepEqual(refs(readAs(one, 'MedicationStatement', 'patient'), 'patient').map((r) => r.reference), ['Patient/pat1']);
    assert.deepEqual(refs(one, 'source').map((r) => r.reference), ['Patient/pat1']);
    assert.deepEqual(codes(one, 'category'), ['http://terminology.hl7.org/CodeSystem/medication-statement-category|inpatient']);
    const all = examplesOf('MedicationStatement').map((e) => extractIndex(e.resource));
    assert.ok(all.some((r) => codes(r, 'code').length), 'medicationCodeableConcept gives code');
    assert.ok(all.every((r) => codes(r, 'code').length === 0 || refs(r, 'medication').length === 0), 'code and medication are exclusive');
  });

  it('indexes audit events', () => {
    const rows = extractIndex(example('AuditEvent/auditevent-example-disclosure.json'));
    assert.deepEqual(codes(rows, 'action'), ['|R']);
    assert.deepEqual(codes(rows, 'type'), ['http://dicom.nema.org/resources/ontology/DCM|110106']);
    assert.deepEqual(codes(rows, 'outcome'), ['|0']);
    assert.deepEqual(dates(rows, 'date'), [{ param: 'date', lo: '2013-09-22T00:08:00.000Z', hi: '2013-09-22T00:08:01.000Z' }]);
    assert.deepEqual(refs(rows, 'agent').map((r) => r.reference), ['Practitioner/example']);
    assert.deepEqual(refs(rows, 'entity').map((r) => [r.targetType, r.targetId, r.reference]),
      [['Patient', 'example', 'Patient/example'], ['Patient', 'example', 'Patient/example/_history/1']]);
    assert.deepEqual(refs(rows, 'patient'), []);
    assert.deepEqual(refs(readAs(rows, 'AuditEvent', 'patient'), 'patient').map((r) => r.reference), ['Patient/example', 'Patient/example/_history/1']);
    assert.deepEqual(tokens(rows, 'entity:identifier'), [{ param: 'entity:identifier', system: null, code: 'What.id', text: null }]);
    // Only the audit parameters are indexed (definitions.ts SEARCHABLE_ONLY): policy, address, altid, site... give no rows.
    assert.deepEqual(rows.uris, []);
    assert.deepEqual(rows.strings, []);
    assert.deepEqual(codes(rows, 'altid'), []);
    assert.deepEqual(codes(rows, 'site'), []);
    assert.deepEqual(searchParamsFor('AuditEvent').filter((d) => !d.code.startsWith('_')).map((d) => d.code),
      ['action', 'agent', 'date', 'entity', 'outcome', 'patient', 'subtype', 'type']);

    const ex = extractIndex(example('AuditEvent/auditevent-example.json'));
    assert.deepEqual(codes(ex, 'subtype'), ['http://dicom.nema.org/resources/ontology/DCM|110120']);
    assert.deepEqual(codes(ex, 'entity-type'), []);
    assert.deepEqual(tokens(ex, 'agent-role'), []);
  });
});

describe('search index: other value types (custom definitions)', () => {
  it('indexes Timing events and bounds, numbers and canonical reference targets', () => {
    const defs: SearchParamDef[] = [
      { code: 'timing', type: 'date', expression: 'MedicationRequest.dosageInstruction.timing', url: '' },
      { code: 'instantiates', type: 'reference', expression: 'MedicationRequest.instantiatesCanonical', url: '' },
      { code: 'refills', type: 'number', expression: 'MedicationRequest.dispenseRequest.numberOfRepeatsAllowed', url: '' },
    ];
    const rows = extractIndexWith({
      resourceType: 'MedicationRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/1' },
      medicationCodeableConcept: { text: 'x' },
      instantiatesCanonical: ['http://example.org/PlanDefinition/p|1.0'],
      dispenseRequest: { numberOfRepeatsAllowed: 3 },
      dosageInstruction: [{ timing: { event: ['2020-05-01T08:00:00Z', '2020-05-02'], repeat: { boundsPeriod: { start: '2020-05-01', end: '2020-05-31' } } } }],
    } as Resource, defs);
    assert.deepEqual(rows.dates, [
      { param: 'timing', lo: '2020-05-01T08:00:00.000Z', hi: '2020-05-01T08:00:01.000Z' },
      { param: 'timing', lo: '2020-05-02T00:00:00.000Z', hi: '2020-05-03T00:00:00.000Z' },
      { param: 'timing', lo: '2020-05-01T00:00:00.000Z', hi: '2020-06-01T00:00:00.000Z' },
    ]);
    assert.deepEqual(rows.references, [{ param: 'instantiates', targetType: null, targetId: null, reference: 'http://example.org/PlanDefinition/p|1.0' }]);
    assert.deepEqual(rows.numbers, [{ param: 'refills', value: 3, lo: 2.5, hi: 3.5 }]);
  });

  it('gives open Period ends the sentinel instants', () => {
    const defs: SearchParamDef[] = [{ code: 'date', type: 'date', expression: 'Encounter.period', url: '' }];
    const e = (period: object) => extractIndexWith({ resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' }, period } as Resource, defs).dates;
    assert.deepEqual(e({ end: '2020' }), [{ param: 'date', lo: MIN_INSTANT, hi: '2021-01-01T00:00:00.000Z' }]);
    assert.deepEqual(e({ start: '2020-03-04T05:06:07.890Z' }), [{ param: 'date', lo: '2020-03-04T05:06:07.890Z', hi: MAX_INSTANT }]);
    assert.deepEqual(e({}), []);
    assert.deepEqual(e({ start: 'bad' }), []);
  });
});

describe('search index: robustness, coverage, speed', () => {
  it('never throws on odd input, and counts expressions that fail', () => {
    for (const odd of [null, undefined, 42, 'Patient', [], {}, { resourceType: 7 }, { resourceType: 'NotAType', id: 'x' }]) {
      assert.doesNotThrow(() => extractIndex(odd as unknown as Resource));
    }
    const weird = {
      resourceType: 'Patient', id: 'w', name: 'bogus', birthDate: 'not-a-date', identifier: [{}, null, { value: 5 }],
      telecom: [null, 'x', { system: 'email' }], gender: { code: 'male' }, address: [{ line: 'not-an-array', city: 5 }],
      managingOrganization: 'Organization/1', generalPractitioner: [{ reference: 12 }], meta: { lastUpdated: 5, tag: 'x' },
      deceasedDateTime: '2020-02-30', active: 'yes',
    };
    let rows: IndexRows | undefined;
    assert.doesNotThrow(() => { rows = extractIndex(weird as unknown as Resource); });
    assert.deepEqual(codes(rows!, 'gender'), []);
    assert.deepEqual(dates(rows!, 'birthdate'), []);
    assert.deepEqual(codes(rows!, 'deceased'), ['|true']);

    // Many values of one parameter (past the linear de-duplication window), with repeats.
    const many = extractIndex({
      resourceType: 'Patient',
      identifier: Array.from({ length: 500 }, (_, i) => ({ system: 'urn:x', value: String(i % 200) })),
    } as Resource);
    assert.equal(tokens(many, 'identifier').length, 200);

    resetExtractStats();
    const defs: SearchParamDef[] = [
      { code: 'broken', type: 'string', expression: 'Patient.name.(', url: '' },
      { code: 'single-family', type: 'string', expression: 'Patient.name.family.single()', url: '' },
      { code: 'family', type: 'string', expression: 'Patient.name.family', url: '' },
    ];
    const two = extractIndexWith({ resourceType: 'Patient', name: [{ family: 'A' }, { family: 'B' }] } as Resource, defs);
    assert.deepEqual(two.strings.map((s) => `${s.param}:${s.value}`), ['family:a', 'family:b'], 'failing params skipped, others kept');
    const one = extractIndexWith({ resourceType: 'Patient', name: [{ family: 'A' }] } as Resource, defs);
    assert.deepEqual(one.strings.map((s) => `${s.param}:${s.value}`), ['single-family:a', 'family:a']);
    const stats = extractStats();
    assert.equal(stats.compileErrors, 1);
    assert.equal(stats.evalErrors, 1);
    assert.equal(stats.lastError?.param, 'single-family');
  });

  it('extracts every example without throwing; every parameter has data or is listed', () => {
    resetExtractStats();
    const noData: Record<string, string[]> = {};
    for (const type of TYPES) {
      const seen = new Set<string>();
      const files = examplesOf(type);
      assert.ok(files.length > 0, `${type} examples`);
      for (const { file, resource } of files) {
        let rows: IndexRows | undefined;
        assert.doesNotThrow(() => { rows = extractIndex(resource); }, file);
        for (const list of Object.values(rows!) as { param: string }[][]) {
          for (const r of list) seen.add(r.param.split(':')[0]);
        }
        // Parameters stored as others have data when those rows (of their target type) do.
        for (const d of searchParamsFor(type).filter((x) => x.storedAs)) {
          if (Object.values(readAs(rows!, type, d.code)).some((l) => (l as unknown[]).length)) seen.add(d.code);
        }
        // No duplicate rows.
        for (const [kind, list] of Object.entries(sortedJson(rows!))) {
          assert.equal(new Set(list).size, list.length, `${file}: duplicate ${kind}`);
        }
      }
      const codesOfType = searchParamsFor(type).map((d) => d.code);
      for (const code of seen) assert.ok(codesOfType.includes(code), `${type}: row for unknown param ${code}`);
      noData[type] = codesOfType.filter((c) => !seen.has(c));
    }
    console.log('params with no example data (not a failure):', noData);
    const stats = extractStats();
    assert.equal(stats.compileErrors + stats.evalErrors, 0, JSON.stringify(stats));
  });

  it('the fast path gives exactly the rows Medplum FHIRPath gives', () => {
    for (const type of TYPES) {
      for (const { file, resource } of examplesOf(type)) {
        assert.deepEqual(sortedJson(extractIndex(resource)), sortedJson(extractIndex(resource, { fastPath: false })), file);
      }
    }
  });

  it('is fast (printed, not asserted)', () => {
    const samples: [string, Resource][] = [
      ['Observation (blood pressure)', example('Observation/observation-example-bloodpressure.json')],
      ['Observation (glucose)', example('Observation/observation-example-f001-glucose.json')],
      ['Patient', example('Patient/patient-example.json')],
      ['Encounter', example('Encounter/encounter-example-emerg.json')],
      ['MedicationStatement', example('MedicationStatement/medicationstatementexample1.json')],
      ['AuditEvent', example('AuditEvent/auditevent-example.json')],
    ];
    const time = (r: Resource, fastPath: boolean): number => {
      for (let i = 0; i < 200; i++) extractIndex(r, { fastPath });
      let best = Infinity;
      for (let round = 0; round < 3; round++) {
        const n = 300;
        const t0 = performance.now();
        for (let i = 0; i < n; i++) extractIndex(r, { fastPath });
        best = Math.min(best, ((performance.now() - t0) / n) * 1000);
      }
      return best;
    };
    for (const [name, r] of samples) {
      console.log(`  extractIndex ${name}: ${time(r, true).toFixed(1)} µs (Medplum FHIRPath only: ${time(r, false).toFixed(1)} µs)`);
    }
  });
});
