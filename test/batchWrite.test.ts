// createMany (src/store/batchWrite.ts) stores what writeResource stores one by one: the same
// rows in every tenant table, version 1, the same JSON; references checked the same way.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import type { Resource } from '@medplum/fhirtypes';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';
import { createMany, withTenant, writeResource, type Tx, type WriteRequest } from '../src/store/resources.ts';
import { FhirError } from '../src/fhir/outcome.ts';
import { SYSTEM } from '../mappings/healthie/index.ts';
import { FakeHealthie } from './support/healthieServer.ts';
import { HealthieClient } from '../src/healthie/client.ts';
import { pull } from '../src/healthie/pull.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const MR = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] };

/** A page mixing types, each referring only to resources before it (some of the same page). */
function page(): WriteRequest[] {
  const r = (type: string, id: string, resource: object): WriteRequest => ({ type, id, method: 'POST', resource: { resourceType: type, ...resource } as Resource });
  return [
    r('Patient', 'pa', {
      identifier: [{ system: SYSTEM.user, value: '7001' }, { system: 'urn:mrn', value: 'M-1', type: MR }],
      name: [{ family: 'Ørsted', given: ['Ana', 'B'] }], birthDate: '1970-02', gender: 'female', active: true,
      meta: { tag: [{ system: 'urn:t', code: 'x' }], profile: ['http://example.org/p'] },
    }),
    r('Condition', 'c1', { subject: { reference: 'Patient/pa' }, code: { text: 'cough' }, recordedDate: '2024-03-01' }),
    r('Patient', 'pb', { name: [{ family: 'Li' }] }),
    r('Encounter', 'e1', {
      status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: 'Patient/pa' }, period: { start: '2024-03-01T10:00:00Z', end: '2024-03-01T10:30:00Z' },
      identifier: [{ system: SYSTEM.appointment, value: 'ap1' }],
    }),
    r('Encounter', 'e2', { status: 'planned', class: { code: 'VR' }, subject: { reference: 'Patient/pb' } }),
    r('Observation', 'o1', {
      status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] }, subject: { reference: 'Patient/pa' },
      encounter: { reference: 'Encounter/e1' }, effectiveDateTime: '2024-03-01T10:05:00Z',
      valueQuantity: { value: 72.5, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' },
    }),
    r('Observation', 'o2', { status: 'final', code: { text: 'note' }, subject: { reference: 'Patient/pb' }, valueString: 'ok' }),
    r('MedicationStatement', 'm1', {
      status: 'active', subject: { reference: 'Patient/pa' }, medicationCodeableConcept: { text: 'metformin' },
      effectivePeriod: { start: '2024-01-01' },
    }),
    r('Group', 'g1', { type: 'person', actual: true, member: [{ entity: { reference: 'Patient/pa' } }, { entity: { reference: 'Patient/pb' } }] }),
    r('Practitioner', 'pr', { name: [{ family: 'Okafor' }] }),
    r('AuditEvent', 'ae1', {
      type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded: '2024-03-01T10:00:00Z',
      agent: [{ requestor: true, who: { reference: 'Practitioner/pr' } }], source: { observer: { display: 'k' } },
      entity: [{ what: { reference: 'Patient/pa' } }],
    }),
  ];
}

/** Every row of every tenant table of an org, org and write instants aside, sorted. */
async function snapshot(orgId: number, instants: string[]): Promise<Record<string, string[]>> {
  const { rows: tables } = await srv.db.owner.query(
    `SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id'
      WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'organizations'
      ORDER BY 1`);
  const out: Record<string, string[]> = {};
  const volatile = new Set(['org_id', 'created_at', 'updated_at', 'next_attempt_at']);
  for (const { relname } of tables) {
    const { rows } = await srv.db.owner.query(`SELECT * FROM ${relname} WHERE org_id = $1`, [orgId]);
    out[relname] = rows.map((row) => {
      let text = JSON.stringify(Object.fromEntries(Object.entries(row).filter(([k]) => !volatile.has(k) && !(relname === 'healthie_outbox' && k === 'id'))));
      // AuditEvent rows keep their instant as PostgreSQL text (sql/026).
      text = text.replace(/20\d\d-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00/g, (t) => new Date(t.replace(' ', 'T').replace('+00', 'Z')).toISOString());
      for (const at of instants) text = text.split(at).join('<at>');
      return text;
    }).sort();
  }
  return out;
}

