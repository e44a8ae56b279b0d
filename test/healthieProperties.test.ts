// Property tests (fast-check): Healthie -> FHIR -> Healthie keeps every mapped field,
// FHIR -> Healthie mutation inputs are valid against Healthie's schema (documents
// validated, variables coerced), and generated FHIR is accepted by a real Kiln.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { buildSchema, parse, validate, getVariableValues, type GraphQLSchema, type OperationDefinitionNode } from 'graphql';
import { SHARED_DATA } from './support/data.ts';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import {
  loadMaps, userToPatient, patientToClientInputs, appointmentToEncounter, encounterToAppointmentInputs,
  entryToObservation, observationToEntryInputs, medicationToStatement, statementToMedicationInputs,
  toFhirDateTime, epochMs, type HealthieUser, type HealthieAppointment, type HealthieEntry, type HealthieMedication,
} from '../mappings/healthie/index.ts';
import { ALL_DOCUMENTS, MUTATIONS } from '../src/healthie/queries.ts';

const maps = loadMaps();
const NOW = '2025-01-20T00:00:00Z';
const RUNS = Number(process.env.KILN_PROPERTY_RUNS ?? 150);
let schema: GraphQLSchema;
let srv: TestServer;
before(async () => {
  schema = buildSchema(fs.readFileSync(path.join(SHARED_DATA, '..', 'healthie', 'schema.graphql'), 'utf8'));
  srv = await startTestServer();
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

// ---- arbitraries for Healthie objects --------------------------------------------
const word = fc.stringMatching(/^[A-Za-z][A-Za-z0-9 .'-]{0,18}[A-Za-z0-9]$/);
const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
const numericId = fc.integer({ min: 1, max: 999_999_999 }).map(String);
const day = fc.date({ min: new Date('1930-01-01'), max: new Date('2030-12-31'), noInvalidDate: true }).map((d) => d.toISOString().slice(0, 10));
const offset = fc.constantFrom('-0600', '-0500', '+0000', '+0530', '-0800');
const healthieDateTime = fc.tuple(day, fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 }), offset)
  .map(([d, h, m, z]) => `${d} ${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}:00 ${z}`);
const location = fc.record({
  id: numericId, line1: word, line2: opt(word), city: opt(word), state: opt(fc.constantFrom('TX', 'NY', 'CA')),
  zip: opt(fc.stringMatching(/^\d{5}$/)), country: opt(fc.constantFrom('US', 'CA')),
});

const userArb: fc.Arbitrary<HealthieUser> = fc.record({
  id: numericId,
  first_name: word, last_name: word, legal_name: opt(word),
  dob: opt(day),
  gender: opt(fc.constantFrom('Male', 'Female', 'Other', 'Non-binary', 'Prefer not to say')),
  gender_identity: opt(word), sex: opt(fc.constantFrom('Male', 'Female')), pronouns: opt(fc.constantFrom('she/her', 'he/him', 'they/them')),
  email: opt(fc.emailAddress()), skipped_email: fc.boolean(), phone_number: opt(fc.stringMatching(/^\d{3}-\d{3}-\d{4}$/)),
  active: fc.boolean(), record_identifier: opt(fc.stringMatching(/^MRN-\d{6}$/)), additional_record_identifier: opt(word),
  timezone: opt(fc.constantFrom('America/Chicago', 'America/New_York', 'Europe/Paris')),
  preferred_language: opt(fc.constantFrom('en', 'es', 'fr')),
  dietitian_id: opt(numericId),
  locations: fc.uniqueArray(location, { selector: (l) => l.id, maxLength: 3 }),
}).chain((u) => fc.boolean().map((hasPrimary) => ({ ...u, location: hasPrimary && u.locations.length ? u.locations[0] : null })));

const appointmentArb: fc.Arbitrary<HealthieAppointment> = fc.record({
  id: numericId, date: healthieDateTime, length: opt(fc.integer({ min: 5, max: 240 })),
  actual_duration: opt(fc.integer({ min: 1, max: 300 }).map(String)),
  contact_type: opt(fc.constantFrom('Healthie Video Call', 'Secure Videochat', 'In Person', 'Phone Call', 'Walk-in')),
  pm_status: opt(fc.constantFrom('Occurred', 'No-Show', 'Re-Scheduled', 'Cancelled', 'Late Cancellation', 'Checked-In')),
  appointment_type: opt(fc.record({ id: numericId, name: word })),
  user: fc.record({ id: numericId }),
  provider: opt(fc.record({ id: numericId, full_name: word })),
  location: opt(word), appointment_location_id: opt(numericId),
  external_videochat_url: opt(fc.constantFrom('https://meet.example.com/r/1', 'https://video.example.org/x')),
});

const metricCategory = fc.constantFrom('Weight', 'Height', 'BMI', 'Heart Rate', 'Body Temperature', 'Steps', 'Sleep', 'A1C', 'Blood Sugar', 'Mood Score', 'Custom Thing');
const stat = fc.double({ min: 0, max: 1000, noNaN: true }).map((v) => Math.round(v * 10) / 10);
const entryArb: fc.Arbitrary<HealthieEntry> = fc.oneof(
  fc.record({ id: numericId, type: fc.constant('MetricEntry'), category: metricCategory, metric_stat: opt(stat), description: opt(word),
    created_at: healthieDateTime, third_party_source: opt(fc.constantFrom('apple_health', 'fitbit')), poster: fc.record({ id: numericId }) }),
  fc.record({ id: numericId, type: fc.constant('MetricEntry'), category: fc.constant('Blood Pressure'), metric_stat: fc.constant(null), description: opt(word),
    created_at: healthieDateTime, poster: fc.record({ id: numericId }),
    subentries: fc.tuple(numericId, numericId, stat, stat).map(([a, b, s, d]) => [
      { id: a, category: 'Systolic Blood Pressure', metric_stat: s }, { id: b, category: 'Diastolic Blood Pressure', metric_stat: d }]) }),
);

const medicationArb: fc.Arbitrary<HealthieMedication> = fc.record({
  id: numericId, name: word, active: fc.boolean(), code: opt(fc.oneof(numericId, fc.stringMatching(/^[A-Z]{2}\d{3}$/))),
  dosage: opt(fc.oneof(fc.constantFrom('500 MG', '1000 IU', '2 puffs', '0.5 mg'), word)), frequency: opt(word), directions: opt(word),
  route: opt(fc.constantFrom('oral', 'topical')), comment: opt(word), start_date: opt(day), end_date: opt(day),
  mirrored: fc.constant(false), user_id: numericId, created_at: healthieDateTime,
});

// ---- schema checks ----------------------------------------------------------------
function assertValidRequest(doc: string, variables: Record<string, unknown>) {
  const ast = parse(doc);
  const errors = validate(schema, ast);
  assert.deepEqual(errors.map((e) => e.message), [], 'document validates against the Healthie schema');
  const op = ast.definitions[0] as OperationDefinitionNode;
  const coerced = getVariableValues(schema, op.variableDefinitions ?? [], variables);
  assert.equal(coerced.errors, undefined, `variables coerce: ${coerced.errors?.map((e) => e.message).join('; ')}`);
}

const same = (a: unknown, b: unknown) => (a ?? undefined) === (b ?? undefined);

describe('Healthie -> FHIR -> Healthie keeps every mapped field', () => {
  test('User <-> Patient', () => {
    fc.assert(fc.property(userArb, (u) => {
      const back = patientToClientInputs(userToPatient(u, { now: NOW }), u.id).update;
      for (const f of ['first_name', 'last_name', 'legal_name', 'dob', 'gender', 'gender_identity', 'sex', 'pronouns', 'phone_number',
        'active', 'record_identifier', 'additional_record_identifier', 'timezone', 'dietitian_id'] as const) {
        assert.ok(same(back[f], u[f]), `${f}: ${back[f]} != ${u[f]}`);
      }
      assert.ok(same(back.email, u.skipped_email ? null : u.email));
      assert.ok(same(back.preferred_language_code, u.preferred_language));
      const loc = (l: any) => l && Object.fromEntries(Object.entries(l).filter(([, v]) => v !== null && v !== undefined));
      assert.deepEqual(back.location, loc(u.location) ?? undefined);
      assert.deepEqual(new Set((back.locations as any[] ?? []).map((l) => JSON.stringify(loc(l)))),
        new Set(u.locations!.map((l) => JSON.stringify(loc(l)))));
    }), { numRuns: RUNS });
  });

  test('Appointment <-> Encounter (provider appointments; external ones are never written back)', () => {
    fc.assert(fc.property(appointmentArb, (a) => {
      const enc = appointmentToEncounter(a, maps, { now: NOW, patientId: 'p' })!;
      const inputs = encounterToAppointmentInputs(enc, maps, a.user!.id, a.id);
      if (!a.provider) { assert.equal(inputs, undefined); return; }
      const back = inputs!.update;
      assert.equal(epochMs(back.datetime as string), epochMs(a.date));
      for (const f of ['contact_type', 'pm_status', 'location', 'appointment_location_id', 'external_videochat_url', 'actual_duration'] as const) {
        assert.ok(same(back[f], a[f]), `${f}: ${back[f]} != ${a[f]}`);
      }
      assert.equal(back.user_id, a.user!.id);
      assert.equal(back.other_party_id, a.provider.id);
      assert.ok(same(back.appointment_type_id, a.appointment_type?.id));
    }), { numRuns: RUNS });
  });

  test('metric Entry <-> Observation', () => {
    fc.assert(fc.property(entryArb, (e) => {
      const back = observationToEntryInputs(entryToObservation(e, maps, { now: NOW, patientId: 'p' }), maps, e.poster!.id, e.id).update;
      assert.equal(back.category, e.category);
      assert.ok(same(back.metric_stat, e.subentries?.length || e.metric_stat === null ? null : String(e.metric_stat)));
      assert.equal(epochMs(back.created_at as string), epochMs(e.created_at));
      assert.ok(same(back.description, e.description));
      assert.ok(same(back.third_party_source, e.third_party_source));
      assert.deepEqual((back.subentries as any[] | undefined)?.map((s) => [s.id, s.category, s.metric_stat]),
        e.subentries?.map((s) => [s.id, s.category, String(s.metric_stat)]));
    }), { numRuns: RUNS });
  });

  test('Medication <-> MedicationStatement', () => {
    fc.assert(fc.property(medicationArb, (m) => {
      const back = statementToMedicationInputs(medicationToStatement(m, { now: NOW, patientId: 'p' }), m.user_id!, m.id).update;
      for (const f of ['name', 'code', 'dosage', 'frequency', 'directions', 'route', 'comment', 'start_date', 'end_date', 'active'] as const) {
        assert.ok(same(back[f], m[f]), `${f}: ${back[f]} != ${m[f]}`);
      }
    }), { numRuns: RUNS });
  });
});

describe('FHIR -> Healthie mutation inputs are valid against the schema', () => {
  test('every document Kiln sends validates', () => {
    for (const [name, doc] of Object.entries(ALL_DOCUMENTS)) {
      assert.deepEqual(validate(schema, parse(doc)).map((e) => e.message), [], name);
    }
  });

  test('a broken document or variable is caught by the same check', () => {
    assert.notEqual(validate(schema, parse('mutation { createClient(input: {first_name: 1, nope: 2}) { user { id } } }')).length, 0);
    const op = parse(MUTATIONS.Patient.create).definitions[0] as OperationDefinitionNode;
    assert.ok(getVariableValues(schema, op.variableDefinitions!, { input: { first_name: 'a', bogus: 1 } }).errors);
  });

  test('create and update inputs of all four types coerce', () => {
    fc.assert(fc.property(userArb, appointmentArb, entryArb, medicationArb, (u, a, e, m) => {
      const p = patientToClientInputs(userToPatient(u, { now: NOW }), u.id);
      assertValidRequest(MUTATIONS.Patient.create, { input: p.create });
      assertValidRequest(MUTATIONS.Patient.update, { input: p.update });
      const enc = encounterToAppointmentInputs(appointmentToEncounter({ ...a, provider: a.provider ?? { id: '1' } }, maps, { now: NOW, patientId: 'p' })!, maps, u.id, a.id)!;
      assertValidRequest(MUTATIONS.Encounter.create, { input: enc.create });
      assertValidRequest(MUTATIONS.Encounter.update, { input: enc.update });
      const ent = observationToEntryInputs(entryToObservation(e, maps, { now: NOW, patientId: 'p' }), maps, u.id, e.id);
      assertValidRequest(MUTATIONS.Observation.create, { input: ent.create });
      assertValidRequest(MUTATIONS.Observation.update, { input: ent.update });
      const med = statementToMedicationInputs(medicationToStatement(m, { now: NOW, patientId: 'p' }), u.id, m.id);
      assertValidRequest(MUTATIONS.MedicationStatement.create, { input: med.create });
      assertValidRequest(MUTATIONS.MedicationStatement.update, { input: med.update });
    }), { numRuns: RUNS });
  });
});

describe('generated FHIR is accepted by Kiln', () => {
  test('random users, appointments, entries and medications create with 201', async () => {
    let n = 0;
    await fc.assert(fc.asyncProperty(userArb, appointmentArb, entryArb, medicationArb, async (u, a, e, m) => {
      // MRNs are unique per tenant in Kiln; make each run's distinct.
      const user = { ...u, record_identifier: u.record_identifier ? `${u.record_identifier}-${n++}` : null };
      const p = await fhir(srv.url, 'POST', 'Patient', userToPatient(user, { now: NOW }));
      assert.equal(p.status, 201, p.text);
      const ctx = { now: NOW, patientId: p.json.id };
      for (const r of [appointmentToEncounter(a, maps, ctx)!, entryToObservation(e, maps, ctx), medicationToStatement(m, ctx)]) {
        const res = await fhir(srv.url, 'POST', r.resourceType, r);
        assert.equal(res.status, 201, `${r.resourceType}: ${res.text}\n${JSON.stringify(r)}`);
      }
    }), { numRuns: 40 });
  });
});

test('toFhirDateTime keeps the instant of every generated Healthie date-time', () => {
  fc.assert(fc.property(healthieDateTime, (d) => {
    const iso = toFhirDateTime(d)!;
    assert.match(iso, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$/);
    assert.ok(Number.isFinite(Date.parse(iso)));
  }), { numRuns: RUNS });
});
