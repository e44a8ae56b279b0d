// Reference search by an absolute URL (search.html#reference): the value names its Type/id,
// and a canonical or a reference whose type Kiln does not know is indexed by its text only
// (mappings/search/extract.ts), so such a value matches both kinds of index row.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

type Json = Record<string, any>;
const OTHER = 'http://other.example.org/fhir';

async function create(resource: Json): Promise<string> {
  const r = await fhir(srv.url, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

async function ids(query: string): Promise<string[]> {
  const r = await fhir(srv.url, 'GET', query);
  assert.equal(r.status, 200, `${query}: ${r.text}`);
  return (r.json.entry ?? []).map((e: Json) => e.resource.id).sort();
}

describe('reference search by an absolute URL of another server ending in Type/id', () => {
  let patient: string;
  let plain: string;
  let plainToo: string;
  let versioned: string;
  let untyped: string;

  before(async () => {
    patient = await create({ resourceType: 'Patient', name: [{ family: 'Canonical' }] });
    const response = (questionnaire: string, extra: Json = {}) =>
      ({ resourceType: 'QuestionnaireResponse', status: 'completed', questionnaire, subject: { reference: `Patient/${patient}` }, ...extra });
    plain = await create(response(`${OTHER}/Questionnaire/q1`));
    plainToo = await create(response(`${OTHER}/Questionnaire/q1`));
    versioned = await create(response(`${OTHER}/Questionnaire/q1|2.0`));
    // A Reference (not a canonical) to a type R4 does not have: indexed by its text alone.
    untyped = await create(response(`${OTHER}/Questionnaire/q3`, { author: { reference: `${OTHER}/Robot/r1` } }));
  });

  test('a canonical without a version is found by its URL, and not by another id or by the relative Type/id', async () => {
    const url = encodeURIComponent(`${OTHER}/Questionnaire/q1`);
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${url}`), [plain, plainToo].sort());
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${encodeURIComponent(`${OTHER}/Questionnaire/q2`)}`), []);
    // A relative value names a resource on this server, and a canonical has no such target.
    assert.deepEqual(await ids('QuestionnaireResponse?questionnaire=Questionnaire/q1'), []);
  });

  test('a canonical with |version is found by its URL with that version only', async () => {
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${encodeURIComponent(`${OTHER}/Questionnaire/q1|2.0`)}`), [versioned]);
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${encodeURIComponent(`${OTHER}/Questionnaire/q1|3.0`)}`), []);
  });

  test('the URL matches whether it drives the search, is one of several values, or is checked per row', async () => {
    const url = encodeURIComponent(`${OTHER}/Questionnaire/q1`);
    const both = [plain, plainToo].sort();
    // Alone it drives (an id-ordered walk per alternative); in a sorted search too.
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${url}&_sort=-_lastUpdated`), both);
    // Two values: one condition of the sorted plan.
    assert.deepEqual(await ids(`QuestionnaireResponse?questionnaire=${url},${encodeURIComponent(`${OTHER}/Questionnaire/q3`)}`), [...both, untyped].sort());
    // After another driving criterion: a per-row check.
    assert.deepEqual(await ids(`QuestionnaireResponse?subject=Patient/${patient}&questionnaire=${url}`), both);
  });

  test('pages of a driving URL walk follow one another without loss or repeat', async () => {
    const url = encodeURIComponent(`${OTHER}/Questionnaire/q1`);
    const first = await fhir(srv.url, 'GET', `QuestionnaireResponse?questionnaire=${url}&_count=1`);
    assert.equal(first.status, 200, first.text);
    assert.equal(first.json.entry.length, 1);
    const next = first.json.link.find((l: Json) => l.relation === 'next')?.url as string;
    assert.ok(next, JSON.stringify(first.json.link));
    const second = await fetch(next, { headers: { accept: 'application/fhir+json' } });
    assert.equal(second.status, 200);
    const body = await second.json() as Json;
    assert.deepEqual([first.json.entry[0].resource.id, ...body.entry.map((e: Json) => e.resource.id)].sort(), [plain, plainToo].sort());
    assert.equal(body.link.find((l: Json) => l.relation === 'next'), undefined);
  });

  test('a reference to a type Kiln does not know is found by its URL', async () => {
    assert.deepEqual(await ids(`QuestionnaireResponse?author=${encodeURIComponent(`${OTHER}/Robot/r1`)}`), [untyped]);
    assert.deepEqual(await ids(`QuestionnaireResponse?author=${encodeURIComponent(`${OTHER}/Robot/r2`)}`), []);
  });

  test('a typed absolute reference is still found by its URL', async () => {
    const qr = await create({ resourceType: 'QuestionnaireResponse', status: 'completed', subject: { reference: `${OTHER}/Patient/p9` } });
    assert.deepEqual(await ids(`QuestionnaireResponse?subject=${encodeURIComponent(`${OTHER}/Patient/p9`)}`), [qr]);
    assert.deepEqual(await ids(`QuestionnaireResponse?subject=${encodeURIComponent(`${OTHER}/Patient/p8`)}`), []);
  });

  test('an AuditEvent (row keys) finds an entity of an unknown type by its URL', async () => {
    const event = await create({ resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' },
      recorded: new Date().toISOString(), agent: [{ requestor: true, who: { display: 'tester' } }], source: { observer: { display: 'kiln' } },
      entity: [{ what: { reference: `${OTHER}/Robot/r1` } }] });
    assert.deepEqual(await ids(`AuditEvent?entity=${encodeURIComponent(`${OTHER}/Robot/r1`)}`), [event]);
    assert.deepEqual(await ids(`AuditEvent?entity=${encodeURIComponent(`${OTHER}/Robot/r2`)}`), []);
  });
});
