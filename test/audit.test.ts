// Every access leaves one AuditEvent (IHE BALP style), stored before the response (a
// write's in its own transaction) as one row that reads and searches as FHIR; clients
// cannot change them; what an older version left in its audit queue is stored at start.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';
import { auditEvent, CLIENT_ID_SYSTEM } from '../src/audit/event.ts';
import { createOrg } from '../src/store/tenants.ts';
import { serverAuditRow } from '../src/audit/request.ts';
import { auditEventText, auditPartId } from '../src/audit/eventText.ts';
import { insertAuditEvents } from '../src/store/auditWrite.ts';
import { extractIndex } from '../mappings/search/extract.ts';
import { rowKeys } from '../mappings/search/rowKeys.ts';

let srv: TestServer;
let admin: Record<string, string>;
let patient: string;
let obsId: string;

const as = (h: Record<string, string>, method: string, path: string, body?: unknown, extra: Record<string, string> = {}) =>
  fhir(srv.url, method, path, body, { ...h, ...extra });

/** A token of its own client, so the events of one request can be picked out by agent. */
async function client(name: string, scope = 'user/*.cruds', extra: { patient?: string; fhirUser?: string; subject?: string } = {}) {
  return bearer(await token(srv, { scope, clientId: name, ...extra }));
}

async function eventsOf(clientId: string): Promise<any[]> {
  const r = await as(admin, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|${clientId}`)}&_count=100`);
  assert.equal(r.status, 200, r.text);
  return (r.json.entry ?? []).map((e: any) => e.resource);
}

async function oneEvent(clientId: string): Promise<any> {
  const events = await eventsOf(clientId);
  assert.equal(events.length, 1, `${clientId}: ${events.length} AuditEvents: ${JSON.stringify(events.map((e) => e.subtype))}`);
  return events[0];
}

const subtypes = (e: any) => (e.subtype ?? []).map((c: any) => c.code);
const whats = (e: any) => (e.entity ?? []).map((x: any) => x.what?.reference).filter(Boolean);
const obs = (p: string) => ({ resourceType: 'Observation', status: 'final', code: { text: 'audit' }, subject: { reference: `Patient/${p}` } });

before(async () => {
  // Behind a proxy on the same host (KILN_TRUST_PROXY=loopback): its X-Forwarded-For names the client.
  srv = await startTestServer({ auth: 'smart', config: { trustProxy: 'loopback' } });
  admin = await client('audit-admin', 'system/*.cruds');
  patient = (await as(admin, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Audited' }] })).json.id;
  obsId = (await as(admin, 'POST', 'Observation', obs(patient))).json.id;
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('one AuditEvent per access', () => {
  const cases: { name: string; run: (h: Record<string, string>) => Promise<{ status: number }>; subtype: string[]; action: string; what?: () => string[] }[] = [
    { name: 'read', run: (h) => as(h, 'GET', `Observation/${obsId}`), subtype: ['read'], action: 'R', what: () => [`Observation/${obsId}`] },
    { name: 'vread', run: (h) => as(h, 'GET', `Observation/${obsId}/_history/1`), subtype: ['vread'], action: 'R', what: () => [`Observation/${obsId}/_history/1`] },
    { name: 'search', run: (h) => as(h, 'GET', `Observation?subject=Patient/${patient}`), subtype: ['search-type'], action: 'E' },
    { name: 'system-search', run: (h) => as(h, 'GET', `?_type=Patient`), subtype: ['search-system'], action: 'E' },
    { name: 'history-instance', run: (h) => as(h, 'GET', `Observation/${obsId}/_history`), subtype: ['history-instance'], action: 'R', what: () => [`Observation/${obsId}`] },
    { name: 'history-type', run: (h) => as(h, 'GET', `Observation/_history`), subtype: ['history-type'], action: 'E' },
    { name: 'create', run: (h) => as(h, 'POST', 'Observation', obs(patient)), subtype: ['create'], action: 'C' },
    { name: 'update', run: (h) => as(h, 'PUT', `Patient/${patient}`, { resourceType: 'Patient', id: patient, name: [{ family: 'Audited' }] }), subtype: ['update'], action: 'U' },
    { name: 'patch', run: (h) => as(h, 'PATCH', `Patient/${patient}`, [{ op: 'add', path: '/language', value: 'en' }], { 'content-type': 'application/json-patch+json' }), subtype: ['patch'], action: 'U' },
    { name: 'everything', run: (h) => as(h, 'GET', `Patient/${patient}/$everything`), subtype: ['operation', 'everything'], action: 'E' },
    { name: 'export', run: (h) => as(h, 'GET', '$export?_type=Patient', undefined, { prefer: 'respond-async' }), subtype: ['operation', 'export'], action: 'E' },
    { name: 'transaction', run: (h) => as(h, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'POST', url: 'Observation' }, resource: obs(patient) }] }), subtype: ['transaction'], action: 'E' },
  ];
  for (const c of cases) {
    test(`${c.name}: subtype, action, outcome 0, agents, source, entities`, async () => {
      const id = `c-${c.name}`;
      const h = await client(id, c.name === 'export' ? 'system/*.rs' : 'user/*.cruds', { fhirUser: 'Practitioner/77', subject: `${id}-user` });
      const r = await c.run(h);
      assert.ok(r.status < 300, `${c.name}: ${r.status}`);
      const e = await oneEvent(id);
      assert.deepEqual(subtypes(e), c.subtype);
      assert.equal(e.type.code, 'rest');
      assert.equal(e.action, c.action);
      assert.equal(e.outcome, '0');
      assert.ok(Date.now() - Date.parse(e.recorded) < 60_000);
      const user = e.agent.find((a: any) => a.requestor);
      assert.equal(user.who.reference, 'Practitioner/77');
      assert.equal(user.network.address, '127.0.0.1');
      assert.ok(e.agent.some((a: any) => a.who.identifier?.value === id && a.who.identifier.system === CLIENT_ID_SYSTEM));
      assert.equal(e.source.observer.display, 'Kiln FHIR server');
      for (const w of c.what?.() ?? []) assert.ok(whats(e).includes(w), `${c.name}: entity ${w} in ${whats(e)}`);
      if (!['system-search', 'history-type', 'export'].includes(c.name)) {
        assert.ok(whats(e).includes(`Patient/${patient}`), `${c.name}: patient entity in ${whats(e)}`);
        assert.equal(e.entity.find((x: any) => x.what?.reference === `Patient/${patient}`).role.code, '1');
      }
      if (c.action === 'E' && c.subtype[0].startsWith('search')) {
        const q = e.entity.find((x: any) => x.role?.code === '24');
        assert.ok(Buffer.from(q.query, 'base64').toString().length > 0, 'query entity');
      }
    });
  }

  test('the agent address: the socket peer, or from a loopback proxy the X-Forwarded-For client', async () => {
    const direct = await client('c-address-direct');
    assert.equal((await as(direct, 'GET', `Observation/${obsId}`)).status, 200);
    assert.equal((await oneEvent('c-address-direct')).agent.find((a: any) => a.requestor).network.address, '127.0.0.1');
    const proxied = await client('c-address-proxied');
    assert.equal((await as(proxied, 'GET', `Observation/${obsId}`, undefined, { 'x-forwarded-for': '203.0.113.7' })).status, 200);
    assert.equal((await oneEvent('c-address-proxied')).agent.find((a: any) => a.requestor).network.address, '203.0.113.7');
  });

  test('delete: one event, action D, the deleted resource as entity', async () => {
    const victim = (await as(admin, 'POST', 'Observation', obs(patient))).json.id;
    const h = await client('c-delete');
    assert.equal((await as(h, 'DELETE', `Observation/${victim}`)).status, 204);
    const e = await oneEvent('c-delete');
    assert.deepEqual([subtypes(e), e.action, e.outcome], [['delete'], 'D', '0']);
    assert.ok(whats(e).includes(`Observation/${victim}/_history/2`), whats(e).join());
  });

  test('a batch: one event per entry and one for the Bundle', async () => {
    const h = await client('c-batch');
    const r = await as(h, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: `Patient/${patient}` } }, { request: { method: 'GET', url: 'Patient/no-such' } }] });
    assert.equal(r.status, 200);
    const events = await eventsOf('c-batch');
    assert.deepEqual(events.map((e) => `${subtypes(e)[0]}:${e.outcome}`).sort(), ['batch:0', 'read:0', 'read:4']);
  });
});

