// The patient compartment (R4 CompartmentDefinition/patient) of generic-store types:
// Condition, Procedure, AllergyIntolerance, Immunization, MedicationRequest, CarePlan,
// DiagnosticReport, DocumentReference, Coverage, Appointment and CareTeam. A patient's token,
// compartment search, $everything and Patient/Group $export all agree on it, including
// resources in it only through a non-subject parameter (Condition.asserter, CareTeam.participant).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';

let srv: TestServer;
let admin: Record<string, string>;
let alice: Record<string, string>; // patient/*.rs for A
const ids: Record<string, string> = {};
/** Type/id of each patient's compartment, of the types under test (Patient included). */
const compartment: Record<'A' | 'B', string[]> = { A: [], B: [] };
/** Resources in no patient's compartment. */
const outside: string[] = [];

const TYPES = ['Condition', 'Procedure', 'AllergyIntolerance', 'Immunization', 'MedicationRequest', 'CarePlan',
  'DiagnosticReport', 'DocumentReference', 'Coverage', 'Appointment', 'CareTeam'];

const as = (h: Record<string, string>, method: string, path: string, body?: unknown, extra: Record<string, string> = {}) =>
  fhir(srv.url, method, path, body, { ...h, ...extra });
const idsOf = (bundle: any) => (bundle?.entry ?? []).filter((e: any) => e.resource?.resourceType !== 'OperationOutcome').map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();
const ofType = (list: string[], type: string) => list.filter((x) => x.startsWith(`${type}/`)).sort();

