// The route table (src/interactions/routes.ts): its decisions on their own, and every
// interaction as an HTTP request and as a batch entry, which must name the same
// interaction (the AuditEvent subtype) or give the same error; a route an entry cannot run
// is a 400 naming the entry.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, token, bearer, type TestServer } from './support/server.ts';
import { ROUTES, METHODS, matchRoute, entryInteraction, pathSegments, type Route } from '../src/interactions/routes.ts';
import { FhirError } from '../src/fhir/outcome.ts';
import { CLIENT_ID_SYSTEM } from '../src/audit/event.ts';

/** A path the pattern matches: parameters filled with a stored type or an id. */
const sample = (pattern: string) => pattern.split('/').filter(Boolean)
  .map((s) => (s === ':type' || s === ':compartmentType' ? 'Observation' : s === ':vid' ? '1' : s.startsWith(':') ? 'x1' : s));

function refusal(fn: () => unknown): FhirError {
  try {
    fn();
  } catch (e) {
    if (e instanceof FhirError) return e;
    throw e;
  }
  assert.fail('expected a FhirError');
}

describe('the table', () => {
  test('no two routes take the same method on the same pattern', () => {
    const seen = new Set<string>();
    for (const r of ROUTES as readonly Route[]) {
      for (const m of r.methods) {
        const key = `${m} ${r.pattern}`;
        assert.ok(!seen.has(key), key);
        seen.add(key);
      }
    }
  });

  test('every route matches its own path for its methods, and the path is a 405 for the others', () => {
    for (const r of ROUTES as readonly Route[]) {
      const segments = sample(r.pattern);
      const path = segments.join('/');
      // Routes sharing the pattern (create, search-type, ... on :type) take the other methods.
      const taken = new Set((ROUTES as readonly Route[]).filter((o) => o.pattern === r.pattern).flatMap((o) => o.methods));
      for (const m of METHODS) {
        if (r.methods.includes(m)) assert.equal(matchRoute(m, segments).route.name, r.name, `${m} /${path}`);
        else if (!taken.has(m)) assert.equal(refusal(() => matchRoute(m, segments)).status, 405, `${m} /${path}`);
      }
    }
  });

  test('every type and system interaction names its scope permission (SMART v2 c r u d s), the same on every route; operations name none', () => {
    const expected: Record<string, string> = {
      read: 'r', vread: 'r', 'history-instance': 'r', 'search-type': 's', 'history-type': 's', 'search-system': 's', 'history-system': 's',
      create: 'c', update: 'u', patch: 'u', delete: 'd',
    };
    for (const r of ROUTES as readonly Route[]) assert.equal(r.permission, expected[r.interaction], r.name);
  });

  test('a literal beats a parameter in the same place', () => {
    const name = (m: string, p: string) => matchRoute(m, p.split('/').filter(Boolean)).route.name;
    assert.equal(name('POST', 'Patient/_search'), 'search-post');
    assert.equal(name('GET', 'Patient/_history'), 'history-type');
    assert.equal(name('GET', 'Patient/$everything'), 'everything-all');
    assert.equal(name('GET', 'Patient/p1/$everything'), 'everything');
    assert.equal(name('GET', 'Patient/p1/_history'), 'history-instance');
    assert.equal(name('GET', 'Patient/p1/Observation'), 'search-compartment');
    assert.equal(name('GET', 'Observation/o1/_history/2'), 'vread');
    assert.equal(name('POST', 'Group/g1/$export'), 'export-group');
    // An id is any segment here: the handler refuses a malformed one with 400.
    assert.equal(name('GET', 'Observation/$everything'), 'read');
    assert.deepEqual(matchRoute('GET', ['Patient', 'p1', 'Observation']).params, { id: 'p1', compartmentType: 'Observation' });
    assert.equal(matchRoute('GET', ['Patient', 'p1', 'Observation']).type, 'Observation');
    assert.equal(matchRoute('GET', ['Patient', '$everything']).type, 'Patient');
  });

  test('404 for an unknown type or path, before the method is looked at', () => {
    for (const [m, p, text] of [
      ['GET', 'Foo/1', /Resource type Foo is not supported/],
      ['DELETE', 'Foo/_history', /Resource type Foo is not supported/],
      ['GET', 'Parameters', /Resource type Parameters is not supported/],
      ['GET', 'Foo/1/2/3/4', /Resource type Foo is not supported/],
      ['GET', 'Patient/p1/Foo', /Resource type Foo is not supported/],
      ['POST', 'Patient/p1/foo', /Resource type foo is not supported/],
      ['GET', 'foo/1', /No route for \/foo\/1/],
      ['GET', '_history/1', /No route/],
      ['GET', '$export/x', /No route/],
      ['GET', 'Patient/p1/$foo', /No route/],
      ['GET', 'Observation/o1/_history/1/x', /No route/],
    ] as const) {
      const e = refusal(() => matchRoute(m, p.split('/')));
      assert.equal(e.status, 404, `${m} ${p}`);
      assert.match(e.message, text, `${m} ${p}`);
    }
  });

  test('a Bundle entry runs the interaction of its route, or is refused with 400 naming it', () => {
    for (const r of ROUTES as readonly Route[]) {
      const match = matchRoute(r.methods[0], sample(r.pattern));
      if (r.entry) {
        assert.equal(entryInteraction(match, 3, r.methods[0], r.pattern), r.interaction);
      } else {
        const e = refusal(() => entryInteraction(match, 3, r.methods[0], r.pattern));
        assert.equal(e.status, 400, r.name);
        assert.match(e.message, /^Bundle\.entry\[3\]: .* which a Bundle entry cannot run/, r.name);
      }
    }
  });

  test('path segments are percent-decoded; a malformed escape is a 400', () => {
    assert.deepEqual(pathSegments('/Patient//a%2Db/'), ['Patient', 'a-b']);
    assert.equal(refusal(() => pathSegments('Patient/%E0%A4%A')).status, 400);
  });
});

