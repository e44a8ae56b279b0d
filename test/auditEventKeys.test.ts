// The server's AuditEvents get their search keys from their known shape
// (src/audit/eventKeys.ts) and their JSON text from kept parts (src/audit/eventText.ts);
// this checks, for any facts and agent, that those keys are exactly the ones the general
// extraction (FHIRPath over every AuditEvent parameter) gives, and that the text is the
// event auditEvent() describes.
import crypto from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { auditEvent, type AuditFacts, type AuditAgent } from '../src/audit/event.ts';
import { auditEventKeys } from '../src/audit/eventKeys.ts';
import { auditEventJson, auditEventText } from '../src/audit/eventText.ts';
import { resourceKeys } from '../mappings/search/rowKeys.ts';

const RUNS = Number(process.env.KILN_PROPERTY_RUNS ?? 300);
const id = fc.stringMatching(/^[A-Za-z0-9\-.]{1,64}$/);
const type = fc.constantFrom('Patient', 'Observation', 'Encounter', 'AuditEvent', 'Practitioner', 'Group', 'NotAType');
// Text that is anything a request may carry: also empty, with spaces, slashes or `|`.
const text = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('', ' ', 'a|b', 'x/y', 'Patient/'));
const resource = fc.oneof(
  fc.tuple(type, id).map(([t, i]) => `${t}/${i}`),
  fc.tuple(type, id, fc.integer({ min: 1, max: 99 })).map(([t, i, v]) => `${t}/${i}/_history/${v}`),
  fc.tuple(fc.constantFrom('https://ext.example/fhir', 'http://h:8080/fhir/acme', 'https://no-type.example'), type, id).map(([b, t, i]) => `${b}/${t}/${i}`),
  text,
);
const facts: fc.Arbitrary<AuditFacts> = fc.record({
  subtype: fc.option(fc.constantFrom('read', 'vread', 'search-type', 'create', 'operation', 'batch', ''), { nil: undefined }),
  operation: fc.option(fc.constantFrom('export', 'export-status', 'everything', ''), { nil: undefined }),
  action: fc.constantFrom('C', 'R', 'U', 'D', 'E'),
  outcome: fc.constantFrom('0', '4', '8'),
  outcomeDesc: fc.option(text, { nil: undefined }),
  resources: fc.array(resource, { maxLength: 4 }),
  query: fc.option(fc.record({ type: fc.option(type, { nil: undefined }), text }), { nil: undefined }),
  patients: fc.array(fc.oneof(id, text), { maxLength: 3 }),
});
const agent: fc.Arbitrary<AuditAgent> = fc.record({
  clientId: fc.option(fc.oneof(id, text), { nil: undefined }),
  subject: fc.option(fc.oneof(id, text), { nil: undefined }),
  fhirUser: fc.option(fc.oneof(
    fc.tuple(type, id).map(([t, i]) => `${t}/${i}`),
    fc.tuple(type, id).map(([t, i]) => `https://idp.example/fhir/${t}/${i}`),
    text,
  ), { nil: undefined }),
  address: fc.option(fc.constantFrom('127.0.0.1', '::1', ''), { nil: undefined }),
}, { requiredKeys: [] });
const base = fc.constantFrom('http://localhost:8080/fhir', 'https://kiln.example/fhir/acme');

const sorted = (k: { refKeys: string[]; tokenKeys: string[] }) => ({ refKeys: [...k.refKeys].sort(), tokenKeys: [...k.tokenKeys].sort() });

test('the keys read off a server AuditEvent equal the general extraction, for any facts and agent', () => {
  fc.assert(fc.property(facts, agent, base, (f, a, b) => {
    const event = { ...auditEvent(f, a, b, '2026-03-04T05:06:07.089Z'), id: '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b' };
    assert.deepEqual(sorted(auditEventKeys(event)), sorted(resourceKeys(event)));
  }), { numRuns: RUNS });
});

test('the text of a server AuditEvent, rendered from its part and detail, is auditEvent()\'s event with its id and meta, and has its keys, for any facts and agent', () => {
  const recorded = '2026-03-04T05:06:07.089Z';
  const id = '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
  // Each case twice: the second time the kept parts make the text.
  fc.assert(fc.property(facts, agent, base, (f, a, b) => {
    const event = { ...auditEvent(f, a, b, recorded), id, meta: { versionId: '1', lastUpdated: recorded } };
    for (let i = 0; i < 2; i++) {
      const { part, detail, keys } = auditEventText(f, a, b, recorded, id);
      assert.deepEqual(JSON.parse(auditEventJson(part, detail, recorded)), event);
      assert.deepEqual(sorted(keys), sorted(auditEventKeys(event)));
      // The insert closes the detail with the stamp (sql/027); the part is stored under its hash.
      assert.ok(detail.endsWith(',"meta":{"versionId":"1","lastUpdated":"'), detail);
      assert.equal(part.id, crypto.createHash('sha256').update(part.json).digest('base64url').slice(0, 22));
      assert.ok(!/[\u001d-\u001f]/.test(part.json + detail), 'no separator of the insert\'s text rows');
    }
  }), { numRuns: RUNS });
});

test('a typical read event has the keys searches use', () => {
  const event = auditEvent({ subtype: 'read', action: 'R', outcome: '0', resources: ['Observation/o1'], patients: ['p1'] },
    { clientId: 'app', subject: 'u1', fhirUser: 'Practitioner/pr1' }, 'http://h/fhir', '2026-03-04T05:06:07.089Z');
  const keys = auditEventKeys(event);
  for (const k of ['entity>Observation/o1', 'entity>Patient/p1', 'agent>Practitioner/pr1', 'agent:identifier=urn:kiln:client-id|app', 'agent:identifier#u1']) {
    assert.ok(keys.refKeys.includes(k), k);
  }
  for (const k of ['action=|R', 'outcome#0', 'subtype=http://hl7.org/fhir/restful-interaction|read', 'entity>Patient/', 'agent?']) {
    assert.ok(keys.tokenKeys.includes(k), k);
  }
});