describe('denied and failed requests', () => {
  test('403, 404, 422 and 401 are audited with outcome 4 and no success event', async () => {
    const narrow = await client('c-denied', 'user/Observation.rs');
    assert.equal((await as(narrow, 'GET', `Patient/${patient}`)).status, 403);
    const denied = await oneEvent('c-denied');
    assert.deepEqual([subtypes(denied), denied.action, denied.outcome], [['read'], 'R', '4']);
    assert.match(denied.outcomeDesc, /^403 /);
    assert.ok(whats(denied).includes(`Patient/${patient}`));

    const h = await client('c-missing');
    assert.equal((await as(h, 'GET', 'Observation/no-such-id')).status, 404);
    assert.equal((await oneEvent('c-missing')).outcome, '4');

    // A write that fails: nothing stored, and no AuditEvent of success.
    const w = await client('c-badwrite');
    const bad = await as(w, 'POST', 'Observation', obs('no-such-patient'));
    assert.equal(bad.status, 422, bad.text);
    const e = await oneEvent('c-badwrite');
    assert.deepEqual([subtypes(e), e.action, e.outcome], [['create'], 'C', '4']);
    const tx = await as(w, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { request: { method: 'POST', url: 'Observation' }, resource: obs(patient) },
      { request: { method: 'POST', url: 'Observation' }, resource: obs('no-such-patient') }] });
    assert.equal(tx.status, 422);
    const after = await eventsOf('c-badwrite');
    assert.deepEqual(after.map((x) => `${subtypes(x)[0]}:${x.outcome}`).sort(), ['create:4', 'transaction:4']);

    const anon = await fhir(srv.url, 'GET', `Patient/${patient}`);
    assert.equal(anon.status, 401);
    const found = await as(admin, 'GET', `AuditEvent?entity=Patient/${patient}&outcome=4&subtype=read`);
    assert.ok(found.json.entry?.length >= 1, found.text);
  });

  test('clients cannot update, patch or delete AuditEvents (405), also in Bundles', async () => {
    const e = (await eventsOf('c-read'))[0];
    const owner = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'c-mutator' }));
    assert.equal((await as(owner, 'PUT', `AuditEvent/${e.id}`, { ...e, outcome: '0' })).status, 405);
    assert.equal((await as(owner, 'PATCH', `AuditEvent/${e.id}`, [{ op: 'replace', path: '/outcome', value: '8' }], { 'content-type': 'application/json-patch+json' })).status, 405);
    assert.equal((await as(owner, 'DELETE', `AuditEvent/${e.id}`)).status, 405);
    assert.equal((await as(owner, 'DELETE', `AuditEvent?_id=${e.id}`)).status, 405);
    const b = await as(owner, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'DELETE', url: `AuditEvent/${e.id}` } }] });
    assert.equal(b.json.entry[0].response.status, '405');
    const still = await as(admin, 'GET', `AuditEvent/${e.id}`);
    assert.equal(still.status, 200);
    assert.equal(still.json.meta.versionId, '1');
  });
});