/** Counts the statements a function sends. */
async function counted<T>(tx: Tx, fn: () => Promise<T>): Promise<{ out: T; statements: number }> {
  const query = tx.query;
  let statements = 0;
  (tx as any).query = (...args: unknown[]) => { statements++; return (query as any).apply(tx, args); };
  try {
    return { out: await fn(), statements };
  } finally {
    (tx as any).query = query;
  }
}

describe('createMany', () => {
  test('stores the same rows in every table as writeResource one by one (history, outbox trigger, hub, index, type and generic tables)', async () => {
    const one = await createOrg(srv.db.owner, 'batch-one', 'batch-one');
    const many = await createOrg(srv.db.owner, 'batch-many', 'batch-many');
    const singly = await withTenant(srv.db.app, one.id, async (tx) => { const out = []; for (const r of page()) out.push(await writeResource(tx, r)); return out; });
    const batched = await withTenant(srv.db.app, many.id, (tx) => createMany(tx, page()));
    assert.equal(batched.length, singly.length);
    batched.forEach((b, i) => {
      assert.equal(b.versionId, 1);
      assert.equal(b.created, true);
      assert.equal(b.resource.id, singly[i].resource.id);
      assert.equal(b.json.split(b.lastUpdated).join('<at>'), singly[i].json.split(singly[i].lastUpdated).join('<at>'));
    });
    const a = await snapshot(one.id, singly.map((r) => r.lastUpdated));
    const b = await snapshot(many.id, [...new Set(batched.map((r) => r.lastUpdated))]);
    // Not vacuous: the rows the page must give are there.
    assert.equal(a.resource_history.length, 11 - 1);
    assert.equal(a.clinical_events.length, 2);
    assert.ok(a.search_tokens.length > 10 && a.search_references.length > 5);
    // The outbox trigger fired per row: pa (linked to Healthie) and its Encounter, Observation, MedicationStatement.
    assert.equal(a.healthie_outbox.length, 4);
    for (const table of Object.keys(a)) assert.deepEqual(b[table], a[table], table);

    // Read back over HTTP as stored.
    const res = await fhir(`${srv.url}/batch-many`, 'GET', 'Observation/o1');
    assert.equal(res.status, 200);
    assert.equal(res.json.meta.versionId, '1');
  });

  test('server-assigned ids, one lastUpdated, a constant number of statements per page and type', async () => {
    const org = await createOrg(srv.db.owner, 'batch-ids', 'batch-ids');
    const patients = (n: number, k: number): WriteRequest[] => Array.from({ length: n }, (_, i) => ({
      type: 'Patient', method: 'POST', resource: { resourceType: 'Patient', name: [{ family: `F${k}-${i}` }], identifier: [{ system: 'urn:x', value: `${k}-${i}` }] } as Resource,
    }));
    const small = await withTenant(srv.db.app, org.id, (tx) => counted(tx, () => createMany(tx, patients(2, 1))));
    const large = await withTenant(srv.db.app, org.id, (tx) => counted(tx, () => createMany(tx, patients(150, 2))));
    assert.equal(large.statements, small.statements);
    assert.ok(large.statements <= 2, `${large.statements} statements`);
    assert.equal(new Set(large.out.map((r) => r.resource.id)).size, 150);
    assert.equal(new Set(large.out.map((r) => r.lastUpdated)).size, 1);
    const res = await fhir(`${srv.url}/batch-ids`, 'GET', 'Patient?identifier=urn:x|2-149');
    const bundle = res.json;
    assert.equal(bundle.entry?.length, 1);
    assert.equal(bundle.entry[0].resource.id, large.out[149].resource.id);
  });

  test('a reference that resolves nowhere is 422 as from writeResource, and nothing is written', async () => {
    const org = await createOrg(srv.db.owner, 'batch-refs', 'batch-refs');
    const obs = (id: string, subject: string): WriteRequest => ({ type: 'Observation', id, method: 'POST', resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: subject } } as Resource });
    const pat: WriteRequest = { type: 'Patient', id: 'later', method: 'POST', resource: { resourceType: 'Patient' } as Resource };
    const single = await withTenant(srv.db.app, org.id, (tx) => writeResource(tx, obs('s', 'Patient/nope'))).catch((e) => e);
    assert.ok(single instanceof FhirError && single.status === 422);
    for (const reqs of [[obs('a', 'Patient/nope')], [obs('b', 'Patient/later'), pat]]) {
      const err = await withTenant(srv.db.app, org.id, async (tx) => {
        const e = await createMany(tx, reqs).catch((x) => x);
        // The transaction is still usable: the checks ran before any write.
        await tx.query('SELECT 1');
        return e;
      });
      assert.ok(err instanceof FhirError, String(err));
      assert.equal(err.status, 422);
      assert.match(err.issues[0].diagnostics!, /^Reference not found: Patient\/(nope|later)$/);
    }
    assert.equal((await srv.db.owner.query('SELECT count(*)::int AS n FROM resource_ids WHERE org_id = $1', [org.id])).rows[0].n, 0);
    assert.deepEqual(single.issues[0].diagnostics, 'Reference not found: Patient/nope');
  });
});

