// Search plans as the request role, under row-level security. PostgreSQL only turns a
// condition into an index condition under RLS when its operator is leakproof: LIKE is not,
// so a string prefix search filtered every name row of the tenant (a cost that grows with
// the tenant) until searchSql.ts wrote it as the leakproof range (~>=~, ~<~). For each
// common form, the statement the server builds is explained as kiln_app with app.org_id
// set: the search column must be in an index condition, and no scan may filter out many rows.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { parseSearch } from '../src/search/query.ts';
import { searchStatements } from '../src/store/searchRun.ts';
import { prefixUpperBound } from '../src/store/searchSql.ts';
import { createOrg } from '../src/store/tenants.ts';

let srv: TestServer;
let orgId: number;
const PATIENTS = 2000;
const OBSERVATIONS = 5000;
/** A filter dropping more rows than this reads rows the criterion should have ruled out by index. */
const FEW = 100;

type PlanNode = { 'Node Type': string; 'Index Cond'?: string; 'Recheck Cond'?: string; Filter?: string; 'Rows Removed by Filter'?: number;
  'Relation Name'?: string; 'Index Name'?: string; Plans?: PlanNode[] };

function nodes(n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(nodes)];
}

/** The page statement the server runs for `type?query`, explained (ANALYZE) as kiln_app in the tenant. */
async function plan(type: string, query: string): Promise<{ sql: string; values: unknown[]; nodes: PlanNode[] }> {
  const parsed = parseSearch(type, [...new URLSearchParams(query)]);
  const { page } = searchStatements({ orgId, type, criteria: parsed.criteria, sort: parsed.sort, count: 20, total: 'none' });
  const c = await srv.db.app.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
    const { rows } = await c.query(`EXPLAIN (ANALYZE, FORMAT JSON) ${page.sql}`, page.values);
    const json = rows[0]['QUERY PLAN'];
    return { ...page, nodes: nodes((Array.isArray(json) ? json : JSON.parse(json))[0].Plan) };
  } finally {
    await c.query('ROLLBACK');
    c.release();
  }
}

/** The plan reads the search column through an index of `table` and filters out few rows anywhere. */
function assertIndexed(p: Awaited<ReturnType<typeof plan>>, table: string, cond: RegExp) {
  const shown = JSON.stringify(p.nodes.map((n) => ({ t: n['Node Type'], r: n['Relation Name'], i: n['Index Cond'], f: n.Filter, x: n['Rows Removed by Filter'] })), null, 1);
  const indexed = p.nodes.some((n) => (n['Index Name'] ?? '').startsWith(table) && cond.test(n['Index Cond'] ?? ''));
  assert.ok(indexed, `an index condition ${cond} on ${table}: ${shown}`);
  const wasteful = p.nodes.filter((n) => (n['Rows Removed by Filter'] ?? 0) > FEW);
  assert.deepEqual(wasteful.map((n) => `${n['Node Type']} ${n['Relation Name']}: ${n.Filter} removed ${n['Rows Removed by Filter']}`), [], shown);
  assert.ok(!p.nodes.some((n) => n['Node Type'] === 'Seq Scan' && (n['Relation Name'] ?? '').startsWith(`${table}_o`)), `no seq scan of the tenant's ${table}: ${shown}`);
}

async function transaction(entries: { resource: Record<string, unknown> }[]) {
  const res = await fhir(srv.url, 'POST', '', {
    resourceType: 'Bundle', type: 'transaction',
    entry: entries.map(({ resource }) => ({ resource, request: { method: 'PUT', url: `${resource.resourceType}/${resource.id}` } })),
  });
  assert.equal(res.status, 200, res.text.slice(0, 500));
}

const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis'];
const DAY = 86_400_000;
const T0 = Date.parse('2020-01-01T00:00:00Z');

