// Probes for what a token may learn about resources it cannot read (issue 21, item 2).
// Each probe asks the same question twice, with a true and a false guess about another
// patient (or about data outside a granular scope). As a system token the two answers
// differ, so the probe can tell; with the restricted token they must be identical:
// every resource a criterion reaches (chains at any depth, _has, composites inside them,
// _include:iterate, $everything) is limited to what the token may see.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';

let srv: TestServer;
let admin: Record<string, string>;
const ids: Record<string, string> = {};
const LOINC = 'http://loinc.org';
const CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';

const as = (h: Record<string, string>, method: string, path: string, body?: unknown, extra: Record<string, string> = {}) =>
  fhir(srv.url, method, path, body, { ...h, ...extra });

async function create(resource: any): Promise<string> {
  const r = await as(admin, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

function obs(subject: string, code: string, extra: any = {}) {
  return {
    resourceType: 'Observation', status: 'final', subject: { reference: subject },
    category: [{ coding: [{ system: CAT, code: extra.category ?? 'laboratory' }] }],
    code: { coding: [{ system: LOINC, code }] }, ...extra, ...(extra.category ? { category: [{ coding: [{ system: CAT, code: extra.category }] }] } : {}),
  };
}

/** What a client can see of an answer: status, the resources (by type/id), total, and whether there is a next page. */
async function answer(h: Record<string, string>, p: Probe, guess: 'yes' | 'no'): Promise<string> {
  const path = p[guess];
  const r = p.bundle
    ? await as(h, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: path } }] })
    : p.ifNoneExist
      ? await as(h, 'POST', 'Observation', obs(`Patient/${ids.A}`, 'probe'), { 'if-none-exist': path })
      : await as(h, 'GET', path);
  const bundle = p.bundle ? r.json?.entry?.[0]?.resource : r.json;
  const shown = (bundle?.entry ?? []).filter((e: any) => e.resource?.resourceType !== 'OperationOutcome')
    .map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();
  return JSON.stringify({
    status: p.bundle ? r.json?.entry?.[0]?.response?.status : r.status,
    // A conditional create answers with what it matched (200) or a new resource (201): the status says it.
    resources: p.ifNoneExist ? [] : shown,
    total: bundle?.total, next: Boolean(bundle?.link?.some((l: any) => l.relation === 'next')),
  });
}

interface Probe {
  name: string;
  /** The token (a key of `tokens`) that must learn nothing. */
  as: string;
  yes: string;
  no: string;
  /** Sent as a batch entry's GET, or as an If-None-Exist of a create. */
  bundle?: boolean;
  ifNoneExist?: boolean;
}

const tokens: Record<string, Record<string, string>> = {};

