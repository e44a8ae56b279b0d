// AuditEvent search reads the row's own keys (ref_keys, token_keys) and its clinical_time
// (sql/021, src/store/rowKeySearch.ts): every parameter form, chains, _has, includes,
// sorts with cursors, totals, $everything and the patient compartment, over HTTP, with no
// AuditEvent rows in the shared index tables or the locator.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';

let srv: TestServer;
let admin: Record<string, string>;
const ids: Record<string, string> = {};
const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
const REST = 'http://hl7.org/fhir/restful-interaction';
const CLIENT = 'urn:test:client';

const as = (h: Record<string, string>, method: string, path: string, body?: unknown) => fhir(srv.url, method, path, body, h);

async function create(resource: any): Promise<string> {
  const r = await as(admin, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

function event(e: { subtype?: string; action: string; outcome: string; recorded: string; agents: any[]; entities?: string[]; type?: string }) {
  return {
    resourceType: 'AuditEvent',
    type: { system: e.type ?? DCM, code: 'rest' },
    ...(e.subtype ? { subtype: [{ system: REST, code: e.subtype }] } : {}),
    action: e.action, outcome: e.outcome, recorded: e.recorded,
    agent: e.agents.map((who, i) => ({ requestor: i === 0, who })),
    source: { observer: { display: 'test' } },
    ...(e.entities ? { entity: e.entities.map((reference) => ({ what: { reference } })) } : {}),
  };
}

/** Names of the matched resources (search mode match), sorted. */
async function found(h: Record<string, string>, q: string): Promise<string[]> {
  const r = await as(h, 'GET', q);
  assert.equal(r.status, 200, `${q}: ${r.text}`);
  return names((r.json.entry ?? []).filter((e: any) => e.search?.mode !== 'include' && e.resource.resourceType !== 'OperationOutcome'));
}
/** Names of the included resources. */
async function included(q: string): Promise<string[]> {
  const r = await as(admin, 'GET', q);
  assert.equal(r.status, 200, `${q}: ${r.text}`);
  return names((r.json.entry ?? []).filter((e: any) => e.search?.mode === 'include'));
}
const byId = new Map<string, string>();
const names = (entries: any[]) => entries.map((e) => byId.get(`${e.resource.resourceType}/${e.resource.id}`) ?? `${e.resource.resourceType}/${e.resource.id}`).sort();
const q = (s: string) => encodeURIComponent(s);

/** Every page of a search, following next links; the names in page order. */
async function walk(path: string): Promise<string[]> {
  const out: string[] = [];
  let url: string | undefined = `${srv.url}/${path}`;
  while (url) {
    const page: any = await (await fetch(url, { headers: admin })).json();
    assert.ok((page.entry ?? []).length <= 1, 'one match per page');
    out.push(...(page.entry ?? []).map((e: any) => byId.get(`AuditEvent/${e.resource.id}`)));
    url = page.link.find((l: any) => l.relation === 'next')?.url;
  }
  return out;
}

before(async () => {
  // Auditing off: the only AuditEvents are the ones created here.
  srv = await startTestServer({ auth: 'smart', audit: 'off' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'admin' }));
  ids.pA = await create({ resourceType: 'Patient', name: [{ family: 'Keyed', given: ['Rowan'] }] });
  ids.pB = await create({ resourceType: 'Patient', name: [{ family: 'Other' }] });
  ids.oA = await create({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${ids.pA}` } });
  ids.e1 = await create(event({ subtype: 'read', action: 'R', outcome: '0', recorded: '2024-03-01T10:00:00Z',
    agents: [{ reference: 'Practitioner/77' }, { identifier: { system: CLIENT, value: 'app-1' } }], entities: [`Patient/${ids.pA}`, `Observation/${ids.oA}`] }));
  ids.e2 = await create(event({ subtype: 'search-type', action: 'E', outcome: '0', recorded: '2024-03-02T10:00:00Z',
    agents: [{ reference: `Patient/${ids.pA}` }, { identifier: { system: CLIENT, value: 'app-2' } }] }));
  ids.e3 = await create(event({ subtype: 'create', action: 'C', outcome: '4', recorded: '2024-03-03T23:59:59.999Z',
    agents: [{ reference: 'Practitioner/78' }], entities: [`Patient/${ids.pB}`, 'urn:uuid:4f1c1d1e-0000-4000-8000-000000000001'] }));
  ids.e4 = await create(event({ action: 'R', outcome: '8', recorded: '2024-04-01T00:00:00Z', type: 'urn:other',
    agents: [{ reference: 'Device/d1' }], entities: [`Observation/${ids.oA}`, `AuditEvent/${ids.e1}`] }));
  for (const [name, id] of Object.entries(ids)) byId.set(`${{ p: 'Patient', o: 'Observation', e: 'AuditEvent' }[name[0]]}/${id}`, name);
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('AuditEvent search on row keys', () => {
  test('stored as one row: no index rows, no locator, no history; keys in the row', async () => {
    const aeIds = [ids.e1, ids.e2, ids.e3, ids.e4];
    for (const table of ['search_tokens', 'search_references', 'search_dates', 'resource_ids', 'resource_history']) {
      const { rows } = await srv.db.owner.query(`SELECT count(*)::int AS n FROM ${table} WHERE resource_type = 'AuditEvent' AND id = ANY($1)`, [aeIds]);
      assert.equal(rows[0].n, 0, table);
    }
    const { rows } = await srv.db.owner.query(`SELECT ref_keys, token_keys FROM audit_events WHERE id = $1`, [ids.e1]);
    assert.ok(rows[0].ref_keys.includes(`entity>Patient/${ids.pA}`), rows[0].ref_keys.join());
    assert.ok(rows[0].token_keys.includes('action#R'), rows[0].token_keys.join());
  });

  test('tokens: code, system|code, |code, system|, several values, :not, :missing', async () => {
    assert.deepEqual(await found(admin, 'AuditEvent?action=R'), ['e1', 'e4']);
    assert.deepEqual(await found(admin, `AuditEvent?subtype=${q(`${REST}|read`)}`), ['e1']);
    assert.deepEqual(await found(admin, `AuditEvent?subtype=${q('urn:wrong|read')}`), []);
    assert.deepEqual(await found(admin, `AuditEvent?outcome=${q('|4')}`), ['e3']);
    assert.deepEqual(await found(admin, `AuditEvent?type=${q(`${DCM}|`)}`), ['e1', 'e2', 'e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?action=C,E'), ['e2', 'e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?action=R&outcome=8'), ['e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?subtype:not=read'), ['e2', 'e3', 'e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?subtype:missing=true'), ['e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?subtype:missing=false'), ['e1', 'e2', 'e3']);
    for (const bad of ['type:text=rest', `type:of-type=${q('a|b|c')}`]) {
      const r = await as(admin, 'GET', `AuditEvent?${bad}`);
      assert.equal(r.status, 400, bad);
      assert.match(r.text, /not supported on AuditEvent/);
    }
  });

  test('references: Type/id, absolute URL, bare id, :Type, patient, :identifier, URLs, :missing', async () => {
    assert.deepEqual(await found(admin, `AuditEvent?entity=Patient/${ids.pA}`), ['e1']);
    assert.deepEqual(await found(admin, `AuditEvent?entity=${q(`${srv.url}/Patient/${ids.pA}`)}`), ['e1']);
    assert.deepEqual(await found(admin, `AuditEvent?entity=${ids.pA}`), ['e1']);
    assert.deepEqual(await found(admin, `AuditEvent?entity:Patient=${ids.pA}`), ['e1']);
    assert.deepEqual(await found(admin, `AuditEvent?entity:Observation=${ids.pA}`), []);
    assert.deepEqual(await found(admin, `AuditEvent?entity=AuditEvent/${ids.e1}`), ['e4']);
    assert.deepEqual(await found(admin, `AuditEvent?patient=${ids.pA}`), ['e1', 'e2']);
    assert.deepEqual(await found(admin, `AuditEvent?patient=Patient/${ids.pB},Patient/${ids.pA}`), ['e1', 'e2', 'e3']);
    assert.deepEqual(await found(admin, `AuditEvent?patient=Observation/${ids.oA}`), []);
    assert.deepEqual(await found(admin, 'AuditEvent?agent=Practitioner/77'), ['e1']);
    assert.deepEqual(await found(admin, 'AuditEvent?agent=78'), ['e3']);
    assert.deepEqual(await found(admin, `AuditEvent?agent:identifier=${q(`${CLIENT}|app-1`)}`), ['e1']);
    assert.deepEqual(await found(admin, 'AuditEvent?agent:identifier=app-2'), ['e2']);
    assert.deepEqual(await found(admin, `AuditEvent?agent:identifier=${q(`${CLIENT}|`)}`), ['e1', 'e2']);
    assert.deepEqual(await found(admin, `AuditEvent?entity=${q('urn:uuid:4f1c1d1e-0000-4000-8000-000000000001')}`), ['e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?entity:missing=true'), ['e2']);
    assert.deepEqual(await found(admin, 'AuditEvent?patient:missing=true'), ['e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?patient:missing=false'), ['e1', 'e2', 'e3']);
  });

  test('date (recorded, the partition key): day precision and prefixes', async () => {
    assert.deepEqual(await found(admin, 'AuditEvent?date=2024-03-02'), ['e2']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=2024-03-03'), ['e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=ge2024-03-02&date=lt2024-04-01'), ['e2', 'e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=lt2024-03-02'), ['e1']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=gt2024-03-03'), ['e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=le2024-03-03'), ['e1', 'e2', 'e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=2024-03'), ['e1', 'e2', 'e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=ne2024-03'), ['e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?date=2024-03-01T10:00:00Z'), ['e1']);
  });

  test('chains from AuditEvent and _has:AuditEvent on the referenced types', async () => {
    assert.deepEqual(await found(admin, 'AuditEvent?patient.name=Rowan'), ['e1', 'e2']);
    assert.deepEqual(await found(admin, 'AuditEvent?entity:Patient.family=Other'), ['e3']);
    assert.deepEqual(await found(admin, 'AuditEvent?entity:Observation.subject=Patient/' + ids.pA), ['e1', 'e4']);
    assert.deepEqual(await found(admin, 'AuditEvent?entity:AuditEvent.action=R'), ['e4']);
    assert.deepEqual(await found(admin, 'Patient?_has:AuditEvent:entity:action=C'), ['pB']);
    assert.deepEqual(await found(admin, 'Patient?_has:AuditEvent:patient:action=E'), ['pA']);
    assert.deepEqual(await found(admin, 'Patient?_has:AuditEvent:entity:action=E'), []);
    assert.deepEqual(await found(admin, 'Observation?_has:AuditEvent:entity:outcome=8'), ['oA']);
    assert.deepEqual(await found(admin, 'AuditEvent?_has:AuditEvent:entity:outcome=8'), ['e1']);
  });

  test('_include and _revinclude through the keys', async () => {
    assert.deepEqual(await included(`AuditEvent?_id=${ids.e1}&_include=AuditEvent:entity`), ['oA', 'pA']);
    assert.deepEqual(await included(`AuditEvent?_id=${ids.e4}&_include=AuditEvent:entity`), ['e1', 'oA']);
    assert.deepEqual(await included(`AuditEvent?_id=${ids.e4}&_include=AuditEvent:entity:AuditEvent`), ['e1']);
    assert.deepEqual(await included(`AuditEvent?_id=${ids.e2}&_include=AuditEvent:patient`), ['pA']);
    assert.deepEqual(await included(`AuditEvent?_id=${ids.e4}&_include=*&_include:iterate=AuditEvent:entity`), ['e1', 'oA', 'pA']);
    assert.deepEqual(await included(`Patient?_id=${ids.pA}&_revinclude=AuditEvent:patient`), ['e1', 'e2']);
    assert.deepEqual(await included(`Patient?_id=${ids.pA}&_revinclude=AuditEvent:entity`), ['e1']);
    assert.deepEqual(await included(`Observation?_id=${ids.oA}&_revinclude=AuditEvent:entity&_revinclude:iterate=AuditEvent:entity`), ['e1', 'e4']);
    assert.deepEqual(await included(`Patient?_id=${ids.pA}&_revinclude=Observation:subject&_revinclude:iterate=AuditEvent:entity`), ['e1', 'e4', 'oA']);
  });

  test('_sort by date and by a token, paged one by one with cursors; totals', async () => {
    assert.deepEqual(await walk('AuditEvent?_sort=-date&_count=1'), ['e4', 'e3', 'e2', 'e1']);
    assert.deepEqual(await walk('AuditEvent?_sort=date&_count=1&action=R,C'), ['e1', 'e3', 'e4']);
    const rs = [ids.e1, ids.e4].sort().map((id) => byId.get(`AuditEvent/${id}`));
    assert.deepEqual(await walk('AuditEvent?_sort=action&_count=1'), ['e3', 'e2', ...rs]);
    assert.deepEqual(await walk('AuditEvent?_sort=-action&_count=1'), [...rs, 'e2', 'e3']);
    // e2 has no entity: it sorts last either way.
    assert.deepEqual((await walk('AuditEvent?_sort=-entity&_count=1')).at(-1), 'e2');
    assert.deepEqual((await walk('AuditEvent?_sort=entity&_count=1')).at(-1), 'e2');
    const total = await as(admin, 'GET', 'AuditEvent?action=R&_total=accurate&_count=1');
    assert.equal(total.json.total, 2);
    const estimate = await as(admin, 'GET', 'AuditEvent?patient=' + ids.pA + '&_total=estimate');
    assert.equal(typeof estimate.json.total, 'number');
    const system = await as(admin, 'GET', `?_type=AuditEvent&action=C&_total=accurate`);
    assert.equal(system.status, 200, system.text);
    assert.deepEqual([system.json.total, names(system.json.entry)], [1, ['e3']]);
  });

  test('$everything holds the patient\'s AuditEvents', async () => {
    const mine = await as(admin, 'GET', `Patient/${ids.pA}/$everything?_type=AuditEvent,Observation&_count=100`);
    assert.equal(mine.status, 200, mine.text);
    assert.deepEqual(names(mine.json.entry), ['e1', 'e2', 'oA']);
    const all = await as(admin, 'GET', 'Patient/$everything?_type=AuditEvent&_count=100');
    assert.deepEqual(names(all.json.entry), ['e1', 'e2', 'e3']);
  });

  test('a patient token sees its own AuditEvents only', async () => {
    const alice = bearer(await token(srv, { scope: 'launch/patient patient/*.rs', patient: ids.pA, clientId: 'alice' }));
    assert.deepEqual(await found(alice, 'AuditEvent'), ['e1', 'e2']);
    assert.deepEqual(await found(alice, 'AuditEvent?action=R'), ['e1']);
    assert.deepEqual(await found(alice, 'AuditEvent?action=C'), []);
    assert.deepEqual(await found(alice, `AuditEvent?patient=${ids.pB}`), []);
    assert.equal((await as(alice, 'GET', `AuditEvent/${ids.e3}`)).status, 404);
  });
});