describe('AuditEvents as FHIR', () => {
  test('searchable by date, agent, entity, patient, type, subtype, action, outcome', async () => {
    const e = await oneEvent('c-read');
    const day = e.recorded.slice(0, 10);
    const queries = [
      `date=${day}`, `date=ge${day}`, `agent=Practitioner/77`, `agent:identifier=${CLIENT_ID_SYSTEM}|c-read`,
      `entity=Observation/${obsId}`, `patient=Patient/${patient}`, `type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest`,
      `subtype=http://hl7.org/fhir/restful-interaction|read`, 'action=R', 'outcome=0',
    ];
    for (const q of queries) {
      const r = await as(admin, 'GET', `AuditEvent?${q}&_id=${e.id}`, undefined, { prefer: 'handling=strict' });
      assert.equal(r.status, 200, `${q}: ${r.text}`);
      assert.equal(r.json.entry?.length, 1, `AuditEvent?${q} did not find the read's event`);
    }
    for (const q of ['action=D', 'outcome=4', 'subtype=delete', `date=lt${day}`, 'agent=Practitioner/78']) {
      assert.equal((await as(admin, 'GET', `AuditEvent?${q}&_id=${e.id}`)).json.entry?.length ?? 0, 0, q);
    }
    // The other R4 AuditEvent parameters are not indexed (each index row is paid on every read).
    const strict = await as(admin, 'GET', 'AuditEvent?altid=c-read', undefined, { prefer: 'handling=strict' });
    assert.equal(strict.status, 400, strict.text);
  });

  test('a patient sees the AuditEvents of its own compartment only', async () => {
    const other = (await as(admin, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Other' }] })).json.id;
    await as(admin, 'GET', `Patient/${other}`);
    const me = await client('c-patient', 'patient/AuditEvent.rs', { patient });
    const r = await as(me, 'GET', 'AuditEvent?_count=200');
    assert.equal(r.status, 200);
    assert.ok(r.json.entry.length > 0);
    for (const x of r.json.entry) assert.ok(JSON.stringify(x.resource).includes(`Patient/${patient}`));
    assert.ok(!JSON.stringify(r.json).includes(`Patient/${other}`));
  });

  test('one row per event: no locator, history or index-table rows; its keys are the index of the event', async () => {
    const h = await client('c-rows');
    assert.equal((await as(h, 'GET', `Observation/${obsId}`)).status, 200);
    // Stored before the response: no flush, no wait.
    const { rows } = await srv.db.owner.query(
      `SELECT id, resource AS json, ref_keys, token_keys, version_id,
              clinical_time = (resource::json->>'recorded')::timestamptz AS at_recorded,
              last_updated >= clinical_time AND to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') = resource::json->'meta'->>'lastUpdated' AS stamped
         FROM audit_event_resources WHERE ref_keys @> $1`,
      [[`agent:identifier=${CLIENT_ID_SYSTEM}|c-rows`]]);
    assert.equal(rows.length, 1);
    const [row] = rows;
    const event = JSON.parse(row.json);
    const keys = rowKeys(extractIndex(event));
    assert.deepEqual([row.ref_keys.sort(), row.token_keys.sort()], [keys.refKeys.sort(), keys.tokenKeys.sort()]);
    assert.ok(row.ref_keys.includes(`entity>Observation/${obsId}`) && row.ref_keys.includes(`entity>Patient/${patient}`), row.ref_keys.join(' '));
    assert.ok(row.token_keys.includes('action#R') && row.token_keys.includes('subtype=http://hl7.org/fhir/restful-interaction|read'));
    // Partitioned by when it was recorded; lastUpdated is when its batch committed (sql/023), in the JSON too.
    assert.deepEqual([row.version_id, row.at_recorded, row.stamped, event.meta.versionId], [1, true, true, '1']);
    // A UUIDv7: its first 48 bits are the time it was recorded.
    assert.equal(Math.abs(parseInt(row.id.replace(/-/g, '').slice(0, 12), 16) - Date.parse(event.recorded)) < 5, true, row.id);
    for (const t of ['resource_ids', 'resource_history', 'search_tokens', 'search_references', 'search_dates']) {
      assert.equal((await srv.db.owner.query(`SELECT count(*)::integer AS n FROM ${t} WHERE resource_type = 'AuditEvent'`)).rows[0].n, 0, t);
    }
    // Read, vread and history as FHIR.
    const read = await as(admin, 'GET', `AuditEvent/${row.id}`);
    assert.equal(read.text, row.json);
    assert.equal((await as(admin, 'GET', `AuditEvent/${row.id}/_history/1`)).text, row.json);
    assert.equal((await as(admin, 'GET', `AuditEvent/${row.id}/_history/2`)).status, 404);
    const hist = await as(admin, 'GET', `AuditEvent/${row.id}/_history`);
    assert.deepEqual([hist.json.total, hist.json.entry.map((e: any) => e.request.method)], [1, ['POST']]);
  });

  test('type and system history page AuditEvents in with the versions of other types', async () => {
    const own = await startTestServer({ auth: 'off', audit: 'off' });
    try {
      const made: string[] = [];
      for (let i = 0; i < 3; i++) {
        made.push(`Patient/${(await fhir(own.url, 'POST', 'Patient', { resourceType: 'Patient' })).json.id}`);
        made.push(`AuditEvent/${(await fhir(own.url, 'POST', 'AuditEvent', { resourceType: 'AuditEvent', type: { code: 'x' }, recorded: new Date().toISOString(),
          agent: [{ requestor: true, who: { display: 'a' } }], source: { observer: { display: 'o' } } })).json.id}`);
      }
      const walk = async (path: string) => {
        const seen: string[] = [];
        let url: string | undefined = path;
        while (url) {
          const r = await fhir(own.url, 'GET', url);
          assert.equal(r.status, 200, r.text);
          seen.push(...r.json.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`));
          url = r.json.link.find((l: any) => l.relation === 'next')?.url?.replace(`${own.url}/`, '');
        }
        return seen;
      };
      assert.deepEqual(await walk('_history?_count=2'), [...made].reverse());
      assert.deepEqual(await walk('AuditEvent/_history?_count=1'), made.filter((m) => m.startsWith('AuditEvent/')).reverse());
    } finally {
      await own.stop();
      removeDataDir(own.dataDir);
    }
  });
});

describe('the group commit', () => {
  test('concurrent reads of two tenants share commits, each tenant in its own transaction, one event per read', async () => {
    // A window long enough that every read below joins the first batch.
    const own = await startTestServer({ auth: 'smart', auditWindowMs: 300 });
    try {
      await createOrg(own.db.owner, 'gc-two', 'Group commit two');
      const reads = 10;
      const run = async (tenant: string) => {
        const base = tenant === 'default' ? own.url : `${own.url}/${tenant}`;
        const h = bearer(await token(own, { scope: 'system/*.cruds', clientId: 'gc-reader', tenant, audience: base }));
        const id = (await fhir(base, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: tenant }] }, h)).json.id as string;
        const statuses = await Promise.all(Array.from({ length: reads }, () => fhir(base, 'GET', `Patient/${id}`, undefined, h).then((r) => r.status)));
        assert.deepEqual([...new Set(statuses)], [200]);
        return id;
      };
      const ids = await Promise.all([run('default'), run('gc-two')]);
      const { rows } = await own.db.owner.query(
        `SELECT o.slug, a.xmin::text AS tx, r.resource AS json FROM audit_events a JOIN audit_event_resources r USING (org_id, id) JOIN organizations o ON o.id = a.org_id
          WHERE a.ref_keys @> $1 AND a.token_keys @> ARRAY['subtype#read']`, [[`agent:identifier=${CLIENT_ID_SYSTEM}|gc-reader`]]);
      for (const [i, slug] of ['default', 'gc-two'].entries()) {
        const mine = rows.filter((r) => r.slug === slug);
        assert.equal(mine.length, reads, `${slug}: one AuditEvent per read`);
        assert.ok(mine.every((r) => r.json.includes(`Patient/${ids[i]}`)), `${slug}: only its own reads`);
        assert.ok(new Set(mine.map((r) => r.tx)).size < reads, `${slug}: reads shared commits`);
      }
      const txOf = (slug: string) => new Set(rows.filter((r) => r.slug === slug).map((r) => r.tx));
      assert.ok([...txOf('default')].every((tx) => !txOf('gc-two').has(tx)), 'no transaction holds two tenants\' events');
    } finally {
      await own.stop();
      removeDataDir(own.dataDir);
    }
  });
  test('a part is sent once per writer connection, and again over a new one; a write\'s event finds its part stored', async () => {
    const own = await startTestServer({ auth: 'off', audit: 'on' });
    try {
      const id = (await fhir(own.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Parts' }] })).json.id as string;
      const readEvents = async () => (await own.db.owner.query(
        `SELECT a.id, a.part, r.resource FROM audit_events a JOIN audit_event_resources r USING (org_id, id)
          WHERE a.ref_keys @> $1 AND a.token_keys @> ARRAY['subtype#read'] ORDER BY a.id`, [[`entity>Patient/${id}`]])).rows;
      // The create's event (in the write's transaction) names a part the writer stored first.
      const created = (await own.db.owner.query(`SELECT r.resource FROM audit_event_resources r WHERE ref_keys @> $1 AND token_keys @> ARRAY['subtype#create']`, [[`entity>Patient/${id}`]])).rows;
      assert.equal(created.length, 1);
      assert.equal(JSON.parse(created[0].resource).entity[0].what.reference, `Patient/${id}`);
      assert.equal((await fhir(own.url, 'GET', `Patient/${id}`)).status, 200);
      const [first] = await readEvents();
      assert.ok(first.part && JSON.parse(first.resource).subtype[0].code === 'read');
      // Remove the part behind the writer's back (the owner may): the next read's event is
      // not sent with it, as the writer knows it stored it over this connection.
      await own.db.owner.query('DELETE FROM audit_event_parts WHERE id = $1', [first.part]);
      assert.equal((await fhir(own.url, 'GET', `Patient/${id}`)).status, 200);
      const second = await readEvents();
      assert.deepEqual(second.map((e) => [e.part, e.resource]), [[first.part, null], [first.part, null]]);
      // A new connection (here: the old one ended) starts the memory again.
      await own.db.owner.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kiln-audit'`);
      await new Promise((r) => setTimeout(r, 300));
      let status = 0;
      for (let i = 0; i < 3 && status !== 200; i++) status = (await fhir(own.url, 'GET', `Patient/${id}`)).status; // the first may meet the dead connection
      assert.equal(status, 200);
      const third = await readEvents();
      assert.ok(third.length >= 3 && third.every((e) => e.part === first.part && JSON.parse(e.resource).entity.some((x: any) => x.what.reference === `Patient/${id}`)));
    } finally {
      await own.stop();
      removeDataDir(own.dataDir);
    }
  });
  test('an event committed after an export\'s transaction time is in the incremental export from it', async () => {
    // The read's event waits 2 s in the writer's queue while an export of AuditEvents
    // runs; it must land either in that export or in the next one from its transactionTime.
    const own = await startTestServer({ auth: 'smart', auditWindowMs: 2000 });
    try {
      const h = bearer(await token(own, { scope: 'system/*.cruds', clientId: 'gc-exporter' }));
      const reader = bearer(await token(own, { scope: 'system/*.cruds', clientId: 'gc-late-reader' }));
      const id = (await fhir(own.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Late' }] }, h)).json.id as string;
      const read = fhir(own.url, 'GET', `Patient/${id}`, undefined, reader);
      await new Promise((r) => setTimeout(r, 300));
      const exportFrom = async (query: string) => {
        const k = await fhir(own.url, 'GET', `$export?_type=AuditEvent${query}`, undefined, { ...h, prefer: 'respond-async' });
        assert.equal(k.status, 202, k.text);
        for (;;) {
          const res = await fetch(k.headers.get('content-location')!, { headers: { ...h, accept: 'application/json' } });
          if (res.status === 200) {
            const manifest = await res.json() as { transactionTime: string; output: { url: string }[] };
            const ids: string[] = [];
            for (const f of manifest.output) {
              const text = await (await fetch(f.url, { headers: { ...h, accept: 'application/fhir+ndjson' } })).text();
              ids.push(...text.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).id as string));
            }
            return { transactionTime: manifest.transactionTime, ids };
          }
          assert.equal(res.status, 202, await res.text());
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      const first = await exportFrom('');
      assert.equal((await read).status, 200);
      const second = await exportFrom(`&_since=${encodeURIComponent(first.transactionTime)}`);
      const { rows } = await own.db.owner.query(
        `SELECT id, resource::json->'meta'->>'lastUpdated' AS meta, to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS column
           FROM audit_event_resources WHERE ref_keys @> $1 AND token_keys @> ARRAY['subtype#read']`, [[`agent:identifier=${CLIENT_ID_SYSTEM}|gc-late-reader`]]);
      assert.equal(rows.length, 1);
      const late = rows[0];
      assert.equal(late.meta, late.column, 'the JSON shows the lastUpdated it is searched and exported by');
      assert.equal([first.ids, second.ids].filter((ids) => ids.includes(late.id)).length, 1,
        `the read's event ${late.id} (lastUpdated ${late.meta}) is in exactly one of the exports (first until ${first.transactionTime})`);
    } finally {
      await own.stop();
      removeDataDir(own.dataDir);
    }
  });
});

describe('the audit queue of older versions', () => {
  test('is stored at start, once, in both of its formats', async () => {
    const own = await startTestServer({ auth: 'off', audit: 'off' });
    const { dataDir, pgPort } = own;
    let again: TestServer | undefined;
    try {
      // Queued an hour ago by an older version.
      const recorded = new Date(Date.now() - 3_600_000).toISOString();
      const facts = { id: 'queued-facts', recorded, base: own.url, facts: { subtype: 'read', action: 'R', outcome: '0', resources: ['Patient/q1'], patients: ['q1'] }, agent: { clientId: 'c-queued' } };
      const whole = { ...auditEvent({ subtype: 'read', action: 'R', outcome: '0', resources: [], patients: ['q2'] }, { clientId: 'c-queued' }, own.url, recorded), id: 'queued-whole' };
      await own.db.owner.query(`INSERT INTO audit_log_queue (org_id, event) VALUES (1, $1), (1, $2)`, [JSON.stringify(facts), JSON.stringify(whole)]);
      await own.stop();
      const restarted = new Date(Date.now() - 1).toISOString();
      again = await startTestServer({ auth: 'off', audit: 'off', dataDir, pgPort });
      await again.stop();
      again = await startTestServer({ auth: 'off', audit: 'off', dataDir, pgPort });
      assert.equal((await again.db.owner.query('SELECT count(*)::integer AS n FROM audit_log_queue')).rows[0].n, 0);
      const r = await fhir(again.url, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|c-queued`)}&_sort=_id`);
      assert.deepEqual(r.json.entry.map((e: any) => e.resource.id), ['queued-facts', 'queued-whole']);
      assert.equal((await fhir(again.url, 'GET', 'AuditEvent?patient=q1')).json.entry[0].resource.id, 'queued-facts');
      // Stored at the restart: lastUpdated is then (an export's _since from before it
      // finds them), while recorded and the partition time stay when the access was.
      for (const e of r.json.entry) {
        assert.equal(e.resource.recorded, recorded);
        assert.ok(e.resource.meta.lastUpdated >= restarted, `${e.resource.meta.lastUpdated} >= ${restarted}`);
      }
      const rows = (await again.db.owner.query(
        `SELECT id, to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS lu, clinical_time = $1::timestamptz AS at_recorded, resource::json->'meta'->>'lastUpdated' AS meta_lu
           FROM audit_event_resources WHERE id IN ('queued-facts', 'queued-whole') ORDER BY id`, [recorded])).rows;
      assert.equal(rows.length, 2);
      for (const row of rows) {
        assert.equal(row.meta_lu, row.lu);
        assert.equal(row.at_recorded, true);
      }
    } finally {
      await again?.stop();
      removeDataDir(dataDir);
    }
  });
});

describe('AuditEvents are immutable: API (auth off and on) and database (sql/016)', () => {
  let off: TestServer;
  before(async () => { off = await startTestServer({ auth: 'off' }); });
  after(async () => {
    await off?.stop();
    if (off) removeDataDir(off.dataDir);
  });

  const event = (recorded = new Date().toISOString()) => ({
    resourceType: 'AuditEvent', type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110' }, recorded,
    agent: [{ requestor: true, who: { display: 'an external system' } }], source: { observer: { display: 'external' } }, outcome: '0',
  });

  /** A server-made event (its part stored), as a read records it (this server does not audit). */
  async function serverEvent(s: TestServer): Promise<void> {
    await insertAuditEvents(s.db.app, 1, [serverAuditRow({ subtype: 'read', action: 'R', outcome: '0', resources: [], patients: [] }, { clientId: 'probe' }, s.url)]);
  }

  /** Everything stored of one AuditEvent: its row (read as the owner). */
  async function storedOf(s: TestServer, id: string) {
    const q = async (sql: string) => (await s.db.owner.query(sql, [id])).rows;
    return { row: await q(`SELECT version_id, last_updated, token_keys, ref_keys, resource AS json FROM audit_event_resources WHERE id = $1`) };
  }

  const refused = (r: { status: number; json: any; text: string }, what: string) => {
    assert.equal(r.status, 405, `${what}: ${r.text}`);
    assert.equal(r.json?.resourceType, 'OperationOutcome', what);
    assert.equal(r.json.issue[0].code, 'not-supported', what);
  };

  /** Every way to change or remove AuditEvent `id` through the API is refused, and nothing changes. */
  async function everyChangeRefused(s: TestServer, h: Record<string, string>) {
    const c = await fhir(s.url, 'POST', 'AuditEvent', event(), h);
    assert.equal(c.status, 201, `create stays allowed: ${c.text}`);
    const id: string = c.json.id;
    const before = await storedOf(s, id);
    assert.equal(before.row.length, 1);
    const patchJson = { 'content-type': 'application/json-patch+json' };
    const attempts: [string, string, string, unknown?, Record<string, string>?][] = [
      ['update', 'PUT', `AuditEvent/${id}`, { ...c.json, outcome: '8' }],
      ['update with If-Match', 'PUT', `AuditEvent/${id}`, { ...c.json, outcome: '8' }, { 'if-match': 'W/"1"' }],
      ['update-as-create', 'PUT', 'AuditEvent/made-up-by-client', { ...event(), id: 'made-up-by-client' }],
      ['conditional update (match)', 'PUT', `AuditEvent?_id=${id}`, { ...event(), outcome: '8' }],
      ['conditional update (no match: create)', 'PUT', 'AuditEvent?_id=no-such-event', event()],
      ['patch', 'PATCH', `AuditEvent/${id}`, [{ op: 'replace', path: '/outcome', value: '8' }], patchJson],
      ['delete', 'DELETE', `AuditEvent/${id}`],
      ['conditional delete (match)', 'DELETE', `AuditEvent?_id=${id}`],
      ['conditional delete (no match)', 'DELETE', 'AuditEvent?_id=no-such-event'],
    ];
    for (const [what, method, path, body, extra] of attempts) refused(await fhir(s.url, method, path, body, { ...h, ...extra }), what);
    assert.equal((await fhir(s.url, 'GET', 'AuditEvent/made-up-by-client', undefined, h)).status, 404, 'no update-as-create');

    // A batch answers each such entry with 405 (and still runs the others).
    const b = await fhir(s.url, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'PUT', url: `AuditEvent/${id}` }, resource: { ...c.json, outcome: '8' } },
      { request: { method: 'PATCH', url: `AuditEvent/${id}` }, resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify([{ op: 'replace', path: '/outcome', value: '8' }])).toString('base64') } },
      { request: { method: 'DELETE', url: `AuditEvent/${id}` } },
      { request: { method: 'DELETE', url: `AuditEvent?_id=${id}` } },
      { request: { method: 'GET', url: `AuditEvent/${id}` } },
    ] }, h);
    assert.equal(b.status, 200, b.text);
    assert.deepEqual(b.json.entry.map((e: any) => e.response.status), ['405', '405', '405', '405', '200 OK']);
    assert.ok(b.json.entry.slice(0, 4).every((e: any) => e.response.outcome?.issue?.[0]?.code === 'not-supported'));

    // A transaction with an AuditEvent DELETE fails as a whole and leaves no trace of its other entries.
    const family = `NoTrace${Date.now()}`;
    const tx = await fhir(s.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: 'urn:uuid:0b5c1b8e-0000-4000-8000-000000000001', request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient', name: [{ family }] } },
      { request: { method: 'DELETE', url: `AuditEvent/${id}` } },
    ] }, h);
    refused(tx, 'transaction');
    assert.match(tx.json.issue[0].diagnostics, /Bundle\.entry\[1\]/);
    assert.equal((await s.db.owner.query('SELECT count(*)::integer AS n FROM patients WHERE family_name = $1', [family])).rows[0].n, 0);

    assert.deepEqual(await storedOf(s, id), before, 'the AuditEvent is exactly as recorded');
    const read = await fhir(s.url, 'GET', `AuditEvent/${id}`, undefined, h);
    assert.equal(read.status, 200);
    assert.equal(read.headers.get('etag'), 'W/"1"');
    assert.equal(read.json.outcome, '0');
    return id;
  }

  test('auth off: update (also as create, conditional), patch, delete (also conditional), batch and transaction entries answer 405', async () => {
    await everyChangeRefused(off, {});
    const audit = (await fhir(off.url, 'GET', 'metadata')).json.rest[0].resource.find((r: any) => r.type === 'AuditEvent');
    assert.deepEqual(audit.interaction.map((i: any) => i.code).sort(), ['create', 'history-instance', 'history-type', 'read', 'search-type', 'vread']);
    assert.deepEqual([audit.updateCreate, audit.conditionalUpdate, audit.conditionalDelete], [false, false, 'not-supported']);
  });

  test('auth on: the same, for a token that may do everything', async () => {
    await everyChangeRefused(srv, await client('c-immutable', 'system/*.cruds'));
  });

  /** Runs one statement as kiln_app in a tenant transaction, rolled back. */
  async function asApp(s: TestServer, sql: string, params: unknown[] = []) {
    const c = await s.db.app.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.org_id', '1', true)`);
      return await c.query(sql, params);
    } finally {
      await c.query('ROLLBACK');
      c.release();
    }
  }

  test('kiln_app cannot UPDATE or DELETE AuditEvent rows or their partitions, nor write AuditEvents into the shared tables', async () => {
    const id = (await fhir(off.url, 'POST', 'AuditEvent', event())).json.id;
    const patientId = (await fhir(off.url, 'POST', 'Patient', { resourceType: 'Patient' })).json.id;
    const before = await storedOf(off, id);
    // The app role sees the rows, so a refusal below is not RLS hiding them.
    assert.equal((await asApp(off, 'SELECT count(*)::integer AS n FROM audit_events WHERE id = $1', [id])).rows[0].n, 1);
    const partition = (await off.db.owner.query('SELECT tableoid::regclass::text AS p FROM audit_events WHERE id = $1', [id])).rows[0].p;
    for (const sql of [`UPDATE audit_events SET token_keys = '{}' WHERE id = $1`, 'DELETE FROM audit_events WHERE id = $1',
      `UPDATE ${partition} SET token_keys = '{}' WHERE id = $1`, `DELETE FROM ${partition} WHERE id = $1`]) {
      await assert.rejects(asApp(off, sql, [id]), /permission denied/, sql);
    }
    await assert.rejects(asApp(off, 'TRUNCATE audit_events'), /permission denied/);
    // Nor the shared parts that server-made events are rendered from (sql/027).
    await serverEvent(off);
    assert.ok((await asApp(off, 'SELECT count(*)::integer AS n FROM audit_event_parts')).rows[0].n > 0);
    for (const sql of [`UPDATE audit_event_parts SET json = json`, 'DELETE FROM audit_event_parts', 'TRUNCATE audit_event_parts']) {
      await assert.rejects(asApp(off, sql), /permission denied/, sql);
    }
    // No second copy of an AuditEvent can be made in the tables of versioned resources (sql/021).
    for (const sql of [`INSERT INTO resource_history (org_id, resource_type, id, version_id, last_updated, method, resource) VALUES (1, 'AuditEvent', $1, 2, now(), 'PUT', '{}')`,
      `INSERT INTO resource_ids (org_id, resource_type, id, version_id, last_updated) VALUES (1, 'AuditEvent', $1, 2, now())`]) {
      await assert.rejects(asApp(off, sql, [id]), /violates check constraint/, sql);
    }
    // The same tables take other types' rows from kiln_app (rolled back here).
    assert.equal((await asApp(off, `UPDATE resource_ids SET deleted = deleted WHERE resource_type = 'Patient' AND id = $1`, [patientId])).rowCount, 1);
    assert.deepEqual(await storedOf(off, id), before);
  });

  test('the trigger refuses any role but the owner, even one granted UPDATE and DELETE', async () => {
    const id = (await fhir(off.url, 'POST', 'AuditEvent', event())).json.id;
    await serverEvent(off);
    const c = await off.db.owner.connect();
    try {
      await c.query('BEGIN');
      // A member of kiln_app (so the tenant policy applies) that also holds UPDATE, DELETE.
      await c.query('CREATE ROLE kiln_audit_probe IN ROLE kiln_app');
      await c.query('GRANT UPDATE, DELETE ON audit_events, audit_event_parts TO kiln_audit_probe');
      await c.query('SET LOCAL ROLE kiln_audit_probe');
      await c.query(`SELECT set_config('app.org_id', '1', true)`);
      for (const sql of [`UPDATE audit_events SET token_keys = '{}' WHERE id = $1`, 'DELETE FROM audit_events WHERE id = $1']) {
        await c.query('SAVEPOINT probe');
        await assert.rejects(c.query(sql, [id]), /AuditEvents are evidence: (UPDATE|DELETE) of an AuditEvent row in audit_events_o1_\d+ is refused for role kiln_audit_probe/, sql);
        await c.query('ROLLBACK TO SAVEPOINT probe');
      }
      for (const sql of [`UPDATE audit_event_parts SET json = json`, 'DELETE FROM audit_event_parts']) {
        await c.query('SAVEPOINT probe');
        await assert.rejects(c.query(sql), /AuditEvents are evidence: (UPDATE|DELETE) of an AuditEvent row in audit_event_parts is refused for role kiln_audit_probe/, sql);
        await c.query('ROLLBACK TO SAVEPOINT probe');
      }
    } finally {
      await c.query('ROLLBACK');
      c.release();
    }
    assert.ok((await storedOf(off, id)).row[0].token_keys.includes('outcome#0'));
  });

  test('owner maintenance still moves AuditEvent rows; new partitions, also of a new tenant, carry the trigger and no kiln_app UPDATE/DELETE', async () => {
    // An event recorded long ago lands in the DEFAULT partition; the split moves it (DELETE + INSERT as the owner).
    const old = await fhir(off.url, 'POST', 'AuditEvent', event('2001-03-04T05:06:07Z'));
    assert.equal(old.status, 201, old.text);
    const where = async () => (await off.db.owner.query('SELECT tableoid::regclass::text AS p FROM audit_events WHERE id = $1', [old.json.id])).rows[0].p;
    assert.equal(await where(), 'audit_events_o1_default');
    await off.db.owner.query('SELECT kiln_split_default_partitions(1)');
    assert.equal(await where(), 'audit_events_o1_20010226');
    const read = await fhir(off.url, 'GET', `AuditEvent/${old.json.id}`);
    assert.equal(read.status, 200);
    assert.equal(read.text, old.text);

    await createOrg(off.db.owner, 'immutable-probe', 'Immutable probe');
    const { rows } = await off.db.owner.query(`
      SELECT p.relid::text AS part,
             has_table_privilege('kiln_app', p.relid, 'UPDATE') OR has_table_privilege('kiln_app', p.relid, 'DELETE') AS writable,
             EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p.relid AND t.tgname = 'audit_events_immutable') AS guarded
        FROM pg_partition_tree('audit_events') p`);
    assert.ok(rows.some((r) => r.part === 'audit_events_o1_20010226') && rows.some((r) => /^audit_events_o\d+_\d{8}$/.test(r.part) && !r.part.startsWith('audit_events_o1_')));
    assert.deepEqual(rows.filter((r) => r.writable || !r.guarded), []);
  });
});