// X: B's Observation that names A as performer, so A reads it (performer puts it in A's compartment).
const PROBES: Probe[] = [
  { name: 'chain on birthdate', as: 'alice', yes: 'Observation?_id={X}&subject:Patient.birthdate=1980-01-01', no: 'Observation?_id={X}&subject:Patient.birthdate=1981-01-01' },
  { name: 'prefix probe on family', as: 'alice', yes: 'Observation?_id={X}&subject:Patient.family=Bra', no: 'Observation?_id={X}&subject:Patient.family=Bre' },
  { name: 'chain by :Patient modifier on name', as: 'alice', yes: 'Observation?_id={X}&subject:Patient.name=Bravo', no: 'Observation?_id={X}&subject:Patient.name=Zulu' },
  { name: 'chain into another type (Encounter)', as: 'alice', yes: 'Observation?_id={X}&encounter:Encounter.status=finished', no: 'Observation?_id={X}&encounter:Encounter.status=cancelled' },
  { name: 'two-level chain', as: 'alice', yes: 'Observation?_id={X}&encounter.subject:Patient.family=Bravo', no: 'Observation?_id={X}&encounter.subject:Patient.family=Zulu' },
  { name: 'chain with :missing on the reached resource', as: 'alice', yes: 'Observation?_id={X}&subject:Patient.birthdate:missing=false', no: 'Observation?_id={X}&subject:Patient.birthdate:missing=true' },
  { name: '_has through an Observation that only focuses on A', as: 'alice', yes: 'Patient?_id={A}&_has:Observation:focus:code=secret-1', no: 'Patient?_id={A}&_has:Observation:focus:code=secret-2' },
  { name: '_has with a composite', as: 'alice', yes: `Patient?_id={A}&_has:Observation:focus:code-value-quantity=secret-1$120`, no: `Patient?_id={A}&_has:Observation:focus:code-value-quantity=secret-1$80` },
  { name: '_has with a chain inside', as: 'alice', yes: 'Patient?_id={A}&_has:Observation:focus:subject:Patient.family=Bravo', no: 'Patient?_id={A}&_has:Observation:focus:subject:Patient.family=Zulu' },
  { name: 'chain with _has inside', as: 'alice', yes: 'Observation?_id={X}&subject:Patient._has:Observation:patient:code=secret-1', no: 'Observation?_id={X}&subject:Patient._has:Observation:patient:code=secret-2' },
  { name: '_total on a chained search', as: 'alice', yes: 'Observation?subject:Patient.family=Bravo&_total=accurate', no: 'Observation?subject:Patient.family=Zulu&_total=accurate' },
  { name: '_summary=count on a chained search', as: 'alice', yes: 'Observation?subject:Patient.family=Bravo&_summary=count', no: 'Observation?subject:Patient.family=Zulu&_summary=count' },
  { name: 'sorted chained search', as: 'alice', yes: 'Observation?subject:Patient.family=Bravo&_sort=-date', no: 'Observation?subject:Patient.family=Zulu&_sort=-date' },
  { name: 'system search with a chain', as: 'alice', yes: '?_type=Observation&_id={X}&subject:Patient.family=Bravo', no: '?_type=Observation&_id={X}&subject:Patient.family=Zulu' },
  { name: 'batch entry with a chain', as: 'alice', bundle: true, yes: 'Observation?_id={X}&subject:Patient.family=Bravo', no: 'Observation?_id={X}&subject:Patient.family=Zulu' },
  { name: 'If-None-Exist with a chain', as: 'alice', ifNoneExist: true, yes: '_id={X}&subject:Patient.family=Bravo', no: '_id={X}&subject:Patient.family=Zulu' },
  { name: '_include:iterate through an Observation A cannot read', as: 'alice', yes: 'Patient?_id={A}&_revinclude=Observation:focus&_include:iterate=Observation:performer:Patient', no: 'Patient?_id={A}&_revinclude=Observation:focus&_include:iterate=Observation:performer:Group' },
  { name: '_include of another patient', as: 'alice', yes: 'Observation?_id={X}&_include=Observation:subject:Patient', no: 'Observation?_id={X}&_include=Observation:subject:Group' },
  { name: "another patient's $everything", as: 'alice', yes: 'Patient/{B}/$everything', no: 'Patient/no-such-patient/$everything' },
  { name: 'Patient/$everything over a time window', as: 'alice', yes: 'Patient/$everything?_type=Observation&start=2020-05-01&end=2020-05-31', no: 'Patient/$everything?_type=Observation&start=2021-05-01&end=2021-05-31' },
  { name: 'Patient/$everything paging under mixed patient/ and user/ grants', as: 'mixed', yes: 'Patient/$everything?_type=Observation&_count=1&start=2020-05-01&end=2020-05-31', no: 'Patient/$everything?_type=Observation&_count=1&start=2021-05-01&end=2021-05-31' },
  { name: 'granular patient/ scope: _has reaching Observations outside the scope', as: 'aliceVitals', yes: 'Patient?_id={A}&_has:Observation:patient:code=lab-a', no: 'Patient?_id={A}&_has:Observation:patient:code=lab-z' },
  { name: 'granular user/ scope: _has reaching Observations outside the scope', as: 'userVitals', yes: 'Encounter?_id={encB}&_has:Observation:encounter:code=secret-1', no: 'Encounter?_id={encB}&_has:Observation:encounter:code=secret-2' },
  { name: 'granular user/ scope: _has on a quantity outside the scope', as: 'userVitals', yes: 'Encounter?_id={encB}&_has:Observation:encounter:value-quantity=120', no: 'Encounter?_id={encB}&_has:Observation:encounter:value-quantity=80' },
  { name: 'chain into a type the token cannot read', as: 'obsOnly', yes: 'Observation?_id={X}&subject:Patient.family=Bravo', no: 'Observation?_id={X}&subject:Patient.family=Zulu' },
];

