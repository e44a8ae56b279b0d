// FHIR search over HTTP against the index side tables: parameter types, modifiers,
// prefixes, chains, _has, result control and stable paging.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
const ids: Record<string, string> = {};
before(async () => {
  srv = await startTestServer();
  const post = async (key: string, body: object) => {
    const r = await fhir(srv.url, 'POST', (body as any).resourceType, body);
    assert.equal(r.status, 201, r.text);
    ids[key] = r.json.id;
  };
  await post('zoe', { resourceType: 'Patient', name: [{ family: 'Émile', given: ['Zoë'] }], gender: 'female', birthDate: '1980-05-17', identifier: [{ system: 'urn:mrn', value: 'A1', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] } }], address: [{ city: 'Boston' }] });
  await post('bob', { resourceType: 'Patient', name: [{ family: 'Emilson', given: ['Bob'] }], gender: 'male', birthDate: '1975', identifier: [{ system: 'urn:mrn', value: 'B2' }], active: true });
  await post('enc', { resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${ids.zoe}` }, period: { start: '2024-03-01T09:00:00Z', end: '2024-03-01T10:00:00Z' } });
  const obs = (key: string, patient: string, code: string, value: number, when: string, extra: object = {}) => post(key, {
    resourceType: 'Observation', status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
    code: { coding: [{ system: 'http://loinc.org', code, display: code === '8867-4' ? 'Heart rate' : 'Body weight' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: when,
    valueQuantity: { value, unit: code === '8867-4' ? '/min' : 'kg', system: 'http://unitsofmeasure.org', code: code === '8867-4' ? '/min' : 'kg' }, ...extra,
  });
  await obs('hr1', ids.zoe, '8867-4', 72, '2024-03-01T09:30:00Z', { encounter: { reference: `Encounter/${ids.enc}` } });
  await obs('hr2', ids.zoe, '8867-4', 95.5, '2024-04-02');
  await obs('wt1', ids.bob, '29463-7', 80, '2023-12-31T23:00:00Z');
  await post('bp', {
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] }, subject: { reference: `Patient/${ids.bob}` },
    effectiveDateTime: '2024-01-10',
    component: [
      { code: { coding: [{ system: 'http://loinc.org', code: '8480-6' }] }, valueQuantity: { value: 140, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
      { code: { coding: [{ system: 'http://loinc.org', code: '8462-4' }] }, valueQuantity: { value: 90, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' } },
    ],
  });
  await post('med', { resourceType: 'MedicationStatement', status: 'active', medicationCodeableConcept: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '1191' }], text: 'Aspirin' }, subject: { reference: `Patient/${ids.zoe}` }, effectivePeriod: { start: '2024-01-01' } });
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

async function found(query: string, headers: Record<string, string> = {}): Promise<string[]> {
  const r = await fhir(srv.url, 'GET', query, undefined, headers);
  assert.equal(r.status, 200, `${query}: ${r.text}`);
  return r.json.entry.filter((e: any) => e.search.mode === 'match').map((e: any) => e.resource.id).sort();
}
const sorted = (...keys: string[]) => keys.map((k) => ids[k]).sort();

describe('parameter types', () => {
  test('string: starts-with, accent- and case-insensitive; :exact; :contains', async () => {
    assert.deepEqual(await found('Patient?family=emil'), sorted('zoe', 'bob'));
    assert.deepEqual(await found('Patient?given=zoe'), sorted('zoe'));
    assert.deepEqual(await found('Patient?name=ZOË'), sorted('zoe'));
    assert.deepEqual(await found('Patient?family:exact=Émile'), sorted('zoe'));
    assert.deepEqual(await found('Patient?family:exact=emile'), []);
    assert.deepEqual(await found('Patient?family:contains=milso'), sorted('bob'));
    assert.deepEqual(await found('Patient?address-city=bos'), sorted('zoe'));
  });

  test('token: code, system|code, |code, system|, :not, :text, :of-type, OR and AND', async () => {
    assert.deepEqual(await found('Observation?code=8867-4'), sorted('hr1', 'hr2'));
    assert.deepEqual(await found('Observation?code=http://loinc.org|8867-4'), sorted('hr1', 'hr2'));
    assert.deepEqual(await found('Observation?code=http://snomed.info/sct|8867-4'), []);
    assert.deepEqual(await found('Observation?code=8867-4,29463-7'), sorted('hr1', 'hr2', 'wt1'));
    assert.deepEqual(await found('Patient?gender=female'), sorted('zoe'));
    assert.deepEqual(await found('Patient?gender:not=female'), sorted('bob'));
    assert.deepEqual(await found('Patient?identifier=urn:mrn|A1'), sorted('zoe'));
    assert.deepEqual(await found('Patient?identifier=urn:mrn|'), sorted('zoe', 'bob'));
    assert.deepEqual(await found('Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1'), sorted('zoe'));
    assert.deepEqual(await found('Observation?code:text=heart'), sorted('hr1', 'hr2'));
    assert.deepEqual(await found('Observation?code=8867-4&subject=Patient/' + ids.zoe + '&date=ge2024-04'), sorted('hr2'));
    assert.deepEqual(await found('MedicationStatement?code=1191'), sorted('med'));
  });

  test('date: prefixes with precision ranges', async () => {
    assert.deepEqual(await found('Observation?date=2024-03-01'), sorted('hr1'));
    assert.deepEqual(await found('Observation?date=2024'), sorted('hr1', 'hr2', 'bp'));
    assert.deepEqual(await found('Observation?date=lt2024-01-01'), sorted('wt1'));
    assert.deepEqual(await found('Observation?date=gt2024-03-01'), sorted('hr2'));
    assert.deepEqual(await found('Observation?date=ge2024-03-01'), sorted('hr1', 'hr2'));
    assert.deepEqual(await found('Observation?date=le2024-01-10'), sorted('wt1', 'bp'));
    assert.deepEqual(await found('Observation?date=ne2024-03-01&code=8867-4'), sorted('hr2'));
    assert.deepEqual(await found('Observation?date=sa2024-03-31'), sorted('hr2'));
    assert.deepEqual(await found('Observation?date=eb2024-01-01'), sorted('wt1'));
    assert.deepEqual(await found('Patient?birthdate=1975'), sorted('bob'));
    assert.deepEqual(await found('Patient?birthdate=1975-06-01'), [], 'a 1975 birthDate is not within one day');
    assert.deepEqual(await found('Encounter?date=2024-03-01T09:30:00Z'), [], 'eq needs the period inside the instant');
    assert.deepEqual(await found('Encounter?date=ge2024-03-01T09:30:00Z'), sorted('enc'));
    const bad = await fhir(srv.url, 'GET', 'Observation?date=2024-13-45');
    assert.equal(bad.status, 400);
    assert.equal(bad.json.resourceType, 'OperationOutcome');
  });

  test('quantity and composite', async () => {
    assert.deepEqual(await found('Observation?value-quantity=72'), sorted('hr1'));
    assert.deepEqual(await found('Observation?value-quantity=gt90'), sorted('hr2'));
    assert.deepEqual(await found('Observation?value-quantity=le80|http://unitsofmeasure.org|kg'), sorted('wt1'));
    assert.deepEqual(await found('Observation?value-quantity=95.5||/min'), sorted('hr2'));
    assert.deepEqual(await found('Observation?component-code-value-quantity=http://loinc.org|8480-6$gt130'), sorted('bp'));
    assert.deepEqual(await found('Observation?component-code-value-quantity=http://loinc.org|8480-6$lt130'), []);
    assert.deepEqual(await found('Observation?code-value-quantity=8867-4$ge90'), sorted('hr2'));
  });

  test('reference: Type/id, id, :Type, chain, _has, :missing', async () => {
    assert.deepEqual(await found(`Observation?subject=Patient/${ids.zoe}`), sorted('hr1', 'hr2'));
    assert.deepEqual(await found(`Observation?patient=${ids.zoe}`), sorted('hr1', 'hr2'));
    assert.deepEqual(await found(`Observation?subject:Patient=${ids.bob}`), sorted('wt1', 'bp'));
    assert.deepEqual(await found(`Observation?subject=${srv.url}/Patient/${ids.bob}`), sorted('wt1', 'bp'));
    assert.deepEqual(await found('Observation?subject:Patient.name=emilson'), sorted('wt1', 'bp'));
    assert.deepEqual(await found('Observation?patient.gender=female&code=8867-4'), sorted('hr1', 'hr2'));
    assert.deepEqual(await found('Patient?_has:Observation:patient:code=85354-9'), sorted('bob'));
    assert.deepEqual(await found('Patient?_has:Observation:subject:code=8867-4'), sorted('zoe'));
    assert.deepEqual(await found('Observation?encounter:missing=false'), sorted('hr1'));
    assert.deepEqual(await found('Observation?encounter:missing=true&code=8867-4'), sorted('hr2'));
  });

  test('_id and _lastUpdated', async () => {
    assert.deepEqual(await found(`Patient?_id=${ids.zoe},${ids.bob}`), sorted('zoe', 'bob'));
    assert.deepEqual(await found(`Patient?_lastUpdated=gt2000-01-01&_id=${ids.zoe}`), sorted('zoe'));
    assert.deepEqual(await found(`Patient?_lastUpdated=lt2000-01-01`), []);
  });
});

describe('result control', () => {
  test('_sort by several keys, ascending and descending', async () => {
    const r = await fhir(srv.url, 'GET', 'Observation?_sort=code,-date');
    const order = r.json.entry.map((e: any) => e.resource.id);
    assert.deepEqual(order, [ids.wt1, ids.bp, ids.hr2, ids.hr1]);
    const byDate = await fhir(srv.url, 'GET', 'Observation?_sort=date');
    assert.deepEqual(byDate.json.entry.map((e: any) => e.resource.id), [ids.wt1, ids.bp, ids.hr1, ids.hr2]);
    assert.equal((await fhir(srv.url, 'GET', 'Observation?_sort=nonsense')).status, 400);
  });

  test('unsorted pages walked from an index in id order match the sorted plan, page by page', async () => {
    // Without _sort a single code or reference target drives the page from its index rows
    // in id order (stopping at _count); _sort=_id goes through the general plan.
    const queries = [
      'Observation?code=8867-4', `Observation?code=${encodeURIComponent('http://loinc.org|8867-4')}&value-quantity=gt80`,
      `Observation?patient=${ids.zoe}&code=8867-4`, `Observation?subject=Patient/${ids.bob}`, `Patient?identifier=${encodeURIComponent('urn:mrn|A1')}`,
      'Observation?category=vital-signs&date=ge2024', `Encounter?patient=${ids.zoe}`, 'Observation?code=8867-4&subject:Patient.name=emile',
      `Patient?_has:Observation:patient:code=8867-4`, 'Observation?code=8867-4&code:not=8867-4',
    ];
    for (const q of queries) {
      const expected = (await fhir(srv.url, 'GET', `${q}&_sort=_id&_count=100`)).json.entry.map((e: any) => e.resource.id);
      const walked: string[] = [];
      let url: string | undefined = `${srv.url}/${q}&_count=1`;
      while (url) {
        const page: any = await (await fetch(url)).json();
        walked.push(...page.entry.filter((e: any) => e.search.mode === 'match').map((e: any) => e.resource.id));
        url = page.link.find((l: any) => l.relation === 'next')?.url;
      }
      assert.deepEqual(walked, expected, q);
    }
    assert.deepEqual(await found(`Observation?code=${encodeURIComponent('http://loinc.org|8867-4')}&value-quantity=gt80`), sorted('hr2'));
    // A patient's rows drive sorted searches too; _lastUpdated applies to the resource rows.
    const sortedIds = async (q: string) => (await fhir(srv.url, 'GET', q)).json.entry.map((e: any) => e.resource.id);
    assert.deepEqual(await sortedIds(`Observation?patient=${ids.zoe}&_lastUpdated=gt2000-01-01&_sort=-date`), [ids.hr2, ids.hr1]);
    assert.deepEqual(await sortedIds(`Observation?patient=${ids.zoe}&_lastUpdated=lt2000-01-01&_sort=-date`), []);
    assert.deepEqual(await sortedIds(`Observation?patient=${ids.zoe}&_lastUpdated=gt2000-01-01`), sorted('hr1', 'hr2'));
  });

  test('_count paging visits every match exactly once, with links that keep the query', async () => {
    let url: string | undefined = `${srv.url}/Observation?_sort=-date&_count=1&_total=accurate`;
    const seen: string[] = [];
    while (url) {
      const page: any = await (await fetch(url)).json();
      if (seen.length === 0) assert.equal(page.total, 4);
      seen.push(...page.entry.map((e: any) => e.resource.id));
      url = page.link.find((l: any) => l.relation === 'next')?.url;
      if (url) assert.match(url, /_sort=-date/);
      if (seen.length === 1) {
        // A write in between must not shift later pages.
        // It sorts before the cursor, so it belongs to no later page.
        const late = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'late' }, effectiveDateTime: '2030-01-01' });
        ids.late = late.json.id;
      }
    }
    assert.deepEqual(seen, [ids.hr2, ids.hr1, ids.bp, ids.wt1]);
  });

  test('_total, _summary=count, _elements, _summary=true', async () => {
    const none = await fhir(srv.url, 'GET', 'Patient?_total=none');
    assert.equal(none.json.total, undefined);
    const count = await fhir(srv.url, 'GET', 'Observation?code=8867-4&_summary=count');
    assert.equal(count.json.total, 2);
    assert.equal(count.json.entry.length, 0);
    // An estimate is exact up to 1,000 matches (test/searchEstimate.test.ts goes past it).
    const est = await fhir(srv.url, 'GET', 'Observation?code=8867-4&_total=estimate');
    assert.equal(est.status, 200);
    assert.equal(est.json.total, 2);
    assert.equal(est.json.entry.length, 2);
    const el = await fhir(srv.url, 'GET', `Patient?_id=${ids.zoe}&_elements=gender`);
    const p = el.json.entry[0].resource;
    assert.equal(p.gender, 'female');
    assert.equal(p.name, undefined);
    assert.ok(p.meta.tag.some((t: any) => t.code === 'SUBSETTED'));
    const sum = await fhir(srv.url, 'GET', `Patient?_id=${ids.zoe}&_summary=true`);
    assert.equal(sum.json.entry[0].resource.name[0].family, 'Émile');
    assert.equal(sum.json.entry[0].resource.address[0].city, 'Boston');
  });

  test('_include and _revinclude (with :iterate)', async () => {
    const inc = await fhir(srv.url, 'GET', `Observation?_id=${ids.hr1}&_include=Observation:subject&_include=Observation:encounter`);
    const modes = inc.json.entry.map((e: any) => `${e.search.mode}:${e.resource.resourceType}`).sort();
    assert.deepEqual(modes, ['include:Encounter', 'include:Patient', 'match:Observation']);
    const rev = await fhir(srv.url, 'GET', `Patient?_id=${ids.bob}&_revinclude=Observation:subject`);
    assert.deepEqual(rev.json.entry.filter((e: any) => e.search.mode === 'include').map((e: any) => e.resource.id).sort(), sorted('wt1', 'bp'));
    const iter = await fhir(srv.url, 'GET', `Encounter?_id=${ids.enc}&_revinclude=Observation:encounter&_include:iterate=Observation:subject`);
    assert.deepEqual(iter.json.entry.map((e: any) => e.resource.resourceType).sort(), ['Encounter', 'Observation', 'Patient']);
    assert.equal((await fhir(srv.url, 'GET', 'Observation?_include=Observation:status')).status, 400);
  });

  test('unknown parameters: lenient reports them, strict refuses', async () => {
    const lenient = await fhir(srv.url, 'GET', 'Patient?frobnicate=1&gender=male');
    assert.equal(lenient.status, 200);
    const oo = lenient.json.entry.find((e: any) => e.search.mode === 'outcome');
    assert.match(oo.resource.issue[0].diagnostics, /frobnicate/);
    assert.deepEqual(lenient.json.entry.filter((e: any) => e.search.mode === 'match').map((e: any) => e.resource.id), [ids.bob]);
    assert.equal((await fhir(srv.url, 'GET', 'Patient?frobnicate=1', undefined, { prefer: 'handling=strict' })).status, 400);
    assert.equal((await fhir(srv.url, 'GET', 'Patient?gender:exact=male')).status, 400, 'a modifier the type does not take');
    assert.equal((await fhir(srv.url, 'GET', 'Observation?value-quantity=abc')).status, 400);
  });

  test('POST _search with a form body, and tenant isolation', async () => {
    const r = await fetch(`${srv.url}/Patient/_search`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/fhir+json' }, body: 'family=emil&gender=male' });
    const b: any = await r.json();
    assert.deepEqual(b.entry.map((e: any) => e.resource.id), [ids.bob]);
    await srv.db.owner.query(`INSERT INTO organizations (slug, name) VALUES ('other', 'Other') ON CONFLICT DO NOTHING`);
    assert.deepEqual(await found(`other/Patient?family=emil`), []);
  });

  test('an update re-indexes and a delete un-indexes', async () => {
    const c = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Reindex' }] });
    assert.deepEqual(await found('Patient?family=reindex'), [c.json.id]);
    await fhir(srv.url, 'PUT', `Patient/${c.json.id}`, { resourceType: 'Patient', id: c.json.id, name: [{ family: 'Renamed' }] });
    assert.deepEqual(await found('Patient?family=reindex'), []);
    assert.deepEqual(await found('Patient?family=renamed'), [c.json.id]);
    await fhir(srv.url, 'DELETE', `Patient/${c.json.id}`);
    assert.deepEqual(await found('Patient?family=renamed'), []);
  });
});

describe('Patient/$everything', () => {
  test('returns the compartment, honours _type, start/end and pages', async () => {
    const all = await fhir(srv.url, 'GET', `Patient/${ids.zoe}/$everything`);
    assert.equal(all.status, 200, all.text);
    const got = all.json.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();
    assert.deepEqual(got, [`Encounter/${ids.enc}`, `MedicationStatement/${ids.med}`, `Observation/${ids.hr1}`, `Observation/${ids.hr2}`, `Patient/${ids.zoe}`].sort());
    const obsOnly = await fhir(srv.url, 'GET', `Patient/${ids.zoe}/$everything?_type=Observation&start=2024-04-01`);
    assert.deepEqual(obsOnly.json.entry.map((e: any) => e.resource.id), [ids.hr2]);
    let url: string | undefined = `${srv.url}/Patient/${ids.zoe}/$everything?_count=2`;
    const seen: string[] = [];
    while (url) {
      const page: any = await (await fetch(url)).json();
      seen.push(...page.entry.map((e: any) => e.resource.id));
      url = page.link.find((l: any) => l.relation === 'next')?.url;
    }
    assert.equal(seen.length, 5);
    assert.equal(new Set(seen).size, 5);
    assert.equal((await fhir(srv.url, 'GET', 'Patient/nobody/$everything')).status, 404);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${ids.zoe}/$everything?_type=Parameters`)).status, 400);
    const every = await fhir(srv.url, 'GET', 'Patient/$everything?_type=Patient&_count=1000');
    assert.ok(every.json.entry.length >= 2);
  });
});

