// Starter views and `kiln views materialize` (issue #26 items 4 and 6): the starter views are
// valid and give rows over Synthea in memory and compiled; installed into a tenant by url and
// materialized, they are SQL views that the tenant's analytics role reads with a plain
// PostgreSQL client, seeing its tenant's rows only (also after SET app.org_id), writing nothing;
// retired and deleted views are dropped; materialized views change only when refreshed.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { SHARED_DATA } from './support/data.ts';
import { createOrg, type Org } from '../src/store/tenants.ts';
import { validateView, runView, type ViewDefinition } from '../src/views/index.ts';
import { starterViews } from '../src/views/starter.ts';
import { compileView } from '../src/store/views/index.ts';
import { inlineParams } from '../src/store/analytics.ts';
import { loadMaps, entryToObservation, medicationToStatement, type HealthieEntry } from '../mappings/healthie/index.ts';

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
const run = promisify(execFile);
const DIR = path.join(SHARED_DATA, 'synthea-r4');
const FILES = fs.readdirSync(DIR).filter((f) => f.endsWith('.json'))
  .sort((a, b) => Number(!/Information/.test(a)) - Number(!/Information/.test(b)) || a.localeCompare(b));
const SHARED_FILES = FILES.filter((f) => /Information/.test(f));
const PATIENT_FILES = FILES.filter((f) => !/Information/.test(f));
const bundle = (f: string) => JSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8'));
const PASSWORD = 'analytics-test-password';

// What the Healthie mapping writes: one metric entry per category of its ConceptMap (blood
// pressure with its two subentries), and the example medications.
const HEALTHIE = path.join(SHARED_DATA, '..', 'healthie', 'examples');
const maps = loadMaps();
const METRIC_MAP = JSON.parse(fs.readFileSync('mappings/healthie/metric-category-to-loinc.json', 'utf8'));
const CATEGORIES: string[] = METRIC_MAP.group.flatMap((g: Json) => g.element.map((e: Json) => e.code));
function healthieResources(patientId: string) {
  const ctx = { now: '2025-01-20T00:00:00Z', patientId };
  const entries: HealthieEntry[] = CATEGORIES.filter((c) => !/Blood Pressure/.test(c)).map((category, i) => ({
    id: String(9000 + i), category, metric_stat: 10 + i, created_at: '2025-01-14 07:30:00 -0600',
  }));
  entries.push(JSON.parse(fs.readFileSync(path.join(HEALTHIE, '06_metric_entries.json'), 'utf8')).data.entries
    .find((e: Json) => e.category === 'Blood Pressure'));
  const medications = JSON.parse(fs.readFileSync(path.join(HEALTHIE, '05_medications.json'), 'utf8')).data.medications;
  return [...entries.map((e) => entryToObservation(e, maps, ctx)), ...medications.map((m: Json) => medicationToStatement(m, ctx))];
}

/** Rows as sorted JSON lines, to compare row sets from different runners. */
const rowSet = (rows: object[]) => rows.map((r) => JSON.stringify(r)).sort();