describe('Healthie pull through createMany', () => {
  const fake = new FakeHealthie('k');
  before(async () => { await fake.start(); fake.seedMany(60); });
  after(() => fake.stop());

  test("a page's new objects are created together (one lastUpdated per page), updates and re-pulls as before", async () => {
    const org = await createOrg(srv.db.owner, 'batch-pull', 'batch-pull');
    const client = new HealthieClient({ url: fake.url, apiKey: 'k', baseDelayMs: 2, maxDelayMs: 10 });
    const first = await pull({ db: srv.db, orgId: org.id, client, pageSize: 50, full: true });
    assert.deepEqual(first.failures, []);
    for (const p of ['users', 'appointments', 'medications'] as const) assert.equal(first.phases[p].created, 60, p);
    assert.equal(first.phases.entries.created, 120);
    const { rows } = await srv.db.owner.query(
      `SELECT resource_type, count(*)::int AS n, count(DISTINCT last_updated)::int AS instants FROM resource_ids WHERE org_id = $1 GROUP BY 1 ORDER BY 1`, [org.id]);
    // Pages of 50 (medications: chunks of 50 clients): one write instant per page, not one per object.
    assert.deepEqual(rows, [
      { resource_type: 'Encounter', n: 60, instants: 2 }, { resource_type: 'MedicationStatement', n: 60, instants: 2 },
      { resource_type: 'Observation', n: 120, instants: 3 }, { resource_type: 'Patient', n: 60, instants: 2 },
    ]);
    // Stored as one by one: readable, version 1, the Encounter's hub row names its patient.
    const enc = (await fhir(`${srv.url}/batch-pull`, 'GET', 'Encounter?_count=1')).json.entry[0].resource;
    assert.equal(enc.meta.versionId, '1');
    const hub = await srv.db.owner.query('SELECT patient_id FROM clinical_events WHERE org_id = $1 AND encounter_id = $2', [org.id, enc.id]);
    assert.equal(`Patient/${hub.rows[0].patient_id}`, enc.subject.reference);

    const versions = async () => (await srv.db.owner.query('SELECT count(*)::int AS n FROM resource_history WHERE org_id = $1', [org.id])).rows[0].n;
    const before = await versions();
    const again = await pull({ db: srv.db, orgId: org.id, client, pageSize: 50, full: true });
    assert.equal(again.phases.entries.unchanged, 120);
    assert.equal(await versions(), before);
    fake.put('entries', { ...fake.entries.get('4000000')!, metric_stat: 151.5 });
    const third = await pull({ db: srv.db, orgId: org.id, client, pageSize: 50 });
    assert.equal(third.phases.entries.updated, 1);
    assert.equal(await versions(), before + 1);
  });
});
