// A patient-level token sees its patient's compartment and nothing else, however it
// asks: searches, chains, _has, _include/_revinclude, $everything, history, Bundles,
// writes; granular scopes narrow further. And $export needs system scopes and its files
// the same client's token.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';

let srv: TestServer;
let admin: Record<string, string>;
let alice: Record<string, string>; // patient/*.cruds for A
const ids: Record<string, string> = {};
const VITALS = 'http://terminology.hl7.org/CodeSystem/observation-category|vital-signs';

const as = (h: Record<string, string>, method: string, path: string, body?: unknown, extra: Record<string, string> = {}) =>
  fhir(srv.url, method, path, body, { ...h, ...extra });
const idsOf = (bundle: any) => (bundle.entry ?? []).filter((e: any) => e.resource?.resourceType !== 'OperationOutcome').map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();

async function create(resource: any): Promise<string> {
  const r = await as(admin, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

function obs(patient: string, category: string, code: string, extra: any = {}) {
  return {
    resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patient}` },
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: category }] }],
    code: { coding: [{ system: 'http://loinc.org', code }] }, ...extra,
  };
}

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'admin-client' }));
  ids.A = await create({ resourceType: 'Patient', name: [{ family: 'Alpha' }] });
  ids.B = await create({ resourceType: 'Patient', name: [{ family: 'Bravo' }] });
  ids.encA = await create({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${ids.A}` } });
  ids.encB = await create({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${ids.B}` } });
  ids.vitalA = await create(obs(ids.A, 'vital-signs', '8867-4', { encounter: { reference: `Encounter/${ids.encA}` } }));
  ids.labA = await create(obs(ids.A, 'laboratory', '2345-7'));
  // A's Observation that names B as performer: B's compartment holds it too, A's holds it by subject.
  ids.sharedA = await create(obs(ids.A, 'survey', '1111-1', { performer: [{ reference: `Patient/${ids.B}` }] }));
  ids.vitalB = await create(obs(ids.B, 'vital-signs', '9999-9', { encounter: { reference: `Encounter/${ids.encB}` } }));
  ids.medB = await create({ resourceType: 'MedicationStatement', status: 'active', medicationCodeableConcept: { text: 'b-med' }, subject: { reference: `Patient/${ids.B}` } });
  ids.group = await create({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${ids.A}` } }, { entity: { reference: `Patient/${ids.B}` } }] });
  // In A's compartment through performer only (the subject is not a patient); B's likewise.
  ids.perfA = await create(obs(ids.A, 'exam', '3333-3', { subject: { reference: `Group/${ids.group}` }, performer: [{ reference: `Patient/${ids.A}` }] }));
  ids.perfB = await create(obs(ids.B, 'exam', '4444-4', { subject: { reference: `Group/${ids.group}` }, performer: [{ reference: `Patient/${ids.B}` }] }));
  // A Patient record that links to A is in A's compartment (Patient: link).
  ids.linkA = await create({ resourceType: 'Patient', name: [{ family: 'Alpha-Old' }], link: [{ other: { reference: `Patient/${ids.A}` }, type: 'seealso' }] });
  alice = bearer(await token(srv, { scope: 'launch/patient patient/*.cruds', patient: ids.A, clientId: 'alice-app' }));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('patient compartment', () => {
  test('searches are confined to the compartment, whatever the criteria', async () => {
    const mine = [`Observation/${ids.labA}`, `Observation/${ids.sharedA}`, `Observation/${ids.vitalA}`, `Observation/${ids.perfA}`].sort();
    assert.deepEqual(idsOf((await as(alice, 'GET', 'Observation')).json), mine);
    for (const q of [`subject=Patient/${ids.B}`, `patient=${ids.B}`, `_id=${ids.vitalB}`, 'code=9999-9', `subject:Patient.name=Bravo`,
      `encounter.subject=Patient/${ids.B}`, `performer=Patient/${ids.B}&subject=Patient/${ids.B}`]) {
      const r = await as(alice, 'GET', `Observation?${q}`);
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      assert.deepEqual(idsOf(r.json), [], `Observation?${q} leaked`);
    }
    assert.deepEqual(idsOf((await as(alice, 'GET', 'Patient')).json), [`Patient/${ids.A}`, `Patient/${ids.linkA}`].sort());
    assert.deepEqual(idsOf((await as(alice, 'GET', `Patient?_has:Observation:patient:code=9999-9`)).json), []);
    assert.deepEqual(idsOf((await as(alice, 'GET', `Patient?_has:Observation:patient:code=8867-4`)).json), [`Patient/${ids.A}`]);
    assert.deepEqual(idsOf((await as(alice, 'GET', 'Encounter')).json), [`Encounter/${ids.encA}`]);
    assert.deepEqual(idsOf((await as(alice, 'GET', 'MedicationStatement')).json), []);
    // POST _search is the same search.
    const post = await as(alice, 'POST', 'Observation/_search', `subject=Patient/${ids.B}`, { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(post.status, 200, post.text);
    assert.deepEqual(idsOf(post.json), []);
    // Group is in the compartment through member (CompartmentDefinition/patient): the groups A is in.
    assert.deepEqual(idsOf((await as(alice, 'GET', 'Group')).json), [`Group/${ids.group}`]);
    // Organization is in no patient's compartment: a patient-only grant cannot be confined, so it is refused.
    assert.equal((await as(alice, 'GET', 'Organization')).status, 403);
    // System search: only compartment types, only the compartment.
    const all = idsOf((await as(alice, 'GET', '?_count=100')).json);
    assert.ok(all.includes(`Patient/${ids.A}`) && all.includes(`Observation/${ids.vitalA}`));
    assert.ok(all.includes(`Observation/${ids.perfA}`) && all.includes(`Patient/${ids.linkA}`), `system search: ${all}`);
    assert.ok(!all.some((x: string) => [ids.B, ids.vitalB, ids.encB, ids.medB, ids.perfB].includes(x.split('/')[1])), `system search leaked: ${all}`);
    assert.deepEqual(idsOf((await as(alice, 'GET', '?_type=Group')).json), [`Group/${ids.group}`]);
    assert.equal((await as(alice, 'GET', '?_type=Organization')).status, 403);
  });

  test('_include and _revinclude only bring in the compartment', async () => {
    const inc = await as(alice, 'GET', `Observation?_id=${ids.sharedA}&_include=Observation:performer&_include=Observation:subject`);
    assert.deepEqual(idsOf(inc.json), [`Observation/${ids.sharedA}`, `Patient/${ids.A}`].sort());
    const rev = await as(alice, 'GET', `Encounter?_revinclude=Observation:encounter&_include=Encounter:subject`);
    assert.deepEqual(idsOf(rev.json), [`Encounter/${ids.encA}`, `Observation/${ids.vitalA}`, `Patient/${ids.A}`].sort());
    const revPatient = await as(alice, 'GET', `Patient?_revinclude=Observation:performer`);
    assert.deepEqual(idsOf(revPatient.json), [`Patient/${ids.A}`, `Patient/${ids.linkA}`, `Observation/${ids.perfA}`].sort());
  });

  test('the compartment is every compartment parameter: performer-only Observations and linked Patients are found by every path, others by none', async () => {
    const find = async (h: Record<string, string>, q: string): Promise<string[]> => {
      const r = await as(h, 'GET', q);
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      return idsOf(r.json);
    };
    const perfA = `Observation/${ids.perfA}`;
    for (const q of ['code=3333-3', `_id=${ids.perfA}`, `performer=Patient/${ids.A}`, `subject=Group/${ids.group}`, 'category=exam', `code=3333-3&_sort=-date`]) {
      assert.deepEqual(await find(alice, `Observation?${q}`), [perfA], q);
    }
    for (const q of ['code=4444-4', `_id=${ids.perfB}`, `performer=Patient/${ids.B}`, `performer:Patient.name=Bravo`]) {
      assert.deepEqual((await find(alice, `Observation?${q}`)).filter((x) => x === `Observation/${ids.perfB}`), [], `Observation?${q} leaked perfB`);
    }
    assert.equal((await as(alice, 'GET', `Observation?subject=Group/${ids.group}&_summary=count`)).json.total, 1);
    // Paging: the walk over both parameters returns each match once, unsorted and sorted.
    const all = await find(alice, 'Observation');
    for (const q of ['Observation?_count=1', 'Observation?_count=2&_sort=code', 'Observation?_count=1&category=exam,laboratory']) {
      const seen: string[] = [];
      let url: string | undefined = q;
      for (let i = 0; url && i < 20; i++) {
        const r = await as(alice, 'GET', url);
        assert.equal(r.status, 200, r.text);
        seen.push(...idsOf(r.json));
        const next = r.json.link?.find((l: any) => l.relation === 'next')?.url as string | undefined;
        url = next?.slice(srv.url.length + 1);
      }
      const expected = q.includes('category') ? all.filter((x) => [perfA, `Observation/${ids.labA}`].includes(x)) : all;
      assert.deepEqual(seen.sort(), expected, q);
    }
    // Reads, includes and the B side agree.
    assert.equal((await as(alice, 'GET', perfA)).status, 200);
    assert.equal((await as(alice, 'GET', `Patient/${ids.linkA}`)).status, 200);
    assert.equal((await as(alice, 'GET', `Observation/${ids.perfB}`)).status, 404);
    // The Group subject is included: A is a member, so it is in A's compartment (Group: member).
    assert.deepEqual(await find(alice, `Observation?_id=${ids.perfA}&_include=Observation:subject&_include=Observation:performer`), [perfA, `Patient/${ids.A}`, `Group/${ids.group}`].sort());
    const bob = bearer(await token(srv, { scope: 'patient/*.rs', patient: ids.B }));
    assert.deepEqual(await find(bob, 'Observation'), [`Observation/${ids.sharedA}`, `Observation/${ids.vitalB}`, `Observation/${ids.perfB}`].sort());
    assert.deepEqual(await find(bob, 'Patient?_revinclude=Observation:performer'), [`Patient/${ids.B}`, `Observation/${ids.sharedA}`, `Observation/${ids.perfB}`].sort());
    assert.deepEqual(await find(bob, `Patient?_id=${ids.linkA}`), []);
    assert.equal((await as(bob, 'GET', `Patient/${ids.linkA}`)).status, 404);
    // Bundle searches and conditional writes carry the same criterion.
    const batch = await as(alice, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: 'Observation?code=3333-3' } },
      { request: { method: 'GET', url: 'Observation?code=4444-4' } },
      { request: { method: 'DELETE', url: 'Observation?code=4444-4' } },
    ] });
    assert.equal(batch.status, 200, batch.text);
    assert.deepEqual(idsOf(batch.json.entry[0].resource), [perfA]);
    assert.deepEqual(idsOf(batch.json.entry[1].resource), []);
    assert.equal((await as(alice, 'DELETE', 'Observation?code=4444-4')).status, 204);
    assert.equal((await as(admin, 'GET', `Observation/${ids.perfB}`)).json.meta.versionId, '1', 'B\'s Observation untouched');
    // If-None-Exist finds the performer-only match (else 201), which A reads but does not
    // own: a patient-level create resolves only to the patient's own resources.
    const again = await as(alice, 'POST', 'Observation', obs(ids.A, 'exam', '3333-3'), { 'if-none-exist': 'code=3333-3' });
    assert.equal(again.status, 403, again.text);
    assert.match(again.json.issue[0].diagnostics, new RegExp(`Observation/${ids.perfA} is not about Patient/${ids.A} alone`));
  });

  test("reads of another patient's data are 404; own data 200 (performer counts for reads)", async () => {
    for (const p of [`Patient/${ids.B}`, `Observation/${ids.vitalB}`, `Encounter/${ids.encB}`, `MedicationStatement/${ids.medB}`, `Observation/${ids.vitalB}/_history/1`, `Observation/${ids.vitalB}/_history`]) {
      const r = await as(alice, 'GET', p);
      assert.equal(r.status, 404, `${p}: ${r.text}`);
    }
    for (const p of [`Patient/${ids.A}`, `Observation/${ids.vitalA}`, `Observation/${ids.vitalA}/_history/1`, `Observation/${ids.vitalA}/_history`]) {
      assert.equal((await as(alice, 'GET', p)).status, 200, p);
    }
    const bob = bearer(await token(srv, { scope: 'patient/Observation.rs', patient: ids.B }));
    assert.equal((await as(bob, 'GET', `Observation/${ids.sharedA}`)).status, 200, 'performer puts it in B\'s compartment');
  });

  test('$everything: only the context patient, only readable types', async () => {
    assert.equal((await as(alice, 'GET', `Patient/${ids.B}/$everything`)).status, 404);
    const own = idsOf((await as(alice, 'GET', `Patient/${ids.A}/$everything?_count=1000`)).json);
    assert.ok(own.includes(`Observation/${ids.vitalA}`) && own.includes(`Encounter/${ids.encA}`));
    assert.ok(!own.some((x: string) => x.endsWith(ids.vitalB) || x.endsWith(ids.B) || x.endsWith(ids.perfB)));
    // (Without AuditEvents, which fill the first page as they accumulate.)
    const clinical = idsOf((await as(alice, 'GET', `Patient/${ids.A}/$everything?_type=Patient,Observation&_count=100`)).json);
    assert.deepEqual(clinical, [`Patient/${ids.A}`, `Patient/${ids.linkA}`, ...idsOf((await as(alice, 'GET', 'Observation?_count=100')).json)].sort(),
      'the same compartment as searches: performer-only Observations and linked Patients in, perfB out');
    // (AuditEvents of A's compartment grow with every request and can fill a page: left out.)
    const clinicalTypes = '_type=Patient,Encounter,Observation,MedicationStatement&_count=200';
    assert.deepEqual(idsOf((await as(alice, 'GET', `Patient/$everything?${clinicalTypes}`)).json),
      idsOf((await as(alice, 'GET', `Patient/${ids.A}/$everything?${clinicalTypes}`)).json));
    // Observation-only token: $everything needs read on Patient.
    const obsOnly = bearer(await token(srv, { scope: 'patient/Observation.rs', patient: ids.A }));
    assert.equal((await as(obsOnly, 'GET', `Patient/${ids.A}/$everything`)).status, 403);
    const narrow = bearer(await token(srv, { scope: 'patient/Patient.r patient/Observation.r', patient: ids.A }));
    const types = new Set(idsOf((await as(narrow, 'GET', `Patient/${ids.A}/$everything`)).json).map((x: string) => x.split('/')[0]));
    assert.deepEqual([...types].sort(), ['Observation', 'Patient']);
  });

  test('type and system history are refused to patient-level tokens', async () => {
    assert.equal((await as(alice, 'GET', 'Observation/_history')).status, 403);
    assert.equal((await as(alice, 'GET', '_history')).status, 403);
    const user = bearer(await token(srv, { scope: 'user/*.rs' }));
    assert.equal((await as(user, 'GET', 'Observation/_history')).status, 200);
  });

  test('writes outside the compartment are 403 and change nothing', async () => {
    // Creating for B, moving A's resource to B, touching B's resource.
    assert.equal((await as(alice, 'POST', 'Observation', obs(ids.B, 'vital-signs', '1'))).status, 403);
    const moved = await as(alice, 'PUT', `Observation/${ids.labA}`, { ...obs(ids.B, 'laboratory', '2345-7'), id: ids.labA });
    assert.equal(moved.status, 403, moved.text);
    assert.equal((await as(admin, 'GET', `Observation/${ids.labA}`)).json.subject.reference, `Patient/${ids.A}`);
    assert.equal((await as(alice, 'PUT', `Observation/${ids.vitalB}`, { ...obs(ids.A, 'vital-signs', '1'), id: ids.vitalB })).status, 403);
    assert.equal((await as(alice, 'PATCH', `Observation/${ids.vitalB}`, [{ op: 'add', path: '/language', value: 'en' }], { 'content-type': 'application/json-patch+json' })).status, 403);
    assert.equal((await as(alice, 'DELETE', `Observation/${ids.vitalB}`)).status, 403);
    // Conditional delete only matches inside the compartment: B's is not found, so nothing is deleted.
    assert.equal((await as(alice, 'DELETE', 'Observation?code=9999-9')).status, 204);
    assert.equal((await as(admin, 'GET', `Observation/${ids.vitalB}`)).json.meta.versionId, '1');
    // Conditional create: If-None-Exist cannot find B's resource either.
    const c = await as(alice, 'POST', 'Observation', obs(ids.A, 'vital-signs', '9999-9'), { 'if-none-exist': 'code=9999-9' });
    assert.equal(c.status, 201, 'a new one in A\'s compartment, not B\'s returned');
    assert.equal(c.json.subject.reference, `Patient/${ids.A}`);
    // Inside the compartment writes work.
    const ok = await as(alice, 'PUT', `Observation/${ids.labA}`, { ...obs(ids.A, 'laboratory', '2345-7'), id: ids.labA, language: 'en' });
    assert.equal(ok.status, 200, ok.text);
  });

  test("writes need the resource's own patient: naming the token's patient as performer writes no other chart", async () => {
    const json = { 'content-type': 'application/json-patch+json' };
    const count = async () => (await as(admin, 'GET', `Observation?subject=Patient/${ids.B}&_summary=count`)).json.total;
    const before = await count();
    // Create for B with A as performer: in A's compartment, but B's chart.
    const planted = await as(alice, 'POST', 'Observation', obs(ids.B, 'vital-signs', '7777-7', { performer: [{ reference: `Patient/${ids.A}` }] }));
    assert.equal(planted.status, 403, planted.text);
    assert.match(planted.json.issue[0].diagnostics, /not about Patient\/.* alone/);
    const bundled = await as(alice, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { request: { method: 'POST', url: 'Observation' }, resource: obs(ids.B, 'vital-signs', '7777-7', { performer: [{ reference: `Patient/${ids.A}` }] }) },
    ] });
    assert.equal(bundled.status, 403, bundled.text);
    assert.equal(await count(), before, 'nothing written to B');
    // Moving A's own Observation to B: by PATCH (the patched result is checked) and by PUT.
    const own = await as(alice, 'POST', 'Observation', obs(ids.A, 'vital-signs', '7777-8', { performer: [{ reference: `Patient/${ids.A}` }] }));
    assert.equal(own.status, 201, own.text);
    const moved = await as(alice, 'PATCH', `Observation/${own.json.id}`, [{ op: 'replace', path: '/subject/reference', value: `Patient/${ids.B}` }], json);
    assert.equal(moved.status, 403, moved.text);
    const put = await as(alice, 'PUT', `Observation/${own.json.id}`, { ...obs(ids.B, 'vital-signs', '7777-8', { performer: [{ reference: `Patient/${ids.A}` }] }), id: own.json.id });
    assert.equal(put.status, 403, put.text);
    assert.equal((await as(admin, 'GET', `Observation/${own.json.id}`)).json.subject.reference, `Patient/${ids.A}`);
    assert.equal(await count(), before);
    // A resource A reads through performer (B's, or with a Group as subject) is not A's to change.
    assert.equal((await as(alice, 'GET', `Observation/${ids.perfA}`)).status, 200);
    assert.equal((await as(alice, 'PATCH', `Observation/${ids.perfA}`, [{ op: 'add', path: '/language', value: 'en' }], json)).status, 403);
    assert.equal((await as(alice, 'DELETE', `Observation/${ids.perfA}`)).status, 403);
    const bob = bearer(await token(srv, { scope: 'patient/*.cruds', patient: ids.B }));
    assert.equal((await as(bob, 'GET', `Observation/${ids.sharedA}`)).status, 200, 'reads keep the whole compartment');
    assert.equal((await as(bob, 'DELETE', `Observation/${ids.sharedA}`)).status, 403, "but A's Observation is not B's to delete");
    // A Patient is its own: a patient token writes its Patient, not one that links to it.
    const linked = await as(alice, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Alpha-New' }], link: [{ other: { reference: `Patient/${ids.A}` }, type: 'seealso' }] });
    assert.equal(linked.status, 403, linked.text);
    assert.equal((await as(alice, 'PATCH', `Patient/${ids.linkA}`, [{ op: 'add', path: '/active', value: true }], json)).status, 403);
    const self = await as(alice, 'PATCH', `Patient/${ids.A}`, [{ op: 'add', path: '/active', value: true }], json);
    assert.equal(self.status, 200, self.text);
    // Nor does a patient's write put anything in another patient's compartment.
    const intoB = await as(alice, 'POST', 'Observation', obs(ids.A, 'vital-signs', '7777-9', { performer: [{ reference: `Patient/${ids.B}` }] }));
    assert.equal(intoB.status, 403, intoB.text);
    const linkB = await as(alice, 'PATCH', `Patient/${ids.A}`, [{ op: 'add', path: '/link', value: [{ other: { reference: `Patient/${ids.B}` }, type: 'seealso' }] }], json);
    assert.equal(linkB.status, 403, linkB.text);
    assert.equal((await as(bob, 'GET', `Patient/${ids.A}`)).status, 404);
  });

  test('Bundles: a batch refuses entry by entry, a transaction fails whole naming the entry', async () => {
    const batch = await as(alice, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: `Patient/${ids.B}` } },
      { request: { method: 'GET', url: `Observation?subject=Patient/${ids.B}` } },
      { request: { method: 'POST', url: 'Observation' }, resource: obs(ids.B, 'vital-signs', '1') },
      { request: { method: 'GET', url: `Patient/${ids.A}` } },
      { request: { method: 'GET', url: 'Group' } },
    ] });
    assert.equal(batch.status, 200, batch.text);
    const st = batch.json.entry.map((e: any) => e.response.status);
    // Group is in the patient compartment (member): searched, it yields the groups A is in.
    assert.deepEqual(st.map((s: string) => s.slice(0, 3)), ['404', '200', '403', '200', '200']);
    assert.deepEqual(batch.json.entry[4].resource.entry.map((e: any) => e.resource.id), [ids.group]);
    assert.deepEqual(batch.json.entry[1].resource.entry ?? [], []);
    const before = (await as(admin, 'GET', `Observation?subject=Patient/${ids.A}&_summary=count`)).json.total;
    const tx = await as(alice, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { request: { method: 'POST', url: 'Observation' }, resource: obs(ids.A, 'vital-signs', '2') },
      { request: { method: 'PUT', url: `Observation/${ids.vitalB}` }, resource: { ...obs(ids.A, 'vital-signs', '3'), id: ids.vitalB } },
    ] });
    assert.equal(tx.status, 403, tx.text);
    assert.match(tx.json.issue[0].diagnostics, /Bundle\.entry\[1\]/);
    assert.equal((await as(admin, 'GET', `Observation?subject=Patient/${ids.A}&_summary=count`)).json.total, before, 'nothing of the transaction stored');
    const scopeTx = await as(bearer(await token(srv, { scope: 'patient/Observation.rs', patient: ids.A })), 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { request: { method: 'GET', url: `Observation/${ids.vitalA}` } },
      { request: { method: 'POST', url: 'Observation' }, resource: obs(ids.A, 'vital-signs', '4') },
    ] });
    assert.equal(scopeTx.status, 403);
    assert.match(scopeTx.json.issue[0].diagnostics, /Bundle\.entry\[1\]/);
  });

  test('granular scopes narrow searches and reads to their criteria', async () => {
    const vitals = bearer(await token(srv, { scope: `patient/Observation.rs?category=${VITALS}`, patient: ids.A }));
    const vitalsOfA = idsOf((await as(admin, 'GET', `Observation?subject=Patient/${ids.A}&category=vital-signs`)).json);
    assert.ok(vitalsOfA.includes(`Observation/${ids.vitalA}`) && !vitalsOfA.includes(`Observation/${ids.labA}`));
    assert.deepEqual(idsOf((await as(vitals, 'GET', 'Observation')).json), vitalsOfA);
    assert.deepEqual(idsOf((await as(vitals, 'GET', 'Observation?category=laboratory')).json), []);
    assert.equal((await as(vitals, 'GET', `Observation/${ids.labA}`)).status, 404);
    assert.equal((await as(vitals, 'GET', `Observation/${ids.vitalA}`)).status, 200);
    // Two granular scopes on the same parameter OR together.
    const both = bearer(await token(srv, { scope: `patient/Observation.rs?category=${VITALS} patient/Observation.rs?category=laboratory`, patient: ids.A }));
    assert.deepEqual(idsOf((await as(both, 'GET', 'Observation')).json), [`Observation/${ids.labA}`, ...vitalsOfA].sort());
    // user-level granular: every patient's vital signs, nothing else.
    const userVitals = bearer(await token(srv, { scope: `user/Observation.rs?category=${VITALS}` }));
    assert.deepEqual(idsOf((await as(userVitals, 'GET', 'Observation')).json), [...vitalsOfA, `Observation/${ids.vitalB}`].sort());
    // Writes must match too.
    const writer = bearer(await token(srv, { scope: `user/Observation.cruds?category=${VITALS}` }));
    assert.equal((await as(writer, 'POST', 'Observation', obs(ids.A, 'laboratory', '5'))).status, 403);
    assert.equal((await as(writer, 'POST', 'Observation', obs(ids.A, 'vital-signs', '5'))).status, 201);
    assert.equal((await as(writer, 'DELETE', `Observation/${ids.labA}`)).status, 403);
  });
});