async function create(resource: any): Promise<string> {
  const r = await as(admin, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return `${resource.resourceType}/${r.json.id}`;
}

const cc = (code: string) => ({ coding: [{ system: 'http://example.org/codes', code }] });
const status = (system: string, code: string) => ({ coding: [{ system: `http://terminology.hl7.org/CodeSystem/${system}`, code }] });

/** One resource of each type under test for patient `p` (a reference `Patient/id`); codes end in `tag`. */
function recordsOf(p: string, tag: string, prac: string, org: string): any[] {
  const ref = { reference: p };
  return [
    { resourceType: 'Condition', clinicalStatus: status('condition-clinical', 'active'), verificationStatus: status('condition-ver-status', 'confirmed'), code: cc(`cond-${tag}`), subject: ref, asserter: { reference: prac } },
    { resourceType: 'Procedure', status: 'completed', code: cc(`proc-${tag}`), subject: ref, performer: [{ actor: { reference: prac } }] },
    { resourceType: 'AllergyIntolerance', clinicalStatus: status('allergyintolerance-clinical', 'active'), verificationStatus: status('allergyintolerance-verification', 'confirmed'), code: cc(`allergy-${tag}`), patient: ref },
    { resourceType: 'Immunization', status: 'completed', vaccineCode: cc(`vax-${tag}`), patient: ref, occurrenceDateTime: '2024-01-01' },
    { resourceType: 'MedicationRequest', status: 'active', intent: 'order', medicationCodeableConcept: cc(`med-${tag}`), subject: ref, requester: { reference: prac } },
    { resourceType: 'CarePlan', status: 'active', intent: 'plan', category: [cc(`plan-${tag}`)], subject: ref },
    { resourceType: 'DiagnosticReport', status: 'final', code: cc(`report-${tag}`), subject: ref, performer: [{ reference: org }] },
    { resourceType: 'DocumentReference', status: 'current', type: cc(`doc-${tag}`), subject: ref, author: [{ reference: prac }], content: [{ attachment: { contentType: 'text/plain', data: 'aGk=' } }] },
    { resourceType: 'Coverage', status: 'active', type: cc(`cov-${tag}`), beneficiary: ref, payor: [{ reference: org }] },
    { resourceType: 'Appointment', status: 'booked', serviceType: [cc(`appt-${tag}`)], start: '2024-02-01T10:00:00Z', end: '2024-02-01T10:30:00Z',
      participant: [{ actor: ref, status: 'accepted' }, { actor: { reference: prac }, status: 'accepted' }] },
  ];
}

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'admin-client' }));
  ids.A = (await create({ resourceType: 'Patient', name: [{ family: 'Alpha' }] })).split('/')[1];
  ids.B = (await create({ resourceType: 'Patient', name: [{ family: 'Bravo' }] })).split('/')[1];
  compartment.A.push(`Patient/${ids.A}`);
  compartment.B.push(`Patient/${ids.B}`);
  const org = await create({ resourceType: 'Organization', name: 'Shared Clinic' });
  const prac = await create({ resourceType: 'Practitioner', name: [{ family: 'Shared' }] });
  outside.push(org, prac);
  for (const [who, tag] of [['A', 'a'], ['B', 'b']] as const) {
    for (const r of recordsOf(`Patient/${ids[who]}`, tag, prac, org)) compartment[who].push(await create(r));
  }
  // In A's compartment only through asserter; B's through subject.
  ids.asserted = await create({ resourceType: 'Condition', code: cc('cond-asserted'), clinicalStatus: status('condition-clinical', 'active'),
    subject: { reference: `Patient/${ids.B}` }, asserter: { reference: `Patient/${ids.A}` } });
  compartment.A.push(ids.asserted);
  compartment.B.push(ids.asserted);
  // In A's compartment only through participant (no subject).
  ids.careTeam = await create({ resourceType: 'CareTeam', status: 'active', participant: [{ member: { reference: `Patient/${ids.A}` } }, { member: { reference: prac } }] });
  compartment.A.push(ids.careTeam);
  // A Group holding only A: in A's compartment (Group: member), and the Group of the Group export.
  ids.groupA = await create({ resourceType: 'Group', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${ids.A}` } }] });
  // Of types in the compartment, but in nobody's: about a Group, a Practitioner.
  outside.push(await create({ resourceType: 'Condition', code: cc('cond-group'), subject: { reference: ids.groupA } }));
  outside.push(await create({ resourceType: 'DocumentReference', status: 'current', subject: { reference: prac }, content: [{ attachment: { contentType: 'text/plain', data: 'aGk=' } }] }));
  alice = bearer(await token(srv, { scope: 'launch/patient patient/*.rs', patient: ids.A, clientId: 'alice-app' }));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

/** B's resources that are not also A's. */
const onlyB = () => compartment.B.filter((x) => !compartment.A.includes(x));

describe('a patient token of A', () => {
  test('every search of each type returns exactly A\'s compartment', async () => {
    for (const type of TYPES) {
      const r = await as(alice, 'GET', `${type}?_count=100`);
      assert.equal(r.status, 200, `${type}: ${r.text}`);
      assert.deepEqual(idsOf(r.json), ofType(compartment.A, type), type);
      assert.equal((await as(alice, 'GET', `${type}?_summary=count`)).json.total, ofType(compartment.A, type).length, `${type} _summary=count`);
    }
    // Whatever the criteria: B's by id, by B's codes, by B as the compartment parameter.
    for (const x of onlyB().filter((x) => !x.startsWith('Patient/'))) {
      const [type, id] = x.split('/');
      const r = await as(alice, 'GET', `${type}?_id=${id}`);
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(idsOf(r.json), [], `${type}?_id=${id} leaked`);
    }
    const byB: [string, string][] = [['Condition', 'patient'], ['Condition', 'subject'], ['Procedure', 'patient'], ['AllergyIntolerance', 'patient'],
      ['Immunization', 'patient'], ['MedicationRequest', 'subject'], ['CarePlan', 'patient'], ['DiagnosticReport', 'subject'],
      ['DocumentReference', 'subject'], ['Coverage', 'beneficiary'], ['Appointment', 'actor'], ['Appointment', 'patient']];
    for (const [type, param] of byB) {
      const r = await as(alice, 'GET', `${type}?${param}=Patient/${ids.B}`);
      assert.equal(r.status, 200, `${type}?${param}: ${r.text}`);
      // The asserted Condition names B as subject and is A's too: the only one allowed.
      const allowed = type === 'Condition' ? [ids.asserted] : [];
      assert.deepEqual(idsOf(r.json), allowed, `${type}?${param}=Patient/${ids.B}`);
    }
    // By B's codes nothing; by A's the same criterion finds A's (so the empty answers mean something).
    const codes: [string, string, string][] = [['Condition', 'code', 'cond'], ['Procedure', 'code', 'proc'], ['AllergyIntolerance', 'code', 'allergy'],
      ['Immunization', 'vaccine-code', 'vax'], ['MedicationRequest', 'code', 'med'], ['CarePlan', 'category', 'plan'], ['DiagnosticReport', 'code', 'report'],
      ['DocumentReference', 'type', 'doc'], ['Coverage', 'type', 'cov'], ['Appointment', 'service-type', 'appt']];
    for (const [type, param, code] of codes) {
      assert.deepEqual(idsOf((await as(alice, 'GET', `${type}?${param}=${code}-b`)).json), [], `${type}?${param}=${code}-b leaked`);
      assert.equal(idsOf((await as(alice, 'GET', `${type}?${param}=${code}-a`)).json).length, 1, `${type}?${param}=${code}-a`);
      assert.equal(idsOf((await as(admin, 'GET', `${type}?${param}=${code}-b`)).json).length, 1, `admin ${type}?${param}=${code}-b`);
    }
    // System search over these types: A's compartment, nothing of B's.
    const sys = idsOf((await as(alice, 'GET', `?_type=${TYPES.join(',')}&_count=200`)).json);
    assert.deepEqual(sys, compartment.A.filter((x) => !x.startsWith('Patient/')).sort());
  });

  test('reads of B\'s resources are 404; A\'s (the asserted Condition too) are 200', async () => {
    for (const x of onlyB()) assert.equal((await as(alice, 'GET', x)).status, 404, `${x} read`);
    for (const x of onlyB()) assert.equal((await as(alice, 'GET', `${x}/_history`)).status, 404, `${x} history`);
    for (const x of compartment.A) assert.equal((await as(alice, 'GET', x)).status, 200, `${x} read`);
    for (const x of outside.filter((o) => /^(Condition|DocumentReference)\//.test(o))) assert.equal((await as(alice, 'GET', x)).status, 404, `${x} read`);
  });

  test('chains, _has, _include and _revinclude into B\'s resources give nothing', async () => {
    const find = async (q: string) => {
      const r = await as(alice, 'GET', q);
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      return idsOf(r.json);
    };
    for (const q of ['Procedure?subject:Patient.name=Bravo', 'AllergyIntolerance?patient.name=Bravo', 'Immunization?patient.name=Bravo',
      'MedicationRequest?subject:Patient.name=Bravo', 'CarePlan?subject:Patient.name=Bravo', 'DiagnosticReport?subject:Patient.name=Bravo',
      'DocumentReference?subject:Patient.name=Bravo', 'Coverage?beneficiary.name=Bravo', 'Appointment?actor:Patient.name=Bravo',
      'Condition?asserter:Patient.name=Bravo', 'Condition?subject:Patient.name=Bravo', 'Condition?patient.name=Bravo', 'Condition?patient.family=Bravo', 'Patient?_has:Condition:patient:code=cond-b', 'Patient?_has:Coverage:beneficiary:type=cov-b',
      'Patient?_has:Appointment:actor:service-type=appt-b', `Patient?_id=${ids.B}`]) {
      assert.deepEqual(await find(q), [], `${q} leaked`);
    }
    // A's own through a chain: the chain works, so the empty answers above mean something.
    assert.deepEqual(await find('Coverage?beneficiary.name=Alpha'), ofType(compartment.A, 'Coverage'));
    assert.deepEqual(await find('Condition?asserter:Patient.name=Alpha'), [ids.asserted]);
    // _include: the asserted Condition's subject (B) is not brought in; its asserter (A) is.
    const [, assertedId] = ids.asserted.split('/');
    assert.deepEqual(await find(`Condition?_id=${assertedId}&_include=Condition:subject`), [ids.asserted]);
    assert.deepEqual(await find(`Condition?_id=${assertedId}&_include=Condition:asserter`), [ids.asserted, `Patient/${ids.A}`].sort());
    assert.deepEqual(await find(`Condition?_id=${assertedId}&_include=*`), [ids.asserted, `Patient/${ids.A}`].sort());
    // Organization and Practitioner are outside the compartment: not included either.
    assert.deepEqual(await find('Coverage?_include=Coverage:payor'), ofType(compartment.A, 'Coverage'));
    assert.deepEqual(await find('Appointment?_include=Appointment:actor'), [...ofType(compartment.A, 'Appointment'), `Patient/${ids.A}`].sort());
    // _revinclude from A's Patient brings A's resources only; from B nothing (B is not searchable).
    const rev = ['Condition:subject', 'Condition:asserter', 'Procedure:patient', 'AllergyIntolerance:patient', 'Immunization:patient',
      'MedicationRequest:subject', 'CarePlan:subject', 'DiagnosticReport:subject', 'DocumentReference:subject', 'Coverage:beneficiary',
      'Appointment:actor', 'CareTeam:participant'].map((p) => `_revinclude=${p}`).join('&');
    assert.deepEqual(await find(`Patient?${rev}&_count=100`), compartment.A.slice().sort());
    // The asserted Condition revincluded from A's Patient does not drag in B through a further include.
    assert.deepEqual(await find(`Patient?_revinclude=Condition:asserter&_include:iterate=Condition:subject`), [`Patient/${ids.A}`, ids.asserted].sort());
  });

  test('Patient/A/$everything holds exactly A\'s compartment of these types, nothing of B\'s', async () => {
    const seen: string[] = [];
    let url: string | undefined = `Patient/${ids.A}/$everything?_count=10`;
    for (let i = 0; url && i < 50; i++) {
      const r = await as(alice, 'GET', url);
      assert.equal(r.status, 200, r.text);
      seen.push(...idsOf(r.json));
      url = (r.json.link?.find((l: any) => l.relation === 'next')?.url as string | undefined)?.slice(srv.url.length + 1);
    }
    const tested = seen.filter((x) => ['Patient', ...TYPES].includes(x.split('/')[0])).sort();
    assert.deepEqual(tested, compartment.A.slice().sort());
    assert.ok(seen.includes(ids.groupA), 'the Group holding A');
    const leaked = seen.filter((x) => onlyB().includes(x) || outside.includes(x));
    assert.deepEqual(leaked, [], '$everything leaked');
    // With A's token, B's $everything is not found; the admin's has B's compartment.
    assert.equal((await as(alice, 'GET', `Patient/${ids.B}/$everything`)).status, 404);
    const adminB = idsOf((await as(admin, 'GET', `Patient/${ids.B}/$everything?_type=Patient,${TYPES.join(',')}&_count=200`)).json);
    assert.deepEqual(adminB, compartment.B.slice().sort());
  });

  test('compartment search: Patient/A/[type] is A\'s, the asserted Condition included; Patient/B/[type] gives nothing of B\'s', async () => {
    for (const type of TYPES) {
      const r = await as(alice, 'GET', `Patient/${ids.A}/${type}`);
      assert.equal(r.status, 200, `${type}: ${r.text}`);
      assert.deepEqual(idsOf(r.json), ofType(compartment.A, type), `Patient/A/${type}`);
      // The admin's compartment search is the same set: the compartment, not the token, decides it.
      assert.deepEqual(idsOf((await as(admin, 'GET', `Patient/${ids.A}/${type}`)).json), ofType(compartment.A, type), `admin Patient/A/${type}`);
      assert.deepEqual(idsOf((await as(admin, 'GET', `Patient/${ids.B}/${type}`)).json), ofType(compartment.B, type), `admin Patient/B/${type}`);
    }
    assert.deepEqual(idsOf((await as(alice, 'GET', `Patient/${ids.A}/Condition`)).json).includes(ids.asserted), true);
    // With A's token, B's compartment holds only what is A's too: the asserted Condition.
    // The server answers 200 with the intersection of the two compartments (not 404 as $everything does).
    for (const type of TYPES) {
      const r = await as(alice, 'GET', `Patient/${ids.B}/${type}`);
      assert.equal(r.status, 200, `${type}: ${r.text}`);
      assert.deepEqual(idsOf(r.json), type === 'Condition' ? [ids.asserted] : [], `Patient/B/${type} with A's token`);
    }
    // Nor is B's existence told apart from an unknown patient's.
    const unknown = await as(alice, 'GET', 'Patient/no-such-patient/Procedure');
    assert.equal(unknown.status, 200, unknown.text);
    assert.deepEqual(idsOf(unknown.json), []);
    // Organization is in no compartment: 400.
    assert.equal((await as(alice, 'GET', `Patient/${ids.A}/Organization`)).status, 400);
  });

  test('a patient/*.cruds token of A writes A\'s resources only', async () => {
    const writer = bearer(await token(srv, { scope: 'launch/patient patient/*.cruds', patient: ids.A, clientId: 'alice-writer' }));
    const cond = (subject: string, extra: any = {}) => ({ resourceType: 'Condition', code: cc('cond-new'), clinicalStatus: status('condition-clinical', 'active'), subject: { reference: subject }, ...extra });
    const before = (await as(admin, 'GET', 'Condition?code=cond-new&_summary=count')).json.total;
    assert.equal((await as(writer, 'POST', 'Condition', cond(`Patient/${ids.B}`))).status, 403, 'a Condition for B');
    assert.equal((await as(writer, 'POST', 'Condition', cond(`Patient/${ids.A}`, { asserter: { reference: `Patient/${ids.B}` } }))).status, 403, "A's Condition put in B's compartment");
    assert.equal((await as(writer, 'POST', 'Coverage', { resourceType: 'Coverage', status: 'active', beneficiary: { reference: `Patient/${ids.B}` }, payor: [{ reference: outside[0] }] })).status, 403, 'a Coverage for B');
    assert.equal((await as(writer, 'POST', 'Organization', { resourceType: 'Organization', name: 'Mine' })).status, 403, 'an Organization');
    const bCond = compartment.B.find((x) => x.startsWith('Condition/') && x !== ids.asserted)!;
    assert.equal((await as(writer, 'PUT', bCond, { ...cond(`Patient/${ids.A}`), id: bCond.split('/')[1] })).status, 403, "taking over B's Condition");
    assert.equal((await as(writer, 'DELETE', bCond)).status, 403, "deleting B's Condition");
    assert.equal((await as(admin, 'GET', 'Condition?code=cond-new&_summary=count')).json.total, before, 'nothing stored');
    assert.equal((await as(admin, 'GET', bCond)).status, 200, "B's Condition is still there");
    // Control: A's own Condition is written.
    const own = await as(writer, 'POST', 'Condition', cond(`Patient/${ids.A}`));
    assert.equal(own.status, 201, own.text);
    assert.equal((await as(writer, 'DELETE', `Condition/${own.json.id}`)).status, 204);
  });
});

