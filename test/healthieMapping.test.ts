// Healthie <-> FHIR mappings on the shared example payloads, and the FHIR they produce
// accepted by a real Kiln server (201 Created).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SHARED_DATA } from './support/data.ts';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import {
  loadMaps, userToPatient, appointmentToEncounter, entryToObservation, medicationToStatement,
  patientToClientInputs, encounterToAppointmentInputs, observationToEntryInputs, statementToMedicationInputs,
  SYSTEM, EXT, EXTERNAL_TAG, HEALTHIE_TAG, LOINC, toFhirDateTime, toHealthieDateTime,
  appointmentClientIds, isMappableAppointment, removedAttendeeEncounter,
} from '../mappings/healthie/index.ts';

const EX = path.join(SHARED_DATA, '..', 'healthie', 'examples');
const ex = (f: string) => JSON.parse(fs.readFileSync(path.join(EX, f), 'utf8'));
const maps = loadMaps();
const NOW = '2025-01-20T00:00:00Z';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

describe('healthie mappings on the examples', () => {
  test('dates: Healthie "YYYY-MM-DD HH:MM:SS -ZZZZ" <-> FHIR dateTime', () => {
    assert.equal(toFhirDateTime('2025-01-14 10:00:00 -0600'), '2025-01-14T10:00:00-06:00');
    assert.equal(toHealthieDateTime('2025-01-14T10:00:00-06:00'), '2025-01-14 10:00:00 -0600');
    assert.equal(toFhirDateTime('2025-01-14T10:00:00Z'), '2025-01-14T10:00:00Z');
    assert.equal(toFhirDateTime('1987-04-19'), '1987-04-19');
  });

  test('user -> Patient: identifiers, names, telecom, address, extensions, gp; and back', () => {
    const user = ex('01_user_patient.json').data.user;
    const p = userToPatient(user, { now: NOW });
    assert.deepEqual(p.identifier?.[0], { system: SYSTEM.user, value: '1204417' });
    assert.equal(p.identifier?.[1].value, 'MRN-004512');
    assert.deepEqual(p.name, [{ use: 'usual', family: 'Rivera', given: ['Jo'] }, { use: 'official', family: 'Rivera', given: ['Josefina'] }]);
    assert.equal(p.gender, 'female');
    assert.equal(p.birthDate, '1987-04-19');
    assert.equal(p.address?.length, 1, 'primary location not repeated from locations');
    assert.deepEqual(p.address?.[0], { id: '90331', use: 'home', line: ['1420 Elm St', 'Apt 3B'], city: 'Austin', state: 'TX', postalCode: '78701', country: 'US' });
    assert.equal(p.generalPractitioner?.[0].identifier?.value, '388120');
    assert.deepEqual(p.meta?.tag?.[0], HEALTHIE_TAG);
    assert.equal(p.meta?.source, 'https://api.gethealthie.com/graphql');
    const back = patientToClientInputs(p, '1204417').update;
    for (const f of ['first_name', 'last_name', 'legal_name', 'dob', 'gender', 'sex', 'pronouns', 'email', 'phone_number', 'active', 'record_identifier', 'timezone', 'dietitian_id'] as const) {
      assert.equal(back[f], user[f], f);
    }
    assert.equal(back.preferred_language_code, 'en');
    assert.deepEqual(back.location, { id: '90331', line1: '1420 Elm St', line2: 'Apt 3B', city: 'Austin', state: 'TX', zip: '78701', country: 'US' });
  });

  test('appointments: video -> VR finished with zoom kept (no start url); in person -> AMB; blocker -> nothing; provider-less -> external', () => {
    const zoom = appointmentToEncounter(ex('02_appointment_video_zoom.json').data.appointment, maps, { now: NOW, patientId: 'p1' })!;
    assert.equal(zoom.class.code, 'VR');
    assert.equal(zoom.status, 'finished');
    assert.deepEqual(zoom.period, { start: '2025-01-14T10:00:00-06:00', end: '2025-01-14T10:45:00-06:00' });
    assert.deepEqual(zoom.length, { value: 45, unit: 'min', system: 'http://unitsofmeasure.org', code: 'min' });
    assert.equal(zoom.type?.[0].text, 'Follow-up Nutrition Visit');
    assert.match(JSON.stringify(zoom), /84711029933/);
    assert.doesNotMatch(JSON.stringify(zoom), /start_url|zoom_start/);
    const inPerson = appointmentToEncounter(ex('03_appointment_in_person.json').data.appointment, maps, { now: NOW, patientId: 'p1' })!;
    assert.equal(inPerson.class.code, 'AMB');
    assert.equal(inPerson.status, 'planned', 'no pm_status and in the future');
    assert.equal(inPerson.location?.[0].location.display, 'Austin Clinic, 500 Congress Ave Suite 210, Austin TX 78701');
    const [blocker, noShow] = ex('04_appointment_external.json').data.appointments;
    assert.equal(appointmentToEncounter(blocker, maps, { now: NOW, patientId: 'p1' }), undefined);
    const ns = appointmentToEncounter(noShow, maps, { now: NOW, patientId: 'p1' })!;
    assert.equal(ns.status, 'cancelled');
    assert.equal(encounterToAppointmentInputs(ns, maps, '1204417')!.update.pm_status, 'No-Show');
    const external = appointmentToEncounter({ ...ex('03_appointment_in_person.json').data.appointment, provider: null, other_party_id: null }, maps, { now: NOW, patientId: 'p1' })!;
    assert.ok(external.meta?.tag?.some((t) => t.system === EXTERNAL_TAG.system && t.code === 'external'));
    assert.equal(encounterToAppointmentInputs(external, maps, '1204417'), undefined, 'never written back');
  });

  test('the class comes from contact_type alone: a provider-less (external) phone call is VR, with a provider too; external in person is AMB', () => {
    const base = ex('03_appointment_in_person.json').data.appointment;
    const classOf = (a: object) => appointmentToEncounter({ ...base, ...a }, maps, { now: NOW, patientId: 'p1' })!;
    for (const provider of [base.provider, null]) {
      const phone = classOf({ contact_type: 'Phone Call', provider, other_party_id: null });
      assert.equal(phone.class.code, 'VR', `phone call, provider ${provider ? 'set' : 'none'}`);
      assert.equal(phone.meta?.tag?.some((t) => t.code === 'external') ?? false, provider === null, 'external changes the tag');
      assert.equal(classOf({ contact_type: 'In Person', provider, other_party_id: null }).class.code, 'AMB');
    }
    assert.equal(classOf({ contact_type: null, provider: null, other_party_id: null, external_videochat_url: 'https://meet.example/x' }).class.code, 'VR', 'no contact type, a video link');
    assert.equal(classOf({ contact_type: null, provider: null, other_party_id: null, external_videochat_url: null, zoom_join_url: null }).class.code, 'AMB');
  });

  test('group appointment: one Encounter per attendee (subject and count, not the others), never written back; a client who left is cancelled', () => {
    const base = ex('03_appointment_in_person.json').data.appointment;
    const group = { ...base, user_id: null, user: null, attendees: [{ id: '11' }, { id: '12' }, { id: '11' }, { id: '13' }] };
    assert.deepEqual(appointmentClientIds(group), ['11', '12', '13'], 'every attendee, once, in order');
    assert.deepEqual(appointmentClientIds({ ...base, attendees: [{ id: '1204417' }, { id: '99' }] }), ['1204417'], 'user_id set: that client');
    assert.equal(isMappableAppointment({ ...group, attendees: [] }), false, 'no client, no Encounter');
    const second = appointmentToEncounter(group, maps, { now: NOW, patientId: 'p12', clientId: '12' })!;
    assert.deepEqual(second.subject, { reference: 'Patient/p12', identifier: { system: SYSTEM.user, value: '12' } });
    assert.deepEqual(second.identifier, [{ system: SYSTEM.appointment, value: base.id }]);
    assert.deepEqual(second.extension?.filter((x) => x.url === EXT.groupAppointment), [{ url: EXT.groupAppointment, valueInteger: 3 }]);
    assert.doesNotMatch(JSON.stringify(second), /"1[13]"/, "the other attendees' ids stay out of this patient's Encounter");
    assert.equal(encounterToAppointmentInputs(second, maps, '12', base.id), undefined, 'one attendee cannot speak for the group');
    const single = appointmentToEncounter(base, maps, { now: NOW, patientId: 'p1' })!;
    assert.equal(single.extension?.some((x) => x.url === EXT.groupAppointment), false, 'a one-client appointment is unchanged');
    assert.ok(encounterToAppointmentInputs(single, maps, '1204417', base.id));
    const left = removedAttendeeEncounter(second);
    assert.equal(left.status, 'cancelled');
    assert.deepEqual(removedAttendeeEncounter(left), left, 'idempotent');
    assert.equal(encounterToAppointmentInputs(removedAttendeeEncounter(single), maps, '1204417', base.id), undefined, 'a client who left is not booked again');
  });

  test('metric entries: LOINC + UCUM, blood pressure components, unknown category kept', () => {
    const [weight, hr, steps, bp] = ex('06_metric_entries.json').data.entries;
    const w = entryToObservation(weight, maps, { now: NOW, patientId: 'p1' });
    assert.equal(w.code.coding?.[0].system, LOINC);
    assert.equal(w.code.coding?.[0].code, '29463-7');
    assert.deepEqual(w.valueQuantity, { value: 182.4, unit: 'lb', system: 'http://unitsofmeasure.org', code: '[lb_av]' });
    assert.equal(w.category?.[0].coding?.[0].code, 'vital-signs');
    assert.equal(w.effectiveDateTime, '2025-01-14T07:30:00-06:00');
    assert.equal(entryToObservation(hr, maps, { now: NOW, patientId: 'p1' }).code.coding?.[0].code, '8867-4');
    const s = entryToObservation(steps, maps, { now: NOW, patientId: 'p1' });
    assert.equal(s.code.coding?.[0].code, '41950-7');
    assert.equal(s.category?.[0].coding?.[0].code, 'activity');
    const b = entryToObservation(bp, maps, { now: NOW, patientId: 'p1' });
    assert.equal(b.code.coding?.[0].code, '85354-9');
    assert.deepEqual(b.component?.map((c) => [c.code.coding?.[0].code, c.valueQuantity?.value]), [['8480-6', 128], ['8462-4', 84]]);
    const back = observationToEntryInputs(b, maps, '1204417', '98811004').update;
    assert.deepEqual(back.subentries, [
      { id: '98811005', category: 'Systolic Blood Pressure', metric_stat: '128', type: 'MetricEntry' },
      { id: '98811006', category: 'Diastolic Blood Pressure', metric_stat: '84', type: 'MetricEntry' },
    ]);
    const custom = entryToObservation({ ...weight, id: '1', category: 'Mood Score', metric_stat: 7 }, maps, { now: NOW, patientId: 'p1' });
    assert.equal(custom.code.text, 'Mood Score');
    assert.deepEqual(custom.code.coding, [{ system: SYSTEM.metricCategory, code: 'Mood Score' }]);
    assert.deepEqual(custom.valueQuantity, { value: 7 });
    assert.equal(observationToEntryInputs(custom, maps, '1').create.category, 'Mood Score');
    // A FHIR-side weight in kg goes to Healthie in the practice's unit (lb).
    const kg = observationToEntryInputs({ ...w, valueQuantity: { value: 80, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' }, code: { coding: [{ system: LOINC, code: '29463-7' }] } }, maps, '1');
    assert.equal(kg.create.category, 'Weight');
    assert.equal(kg.create.metric_stat, '176.37');
  });

  test('medications: RxNorm when numeric, status from active/dates, dosage pieces kept', () => {
    const [met, vitd] = ex('05_medications.json').data.medications;
    const m = medicationToStatement(met, { now: NOW, patientId: 'p1' });
    assert.equal(m.status, 'active');
    assert.deepEqual(m.medicationCodeableConcept?.coding?.[0], { system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '861007', display: met.name });
    assert.equal(m.dosage?.[0].text, '500 MG twice daily — Take 1 tablet by mouth with breakfast and dinner');
    assert.deepEqual(m.effectivePeriod, { start: '2024-11-01' });
    const v = medicationToStatement(vitd, { now: NOW, patientId: 'p1' });
    assert.equal(v.status, 'completed');
    assert.equal(v.medicationCodeableConcept?.coding, undefined);
    const back = statementToMedicationInputs(m, '1204417', '5512093').update;
    for (const f of ['name', 'code', 'dosage', 'frequency', 'directions', 'route', 'comment', 'start_date', 'active'] as const) assert.equal(back[f], met[f], f);
  });
});

describe('mapped FHIR is accepted by Kiln', () => {
  test('Patient, Encounters, Observations and MedicationStatements from the examples are created (201)', async () => {
    const user = ex('01_user_patient.json').data.user;
    const pr = await fhir(srv.url, 'POST', 'Patient', userToPatient(user, { now: NOW }));
    assert.equal(pr.status, 201, pr.text);
    const ctx = { now: NOW, patientId: pr.json.id };
    const resources = [
      appointmentToEncounter(ex('02_appointment_video_zoom.json').data.appointment, maps, ctx)!,
      appointmentToEncounter(ex('03_appointment_in_person.json').data.appointment, maps, ctx)!,
      appointmentToEncounter(ex('04_appointment_external.json').data.appointments[1], maps, ctx)!,
      appointmentToEncounter({ ...ex('03_appointment_in_person.json').data.appointment, id: '9', provider: null }, maps, ctx)!,
      removedAttendeeEncounter(appointmentToEncounter({ ...ex('03_appointment_in_person.json').data.appointment, id: '10', user_id: null, user: null,
        attendees: [{ id: '1204417' }, { id: '5' }] }, maps, { ...ctx, clientId: '1204417' })!),
      ...ex('06_metric_entries.json').data.entries.map((e: any) => entryToObservation(e, maps, ctx)),
      entryToObservation({ id: '77', category: 'Mood Score', metric_stat: 3, created_at: '2025-01-01 08:00:00 -0500' }, maps, ctx),
      ...ex('05_medications.json').data.medications.map((m: any) => medicationToStatement(m, ctx)),
    ];
    for (const r of resources) {
      const res = await fhir(srv.url, 'POST', r.resourceType, r);
      assert.equal(res.status, 201, `${r.resourceType}: ${res.text}`);
      assert.deepEqual(res.json.meta.tag, r.meta!.tag, 'tags kept');
    }
  });
});
