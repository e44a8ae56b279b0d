// The storage model: tenants and RLS, partitions, one-partition reads, the
// hub-and-spoke constraint in the database, migrations, and row movement.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { migrate } from '../src/store/migrate.ts';
import { readById } from '../src/store/resources.ts';
import { serverAuditRow } from '../src/audit/request.ts';
import { auditEventJson } from '../src/audit/eventText.ts';
import { insertAuditEvents } from '../src/store/auditWrite.ts';

const run = promisify(execFile);
let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

async function createPatient(base: string, family: string) {
  const r = await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family }] });
  assert.equal(r.status, 201, r.text);
  return r.json.id as string;
}

async function partitionsOf(table: string): Promise<string[]> {
  const { rows } = await srv.db.owner.query(
    `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass ORDER BY 1`, [table]);
  return rows.map((r) => r.relname);
}

/**
 * The partitions of `prefix` that `read` scanned, from the backend's table statistics
 * before and after it (they may hold earlier, unflushed counts of this pooled
 * connection, hence the difference).
 */
async function partitionsScanned<T>(client: pg.PoolClient, prefix: string, read: () => Promise<T>): Promise<{ result: T; partitions: string[] }> {
  const scans = async () => new Map((await client.query(
    `SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS n FROM pg_stat_xact_user_tables
      WHERE relname LIKE $1`, [`${prefix}%`])).rows.map((r) => [r.relname as string, Number(r.n)]));
  const before = await scans();
  const result = await read();
  const after = await scans();
  return { result, partitions: [...after].filter(([t, n]) => n > (before.get(t) ?? 0)).map(([t]) => t) };
}

describe('tenants', () => {
  test('the CLI creates a tenant beside a running server, with its partitions', async () => {
    const env = { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), DATABASE_URL: '' };
    const { stdout } = await run('npx', ['tsx', 'src/cli.ts', 'tenant', 'create', 'acme', 'Acme Clinic'], { env });
    assert.match(stdout, /created tenant acme/);
    const dup = await run('npx', ['tsx', 'src/cli.ts', 'tenant', 'create', 'acme'], { env }).catch((e) => e);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already exists/);
    const bad = await run('npx', ['tsx', 'src/cli.ts', 'tenant', 'create', 'Not_A_Slug'], { env }).catch((e) => e);
    assert.equal(bad.code, 2);
    const { rows } = await srv.db.owner.query(`SELECT id FROM organizations WHERE slug = 'acme'`);
    const orgId = rows[0].id;
    assert.ok((await partitionsOf('patients')).includes(`patients_o${orgId}`));
    const obsMonths = await partitionsOf(`observations_o${orgId}`);
    assert.ok(obsMonths.includes(`observations_o${orgId}_default`));
    const thisMonth = new Date().toISOString().slice(0, 7).replace('-', '');
    assert.ok(obsMonths.includes(`observations_o${orgId}_${thisMonth}01`), obsMonths.join(','));
    assert.ok(obsMonths.length >= 16, 'a year back, three months ahead, and a default');
    const auditWeeks = await partitionsOf(`audit_events_o${orgId}`);
    assert.ok(auditWeeks.length > 60, 'audit events are partitioned by week');
    // The search index is partitioned by tenant too.
    for (const t of ['search_tokens', 'search_references', 'search_dates', 'search_composites']) {
      assert.ok((await partitionsOf(t)).includes(`${t}_o${orgId}`), t);
    }
  });

  test('a resource of one tenant is invisible from another', async () => {
    const tenantBase = `${srv.url}/acme`;
    const id = await createPatient(tenantBase, 'Tenant');
    assert.equal((await fhir(tenantBase, 'GET', `Patient/${id}`)).status, 200);
    assert.equal((await fhir(srv.url, 'GET', `Patient/${id}`)).status, 404);
    assert.equal((await fhir(srv.url, 'GET', `Patient?_id=${id}`)).json.entry.length, 0);
    const loc = (await fhir(tenantBase, 'GET', `Patient/${id}`)).headers.get('etag');
    assert.equal(loc, 'W/"1"');
    // A reference across tenants does not resolve.
    const cross = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${id}` } });
    assert.equal(cross.status, 422);
    // The same id may exist in both tenants independently.
    const put = await fhir(srv.url, 'PUT', `Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: 'Default' }] });
    assert.equal(put.status, 201);
    assert.equal((await fhir(tenantBase, 'GET', `Patient/${id}`)).json.name[0].family, 'Tenant');
    const created = await fhir(tenantBase, 'POST', 'Patient', { resourceType: 'Patient' });
    assert.ok(created.headers.get('location')!.startsWith(`${srv.url}/acme/Patient/`));
  });

  test('request traffic runs as a role that is neither superuser nor owner, and RLS binds it', async () => {
    const app = await srv.db.app.connect();
    try {
      const { rows } = await app.query(`SELECT current_user AS u, r.rolsuper, r.rolbypassrls,
        (SELECT count(*) FROM pg_tables WHERE tableowner = current_user)::int AS owned
        FROM pg_roles r WHERE r.rolname = current_user`);
      assert.deepEqual(rows[0], { u: 'kiln_app', rolsuper: false, rolbypassrls: false, owned: 0 });
      // Without app.org_id the role sees no rows at all.
      const none = await app.query('SELECT count(*)::int AS n FROM patients');
      assert.equal(none.rows[0].n, 0);
      const all = await srv.db.owner.query('SELECT count(DISTINCT org_id)::int AS n FROM patients');
      assert.ok(all.rows[0].n >= 2);
      // Inside one tenant it cannot write rows of another.
      await app.query('BEGIN');
      await app.query(`SELECT set_config('app.org_id', '1', true)`);
      await assert.rejects(app.query(`INSERT INTO patients (org_id, id, version_id, last_updated, resource) VALUES (2, 'sneaky', 1, now(), '{}')`), /row-level security/);
      await app.query('ROLLBACK');
      await assert.rejects(app.query('CREATE TABLE evil (x int)'), /permission denied/);
    } finally {
      app.release();
    }
  });
});