describe('$export with a system token', () => {
  let bulk: Record<string, string>;
  before(async () => { bulk = bearer(await token(srv, { scope: 'system/*.rs', clientId: 'bulk-client' })); });

  /** Kick-off, poll, and every line of every file as Type/id. */
  async function exported(path: string): Promise<{ types: string[]; lines: string[] }> {
    const k = await as(bulk, 'GET', path, undefined, { prefer: 'respond-async' });
    assert.equal(k.status, 202, `${path}: ${k.text}`);
    const statusPath = k.headers.get('content-location')!.slice(srv.url.length + 1);
    let manifest: any;
    for (let i = 0; i < 600 && !manifest; i++) {
      const s = await as(bulk, 'GET', statusPath);
      if (s.status === 200) manifest = s.json;
      else { assert.equal(s.status, 202, s.text); await new Promise((r) => setTimeout(r, 100)); }
    }
    assert.ok(manifest, `${path} finished`);
    assert.deepEqual(manifest.error, []);
    const lines: string[] = [];
    for (const f of manifest.output) {
      const res = await fetch(f.url, { headers: bulk });
      assert.equal(res.status, 200);
      for (const l of (await res.text()).trim().split('\n').filter(Boolean)) {
        const r = JSON.parse(l);
        assert.equal(r.resourceType, f.type);
        lines.push(`${r.resourceType}/${r.id}`);
      }
    }
    return { types: [...new Set<string>(manifest.output.map((o: any) => o.type))].sort(), lines: lines.sort() };
  }

  test('Patient/$export lists these types with exactly the compartment members of every patient', async () => {
    const { types, lines } = await exported('Patient/$export');
    for (const type of ['Patient', ...TYPES]) {
      assert.ok(types.includes(type), `Patient/$export lists ${type}: ${types}`);
      assert.deepEqual(ofType(lines, type), [...new Set([...ofType(compartment.A, type), ...ofType(compartment.B, type)])].sort(), type);
    }
    assert.deepEqual(lines.filter((x) => outside.includes(x)), [], 'nothing outside every compartment');
    // _type names them too.
    const asked = await exported(`Patient/$export?_type=${TYPES.join(',')}`);
    assert.deepEqual(asked.types, [...TYPES].sort());
  });

  test('Group/[id]/$export of a Group holding only A: A\'s resources of these types, none of B\'s', async () => {
    const { types, lines } = await exported(`${ids.groupA}/$export`);
    for (const type of ['Patient', ...TYPES]) {
      assert.ok(types.includes(type), `Group $export lists ${type}: ${types}`);
      assert.deepEqual(ofType(lines, type), ofType(compartment.A, type), type);
    }
    assert.deepEqual(lines.filter((x) => onlyB().includes(x) || outside.includes(x)), [], 'Group $export leaked');
  });
});