describe('references to AuditEvents', () => {
  // AuditEvents have no locator row; a write that references one is checked against their
  // own table (src/store/resources.ts lockId), by a statement that other writes never run.
  const withRef = (ref: string) => ({ resourceType: 'Observation', status: 'final', code: { text: 'refers to an audit' },
    subject: { reference: `Patient/${patient}` }, derivedFrom: [{ reference: ref }] });

  test('a reference to a stored AuditEvent resolves, one to a missing AuditEvent is 422 and stores nothing', async () => {
    const h = await client('audit-ref');
    const e = (await as(admin, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|audit-admin`)}&_count=1`)).json.entry[0].resource;
    const ok = await as(h, 'POST', 'Observation', withRef(`AuditEvent/${e.id}`));
    assert.equal(ok.status, 201, ok.text);
    const missing = await as(h, 'POST', 'Observation', withRef('AuditEvent/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b'));
    assert.equal(missing.status, 422, missing.text);
    assert.match(missing.text, /AuditEvent\/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/);
    const both = await as(h, 'POST', 'Observation', { ...withRef(`AuditEvent/${e.id}`), hasMember: [{ reference: 'Observation/does-not-exist' }] });
    assert.equal(both.status, 422, both.text);
    assert.match(both.text, /Observation\/does-not-exist/);
    const stored = await as(admin, 'GET', `Observation?subject=Patient/${patient}&code:text=refers&_count=10`);
    assert.equal(stored.json.entry.length, 1, 'only the resolving one is stored');
  });
});