describe('search plans as the request role, under RLS', () => {
  before(async () => {
    srv = await startTestServer();
    orgId = (await srv.db.owner.query(`SELECT id FROM organizations ORDER BY id LIMIT 1`)).rows[0].id;
    for (let i = 0; i < PATIENTS; i += 500) {
      await transaction(Array.from({ length: 500 }, (_, k) => {
        const n = i + k;
        // A few Albergs (and a Müller, a name past ASCII) among many common names.
        const family = n % 400 === 7 ? 'Alberg' : n === 11 ? 'Müller' : FAMILIES[n % FAMILIES.length];
        return { resource: { resourceType: 'Patient', id: `p${n}`, identifier: [{ system: 'urn:mrn', value: `MRN${n}` }],
          name: [{ family, given: ['Ann'] }], birthDate: `19${String(30 + (n % 70)).padStart(2, '0')}-0${1 + (n % 9)}-1${n % 10}` } };
      }));
    }
    for (let j = 0; j < OBSERVATIONS; j += 500) {
      await transaction(Array.from({ length: 500 }, (_, k) => {
        const n = j + k;
        return { resource: { resourceType: 'Observation', id: `o${n}`, status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: n % 2 ? '8867-4' : '8310-5' }] },
          subject: { reference: `Patient/p${n % PATIENTS}` },
          effectiveDateTime: new Date(T0 + (n % 700) * DAY + n * 1000).toISOString(),
          valueQuantity: { value: 50 + (n % 100), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' } } };
      }));
    }
    await srv.db.owner.query('ANALYZE');
  });
  after(async () => {
    await srv?.stop();
    if (srv) removeDataDir(srv.dataDir);
  });

  test('the upper bound of a prefix: its last code point incremented, past surrogates and U+10FFFF', () => {
    assert.equal(prefixUpperBound('alberg'), 'alberh');
    assert.equal(prefixUpperBound('mü'), 'mý');
    assert.equal(prefixUpperBound('a\ud7ff'), 'a\ue000');
    assert.equal(prefixUpperBound('a😀'), 'a😁');
    assert.equal(prefixUpperBound('a\u{10ffff}'), 'b');
    assert.equal(prefixUpperBound('\u{10ffff}'), undefined);
    assert.equal(prefixUpperBound(''), undefined);
  });

  test('string prefix (family=alberg): an index range on the value, the rows found', async () => {
    const p = await plan('Patient', 'family=alberg');
    assertIndexed(p, 'search_strings', /value ~>=~ 'alberg'::text\) AND \(value ~<~ 'alberh'::text/);
    const res = await fhir(srv.url, 'GET', 'Patient?family=alberg&_count=100');
    assert.equal(res.json.entry.length, PATIENTS / 400);
  });

  test('string prefix past ASCII (name=mü finds Müller)', async () => {
    const p = await plan('Patient', 'name=m%C3%BC');
    assertIndexed(p, 'search_strings', /value ~>=~ 'mu'::text/);
    const res = await fhir(srv.url, 'GET', 'Patient?name=M%C3%BCl');
    assert.deepEqual(res.json.entry.map((e: any) => e.resource.id), ['p11']);
  });

  test('string :exact: the normalized value is the index condition, raw the check', async () => {
    const p = await plan('Patient', 'family:exact=Alberg');
    assertIndexed(p, 'search_strings', /value = 'alberg'::text/);
    const res = await fhir(srv.url, 'GET', 'Patient?family:exact=alberg');
    assert.equal(res.status, 200);
    assert.equal((res.json.entry ?? []).length, 0, ':exact keeps the case');
  });

  test('string :contains reads the parameter\'s rows of the tenant through an index (no btree range exists for it)', async () => {
    const p = await plan('Patient', 'family:contains=lber');
    assert.ok(p.nodes.some((n) => (n['Index Name'] ?? '').startsWith('search_strings') && /param = 'family'::text/.test(n['Index Cond'] ?? '')
      || (n['Index Name'] ?? '').startsWith('search_strings') && /resource_type = 'Patient'/.test(n['Index Cond'] ?? '')), JSON.stringify(p.nodes));
  });

  test('token (identifier=MRN7)', async () => {
    assertIndexed(await plan('Patient', 'identifier=MRN7'), 'search_tokens', /code = 'MRN7'::text/);
    assertIndexed(await plan('Patient', 'identifier=urn:mrn|MRN7'), 'search_tokens', /code = 'MRN7'::text/);
  });

  test('reference (subject=Patient/p7)', async () => {
    assertIndexed(await plan('Observation', 'subject=Patient/p7'), 'search_references', /target_id = 'p7'::text/);
  });

  test('date range (birthdate=1955-03, Observation date=2020-02-01)', async () => {
    assertIndexed(await plan('Patient', 'birthdate=1955-03'), 'search_dates', /lo >= '1955-03-01/);
    assertIndexed(await plan('Observation', 'date=2020-02-01'), 'search_dates', /lo >= '2020-02-01/);
  });

  test('_id', async () => {
    assertIndexed(await plan('Patient', '_id=p7,p8'), 'patients', /id = ANY/);
  });

  test('a driven page plans no time partition: its rows through the locator, their bodies from the history', async () => {
    for (const query of ['subject=Patient/p7&code=http://loinc.org|8867-4', 'patient=p7&date=ge2020-01-01&_sort=-date', 'patient=p7&_revinclude=Provenance:target']) {
      const p = await plan('Observation', query);
      const partitions = p.nodes.map((n) => n['Relation Name'] ?? '').filter((r) => r.startsWith('observations'));
      assert.deepEqual(partitions, [], `${query}: ${p.sql}`);
      assert.ok(p.nodes.some((n) => n['Relation Name'] === 'resource_history'), query);
    }
  });

  test('every subquery plans the tenant\'s partitions only, however many tenants there are', async () => {
    for (const slug of ['plans-other-a', 'plans-other-b']) await createOrg(srv.db.owner, slug, slug);
    for (const [type, query] of [['Observation', 'patient=p7&category=vital-signs&date=ge2020-01-01&_sort=-date'],
      ['Observation', 'code=8867-4&value-quantity=gt60&_total=accurate'], ['Patient', 'family=alberg&birthdate=ge1950&_has:Observation:patient:code=8867-4']] as const) {
      const p = await plan(type, query);
      const others = p.nodes.map((n) => /_o(\d+)(_|$)/.exec(n['Relation Name'] ?? '')).filter((m) => m && Number(m[1]) !== orgId).map((m) => m![0]);
      assert.deepEqual(others, [], `${type}?${query}: ${p.sql}`);
    }
  });

  test('a page\'s bodies are the current versions: after an update, a delete and a re-create, in matches and includes', async () => {
    const obs = (value: number) => ({ resourceType: 'Observation', id: 'o-current', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: 'Patient/p1999' }, effectiveDateTime: '2021-06-01T10:00:00Z', valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' } });
    const found = async () => {
      const driven = await fhir(srv.url, 'GET', 'Observation?subject=Patient/p1999&code=8867-4&_count=100');
      const sorted = await fhir(srv.url, 'GET', 'Observation?patient=p1999&_sort=-date&_count=100');
      const included = await fhir(srv.url, 'GET', 'Patient?_id=p1999&_revinclude=Observation:subject');
      const pick = (b: any) => (b.json.entry ?? []).map((e: any) => e.resource).filter((r: any) => r.id === 'o-current')
        .map((r: any) => `${r.meta.versionId}:${r.valueQuantity.value}`);
      return [pick(driven), pick(sorted), pick(included)];
    };
    assert.equal((await fhir(srv.url, 'PUT', 'Observation/o-current', obs(61))).status, 201);
    assert.equal((await fhir(srv.url, 'PUT', 'Observation/o-current', obs(62))).status, 200);
    assert.deepEqual(await found(), [['2:62'], ['2:62'], ['2:62']]);
    assert.equal((await fhir(srv.url, 'DELETE', 'Observation/o-current')).status, 204);
    assert.deepEqual(await found(), [[], [], []]);
    assert.equal((await fhir(srv.url, 'PUT', 'Observation/o-current', obs(63))).status, 201);
    assert.deepEqual(await found(), [['4:63'], ['4:63'], ['4:63']]);
  });

  test('quantity (value-quantity=99.0, =gt148): a float8 range on the value (numeric comparisons are not leakproof)', async () => {
    assertIndexed(await plan('Observation', 'value-quantity=99.0|http://unitsofmeasure.org|/min'), 'search_quantities', /value_f >= '98.95'::double precision/);
    assertIndexed(await plan('Observation', 'value-quantity=gt148'), 'search_quantities', /value_f > '148'::double precision/);
    const res = await fhir(srv.url, 'GET', 'Observation?value-quantity=gt148&_count=200');
    assert.equal(res.json.entry.length, OBSERVATIONS / 100, 'only 149 is above 148');
    const eq = await fhir(srv.url, 'GET', 'Observation?value-quantity=99&_count=200');
    assert.equal(eq.json.entry.length, OBSERVATIONS / 100);
  });

  test('every operator the search SQL applies to an index table\'s column is leakproof, or LIKE beside its leakproof range', async () => {
    assert.deepEqual(await leakyOperators([
      ['Patient', 'family=alberg'], ['Patient', 'family:exact=Alberg'], ['Patient', 'identifier=urn:mrn|MRN7'], ['Patient', 'identifier=MRN7'],
      ['Patient', 'birthdate=ge1955-03'], ['Patient', 'birthdate=lt1955'], ['Patient', 'birthdate=1955-03'], ['Observation', 'subject=Patient/p7'],
      ['Observation', 'code=http://loinc.org|8867-4&patient=p7'], ['Observation', 'date=ge2020-02-01&code=8867-4'], ['Patient', '_id=p7'],
      ['Patient', 'name=m%C3%BC'], ['Patient', '_lastUpdated=ge2020-01-01'],
    ]), []);
  });

  test('quantity comparisons are on the float8 value (numeric ones are not leakproof)', async () => {
    assert.deepEqual(await leakyOperators([['Observation', 'value-quantity=ge99'], ['Observation', 'value-quantity=99|http://unitsofmeasure.org|/min'],
      ['Observation', 'value-quantity=ap100'], ['Observation', 'value-quantity=lt60']]), []);
  });
});

const COLUMN_TYPES: Record<string, string> = { value: 'text', raw: 'text', code: 'text', system: 'text', param: 'text', resource_type: 'text',
  value_f: 'float8', target_id: 'text', target_type: 'text', reference: 'text', id: 'text', last_updated: 'timestamptz', lo: 'timestamptz', hi: 'timestamptz', org_id: 'integer', clinical_time: 'timestamptz' };

/**
 * The operators the page statements of `forms` apply to columns (`alias.column OP`, over
 * index rows s0, d, w0 ... and resource rows r, x) that are not leakproof (pg_proc), but
 * for LIKE on a column that also has its leakproof range (~>=~).
 */
async function leakyOperators(forms: [string, string][]): Promise<string[]> {
  const found: string[] = [];
  for (const [type, query] of forms) {
    const parsed = parseSearch(type, [...new URLSearchParams(query)]);
    const { sql } = searchStatements({ orgId, type, criteria: parsed.criteria, sort: parsed.sort, count: 20, total: 'none' }).page;
    for (const m of sql.matchAll(/\b(?:s\d|d|w\d|r|x)\.(\w+) (=|~>=~|~<~|LIKE|>=|<=|<|>|= ANY)[ (]/g)) {
      const [, column, op] = m;
      const t = type === 'Observation' && query.startsWith('value-quantity') && column === 'value' ? 'numeric' : COLUMN_TYPES[column];
      assert.ok(t, `a column the test knows: ${column} in ${sql}`);
      const operator = op === '= ANY' ? '=' : op === 'LIKE' ? '~~' : op;
      const { rows } = await srv.db.owner.query(`SELECT p.proname, p.proleakproof FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
        WHERE o.oprname = $1 AND o.oprleft = $2::regtype AND o.oprright = $2::regtype`, [operator, t]);
      assert.equal(rows.length, 1, `${operator} on ${t}`);
      const guarded = operator === '~~' && new RegExp(`\\b\\w+\\.${column} ~>=~ `).test(sql);
      if (!rows[0].proleakproof && !guarded) found.push(`${type}?${query}: ${column} ${op} (${rows[0].proname})`);
    }
  }
  return [...new Set(found)];
}