describe('$export', () => {
  async function kickoff(h: Record<string, string>, path = '$export?_type=Patient') {
    return as(h, 'GET', path, undefined, { prefer: 'respond-async' });
  }

  test('needs system/ scopes; status and files need the same client', async () => {
    for (const scope of ['patient/*.rs', 'user/*.rs']) {
      const r = await kickoff(bearer(await token(srv, { scope, patient: scope.startsWith('patient') ? ids.A : undefined })));
      assert.equal(r.status, 403, `${scope}: ${r.text}`);
    }
    const bulk = bearer(await token(srv, { scope: 'system/Patient.rs', clientId: 'bulk-client' }));
    assert.equal((await kickoff(bulk, '$export?_type=Observation')).status, 403, 'no read on Observation');
    const k = await kickoff(bulk);
    assert.equal(k.status, 202, k.text);
    const statusUrl = k.headers.get('content-location')!;
    const statusPath = statusUrl.slice(srv.url.length + 1);
    let manifest: any;
    for (let i = 0; i < 100 && !manifest; i++) {
      const s = await as(bulk, 'GET', statusPath);
      if (s.status === 200) manifest = s.json;
      else { assert.equal(s.status, 202, s.text); await new Promise((r) => setTimeout(r, 100)); }
    }
    assert.equal(manifest.requiresAccessToken, true);
    const other = bearer(await token(srv, { scope: 'system/*.rs', clientId: 'other-client' }));
    assert.equal((await as(other, 'GET', statusPath)).status, 403);
    assert.equal((await fhir(srv.url, 'GET', statusPath)).status, 401);
    const fileUrl = manifest.output[0].url as string;
    assert.equal((await fetch(fileUrl)).status, 401, 'file without a token');
    assert.equal((await fetch(fileUrl, { headers: other })).status, 403, "another client's token");
    const file = await fetch(fileUrl, { headers: bulk });
    assert.equal(file.status, 200);
    const lines = (await file.text()).trim().split('\n').map((l) => JSON.parse(l).id).sort();
    assert.deepEqual(lines, [ids.A, ids.B, ids.linkA].sort());
    assert.equal((await as(other, 'DELETE', statusPath)).status, 403, 'nor cancel it');
  });

  test('KILN_EXPORT_USER_SCOPES=on accepts user/ scopes', async () => {
    const s2 = await startTestServer({ auth: 'smart', exportUserScopes: true });
    try {
      const user = bearer(await token(s2, { scope: 'user/*.rs' }));
      const r = await fhir(s2.url, 'GET', '$export?_type=Patient', undefined, { ...user, prefer: 'respond-async' });
      assert.equal(r.status, 202, r.text);
      const patient = bearer(await token(s2, { scope: 'patient/*.rs', patient: 'x' }));
      assert.equal((await fhir(s2.url, 'GET', '$export?_type=Patient', undefined, { ...patient, prefer: 'respond-async' })).status, 403);
    } finally {
      await s2.stop();
      removeDataDir(s2.dataDir);
    }
  });
});