describe('what an AuditEvent says is what the server recorded', () => {
  test('a part planted by the request role (kiln_app) under the id of a real read\'s part cannot change that read\'s event', async () => {
    // The part a read by this client from this address will name (src/audit/eventText.ts).
    const facts = { subtype: 'read', action: 'R' as const, outcome: '0' as const, resources: [], patients: [] };
    const recorded = new Date().toISOString();
    const real = auditEventText(facts, { clientId: 'c-planted', subject: 'c-planted', address: '127.0.0.1' }, srv.url, recorded, 'x').part;
    const forged = auditEventText(facts, { clientId: 'c-forger', subject: 'dr-forger', fhirUser: 'Practitioner/forged', address: '198.51.100.9' }, srv.url, recorded, 'x').part;
    // Planted ahead of the read, by anyone holding kiln_app's password: refused, or harmless.
    const c = await srv.db.app.connect();
    let planted = true;
    try {
      await c.query('BEGIN');
      await c.query(`SELECT set_config('app.org_id', '1', true)`);
      await c.query('INSERT INTO audit_event_parts (org_id, id, json) VALUES (1, $1, $2)', [real.id, forged.json]);
      await c.query('COMMIT');
    } catch (e) {
      planted = false;
      await c.query('ROLLBACK');
      assert.match((e as Error).message, /audit_event_parts_id_is_hash/);
    } finally {
      c.release();
    }
    const h = await client('c-planted');
    assert.equal((await as(h, 'GET', `Observation/${obsId}`)).status, 200);
    const e = await oneEvent('c-planted');
    const app = e.agent.find((a: any) => a.who.identifier?.system === CLIENT_ID_SYSTEM);
    assert.equal(app.who.identifier.value, 'c-planted');
    assert.equal(app.network.address, '127.0.0.1');
    assert.ok(!JSON.stringify(e).includes('forge'), JSON.stringify(e.agent));
    assert.equal(planted, false, 'kiln_app stored a part whose id is not the hash of its text');
    // A part whose id is the hash of its text is the text the server names by that id.
    const { rows } = await srv.db.owner.query('SELECT count(*)::integer AS n FROM audit_event_parts WHERE id = $1 AND json = $2', [real.id, real.json]);
    assert.equal(rows[0].n, 1);
    // The database's hash is the server's, for any text (sql/028, src/audit/eventText.ts).
    for (const text of [real.json, '"agent":[{"name":"Zoë 患者 🩺"}]', '']) {
      assert.equal((await srv.db.owner.query('SELECT kiln_audit_part_id($1) AS id', [text])).rows[0].id, auditPartId(text), text);
    }
  });
});

