// Round trips real-world resources through one server: every official R4 example of
// the five stored types, the Synthea patient bundles, then vread of two versions
// (AuditEvents keep one: their update is refused with 405).
// What is read back must equal what was written, except id and meta.versionId /
// meta.lastUpdated, which the server owns. JSON is compared losslessly (numbers by
// their literal text), so decimal precision (1.00 vs 1.0) is part of the round trip.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SHARED_DATA } from './support/data.ts';
import fs from 'node:fs';
import path from 'node:path';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import {
  cloneJson, comparable, dependencyOrder, JsonNumber, localizeExample, parseLiteral, parseLossless, rewriteReferences,
  storedReferenceKeys, stringifyLossless, subjectPatientId, type ExampleContext,
} from './support/localize.ts';

const DATA = SHARED_DATA;
const EXAMPLES = path.join(DATA, 'fhir-r4-examples');
const SYNTHEA = path.join(DATA, 'synthea-r4');
/** Creation order: a type may only reference types before it (hub-and-spoke, integrity). */
const EXAMPLE_TYPES = ['Patient', 'Encounter', 'Observation', 'MedicationStatement', 'AuditEvent'];
/** AuditEvents are evidence: created and read back like the others, but an update is refused (405) and changes nothing. */
const IMMUTABLE_TYPES = new Set(['AuditEvent']);
const CONCURRENCY = 8;

/**
 * Official examples the server may reject, with the reason. A file here must be
 * rejected with a 400/422 OperationOutcome; a rejection of any other file fails.
 */
const ALLOWED_REJECTIONS = new Map<string, string>([
  // (none: every official example of the five stored types is valid R4 and, localized, is accepted)
]);


let srv: TestServer;
/** Resources created by the round-trip tests, for the vread test: [type, id, what was sent]. */
const createdExamples: { type: string; id: string; sent: any }[] = [];
const createdSynthea: { type: string; id: string; sent: any }[] = [];

before(async () => { srv = await startTestServer(); });
after(async () => { await srv?.stop(); if (srv) removeDataDir(srv.dataDir); });

const readJson = (file: string) => parseLossless(fs.readFileSync(file, 'utf8'));

/** Runs fn over items with at most `limit` in flight; results in input order. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function isOutcomeWithIssues(json: any): boolean {
  return json?.resourceType === 'OperationOutcome' && Array.isArray(json.issue) && json.issue.length > 0;
}

/**
 * POSTs `sent`, then reads it back; returns the problems found (empty when the round
 * trip is exact) and the server id. Checks 201, ETag W/"1", Location, the body of the
 * create response and of the read, both against `sent` modulo id/versionId/lastUpdated.
 */
async function roundTrip(type: string, sent: any): Promise<{ id?: string; status: number; json: any; problems: string[] }> {
  const problems: string[] = [];
  const c = await fhir(srv.url, 'POST', type, stringifyLossless(sent));
  if (c.status !== 201) return { status: c.status, json: c.json, problems: [`POST ${type}: ${c.status} ${c.text.slice(0, 500)}`] };
  const id: string = c.json?.id;
  if (typeof id !== 'string') return { status: c.status, json: c.json, problems: [`POST ${type}: no id in ${c.text.slice(0, 200)}`] };
  if (c.headers.get('etag') !== 'W/"1"') problems.push(`POST ${type}: ETag ${c.headers.get('etag')}`);
  if (!c.headers.get('location')?.endsWith(`/${type}/${id}/_history/1`)) problems.push(`POST ${type}: Location ${c.headers.get('location')}`);
  if (c.json.meta?.versionId !== '1') problems.push(`POST ${type}: meta.versionId ${c.json.meta?.versionId}`);
  const created = parseLossless(c.text);
  try {
    assert.deepStrictEqual(comparable(created), comparable(sent));
  } catch (e) {
    problems.push(`POST ${type}/${id} response differs from what was sent:\n${(e as Error).message}`);
  }
  const r = await fhir(srv.url, 'GET', `${type}/${id}`);
  if (r.status !== 200) {
    problems.push(`GET ${type}/${id}: ${r.status} ${r.text.slice(0, 300)}`);
  } else {
    if (r.headers.get('etag') !== 'W/"1"') problems.push(`GET ${type}/${id}: ETag ${r.headers.get('etag')}`);
    const read = parseLossless(r.text);
    try {
      assert.deepStrictEqual(comparable(read), comparable(sent));
    } catch (e) {
      problems.push(`GET ${type}/${id} differs from what was sent:\n${(e as Error).message}`);
    }
    try {
      assert.deepStrictEqual(read, created);
    } catch (e) {
      problems.push(`GET ${type}/${id} differs from the create response:\n${(e as Error).message}`);
    }
  }
  return { id, status: c.status, json: c.json, problems };
}

