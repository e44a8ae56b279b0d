// SMART scope parsing and the access decision (pure).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accessFor, parseScopes } from '../src/auth/scopes.ts';

const perms = (s: string) => [...parseScopes([s])[0].perms].sort().join('');

test('v1 and v2 scopes parse into permissions; non-resource and malformed scopes are skipped', () => {
  assert.equal(perms('patient/Observation.read'), 'rs');
  assert.equal(perms('user/*.write'), 'cdu');
  assert.equal(perms('system/*.*'), 'cdrsu');
  assert.equal(perms('patient/Observation.rs'), 'rs');
  assert.equal(perms('system/Patient.cruds'), 'cdrsu');
  assert.deepEqual(parseScopes(['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/Observation.sr', 'patient/observation.read', 'patient/Observation.']), []);
  const granular = parseScopes(['patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs'])[0];
  assert.deepEqual(granular.filter, [['category', 'http://terminology.hl7.org/CodeSystem/observation-category|vital-signs']]);
});

test('access: compartment for patient-only grants, lifted by user/system; granular filters', () => {
  const s = (...xs: string[]) => parseScopes(xs);
  assert.equal(accessFor(s('patient/Observation.rs'), 'Observation', 'c'), undefined);
  assert.equal(accessFor(s('patient/Observation.rs'), 'Patient', 'r'), undefined);
  assert.deepEqual(accessFor(s('patient/Observation.rs'), 'Observation', 's'), { compartment: true, filters: [] });
  assert.deepEqual(accessFor(s('patient/*.read', 'user/Observation.read'), 'Observation', 'r'), { compartment: false, filters: [] });
  assert.deepEqual(accessFor(s('patient/*.read', 'user/Observation.read'), 'Patient', 'r'), { compartment: true, filters: [] });
  assert.deepEqual(accessFor(s('system/*.rs'), 'AuditEvent', 's'), { compartment: false, filters: [] });
  const g = accessFor(s('patient/Observation.rs?category=vital-signs', 'patient/Observation.rs?category=laboratory'), 'Observation', 'r');
  assert.deepEqual(g, { compartment: true, filters: [[['category', 'vital-signs']], [['category', 'laboratory']]] });
  assert.deepEqual(accessFor(s('patient/Observation.rs?category=vital-signs', 'patient/Observation.read'), 'Observation', 'r'), { compartment: true, filters: [] });
});