describe('HTTP request and Bundle entry agree', () => {
  let srv: TestServer;
  let admin: Record<string, string>;
  let patient: string;
  let clients = 0;

  before(async () => {
    srv = await startTestServer({ auth: 'smart' });
    admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'routes-admin' }));
    patient = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Routed' }] }, admin)).json.id;
  });
  after(async () => {
    await srv.stop();
    removeDataDir(srv.dataDir);
  });

  const obs = (id?: string) => ({ ...(id ? { id } : {}), resourceType: 'Observation', status: 'final', code: { text: 'routes' }, subject: { reference: `Patient/${patient}` } });
  const newObs = async () => (await fhir(srv.url, 'POST', 'Observation', obs(), admin)).json.id as string;

  /** A client of its own, so its AuditEvents can be picked out. */
  async function client() {
    const clientId = `routes-${++clients}`;
    return { clientId, headers: bearer(await token(srv, { scope: 'system/*.cruds', clientId })) };
  }

  /** Subtypes of a client's AuditEvents but the batch's own. */
  async function subtypes(clientId: string): Promise<string[]> {
    const r = await fhir(srv.url, 'GET', `AuditEvent?agent:identifier=${encodeURIComponent(`${CLIENT_ID_SYSTEM}|${clientId}`)}&_count=100`, undefined, admin);
    assert.equal(r.status, 200, r.text);
    return (r.json.entry ?? []).flatMap((e: any) => (e.resource.subtype ?? []).map((c: any) => c.code)).filter((c: string) => c !== 'batch');
  }

  interface Case {
    name: string;
    method: string;
    /** The entry URL and the HTTP path; its ids made fresh per run where the case changes them. */
    url: (id: string) => string;
    /** The HTTP body and the entry's resource, given the id. */
    body?: (id: string) => unknown;
    /** HTTP status and the interaction both name; for an entry the route table refuses, entry is 400. */
    status: number;
    interaction?: string;
    entry?: 'refused';
    headers?: Record<string, string>;
    /** The entry's resource when it differs from the HTTP body (PATCH: a Binary). */
    entryResource?: unknown;
  }

  const jsonPatch = [{ op: 'replace', path: '/status', value: 'amended' }];
  const cases: Case[] = [
    { name: 'read', method: 'GET', url: (id) => `Observation/${id}`, status: 200, interaction: 'read' },
    { name: 'vread', method: 'GET', url: (id) => `Observation/${id}/_history/1`, status: 200, interaction: 'vread' },
    { name: 'search', method: 'GET', url: () => `Observation?subject=Patient/${patient}`, status: 200, interaction: 'search-type' },
    { name: 'create', method: 'POST', url: () => 'Observation', body: () => obs(), status: 201, interaction: 'create' },
    { name: 'update', method: 'PUT', url: (id) => `Observation/${id}`, body: (id) => obs(id), status: 200, interaction: 'update' },
    { name: 'conditional update', method: 'PUT', url: (id) => `Observation?_id=${id}`, body: () => obs(), status: 200, interaction: 'update' },
    {
      name: 'patch', method: 'PATCH', url: (id) => `Observation/${id}`, body: () => jsonPatch, status: 200, interaction: 'patch',
      headers: { 'content-type': 'application/json-patch+json' },
      entryResource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify(jsonPatch)).toString('base64') },
    },
    { name: 'delete', method: 'DELETE', url: (id) => `Observation/${id}`, status: 204, interaction: 'delete' },
    { name: 'conditional delete', method: 'DELETE', url: (id) => `Observation?_id=${id}`, status: 204, interaction: 'delete' },
    // Errors: the same status, whichever way the request came.
    { name: 'unknown type', method: 'GET', url: () => 'Foo/1', status: 404 },
    { name: 'unknown path', method: 'GET', url: () => 'foo/bar', status: 404 },
    { name: 'type not in the compartment definition path', method: 'GET', url: () => `Patient/${patient}/Foo`, status: 404 },
    { name: 'POST on an instance', method: 'POST', url: (id) => `Observation/${id}`, body: () => obs(), status: 405 },
    { name: 'PATCH on a history', method: 'PATCH', url: (id) => `Observation/${id}/_history`, body: () => jsonPatch, status: 405, headers: { 'content-type': 'application/json-patch+json' } },
    { name: 'HEAD on a type', method: 'HEAD', url: () => 'Observation', status: 405 },
    // (Over HTTP this 405 comes before authentication, so its AuditEvent names no client to compare.)
    { name: 'delete of an AuditEvent', method: 'DELETE', url: () => 'AuditEvent/x1', status: 405 },
    // Routes an entry cannot run: answered over HTTP, a 400 naming the entry in a Bundle.
    { name: 'compartment search', method: 'GET', url: () => `Patient/${patient}/Observation`, status: 200, entry: 'refused' },
    { name: 'type history', method: 'GET', url: () => 'Observation/_history', status: 200, entry: 'refused' },
    { name: 'instance history', method: 'GET', url: (id) => `Observation/${id}/_history`, status: 200, entry: 'refused' },
    { name: 'system history', method: 'GET', url: () => '_history', status: 200, entry: 'refused' },
    { name: '_search', method: 'POST', url: () => 'Observation/_search', status: 200, entry: 'refused', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: () => '' },
    { name: '$validate', method: 'POST', url: () => 'Observation/$validate', body: () => obs(), status: 200, entry: 'refused' },
    { name: '$everything', method: 'GET', url: () => `Patient/${patient}/$everything`, status: 200, entry: 'refused' },
  ];

  for (const c of cases) {
    test(`${c.name} (${c.method})`, async () => {
      const http = await client();
      const id = await newObs();
      const res = await fhir(srv.url, c.method, c.url(id), c.body?.(id), { ...http.headers, ...c.headers });
      assert.equal(res.status, c.status, res.text);

      const batch = await client();
      const entryId = await newObs();
      const resource = c.entryResource ?? (c.method === 'POST' || c.method === 'PUT' ? c.body?.(entryId) : undefined);
      const b = await fhir(srv.url, 'POST', '', {
        resourceType: 'Bundle', type: 'batch',
        entry: [{ ...(resource ? { resource } : {}), request: { method: c.method, url: c.url(entryId) } }],
      }, batch.headers);
      assert.equal(b.status, 200, b.text);
      const response = b.json.entry[0].response;
      if (c.entry === 'refused') {
        assert.equal(response.status, '400', JSON.stringify(response));
        assert.match(response.outcome.issue[0].diagnostics, /Bundle\.entry\[0\]: .* which a Bundle entry cannot run/);
      } else {
        assert.equal(Number.parseInt(response.status, 10), c.status, JSON.stringify(response));
      }
      if (c.interaction) {
        assert.deepEqual(await subtypes(http.clientId), [c.interaction], 'the request');
        assert.deepEqual(await subtypes(batch.clientId), [c.interaction], 'the entry');
      }
    });
  }
});