describe('starter views over Synthea, in memory and compiled', () => {
  const resources = FILES.flatMap((f) => bundle(f).entry.map((e: Json) => e.resource));
  for (const view of starterViews()) {
    test(`${view.name}: valid, active, and compiled`, () => {
      assert.deepEqual(validateView(view), [], 'no problems');
      assert.equal(view.status, 'active');
      assert.match(view.url!, /^urn:kiln:ViewDefinition:/);
      const compiled = compileView(view);
      // Inlined for a CREATE VIEW: no $n left, the tenant a literal.
      const sql = inlineParams(compiled.sql, compiled.params, 42);
      assert.doesNotMatch(sql, /\$\d/);
      assert.doesNotMatch(sql, /current_setting/);
      assert.match(sql, /org_id = \(42\)/);
      const rows = runView(view, resources.filter((r: Json) => r.resourceType === view.resource));
      if (view.resource === 'MedicationStatement' || view.resource === 'AuditEvent') return; // Synthea has none
      assert.ok(rows.length > 0, 'rows over Synthea');
    });
  }

  test('vital_signs and medication_statements over what the Healthie mapping writes', () => {
    const mapped = healthieResources('p1');
    const vitals = runView(starterViews().find((v) => v.name === 'vital_signs')!, mapped.filter((r) => r.resourceType === 'Observation'));
    const loinc = new Set<string>(METRIC_MAP.group.flatMap((g: Json) => g.element.flatMap((e: Json) => e.target.map((t: Json) => t.code))));
    loinc.delete('85354-9'); // the panel: its rows are its components'
    assert.deepEqual(new Set(vitals.map((r) => r.code)), loinc, 'a row for every LOINC code of the ConceptMap');
    for (const [code, value] of [['8480-6', 128], ['8462-4', 84]] as const) {
      assert.ok(vitals.some((r) => r.code === code && r.value === value && r.panel_code === '85354-9' && r.patient_id === 'p1'), code);
    }
    const steps = vitals.find((r) => r.code === '41950-7')!;
    assert.equal(steps.effective_time, '2025-01-14T07:30:00-06:00');
    const meds = runView(starterViews().find((v) => v.name === 'medication_statements')!, mapped.filter((r) => r.resourceType === 'MedicationStatement'));
    assert.ok(meds.length > 0 && meds.every((r) => r.patient_id === 'p1' && r.medication_name && r.status));
  });

  test('vital_signs gives one row per quantity: a blood pressure panel one per component', () => {
    const view = starterViews().find((v) => v.name === 'vital_signs')!;
    const observations = resources.filter((r: Json) => r.resourceType === 'Observation');
    const rows = runView(view, observations);
    const codes = new Set(rows.map((r) => r.code));
    for (const c of ['29463-7', '8302-2', '39156-5', '8480-6', '8462-4', '8867-4', '4548-4']) assert.ok(codes.has(c), `LOINC ${c}`);
    const panel = observations.find((o: Json) => o.code.coding.some((c: Json) => c.code === '85354-9'));
    const panelRows = rows.filter((r) => r.observation_id === panel.id);
    assert.deepEqual(panelRows.map((r) => r.code).sort(), ['8462-4', '8480-6']);
    assert.ok(panelRows.every((r) => r.panel_code === '85354-9' && typeof r.value === 'number' && r.unit_code === 'mm[Hg]'));
    assert.ok(!codes.has('72514-3'), 'pain severity is not a vital sign');
  });
});