const fill = (s: string) => s.replace(/\{(\w+)\}/g, (_, k) => ids[k]);

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'admin-client' }));
  ids.A = await create({ resourceType: 'Patient', name: [{ family: 'Alpha' }], birthDate: '1990-02-02' });
  ids.B = await create({ resourceType: 'Patient', name: [{ family: 'Bravo' }], birthDate: '1980-01-01' });
  ids.linkA = await create({ resourceType: 'Patient', name: [{ family: 'Alpha-Old' }], link: [{ other: { reference: `Patient/${ids.A}` }, type: 'seealso' }] });
  ids.encA = await create({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${ids.A}` } });
  ids.encB = await create({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${ids.B}` } });
  ids.X = await create(obs(`Patient/${ids.B}`, 'shared', {
    performer: [{ reference: `Patient/${ids.A}` }], encounter: { reference: `Encounter/${ids.encB}` }, effectiveDateTime: '2019-03-03',
  }));
  // B's lab result in B's encounter, about A (focus): not in A's compartment.
  ids.focusA = await create(obs(`Patient/${ids.B}`, 'secret-1', {
    focus: [{ reference: `Patient/${ids.A}` }], performer: [{ reference: `Patient/${ids.linkA}` }], encounter: { reference: `Encounter/${ids.encB}` },
    valueQuantity: { value: 120, unit: 'mmHg', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' }, effectiveDateTime: '2020-05-05',
  }));
  ids.labB2 = await create(obs(`Patient/${ids.B}`, 'secret-3', { effectiveDateTime: '2020-05-06' }));
  ids.vitalA = await create(obs(`Patient/${ids.A}`, 'vital-a', { category: 'vital-signs', effectiveDateTime: '2018-01-01' }));
  ids.labA = await create(obs(`Patient/${ids.A}`, 'lab-a', { effectiveDateTime: '2018-01-02' }));
  const vitals = `${CAT}|vital-signs`;
  tokens.alice = bearer(await token(srv, { scope: 'launch/patient patient/*.cruds', patient: ids.A }));
  tokens.aliceVitals = bearer(await token(srv, { scope: `patient/Patient.rs patient/Observation.rs?category=${vitals}`, patient: ids.A }));
  tokens.mixed = bearer(await token(srv, { scope: 'user/Patient.rs patient/Observation.rs', patient: ids.A }));
  tokens.userVitals = bearer(await token(srv, { scope: `user/Encounter.rs user/Observation.rs?category=${vitals}` }));
  tokens.obsOnly = bearer(await token(srv, { scope: 'user/Observation.rs' }));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('a restricted token learns nothing about resources it cannot read', () => {
  for (const p of PROBES) {
    test(p.name, async () => {
      const probe = { ...p, yes: fill(p.yes), no: fill(p.no) };
      const wide = [await answer(admin, probe, 'yes'), await answer(admin, probe, 'no')];
      assert.notEqual(wide[0], wide[1], `the probe tells the guesses apart for a system token: ${wide[0]}`);
      const yes = await answer(tokens[p.as], probe, 'yes');
      const no = await answer(tokens[p.as], probe, 'no');
      assert.equal(yes, no, `${p.as} learns the answer of ${probe.yes}`);
    });
  }

  test('the reached resources the token may see still match: chains and _has inside the compartment work', async () => {
    const find = async (h: Record<string, string>, q: string) => {
      const r = await as(h, 'GET', fill(q));
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      return (r.json.entry ?? []).map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();
    };
    // (The If-None-Exist probes created Observations of A too: the codes pick the two set up here.)
    assert.deepEqual(await find(tokens.alice, 'Observation?subject:Patient.family=Alpha&code=lab-a,vital-a'), [`Observation/${ids.labA}`, `Observation/${ids.vitalA}`].sort());
    assert.deepEqual(await find(tokens.alice, 'Observation?performer:Patient.birthdate=1990-02-02'), [`Observation/${ids.X}`]);
    assert.deepEqual(await find(tokens.alice, 'Patient?_has:Observation:patient:code=lab-a'), [`Patient/${ids.A}`]);
    assert.deepEqual(await find(tokens.aliceVitals, 'Patient?_has:Observation:patient:code=vital-a'), [`Patient/${ids.A}`]);
    assert.deepEqual(await find(tokens.mixed, 'Observation?subject:Patient.family=Alpha&code=lab-a,vital-a'), [`Observation/${ids.labA}`, `Observation/${ids.vitalA}`].sort());
    // AuditEvents keep their references as row keys: chains and _has from and to them are confined alike.
    for (const q of ['AuditEvent?patient:Patient.family=Alpha&_count=5', 'AuditEvent?patient:Patient.family=Bravo&_count=5', 'Patient?_has:AuditEvent:patient:action=C']) {
      const found = await find(tokens.alice, q);
      assert.ok(q.includes('Bravo') ? !found.length : true, `${q}: ${found}`);
      assert.ok(found.every((x: string) => !x.endsWith(ids.B)), `${q}: ${found}`);
    }
    // user/Patient.rs reaches every Patient: the chain from A's compartment to B is answered.
    assert.deepEqual(await find(tokens.mixed, `Observation?_id=${ids.X}&subject:Patient.family=Bravo`), [`Observation/${ids.X}`]);
  });

  test('_total=estimate under a restricted token is the exact count of what it may see (no tenant-wide statistics)', async () => {
    const exact = (await as(tokens.alice, 'GET', 'Observation?_total=accurate&_count=1')).json.total;
    assert.ok(exact > 0);
    for (const q of ['Observation?_total=estimate&_count=1', 'Observation?_total=estimate&subject:Patient.family=Bravo']) {
      const r = await as(tokens.alice, 'GET', q);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.total, q.includes('Bravo') ? 0 : exact, q);
    }
  });

  test('a chain into a type the token cannot search is refused with 403, whatever the guess', async () => {
    const r = await as(tokens.obsOnly, 'GET', `Observation?_id=${ids.X}&subject:Patient.family=Bravo`);
    assert.equal(r.status, 403, r.text);
    assert.match(r.json.issue[0].diagnostics, /Patient/);
    const has = await as(bearer(await token(srv, { scope: 'user/Patient.rs' })), 'GET', `Patient?_has:Observation:patient:code=lab-a`);
    assert.equal(has.status, 403, has.text);
  });

  test("a Patient user's token acts in that patient's compartment, whatever its scopes say", async () => {
    const patientUser = bearer(await token(srv, { scope: 'openid fhirUser user/*.rs', fhirUser: `Patient/${ids.A}` }));
    const r = await as(patientUser, 'GET', 'Patient?_count=100');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual((r.json.entry ?? []).map((e: any) => e.resource.id).sort(), [ids.A, ids.linkA].sort());
    assert.equal((await as(patientUser, 'GET', `Patient/${ids.B}`)).status, 404);
    assert.equal((await as(patientUser, 'GET', `Patient/${ids.A}`)).status, 200);
    const otherContext = bearer(await token(srv, { scope: 'fhirUser patient/*.rs', fhirUser: `Patient/${ids.A}`, patient: ids.B }));
    assert.equal((await as(otherContext, 'GET', `Patient/${ids.B}`)).status, 403);
  });

  test('sorting by a chained value is refused (400): _sort reaches no other resource', async () => {
    const r = await as(tokens.alice, 'GET', 'Observation?_sort=subject:Patient.family');
    assert.equal(r.status, 400, r.text);
  });
});