describe('POST $everything (R4 operations.html#request: parameters in a Parameters body or a form)', () => {
  let srv: TestServer;
  let patient: string;

  before(async () => {
    // No AuditEvents, which are in the patient's compartment too: the counts below are the test's own resources.
    srv = await startTestServer({ audit: 'off' });
    patient = (await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Posted' }] })).json.id;
    for (const text of ['a', 'b']) {
      await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'final', code: { text }, subject: { reference: `Patient/${patient}` } });
    }
  });
  after(async () => {
    await srv.stop();
    removeDataDir(srv.dataDir);
  });

  const ids = (r: { json: any }) => (r.json.entry ?? []).map((e: any) => e.fullUrl);

  test('a Parameters body means what the same query does, and its next link is a GET with them in the URL', async () => {
    const get = await fhir(srv.url, 'GET', `Patient/${patient}/$everything?_type=Observation&_count=1`);
    const post = await fhir(srv.url, 'POST', `Patient/${patient}/$everything`, {
      resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'Observation' }, { name: '_count', valueInteger: 1 }],
    });
    assert.equal(post.status, 200, post.text);
    assert.equal(ids(post).length, 1);
    assert.deepEqual(ids(post), ids(get));
    const next = post.json.link.find((l: any) => l.relation === 'next').url as string;
    const rest = await fhir(srv.url, 'GET', next.slice(srv.url.length + 1));
    assert.equal(rest.status, 200, rest.text);
    assert.equal(ids(rest).length, 1);
    assert.ok(rest.json.entry[0].fullUrl.includes('/Observation/') && rest.json.entry[0].fullUrl !== ids(post)[0]);
  });

  test('a form and an empty body work at both levels; a parameter in the URL and the body is repeated (400)', async () => {
    const form = await fhir(srv.url, 'POST', 'Patient/$everything', '_type=Patient', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(form.status, 200, form.text);
    assert.deepEqual(ids(form), [`${srv.url}/Patient/${patient}`]);
    const empty = await fhir(srv.url, 'POST', `Patient/${patient}/$everything`);
    assert.equal(empty.status, 200, empty.text);
    assert.equal(ids(empty).length, 3);
    const twice = await fhir(srv.url, 'POST', `Patient/${patient}/$everything?_count=1`, '_count=2', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(twice.status, 400, twice.text);
  });

  test('a body that is not a Parameters resource is a 400, an unsupported Content-Type a 415', async () => {
    const wrong = await fhir(srv.url, 'POST', `Patient/${patient}/$everything`, { resourceType: 'Patient' });
    assert.equal(wrong.status, 400, wrong.text);
    assert.equal(wrong.json.resourceType, 'OperationOutcome');
    const xml = await fhir(srv.url, 'POST', `Patient/${patient}/$everything`, '<Parameters/>', { 'content-type': 'application/xml' });
    assert.equal(xml.status, 415, xml.text);
  });
});
