// AuditEvent lookups by a key most events hold (a busy client's identifier) walk the
// search's order and check the key on each row instead of collecting every match through
// the GIN index (sql/024, src/store/searchRun.ts searchKeyForms). Both forms must find
// the same rows in the same order, page after page; each must be chosen where it fits.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { serverAuditRow } from '../src/audit/request.ts';
import { insertAuditEvents } from '../src/store/auditWrite.ts';
import { parseSearch } from '../src/search/query.ts';
import { runSearch, searchKeyForms, searchStatements } from '../src/store/searchRun.ts';

let srv: TestServer;
let orgId: number;
const BUSY = 3000;
const RARE = 20;

/** AuditEvent ids of a client in a search's order (date descending or id), straight from the table. */
async function expected(client: string, byDate: boolean): Promise<string[]> {
  const { rows } = await srv.db.owner.query(
    `SELECT id FROM audit_events WHERE org_id = $1 AND ref_keys @> ARRAY[$2] ORDER BY ${byDate ? 'clinical_time DESC, id' : 'id'}`,
    [orgId, `agent:identifier=urn:kiln:client-id|${client}`]);
  return rows.map((r) => r.id);
}

/** Every page of a search, following next links. */
async function walk(path: string): Promise<string[]> {
  const out: string[] = [];
  let url: string | undefined = `${srv.url}/${path}`;
  while (url) {
    const res: Response = await fetch(url, { headers: { accept: 'application/fhir+json' } });
    const page: any = await res.json();
    assert.equal(res.status, 200, JSON.stringify(page));
    out.push(...(page.entry ?? []).map((e: any) => e.resource.id));
    url = page.link.find((l: any) => l.relation === 'next')?.url;
  }
  return out;
}

/** Whether the server treats the client's key as common, and the page statement it would run. */
async function plan(client: string): Promise<{ common: boolean; sql: string }> {
  const c = await srv.db.app.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
    const parsed = parseSearch('AuditEvent', [['agent:identifier', `urn:kiln:client-id|${client}`], ['_sort', '-date']]);
    const req = { orgId, type: 'AuditEvent', criteria: parsed.criteria, sort: parsed.sort, count: 10, total: 'none' as const };
    const forms = await searchKeyForms(c, req);
    const sql = searchStatements({ ...req, keyForms: forms }).page.sql;
    await c.query('ROLLBACK');
    return { common: forms?.common?.([`agent:identifier=urn:kiln:client-id|${client}`]) ?? false, sql };
  } finally {
    c.release();
  }
}

describe('AuditEvent search by a common key', () => {
  before(async () => {
    srv = await startTestServer();
    orgId = (await srv.db.owner.query(`SELECT id FROM organizations ORDER BY id LIMIT 1`)).rows[0].id;
    const now = Date.now();
    const rows = Array.from({ length: BUSY + RARE }, (_, i) => {
      // Three days of events, recorded out of order, some at the same millisecond.
      const ms = now - ((i * 7919) % (3 * 86_400)) * 1000 - (i % 3 === 0 ? 0 : i % 7);
      const client = i < BUSY ? 'busy' : 'rare';
      return serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: [`Patient/p${i % 40}`], patients: [`p${i % 40}`] },
        { clientId: client, subject: client }, srv.url, ms);
    });
    for (let i = 0; i < rows.length; i += 500) await insertAuditEvents(srv.db.app, orgId, rows.slice(i, i + 500));
    await srv.db.owner.query('ANALYZE audit_events');
  });
  after(async () => {
    await srv.stop();
    removeDataDir(srv.dataDir);
  });

  test('a busy client is looked up by walking the order, a rare one through the index', async () => {
    const busy = await plan('busy');
    assert.equal(busy.common, true, 'the busy client is common');
    assert.ok(!busy.sql.includes('kiln_audit_events_with_keys'), busy.sql);
    assert.match(busy.sql, /r\.ref_keys && \$\d+::text\[\]/);
    const rare = await plan('rare');
    assert.equal(rare.common, false, 'the rare client is not');
    assert.ok(rare.sql.includes('kiln_audit_events_with_keys'), rare.sql);
  });

  test('the estimate is asked once per lookup and kept', async () => {
    const c = await srv.db.app.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
      let queries = 0;
      const counted = { query: (...args: unknown[]) => { queries++; return (c.query as any)(...args); } };
      const parsed = parseSearch('AuditEvent', [['agent:identifier', 'urn:kiln:client-id|kept-once']]);
      const req = { orgId, type: 'AuditEvent', criteria: parsed.criteria, sort: parsed.sort, count: 10, total: 'none' as const };
      await searchKeyForms(counted as any, req);
      assert.equal(queries, 1);
      const again = await searchKeyForms(counted as any, req);
      assert.equal(queries, 1, 'the second search asks nothing');
      assert.equal(again?.common?.(['agent:identifier=urn:kiln:client-id|kept-once']), false);
      await c.query('ROLLBACK');
    } finally {
      c.release();
    }
  });

  test('the page and the total run as prepared statements on their generic plan; the plan cache mode is put back after', async () => {
    const c = await srv.db.app.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.org_id', $1, true)`, [String(orgId)]);
      const plans = async () => (await c.query(`SELECT coalesce(sum(generic_plans), 0)::integer AS g, coalesce(sum(custom_plans), 0)::integer AS c
        FROM pg_prepared_statements WHERE statement LIKE '%FROM audit_event_resources%'`)).rows[0];
      const mode = async () => (await c.query(`SELECT current_setting('plan_cache_mode') AS m`)).rows[0].m;
      const modeBefore = await mode();
      assert.equal(modeBefore, 'force_custom_plan'); // kiln_app's own (sql/006)
      const before = await plans();
      const parsed = parseSearch('AuditEvent', [['entity', 'Patient/p3'], ['_sort', '-date']]);
      const page = await runSearch(c as any, { orgId, type: 'AuditEvent', criteria: parsed.criteria, sort: parsed.sort, count: 5, total: 'accurate' });
      const now = await plans();
      assert.deepEqual({ generic: now.g - before.g, custom: now.c - before.c }, { generic: 2, custom: 0 });
      const n = (await srv.db.owner.query(`SELECT count(*)::integer AS n FROM audit_events WHERE org_id = $1 AND ref_keys @> ARRAY['entity>Patient/p3']`, [orgId])).rows[0].n;
      assert.equal(page.total, n);
      assert.equal(page.rows.length, 5);
      assert.equal(await mode(), modeBefore);
      await c.query('ROLLBACK');
    } finally {
      c.release();
    }
  });

  for (const client of ['busy', 'rare']) {
    test(`${client} client: the latest events first, and every page of both orders, each event once`, async () => {
      const key = encodeURIComponent(`urn:kiln:client-id|${client}`);
      const byDate = await expected(client, true);
      assert.equal(byDate.length, client === 'busy' ? BUSY : RARE);
      const first = await fhir(srv.url, 'GET', `AuditEvent?agent:identifier=${key}&_sort=-date&_count=7`);
      assert.equal(first.status, 200, first.text);
      assert.deepEqual(first.json.entry.map((e: any) => e.resource.id), byDate.slice(0, 7));
      assert.deepEqual(await walk(`AuditEvent?agent:identifier=${key}&_sort=-date&_count=700`), byDate);
      assert.deepEqual(await walk(`AuditEvent?agent:identifier=${key}&_count=700`), await expected(client, false));
      const total = await fhir(srv.url, 'GET', `AuditEvent?agent:identifier=${key}&_total=accurate&_count=1`);
      assert.equal(total.json.total, byDate.length);
    });
  }
});