describe('kiln views install / materialize / refresh', () => {
  let srv: TestServer;
  let acme: Org;
  let beta: Org;
  const base = (org: Org) => `${srv.url}/${org.slug}`;
  const kiln = (...args: string[]) => run('npx', ['tsx', 'src/cli.ts', 'views', ...args], {
    env: { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), KILN_ANALYTICS_PASSWORD: PASSWORD },
    maxBuffer: 16 << 20,
  });
  const clients: pg.Client[] = [];
  /** A plain PostgreSQL client logged in as the tenant's analytics role. */
  async function analyst(role = 'kiln_analytics_acme'): Promise<pg.Client> {
    const c = new pg.Client({
      host: '127.0.0.1', port: srv.pgPort, database: 'kiln', user: role, password: PASSWORD,
      types: { getTypeParser: (oid: number, format?: string) => oid === 1700 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text') },
    });
    await c.connect();
    clients.push(c);
    return c;
  }
  const ids = async (org: Org, type: string) =>
    new Set(((await fhir(base(org), 'GET', `${type}?_count=1000&_elements=id`)).json.entry ?? []).map((e: Json) => e.resource.id as string));

  before(async () => {
    srv = await startTestServer({ audit: 'on' });
    acme = await createOrg(srv.db.owner, 'acme', 'Acme');
    beta = await createOrg(srv.db.owner, 'beta', 'Beta');
    for (const [org, files] of [[acme, PATIENT_FILES.slice(0, 3)], [beta, PATIENT_FILES.slice(3, 5)]] as const) {
      for (const f of [...SHARED_FILES, ...files]) {
        const r = await fhir(base(org), 'POST', '', bundle(f));
        assert.equal(r.status, 200, `${f}: ${r.text.slice(0, 500)}`);
      }
    }
    const first = (await fhir(base(acme), 'GET', 'Patient?_count=1')).json.entry[0].resource.id;
    for (const resource of healthieResources(first)) {
      const r = await fhir(base(acme), 'POST', resource.resourceType, resource);
      assert.equal(r.status, 201, r.text);
    }
  });
  after(async () => {
    for (const c of clients) await c.end().catch(() => {});
    await srv.stop();
    removeDataDir(srv.dataDir);
  });

  test('inlined parameters give what bound ones give; quoted text, dollar quotes and comments are kept', async () => {
    const params = ["o'k \\ $1 \"x\" \n ünï", -0.000001, 12345678901234.5, '$.a[*] ? (@.type() != "null")', 'E\'\\\''];
    const sql = `SELECT $1::text AS a, '$2 it''s' AS b, "q"."$1" AS c, $$ $1 $$ AS d, $t$ $2 $t$ AS e, E'\\' $1' AS f, -- $1
      /* $2 */ $2::numeric AS g, $3::numeric AS h, jsonb_path_query_array('[{"a":[1,null]}]', $4::jsonpath) AS i, $5::text AS j,
      $1::text = $1::text AS k, current_setting('app.org_id')::integer AS l FROM (SELECT 1 AS "$1") q`;
    const c = await srv.db.owner.connect();
    let bound, inlined;
    try {
      await c.query(`SELECT set_config('app.org_id', '7', false)`);
      bound = await c.query(sql, params);
      inlined = await c.query(inlineParams(sql, params, 7));
    } finally {
      c.release(true);
    }
    assert.deepEqual(inlined.rows, bound.rows);
    assert.equal(inlined.rows[0].a, params[0]);
    assert.equal(inlined.rows[0].l, 7);
    assert.throws(() => inlineParams('SELECT $2', ['x'], 1), /names \$2 but has 1 parameters/);
    assert.throws(() => inlineParams("SELECT 'open", [], 1), /unterminated/);
  });

  test('install creates the starter views by url, a second install updates them', async () => {
    const first = await kiln('install', '--tenant', 'acme');
    assert.match(first.stdout, /installed 6 starter views into 'acme'/);
    assert.equal(first.stdout.match(/ created /g)?.length, 6);
    const again = await kiln('install', '--tenant', 'acme');
    assert.equal(again.stdout.match(/ updated /g)?.length, 6, again.stdout);
    const stored = await fhir(base(acme), 'GET', 'ViewDefinition?_count=100');
    assert.equal(stored.json.entry.length, 6, 'one ViewDefinition per url');
    assert.ok(stored.json.entry.every((e: Json) => e.resource.meta.versionId === '2'));
    await kiln('install', '--tenant', 'beta');
  });

  test('materialize: the analytics role reads each view, the same rows as $run, of its tenant only', async () => {
    // A read of a patient's record, for the access log.
    const patientId = [...await ids(acme, 'Patient')][0];
    assert.equal((await fhir(base(acme), 'GET', `Patient/${patientId}`)).status, 200);
    const out = await kiln('materialize', '--tenant', 'acme', '--login');
    assert.match(out.stdout, /'acme': 6 views in schema analytics_acme for role kiln_analytics_acme \(LOGIN, password set\); 0 dropped, 0 skipped/);
    await kiln('materialize', '--tenant', 'beta');

    const c = await analyst();
    const acmePatients = await ids(acme, 'Patient');
    const betaPatients = await ids(beta, 'Patient');
    assert.equal(acmePatients.size, 3);
    const views = (await fhir(base(acme), 'GET', 'ViewDefinition?_count=100')).json.entry.map((e: Json) => e.resource as ViewDefinition);
    for (const view of views) {
      // search_path is the tenant's schema: plain names.
      const { rows } = await c.query(`SELECT * FROM ${view.name}`);
      if (view.name === 'access_log') {
        assert.ok(rows.some((r) => r.patient_id === patientId && r.interaction === 'read'), 'the read is in the access log');
        continue; // every request adds events: compared by tenant below, not with $run
      }
      const ran = await fhir(base(acme), 'GET', `ViewDefinition/${view.id}/$run`);
      assert.equal(ran.status, 200, ran.text);
      assert.deepEqual(rowSet(rows), rowSet(ran.json), `${view.name}: the SQL view gives $run's rows`);
      assert.ok(rows.length > 0, `${view.name} has rows`);
    }
    const vitals = (await c.query('SELECT patient_id FROM vital_signs')).rows;
    assert.ok(vitals.length > 100);
    assert.ok(vitals.every((r) => acmePatients.has(r.patient_id)), 'every row is of an acme patient');

    // The tenant's id is a literal: the plan reads acme's partitions only.
    const plan = JSON.stringify((await c.query('EXPLAIN (FORMAT JSON) SELECT * FROM vital_signs')).rows[0]);
    const relations = [...plan.matchAll(/"Relation Name":"([^"]+)"/g)].map((m) => m[1]);
    assert.ok(relations.length > 0 && relations.every((r) => r.startsWith(`observations_o${acme.id}_`)), relations.join(' '));

    // Setting the tenant itself changes nothing: the views and the policies name acme's id.
    await c.query(`SET app.org_id = '${beta.id}'`);
    assert.equal((await c.query('SELECT count(*)::int AS n FROM patient_demographics')).rows[0].n, 3);
    assert.equal((await c.query('SELECT count(*)::int AS n FROM vital_signs')).rows[0].n, vitals.length);
    const direct = await c.query('SELECT id, org_id FROM public.patients');
    assert.deepEqual(new Set(direct.rows.map((r) => r.id)), acmePatients, 'RLS: the tables show acme rows only');
    assert.ok(direct.rows.every((r) => r.org_id === acme.id));
    const log = (await c.query('SELECT patient_id FROM access_log')).rows;
    assert.ok(log.length > 0 && log.every((r) => !betaPatients.has(r.patient_id)));
    assert.equal((await c.query(`SELECT count(*)::int AS n FROM public.observations WHERE org_id = ${beta.id}`)).rows[0].n, 0);
    // Another tenant's schema and the server's other tables are closed to it.
    await assert.rejects(c.query('SELECT * FROM analytics_beta.patient_demographics'), { code: '42501' });
    await assert.rejects(c.query('SELECT * FROM public.resource_history'), { code: '42501' });
    await assert.rejects(c.query('SELECT * FROM public.kiln_analytics_roles'), { code: '42501' });
    await c.query('RESET app.org_id');

    // beta's role (NOLOGIN) is a separate role bound to beta.
    const owner = await srv.db.owner.connect();
    try {
      await owner.query('BEGIN');
      await owner.query('SET LOCAL ROLE kiln_analytics_beta');
      const betaRows = (await owner.query('SELECT id FROM analytics_beta.patient_demographics')).rows;
      assert.deepEqual(new Set(betaRows.map((r) => r.id)), betaPatients);
      await assert.rejects(owner.query('SELECT 1 FROM analytics_acme.patient_demographics'), { code: '42501' });
    } finally {
      await owner.query('ROLLBACK');
      owner.release();
    }
  });

  test('the analytics role cannot write, even in a read-write transaction', async () => {
    const c = await analyst();
    await assert.rejects(c.query(`UPDATE public.patients SET active = false`), { code: '25006' }, 'read-only by default');
    await c.query('BEGIN READ WRITE');
    await assert.rejects(c.query(`UPDATE public.patients SET active = false`), { code: '42501' });
    await c.query('ROLLBACK');
    await c.query('BEGIN READ WRITE');
    await assert.rejects(c.query(`INSERT INTO public.resources (org_id, resource_type, id, version_id, last_updated, resource) VALUES (${acme.id}, 'Basic', 'x', 1, now(), '{}')`), { code: '42501' });
    await c.query('ROLLBACK');
    await c.query('BEGIN READ WRITE');
    await assert.rejects(c.query('CREATE TABLE analytics_acme.mine (x int)'), { code: '42501' });
    await c.query('ROLLBACK');
    await c.query('BEGIN READ WRITE');
    await assert.rejects(c.query('DROP VIEW analytics_acme.vital_signs'), { code: '42501' });
    await c.query('ROLLBACK');
  });

  test('a retired or deleted view is dropped on the next materialize; unchanged ones are kept', async () => {
    const views = (await fhir(base(acme), 'GET', 'ViewDefinition?_count=100')).json.entry.map((e: Json) => e.resource);
    const log = views.find((v: Json) => v.name === 'access_log');
    const meds = views.find((v: Json) => v.name === 'medication_requests');
    assert.equal((await fhir(base(acme), 'PUT', `ViewDefinition/${log.id}`, { ...log, status: 'retired' })).status, 200);
    assert.equal((await fhir(base(acme), 'DELETE', `ViewDefinition/${meds.id}`)).status, 204);
    const out = await kiln('materialize', '--tenant', 'acme');
    assert.match(out.stdout, /analytics_acme\.access_log {2}dropped/);
    assert.match(out.stdout, /analytics_acme\.medication_requests {2}dropped/);
    assert.match(out.stdout, /analytics_acme\.vital_signs {2}unchanged/);
    const present = await srv.db.owner.query(`SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = 'analytics_acme' ORDER BY 1`);
    assert.deepEqual(present.rows.map((r) => r.relname), ['encounters', 'medication_statements', 'patient_demographics', 'vital_signs']);
  });

  test('--materialized: a snapshot that a refresh brings up to date', async () => {
    const out = await kiln('materialize', '--tenant', 'acme', '--materialized');
    assert.match(out.stdout, /analytics_acme\.vital_signs {2}created \(materialized view\)/);
    const c = await analyst();
    const count = async () => (await c.query('SELECT count(*)::int AS n FROM vital_signs')).rows[0].n as number;
    const before = await count();
    const patientId = [...await ids(acme, 'Patient')][0];
    const weight = {
      resourceType: 'Observation', status: 'final', subject: { reference: `Patient/${patientId}` }, effectiveDateTime: '2026-12-01T08:00:00Z',
      code: { coding: [{ system: 'http://loinc.org', code: '29463-7', display: 'Body weight' }] },
      valueQuantity: { value: 71.5, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' },
    };
    const created = await fhir(base(acme), 'POST', 'Observation', weight);
    assert.equal(created.status, 201, created.text);
    assert.equal(await count(), before, 'a materialized view is a snapshot');
    const refreshed = await kiln('refresh', '--tenant', 'acme');
    assert.match(refreshed.stdout, /refreshed 4 materialized views of 'acme'/);
    assert.equal(await count(), before + 1);
    const row = (await c.query('SELECT * FROM vital_signs WHERE observation_id = $1', [created.json.id])).rows[0];
    assert.deepEqual({ ...row }, {
      observation_id: created.json.id, patient_id: patientId, encounter_id: null, status: 'final', effective_time: '2026-12-01T08:00:00Z',
      panel_code: '29463-7', code: '29463-7', display: 'Body weight', value: 71.5, unit: 'kg', unit_code: 'kg',
    });
    await c.query(`SET app.org_id = '${beta.id}'`);
    assert.equal(await count(), before + 1, 'the snapshot holds acme rows only');
    // --refresh on materialize refreshes unchanged ones as well.
    await fhir(base(acme), 'POST', 'Observation', { ...weight, effectiveDateTime: '2026-12-02T08:00:00Z' });
    const again = await kiln('materialize', '--tenant', 'acme', '--materialized', '--refresh');
    assert.match(again.stdout, /vital_signs {2}unchanged, refreshed/);
    assert.equal(await count(), before + 2);
  });
});