test('official R4 examples round-trip (localized)', async (t) => {
  const anchor = await fhir(srv.url, 'POST', 'Patient', {
    resourceType: 'Patient', name: [{ family: 'Anchor', given: ['Roundtrip'] }], gender: 'unknown',
  });
  assert.equal(anchor.status, 201, anchor.text);
  const ctx: ExampleContext = {
    anchorPatientId: anchor.json.id, created: new Map(), encounterPatient: new Map(),
    stats: { toAnchor: 0, toCreated: 0, displayOnly: 0, keptAsGiven: 0 },
  };
  const counts: Record<string, { files: number; roundTripped: number; rejected: number }> = {};

  for (const type of EXAMPLE_TYPES) {
    const files = fs.readdirSync(path.join(EXAMPLES, type)).filter((f) => f.endsWith('.json')).sort();
    const examples = files.map((file) => ({ file: `${type}/${file}`, json: readJson(path.join(EXAMPLES, type, file)) }));
    // Referenced examples of the same type first, so that e.g. a vitals panel can point at its members.
    const ordered = dependencyOrder(examples, (e) => (e.json.id ? `${type}/${e.json.id}` : undefined), (e) => storedReferenceKeys(e.json));
    counts[type] = { files: files.length, roundTripped: 0, rejected: 0 };

    for (const { file, json } of ordered) {
      await t.test(file, async () => {
        assert.equal(json.resourceType, type, `${file} is not a ${type}`);
        const sent = localizeExample(json, ctx);
        const result = await roundTrip(type, sent);
        const allowed = ALLOWED_REJECTIONS.get(file);
        if (result.status === 201) {
          assert.equal(allowed, undefined, `${file} is allow-listed as rejected ("${allowed}") but was accepted: remove it from ALLOWED_REJECTIONS`);
          assert.deepEqual(result.problems, [], `${file}:\n${result.problems.join('\n')}`);
          counts[type].roundTripped++;
          if (json.id) ctx.created.set(`${type}/${json.id}`, result.id!);
          if (type === 'Encounter') ctx.encounterPatient.set(result.id!, subjectPatientId(sent));
          createdExamples.push({ type, id: result.id!, sent });
        } else {
          assert.ok(allowed, `${file} was rejected and is not in ALLOWED_REJECTIONS:\n${result.problems.join('\n')}`);
          assert.ok([400, 422].includes(result.status), `${file}: rejected with ${result.status}, expected 400 or 422`);
          assert.ok(isOutcomeWithIssues(result.json), `${file}: rejection is not an OperationOutcome with issues`);
          counts[type].rejected++;
        }
      });
    }
  }
  t.diagnostic(`examples: ${JSON.stringify(counts)}`);
  t.diagnostic(`example references: ${JSON.stringify(ctx.stats)}`);
});

/** Synthea patient bundles, in file-name order (hospital/practitioner bundles are not patients). */
function syntheaBundles(): string[] {
  return fs.readdirSync(SYNTHEA).filter((f) => f.endsWith('.json') && !/^(hospital|practitioner)Information/.test(f)).sort();
}