describe('partitions', () => {
  test('old data lands in DEFAULT, then maintenance gives its month a partition; index rows carry the partition key', async () => {
    const pid = await createPatient(srv.url, 'Archive');
    const obs = await fhir(srv.url, 'POST', 'Observation', {
      resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/${pid}` }, effectiveDateTime: '2001-05-03T10:00:00Z',
    });
    assert.equal(obs.status, 201, obs.text);
    const where = async () => (await srv.db.owner.query(`SELECT tableoid::regclass::text AS t FROM observations WHERE id = $1`, [obs.json.id])).rows[0].t;
    assert.equal(await where(), 'observations_o1_default');
    const { ensureOrgPartitions } = await import('../src/store/tenants.ts');
    await ensureOrgPartitions(srv.db.owner, 1);
    assert.equal(await where(), 'observations_o1_20010501');
    assert.equal((await fhir(srv.url, 'GET', `Observation/${obs.json.id}`)).status, 200);
    const idx = await srv.db.owner.query(
      `SELECT DISTINCT clinical_time FROM search_tokens WHERE resource_type = 'Observation' AND id = $1`, [obs.json.id]);
    assert.deepEqual(idx.rows.map((r) => new Date(r.clinical_time).toISOString()), ['2001-05-03T10:00:00.000Z']);
    const found = await fhir(srv.url, 'GET', `Observation?patient=${pid}&code=8867-4&date=2001-05`);
    assert.deepEqual(found.json.entry.map((e: any) => e.resource.id), [obs.json.id]);
  });

  test('a read by id touches exactly one partition', async () => {
    const pid = await createPatient(srv.url, 'Explain');
    const obs = await fhir(srv.url, 'POST', 'Observation', {
      resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${pid}` },
      effectiveDateTime: new Date().toISOString(),
    });
    const client = await srv.db.app.connect();
    try {
      await client.query('BEGIN');
      // The very call the read interaction makes.
      const { result: stored, partitions: touched } = await partitionsScanned(client, 'observations',
        () => readById(client as any, 1, 'Observation', obs.json.id));
      assert.equal(JSON.parse(stored!.json!).id, obs.json.id);
      assert.deepEqual(touched, [`observations_o1_${new Date().toISOString().slice(0, 7).replace('-', '')}01`]);
      // And the statement inside kiln_read, as EXPLAIN shows it, plans one partition.
      const loc = await client.query(`SELECT clinical_time FROM resource_ids WHERE resource_type = 'Observation' AND id = $1`, [obs.json.id]);
      const plan = (await client.query(`EXPLAIN (COSTS OFF) SELECT resource::text FROM observations WHERE org_id = $1 AND id = $2 AND clinical_time = $3`,
        [1, obs.json.id, loc.rows[0].clinical_time])).rows.map((r) => r['QUERY PLAN']).join('\n');
      assert.equal(plan.match(/ on observations_\w+/g)?.length, 1, plan);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  test('the generic store: a read by id touches one tenant partition; types share no id space; tenants and RLS as for the first-class tables', async () => {
    const org = await fhir(srv.url, 'PUT', 'Organization/shared-id', { resourceType: 'Organization', id: 'shared-id', name: 'Org' });
    assert.equal(org.status, 201, org.text);
    const loc = await fhir(srv.url, 'PUT', 'Location/shared-id', { resourceType: 'Location', id: 'shared-id', name: 'Loc' });
    assert.equal(loc.status, 201, 'the same id in another generic type is another resource');
    // An update and a delete of one type leave the other alone.
    assert.equal((await fhir(srv.url, 'PUT', 'Organization/shared-id', { resourceType: 'Organization', id: 'shared-id', name: 'Org 2' })).status, 200);
    assert.equal((await fhir(srv.url, 'DELETE', 'Location/shared-id')).status, 204);
    assert.equal((await fhir(srv.url, 'GET', 'Organization/shared-id')).json.name, 'Org 2');
    assert.equal((await fhir(srv.url, 'GET', 'Location/shared-id')).status, 410);
    // Another tenant neither sees it nor can refer to it.
    assert.equal((await fhir(`${srv.url}/acme`, 'GET', 'Organization/shared-id')).status, 404);
    assert.equal((await fhir(`${srv.url}/acme`, 'POST', 'Patient', { resourceType: 'Patient', managingOrganization: { reference: 'Organization/shared-id' } })).status, 422);
    const client = await srv.db.app.connect();
    try {
      await client.query('BEGIN');
      const { result: stored, partitions: touched } = await partitionsScanned(client, 'resources',
        () => readById(client as any, 1, 'Organization', 'shared-id'));
      assert.equal(JSON.parse(stored!.json!).name, 'Org 2');
      assert.deepEqual(touched, ['resources_o1']);
      const plan = (await client.query(`EXPLAIN (COSTS OFF) SELECT resource::text FROM resources WHERE org_id = $1 AND resource_type = $2 AND id = $3`,
        [1, 'Organization', 'shared-id'])).rows.map((r) => r['QUERY PLAN']).join('\n');
      assert.equal(plan.match(/ on resources_\w+/g)?.length, 1, plan);
      // Row-level security binds the request role: without app.org_id it sees no generic row.
      await client.query(`SELECT set_config('app.org_id', '', true)`);
      assert.equal((await client.query(`SELECT count(*)::int AS n FROM resources`)).rows[0].n, 0);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  test('a read of an AuditEvent by id probes the partitions of its id\'s time; a client\'s event of another time is still found', async () => {
    // A server-made event (UUIDv7 id, recorded now) and a client's, recorded in 2019.
    const made = serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: ['Patient/x'], patients: ['x'] }, {}, srv.url);
    await insertAuditEvents(srv.db.app, 1, [made]);
    const sent = await fhir(srv.url, 'POST', 'AuditEvent', {
      resourceType: 'AuditEvent', type: { code: 'rest' }, action: 'R', recorded: '2019-03-04T05:06:07Z', outcome: '0',
      agent: [{ requestor: true, who: { display: 'someone' } }], source: { observer: { display: 'elsewhere' } },
    });
    assert.equal(sent.status, 201, sent.text);
    const client = await srv.db.app.connect();
    try {
      await client.query('BEGIN');
      const touched = async (id: string) => {
        const { result: stored, partitions } = await partitionsScanned(client, 'audit_events_o1', () => readById(client as any, 1, 'AuditEvent', id));
        return { stored, partitions: partitions.length };
      };
      const own = await touched(made.id);
      assert.equal(own.stored?.json, auditEventJson(made.part!, made.detail!, made.lastUpdated));
      assert.ok(own.partitions <= 2, `the hour around the id's time: ${own.partitions} partitions`);
      const theirs = await touched(sent.json.id);
      assert.equal(JSON.parse(theirs.stored!.json!).recorded, '2019-03-04T05:06:07Z');
      assert.ok(theirs.partitions > 10, `then every partition: ${theirs.partitions}`);
      assert.equal((await touched('0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000')).stored, undefined);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });

  test('AuditEvent rows keep their keys through the insert\'s text rows (sql/026); separators in a key become U+FFFD; a stamp closes the detail; parts are stored once', async () => {
    // Clients cannot send control characters in strings; a token's subject can hold them.
    const sent = await fhir(srv.url, 'POST', 'AuditEvent', {
      resourceType: 'AuditEvent', type: { code: 'rest' }, action: 'R', recorded: '2019-03-04T05:06:07Z', outcome: '0',
      agent: [{ requestor: true, who: { identifier: { system: 'urn:s', value: 'a\u001fb' } } }], source: { observer: { display: 'elsewhere' } },
    });
    assert.equal(sent.status, 400, sent.text);
    const keysOf = async (id: string) => (await srv.db.owner.query(
      `SELECT ref_keys, token_keys, resource AS body, to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS lu FROM audit_event_resources WHERE id = $1`, [id])).rows[0];
    const odd = serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: [], patients: [] }, { clientId: 'c\u001dx', subject: 'a\u001fb\u001ec' }, srv.url);
    await insertAuditEvents(srv.db.app, 1, [odd]);
    const stored = await keysOf(odd.id);
    assert.deepEqual(stored.ref_keys.filter((k: string) => !k.includes(srv.url)).sort(),
      ['agent:identifier#a\ufffdb\ufffdc', 'agent:identifier#c\ufffdx', 'agent:identifier=urn:kiln:client-id|c\ufffdx', 'agent:identifier=urn:kiln:user|a\ufffdb\ufffdc']);
    assert.deepEqual([...stored.token_keys].sort(), [...odd.keys.tokenKeys].sort());
    assert.equal(JSON.parse(stored.body).agent[0].name, 'a\u001fb\u001ec'); // the text keeps them
    // A search for the value as it is finds it: its key is cleaned alike.
    const found = await fhir(srv.url, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent('urn:kiln:user|a\u001fb\u001ec')}`);
    assert.equal(found.status, 200, found.text);
    assert.deepEqual(found.json.entry?.map((e: any) => e.resource.id), [odd.id]);
    // A server row, stamped in the insert's transaction: its text shows the stamped time.
    const made = serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: ['Patient/sep'], patients: ['sep'] }, { clientId: 'c1' }, srv.url);
    await new Promise((r) => setTimeout(r, 5));
    await insertAuditEvents(srv.db.app, 1, [made], { stamp: true });
    const ours = await keysOf(made.id);
    assert.equal(JSON.parse(ours.body).meta.lastUpdated, ours.lu);
    assert.ok(ours.lu > made.lastUpdated, `${ours.lu} after ${made.lastUpdated}`);
    assert.deepEqual([...ours.ref_keys].sort(), [...made.keys.refKeys].sort());
    assert.deepEqual([...ours.token_keys].sort(), [...made.keys.tokenKeys].sort());
    // The part is stored once: the same interaction by the same agents again adds no part.
    const parts = async () => (await srv.db.owner.query('SELECT id, json FROM audit_event_parts WHERE org_id = 1')).rows;
    const known = await parts();
    assert.equal(known.filter((p) => p.id === made.part!.id && p.json === made.part!.json).length, 1);
    const again = serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: ['Patient/sep2'], patients: ['sep2'] }, { clientId: 'c1' }, srv.url);
    assert.equal(again.part!.id, made.part!.id);
    await insertAuditEvents(srv.db.app, 1, [again]);
    assert.equal((await parts()).length, known.length);
    assert.equal(JSON.parse((await keysOf(again.id)).body).entity[0].what.reference, 'Patient/sep2');
    // A whole event (a client's) cannot be stamped: its text would not show the stamp. The
    // batch is refused whole, the part it brought too.
    const other = serverAuditRow({ subtype: 'search-type', action: 'E', outcome: '4', resources: [], patients: [] }, { clientId: 'never-seen' }, srv.url);
    const whole = { id: `${other.id.slice(0, -4)}beef`, json: auditEventJson(other.part!, other.detail!, other.lastUpdated), lastUpdated: other.lastUpdated, clinicalTime: other.clinicalTime, keys: other.keys };
    await assert.rejects(insertAuditEvents(srv.db.app, 1, [other, whole], { stamp: true }), /sent whole and cannot be stamped/);
    assert.equal(await keysOf(other.id), undefined);
    assert.ok(!(await parts()).some((p) => p.id === other.part!.id));
    // Rows hold one form: whole, or part and detail.
    await assert.rejects(srv.db.owner.query(`INSERT INTO audit_events (org_id, id, version_id, last_updated, clinical_time, resource, part, detail)
      VALUES (1, 'both-forms', 1, now(), now(), '{}', $1, ',"x":1')`, [made.part!.id]), /audit_events_whole_or_parted/);
  });

  test('an update that changes clinical time moves the row; old or future dates land in DEFAULT', async () => {
    const pid = await createPatient(srv.url, 'Move');
    const body = (when: string) => ({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${pid}` }, period: { start: when } });
    const now = new Date().toISOString();
    const c = await fhir(srv.url, 'POST', 'Encounter', body(now));
    const where = async () => (await srv.db.owner.query(
      `SELECT tableoid::regclass::text AS part FROM encounters WHERE id = $1`, [c.json.id])).rows.map((r) => r.part);
    assert.deepEqual(await where(), [`encounters_o1_${now.slice(0, 7).replace('-', '')}01`]);
    const u = await fhir(srv.url, 'PUT', `Encounter/${c.json.id}`, { ...body('1999-05-06'), id: c.json.id });
    assert.equal(u.status, 200);
    assert.deepEqual(await where(), ['encounters_o1_default']);
    assert.equal((await fhir(srv.url, 'GET', `Encounter/${c.json.id}`)).json.period.start, '1999-05-06');
  });
});