describe('system-level search', () => {
  test('GET [base]?_type= with common parameters, paged across types', async () => {
    const r = await fhir(srv.url, 'GET', `?_type=Patient,Encounter&_id=${ids.zoe},${ids.enc},${ids.hr1}&_total=accurate`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort(), [`Encounter/${ids.enc}`, `Patient/${ids.zoe}`].sort());
    assert.equal(r.json.total, 2);
    let url: string | undefined = `${srv.url}?_type=Patient,Observation&_lastUpdated=gt2000-01-01&_count=2`;
    const seen: string[] = [];
    while (url) {
      const page: any = await (await fetch(url)).json();
      seen.push(...page.entry.filter((e: any) => e.search.mode === 'match').map((e: any) => `${e.resource.resourceType}/${e.resource.id}`));
      url = page.link.find((l: any) => l.relation === 'next')?.url;
    }
    assert.equal(new Set(seen).size, seen.length);
    assert.ok(seen.includes(`Observation/${ids.bp}`) && seen.includes(`Patient/${ids.bob}`));
    assert.equal((await fhir(srv.url, 'GET', '?_type=Parameters')).status, 400);
    assert.equal((await fhir(srv.url, 'GET', '?_type=Patient&family=x', undefined, { prefer: 'handling=strict' })).status, 200, 'family is common when only Patient is listed');
    assert.equal((await fhir(srv.url, 'GET', '?_type=Patient,Observation&family=x', undefined, { prefer: 'handling=strict' })).status, 400);
  });
});