test('Synthea patient bundles round-trip (Patient, Encounter, Observation, MedicationStatement)', async (t) => {
  const started = Date.now();
  const totals: Record<string, number> = {};
  for (const file of syntheaBundles()) {
    await t.test(file, async () => {
      const bundle = readJson(path.join(SYNTHEA, file));
      const entries: { fullUrl: string; resource: any }[] = bundle.entry;
      /** urn:uuid of each entry -> `Type/<server id>` once created. */
      const urnMap = new Map<string, string>();
      const problems: string[] = [];

      const localize = (resource: any) => {
        const r = cloneJson(resource);
        delete r.id;
        // urn:uuid of a created entry -> its server id; of anything else (Practitioner,
        // Organization, failed creates) -> display-only, since it cannot resolve here.
        return rewriteReferences(r, (reference) => (reference.startsWith('urn:uuid:') ? urnMap.get(reference) ?? null : undefined));
      };
      const create = async (entry: { fullUrl: string; resource: any }) => {
        const type = entry.resource.resourceType;
        const sent = localize(entry.resource);
        const result = await roundTrip(type, sent);
        problems.push(...result.problems.map((p) => `${entry.fullUrl} ${p}`));
        if (result.status !== 201 || !result.id) return undefined;
        urnMap.set(entry.fullUrl, `${type}/${result.id}`);
        totals[type] = (totals[type] ?? 0) + 1;
        return { type, id: result.id, sent };
      };
      // Recorded in bundle order (not completion order), so the vread sample is deterministic.
      const record = (created: ({ type: string; id: string; sent: any } | undefined)[]) => {
        for (const c of created) if (c) createdSynthea.push(c);
      };
      const ofType = (type: string) => entries.filter((e) => e.resource?.resourceType === type);
      const patients = ofType('Patient');
      assert.equal(patients.length, 1, 'a Synthea patient bundle has one Patient');
      record([await create(patients[0])]);
      // Encounters only reference the Patient (and Practitioner/Organization): any order works.
      record(await pool(ofType('Encounter'), CONCURRENCY, create));
      // Observations reference the Patient and their Encounter (same patient: hub-and-spoke holds).
      record(await pool(ofType('Observation'), CONCURRENCY, create));
      record(await pool(ofType('MedicationStatement'), CONCURRENCY, create)); // Synthea writes none; kept for completeness
      assert.deepEqual(problems, [], problems.join('\n\n'));
    });
  }
  t.diagnostic(`synthea: ${syntheaBundles().length} bundles, created+read ${JSON.stringify(totals)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

/** `count` items spread evenly over the list, deterministic. */
function spread<T>(items: T[], count: number): T[] {
  if (items.length <= count) return [...items];
  return Array.from({ length: count }, (_, i) => items[Math.floor((i * items.length) / count)]);
}

test('vread returns each version as written, with its ETag (AuditEvents: the update is refused, version 1 stays)', async (t) => {
  // Two of each example type (when the examples got created) and ten Synthea resources.
  const sample = [
    ...EXAMPLE_TYPES.flatMap((type) => spread(createdExamples.filter((c) => c.type === type), 2)),
    ...spread(createdSynthea.filter((c) => c.type === 'Patient'), 2),
    ...spread(createdSynthea.filter((c) => c.type === 'Encounter'), 3),
    ...spread(createdSynthea.filter((c) => c.type === 'Observation'), 5),
  ];
  assert.ok(sample.length >= 15, `only ${sample.length} resources to vread: the round-trip tests created too few`);
  for (const { type, id, sent } of sample) {
    await t.test(`${type}/${id}`, async () => {
      const v2: any = cloneJson(sent);
      v2.id = id;
      v2.meta = { ...v2.meta, tag: [...(v2.meta?.tag ?? []), { system: 'urn:kiln:test', code: 'roundtrip-v2', display: 'Updated by roundtrip.test' }] };
      const u = await fhir(srv.url, 'PUT', `${type}/${id}`, stringifyLossless(v2));
      if (IMMUTABLE_TYPES.has(type)) {
        assert.equal(u.status, 405, u.text);
        assert.ok(isOutcomeWithIssues(u.json), `${type} update refusal is not an OperationOutcome: ${u.text}`);
        assert.equal(u.json.issue[0].code, 'not-supported');
        const r1 = await fhir(srv.url, 'GET', `${type}/${id}/_history/1`);
        assert.equal(r1.status, 200, r1.text);
        assert.equal(r1.headers.get('etag'), 'W/"1"');
        assert.deepStrictEqual(comparable(parseLossless(r1.text)), comparable(sent));
        const current = await fhir(srv.url, 'GET', `${type}/${id}`);
        assert.equal(current.status, 200, current.text);
        assert.equal(current.headers.get('etag'), 'W/"1"', 'the refused update made no version');
        assert.deepStrictEqual(parseLossless(current.text), parseLossless(r1.text));
        assert.equal((await fhir(srv.url, 'GET', `${type}/${id}/_history/2`)).status, 404);
        assert.equal((await fhir(srv.url, 'GET', `${type}/${id}/_history`)).json.total, 1);
        return;
      }
      assert.equal(u.status, 200, u.text);
      assert.equal(u.headers.get('etag'), 'W/"2"');
      assert.equal(u.json.meta.versionId, '2');

      const r1 = await fhir(srv.url, 'GET', `${type}/${id}/_history/1`);
      assert.equal(r1.status, 200, r1.text);
      assert.equal(r1.headers.get('etag'), 'W/"1"');
      assert.equal(r1.json.id, id);
      assert.equal(r1.json.meta.versionId, '1');
      assert.deepStrictEqual(comparable(parseLossless(r1.text)), comparable(sent));

      const r2 = await fhir(srv.url, 'GET', `${type}/${id}/_history/2`);
      assert.equal(r2.status, 200, r2.text);
      assert.equal(r2.headers.get('etag'), 'W/"2"');
      assert.equal(r2.json.id, id);
      assert.equal(r2.json.meta.versionId, '2');
      assert.deepStrictEqual(comparable(parseLossless(r2.text)), comparable(v2));
      assert.deepStrictEqual(parseLossless(r2.text), parseLossless(u.text), 'vread of version 2 differs from the update response');
      assert.notEqual(r1.json.meta.lastUpdated, undefined);
      assert.ok(Date.parse(r2.json.meta.lastUpdated) >= Date.parse(r1.json.meta.lastUpdated), 'version 2 is not older than version 1');

      const current = await fhir(srv.url, 'GET', `${type}/${id}`);
      assert.equal(current.status, 200, current.text);
      assert.equal(current.headers.get('etag'), 'W/"2"');
      assert.deepStrictEqual(parseLossless(current.text), parseLossless(r2.text));

      const v3 = await fhir(srv.url, 'GET', `${type}/${id}/_history/3`);
      assert.equal(v3.status, 404, `a version that was never written: ${v3.text}`);
    });
  }
});

// Keep the helpers honest: the localizer must rewrite and drop exactly as documented.
test('localizeExample rewrites references as the README describes', () => {
  const ctx: ExampleContext = {
    anchorPatientId: 'anchor',
    created: new Map([['Encounter/e1', 'E1'], ['Observation/o1', 'O1']]),
    encounterPatient: new Map([['E1', 'anchor']]),
  };
  const out: any = localizeExample({
    resourceType: 'Observation', id: 'x',
    subject: { reference: 'Patient/example' },
    encounter: { reference: 'Encounter/e1' },
    performer: [{ reference: 'Practitioner/p' }, { reference: '#c' }],
    hasMember: [{ reference: 'Observation/o1' }, { reference: 'Observation/missing', display: 'kept' }],
    derivedFrom: [{ reference: 'Observation/other' }],
    focus: [{ reference: 'Patient/x/_history/2' }],
    contained: [{ resourceType: 'Patient', id: 'c', link: [{ other: { reference: 'Patient/inside' } }] }],
  } as any, ctx);
  assert.equal(out.id, undefined);
  assert.deepEqual(out.subject, { reference: 'Patient/anchor' });
  assert.deepEqual(out.encounter, { reference: 'Encounter/E1' });
  // Practitioners are stored too: one the examples never created goes display-only.
  assert.deepEqual(out.performer, [{ display: 'Practitioner/p' }, { reference: '#c' }]);
  assert.deepEqual(out.hasMember, [{ reference: 'Observation/O1' }, { display: 'kept' }]);
  assert.deepEqual(out.derivedFrom, [{ display: 'Observation/other' }]);
  assert.deepEqual(out.focus, [{ reference: 'Patient/anchor/_history/1' }]);
  assert.equal(out.contained[0].link[0].other.reference, 'Patient/inside');
  // An encounter of another patient is dropped (hub-and-spoke).
  const other: any = localizeExample({ resourceType: 'Observation', subject: { reference: '#c' }, encounter: { reference: 'Encounter/e1' } } as any, ctx);
  assert.deepEqual(other.encounter, { display: 'Encounter/e1' });
  assert.equal(parseLiteral('http://x/fhir/Patient/1/_history/3')?.id, '1');
});

test('lossless JSON keeps number literals and otherwise matches JSON.parse', () => {
  const text = '{"a":1.00,"b":[1E-22,-0.5e+3,0,66.899999999999991],"c":"q\\"uo\\\\te é","d":null,"e":true,"f":{},"g":[]}';
  const parsed = parseLossless(text);
  assert.equal(stringifyLossless(parsed), text);
  assert.ok(parsed.a instanceof JsonNumber);
  assert.equal(parsed.c, JSON.parse(text).c);
  assert.throws(() => assert.deepStrictEqual(new JsonNumber('1.0'), new JsonNumber('1.00')));
  assert.throws(() => assert.deepStrictEqual(comparable(parseLossless('{"v":[1.0]}')), comparable(parseLossless('{"v":[1.00]}'))));
  assert.deepStrictEqual(comparable(parseLossless('{"id":"a","meta":{"versionId":"1"},"v":1.0}')), parseLossless('{"v":1.0}'));
  assert.throws(() => parseLossless('{"a":1,}'));
  for (const type of EXAMPLE_TYPES) {
    for (const file of fs.readdirSync(path.join(EXAMPLES, type)).filter((f) => f.endsWith('.json'))) {
      const raw = fs.readFileSync(path.join(EXAMPLES, type, file), 'utf8');
      assert.deepStrictEqual(JSON.parse(stringifyLossless(parseLossless(raw))), JSON.parse(raw), file);
    }
  }
});