describe('hub and spoke', () => {
  test('the database refuses a clinical row whose encounter belongs to another patient', async () => {
    const a = await createPatient(srv.url, 'HubA');
    const b = await createPatient(srv.url, 'HubB');
    const enc = await fhir(srv.url, 'POST', 'Encounter', { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${a}` } });
    // Raw SQL, as the owner (so only constraints, not RLS or code, stand in the way).
    await assert.rejects(srv.db.owner.query(
      `INSERT INTO observations (org_id, id, version_id, last_updated, resource, clinical_time, patient_id, encounter_id)
       VALUES (1, 'raw-obs', 1, now(), '{}', now(), $1, $2)`, [b, enc.json.id]), /violates foreign key constraint/);
    await srv.db.owner.query(
      `INSERT INTO observations (org_id, id, version_id, last_updated, resource, clinical_time, patient_id, encounter_id)
       VALUES (1, 'raw-obs-ok', 1, now(), '{}', now(), $1, $2)`, [a, enc.json.id]);
    await srv.db.owner.query(`DELETE FROM observations WHERE id = 'raw-obs-ok'`);
    // Through the API: 422, nothing stored.
    const obs = (patient: string) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${patient}` }, encounter: { reference: `Encounter/${enc.json.id}` } });
    const bad = await fhir(srv.url, 'POST', 'Observation', obs(b));
    assert.equal(bad.status, 422);
    assert.equal(bad.json.resourceType, 'OperationOutcome');
    const med = await fhir(srv.url, 'POST', 'MedicationStatement', { resourceType: 'MedicationStatement', status: 'active', medicationCodeableConcept: { text: 'x' }, subject: { reference: `Patient/${b}` }, context: { reference: `Encounter/${enc.json.id}` } });
    assert.equal(med.status, 422);
    const good = await fhir(srv.url, 'POST', 'Observation', obs(a));
    assert.equal(good.status, 201);
    // Moving the encounter to another patient would orphan its observation: refused.
    const move = await fhir(srv.url, 'PUT', `Encounter/${enc.json.id}`, { resourceType: 'Encounter', id: enc.json.id, status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${b}` } });
    assert.equal(move.status, 409);
    assert.equal((await fhir(srv.url, 'GET', `Encounter/${enc.json.id}`)).json.meta.versionId, '1');
    const del = await fhir(srv.url, 'DELETE', `Encounter/${enc.json.id}`);
    assert.equal(del.status, 409);
    // An encounter nothing hangs off may change patient.
    const lone = await fhir(srv.url, 'POST', 'Encounter', { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${a}` } });
    const moved = await fhir(srv.url, 'PUT', `Encounter/${lone.json.id}`, { resourceType: 'Encounter', id: lone.json.id, status: 'finished', class: { code: 'AMB' }, subject: { reference: `Patient/${b}` } });
    assert.equal(moved.status, 200, moved.text);
    const hub = await srv.db.owner.query('SELECT patient_id FROM clinical_events WHERE encounter_id = $1', [lone.json.id]);
    assert.equal(hub.rows[0].patient_id, b);
  });
});

test('migrations are recorded and re-running them is a no-op', async () => {
  const { rows } = await srv.db.owner.query('SELECT version FROM schema_migrations ORDER BY version');
  assert.ok(rows.length >= 2);
  assert.deepEqual(await migrate(srv.db.owner), []);
});

test('with DATABASE_URL the server uses that PostgreSQL instead of starting one', async () => {
  const { startServer } = await import('../src/server.ts');
  const other = await startServer({ port: 0, host: '127.0.0.1', databaseUrl: srv.db.ownerUrl, dataDir: '/nonexistent-kiln-dir', authMode: 'off', audit: 'off' });
  try {
    const id = await createPatient(srv.url, 'Shared');
    const r = await fhir(other.url, 'GET', `Patient/${id}`);
    assert.equal(r.status, 200);
  } finally {
    await other.stop();
  }
  // The first server's pool still works after the second rotated the app password.
  assert.equal((await fhir(srv.url, 'GET', 'metadata')).status, 200);
  const c = new pg.Client({ connectionString: srv.db.ownerUrl });
  await c.connect();
  await c.end();
});