describe('parameters stored as other parameters (definitions.ts StoredAs)', () => {
  // Own tenant, so the other tests' expectations do not see these resources.
  const t = 'aliases';
  const a: Record<string, string> = {};
  const quantity = (value: number) => ({ value, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' });
  const loinc = (code: string) => ({ coding: [{ system: 'http://loinc.org', code }] });
  const in_ = (query: string) => found(`${t}/${query}`);
  const ofA = (...keys: string[]) => keys.map((k) => a[k]).sort();

  before(async () => {
    await srv.db.owner.query(`INSERT INTO organizations (slug, name) VALUES ($1, 'Aliases') ON CONFLICT DO NOTHING`, [t]);
    // With `id`, created by update (so that ids sort in a known order).
    const post = async (key: string, body: Record<string, unknown>) => {
      const r = body.id ? await fhir(srv.url, 'PUT', `${t}/${body.resourceType}/${body.id}`, body)
        : await fhir(srv.url, 'POST', `${t}/${body.resourceType}`, body);
      assert.equal(r.status, 201, r.text);
      a[key] = r.json.id;
    };
    await post('pa', { resourceType: 'Patient', name: [{ family: 'Aliasa' }], gender: 'female' });
    await post('pb', { resourceType: 'Patient', name: [{ family: 'Bliss' }], gender: 'male' });
    await post('g', { resourceType: 'Group', type: 'person', actual: true });
    await post('enc', { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${a.pa}` } });
    const obs = (key: string, subject: object, extra: object) =>
      post(key, { resourceType: 'Observation', status: 'final', subject, effectiveDateTime: '2024-05-01', ...extra });
    await obs('o1', { reference: `Patient/${a.pa}` }, { code: loinc('8867-4'), valueQuantity: quantity(72) });
    await obs('o2', { reference: `Patient/${a.pb}` }, {
      id: 'alias-2', code: loinc('85354-9'),
      component: [{ code: loinc('8480-6'), valueQuantity: quantity(140) }, { code: loinc('8462-4'), valueQuantity: quantity(90) }],
    });
    await obs('o3', { reference: `Group/${a.g}` }, { code: loinc('8867-4'), valueQuantity: quantity(100) });
    // The same code as the Observation's and two components' (of two systems): one match,
    // not three. Its id sorts before o2's, so a walk limited before de-duplication would end at it.
    await obs('o4', { reference: `Patient/${a.pa}` }, {
      id: 'alias-1', code: loinc('8480-6'), valueQuantity: quantity(120),
      component: [{ code: loinc('8480-6'), valueQuantity: quantity(125) }, { code: { coding: [{ system: 'urn:other', code: '8480-6' }] } }],
    });
    await obs('o5', { reference: `Patient/${a.pb}` }, { code: loinc('11111-1'), valueCodeableConcept: { coding: [{ system: 'urn:v', code: 'pos' }] } });
    // References with an identifier as well: `patient:identifier` is about Patient subjects only.
    await obs('o6', { reference: `Patient/${a.pb}`, identifier: { system: 'urn:mrn', value: 'Z9' } }, { code: loinc('22222-2') });
    await obs('o7', { reference: `Group/${a.g}`, identifier: { system: 'urn:mrn', value: 'Z9' } }, { code: loinc('22222-2') });
  });

  test('their rows are not written: each set of rows once', async () => {
    const { rows } = await srv.db.owner.query(
      `SELECT DISTINCT s.param FROM search_references s JOIN organizations o ON o.id = s.org_id WHERE o.slug = $1 UNION
       SELECT DISTINCT s.param FROM search_tokens s JOIN organizations o ON o.id = s.org_id WHERE o.slug = $1 UNION
       SELECT DISTINCT s.param FROM search_quantities s JOIN organizations o ON o.id = s.org_id WHERE o.slug = $1 UNION
       SELECT DISTINCT s.param FROM search_strings s JOIN organizations o ON o.id = s.org_id WHERE o.slug = $1`, [t]);
    const params = rows.map((r) => r.param);
    for (const p of ['subject', 'code', 'component-code', 'value-quantity', 'component-value-quantity', 'value-concept', 'name', 'patient:identifier']) {
      assert.ok(params.includes(p), p);
    }
    for (const p of ['patient', 'combo-code', 'combo-value-quantity', 'combo-value-concept', 'phonetic']) assert.ok(!params.includes(p), p);
    const composites = await srv.db.owner.query(
      `SELECT DISTINCT s.param FROM search_composites s JOIN organizations o ON o.id = s.org_id WHERE o.slug = $1 ORDER BY 1`, [t]);
    assert.deepEqual(composites.rows.map((r) => r.param), ['code-value-concept', 'code-value-quantity', 'component-code-value-quantity']);
  });

  test('patient= is subject= of type Patient', async () => {
    assert.deepEqual(await in_(`Observation?patient=${a.pa}`), ofA('o1', 'o4'));
    assert.deepEqual(await in_(`Observation?patient=Patient/${a.pb}`), ofA('o2', 'o5', 'o6'));
    assert.deepEqual(await in_(`Observation?subject=Group/${a.g}`), ofA('o3', 'o7'));
    assert.deepEqual(await in_(`Observation?patient=Group/${a.g}`), []);
    assert.deepEqual(await in_(`Observation?patient=${a.g}`), [], 'a Group id is no patient');
    assert.deepEqual(await in_(`Observation?patient=${a.pa},${a.g}&code=8867-4`), ofA('o1'));
    assert.deepEqual(await in_(`Encounter?patient=${a.pa}`), ofA('enc'));
    assert.deepEqual(await in_('Observation?patient:missing=true'), ofA('o3', 'o7'));
    assert.deepEqual(await in_('Observation?patient:missing=false&code=8867-4'), ofA('o1'));
    assert.deepEqual(await in_('Observation?patient.name=aliasa'), ofA('o1', 'o4'));
    assert.deepEqual(await in_('Observation?patient:Patient.gender=male'), ofA('o2', 'o5', 'o6'));
    assert.deepEqual(await in_('Patient?_has:Observation:patient:code=85354-9'), ofA('pb'));
    assert.deepEqual(await in_('Patient?_has:Observation:patient:combo-code=8480-6'), ofA('pa', 'pb'));
    assert.deepEqual(await in_('Observation?patient:identifier=urn:mrn|Z9'), ofA('o6'));
    assert.deepEqual(await in_('Observation?subject:identifier=urn:mrn|Z9'), ofA('o6', 'o7'));
  });

  test('combo-code, combo-value-quantity and combo-value-concept are the unions of their parts', async () => {
    assert.deepEqual(await in_('Observation?combo-code=8480-6'), ofA('o2', 'o4'));
    assert.deepEqual(await in_('Observation?combo-code=http://loinc.org|8462-4'), ofA('o2'));
    assert.deepEqual(await in_('Observation?combo-code=8867-4'), ofA('o1', 'o3'));
    assert.deepEqual(await in_('Observation?combo-code:not=8480-6&patient:missing=false'), ofA('o1', 'o5', 'o6'));
    assert.deepEqual(await in_('Observation?combo-code:missing=true'), []);
    assert.deepEqual(await in_('Observation?combo-value-quantity=gt130'), ofA('o2'));
    assert.deepEqual(await in_('Observation?combo-value-quantity=gt95'), ofA('o2', 'o3', 'o4'));
    assert.deepEqual(await in_('Observation?combo-value-quantity=72'), ofA('o1'));
    assert.deepEqual(await in_('Observation?combo-value-quantity=125||mm[Hg]'), ofA('o4'));
    assert.deepEqual(await in_('Observation?combo-value-quantity:missing=true'), ofA('o5', 'o6', 'o7'));
    assert.deepEqual(await in_('Observation?combo-value-concept=urn:v|pos'), ofA('o5'));
    assert.deepEqual(await in_('Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt121'), ofA('o2', 'o4'), 'components 140 and 125');
    assert.deepEqual(await in_('Observation?combo-code-value-quantity=8480-6$lt121'), ofA('o4'), 'the Observation\'s own 120');
    assert.deepEqual(await in_('Observation?combo-code-value-quantity=8867-4$gt90'), ofA('o3'));
    assert.deepEqual(await in_('Observation?combo-code-value-concept=11111-1$urn:v|pos'), ofA('o5'));
    assert.deepEqual(await in_('Observation?combo-code-value-quantity:missing=true&combo-value-quantity:missing=false'), []);
    assert.deepEqual(await in_(`Observation?combo-code=8480-6,8867-4&patient=${a.pa}`), ofA('o1', 'o4'));
    // Walked page by page from the merged per-parameter walks: each match once, links continue.
    for (const query of ['Observation?combo-code=8480-6,85354-9&_count=1', 'Observation?combo-code=8480-6&_count=1']) {
      const seen: string[] = [];
      let url: string | undefined = `${srv.url}/${t}/${query}`;
      while (url) {
        const page: any = await (await fetch(url)).json();
        seen.push(...(page.entry ?? []).filter((e: any) => e.search.mode === 'match').map((e: any) => e.resource.id));
        url = page.link.find((l: any) => l.relation === 'next')?.url;
      }
      assert.deepEqual(seen, ofA('o2', 'o4'), query);
    }
  });

  test('sorts, includes and revincludes by them', async () => {
    const order = async (q: string) => (await fhir(srv.url, 'GET', `${t}/${q}`)).json.entry.map((e: any) => e.resource.id);
    // Ascending by the least value of code's and components' quantities; none last.
    assert.deepEqual(await order('Observation?_sort=combo-value-quantity&combo-code:missing=false&_count=4'), [a.o1, a.o2, a.o3, a.o4]);
    assert.deepEqual(await order('Observation?_sort=-combo-value-quantity&_count=4'), [a.o2, a.o4, a.o3, a.o1]);
    // By the patient's id; a Group subject has no patient, so it sorts last.
    const byPatient = await order(`Observation?_sort=patient&code=8867-4`);
    assert.deepEqual(byPatient, [a.o1, a.o3]);

    const inc = await fhir(srv.url, 'GET', `${t}/Observation?_id=${a.o1},${a.o3}&_include=Observation:patient`);
    assert.deepEqual(inc.json.entry.filter((e: any) => e.search.mode === 'include').map((e: any) => `${e.resource.resourceType}/${e.resource.id}`),
      [`Patient/${a.pa}`], 'the Group subject is not included');
    const incSubject = await fhir(srv.url, 'GET', `${t}/Observation?_id=${a.o1},${a.o3}&_include=Observation:subject`);
    assert.equal(incSubject.json.entry.filter((e: any) => e.search.mode === 'include').length, 2);
    const rev = await fhir(srv.url, 'GET', `${t}/Patient?_id=${a.pa}&_revinclude=Observation:patient&_revinclude=Encounter:patient`);
    assert.deepEqual(rev.json.entry.filter((e: any) => e.search.mode === 'include').map((e: any) => e.resource.id).sort(), ofA('o1', 'o4', 'enc'));
    const revGroup = await fhir(srv.url, 'GET', `${t}/Group?_id=${a.g}&_revinclude=Observation:patient`);
    assert.deepEqual(revGroup.json.entry.filter((e: any) => e.search.mode === 'include'), []);
    const revGroupSubject = await fhir(srv.url, 'GET', `${t}/Group?_id=${a.g}&_revinclude=Observation:subject`);
    assert.deepEqual(revGroupSubject.json.entry.filter((e: any) => e.search.mode === 'include').map((e: any) => e.resource.id).sort(), ofA('o3', 'o7'));
  });

  test('Patient/$everything finds the compartment through the stored rows', async () => {
    const all = await fhir(srv.url, 'GET', `${t}/Patient/${a.pa}/$everything`);
    assert.equal(all.status, 200, all.text);
    assert.deepEqual(all.json.entry.map((e: any) => e.resource.id).sort(), ofA('pa', 'enc', 'o1', 'o4'));
  });
});
