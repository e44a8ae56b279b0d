// Concurrent writers of one resource: optimistic locking admits exactly one, and
// without If-Match every acknowledged write becomes its own version.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

test('50 concurrent updates with the same If-Match: exactly one succeeds, the rest get 412', async () => {
  const c = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Race' }] });
  const id = c.json.id;
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    fhir(srv.url, 'PUT', `Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: `Race${i}` }] }, { 'if-match': 'W/"1"' })));
  const statuses = results.map((r) => r.status);
  assert.equal(statuses.filter((s) => s === 200).length, 1, statuses.join(','));
  assert.equal(statuses.filter((s) => s === 412).length, 49, statuses.join(','));
  const winner = results.find((r) => r.status === 200)!;
  const read = await fhir(srv.url, 'GET', `Patient/${id}`);
  assert.equal(read.json.meta.versionId, '2');
  assert.equal(read.json.name[0].family, winner.json.name[0].family);
});

test('200 concurrent updates without If-Match: versions 1..201 all in history, none lost', async () => {
  const c = await fhir(srv.url, 'POST', 'Observation', { resourceType: 'Observation', status: 'preliminary', code: { text: 'count' }, valueInteger: 0 });
  const id = c.json.id;
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) =>
    fhir(srv.url, 'PUT', `Observation/${id}`, { resourceType: 'Observation', id, status: 'final', code: { text: 'count' }, valueInteger: i + 1 })));
  assert.deepEqual([...new Set(results.map((r) => r.status))], [200]);
  const acknowledged = results.map((r) => Number(r.json.meta.versionId)).sort((a, b) => a - b);
  assert.deepEqual(acknowledged, Array.from({ length: 200 }, (_, i) => i + 2), 'each write got its own version');
  const seen: number[] = [];
  const values = new Set<number>();
  let url: string | undefined = `${srv.url}/Observation/${id}/_history?_count=70`;
  while (url) {
    const page: any = await (await fetch(url)).json();
    for (const e of page.entry) {
      seen.push(Number(e.resource.meta.versionId));
      values.add(e.resource.valueInteger);
    }
    url = page.link.find((l: any) => l.relation === 'next')?.url;
  }
  assert.deepEqual(seen.sort((a, b) => a - b), Array.from({ length: 201 }, (_, i) => i + 1));
  assert.equal(values.size, 201, 'every written value is in some version');
  // Each acknowledged response body equals the version stored under its number.
  for (const r of results.slice(0, 20)) {
    const v = await fhir(srv.url, 'GET', `Observation/${id}/_history/${r.json.meta.versionId}`);
    assert.deepEqual(v.json, r.json);
  }
});