describe('no credentials in an AuditEvent', () => {
  const secret = 'eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2ln';
  const queryOf = (e: any) => Buffer.from(e.entity.find((x: any) => x.role?.code === '24').query, 'base64').toString('utf8');

  test('access_token and other credential parameters in a query string are not recorded; the rest of the query is, as sent', async () => {
    const h = await client('c-query-token');
    const q = `family=Audited&access_token=${secret}&_format=json&client_secret=s3cret&Refresh_Token=r1&access%5Ftoken=${secret}&password=pw&client_assertion=a.b.c&id_token=i.d.t&code=http://loinc.org|1234-5`;
    const r = await as(h, 'GET', `Patient?${q}`);
    assert.equal(r.status, 200, r.text);
    const text = queryOf(await oneEvent('c-query-token'));
    for (const s of [secret, 's3cret', 'r1', 'pw', 'a.b.c', 'i.d.t', 'access_token', 'access%5Ftoken']) assert.ok(!text.includes(s), `${s} in ${text}`);
    // FHIR's own `code` search parameter is a search criterion, not an OAuth code.
    assert.equal(text, 'family=Audited&_format=json&code=http://loinc.org|1234-5');
  });

  test('also in $everything, in a POST _search form and in a refused search', async () => {
    const h = await client('c-query-token-2');
    assert.equal((await as(h, 'GET', `Patient/${patient}/$everything?access_token=${secret}`)).status, 200);
    const form = await fetch(`${srv.url}/Patient/_search`, { method: 'POST', body: `family=Audited&access_token=${secret}`,
      headers: { ...h, accept: 'application/fhir+json', 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(form.status, 200);
    assert.equal((await as(h, 'GET', `Patient?access_token=${secret}&bogus-param=1`, undefined, { prefer: 'handling=strict' })).status, 400);
    const events = await eventsOf('c-query-token-2');
    assert.equal(events.length, 3);
    for (const e of events) assert.ok(!queryOf(e).includes(secret) && !queryOf(e).includes('access_token'), queryOf(e));
  });

  test('an access_token in the query string is no credential: without an Authorization header the request is 401', async () => {
    const t = await token(srv, { scope: 'user/*.cruds', clientId: 'c-query-only' });
    const r = await fhir(srv.url, 'GET', `Patient?access_token=${t}`);
    assert.equal(r.status, 401, r.text);
    const found = await as(admin, 'GET', `AuditEvent?outcome=4&subtype=search-type&_count=200`);
    const refused = (found.json.entry ?? []).map((x: any) => x.resource).filter((e: any) => e.outcomeDesc?.startsWith('401'));
    assert.ok(refused.length > 0, found.text);
    for (const e of refused) assert.ok(!queryOf(e).includes(t) && !queryOf(e).includes('access_token'), queryOf(e));
  });
});
