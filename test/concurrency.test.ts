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

/** Four spellings of one criteria set (identifier AND gender): repeats, OR-duplicates, order, control parameters, percent-encoding. */
function spellings(system: string, value: string): string[] {
  const x = `${system}|${value}`;
  return [
    `identifier=${x}&gender=male`,
    `gender=male&identifier=${x},${x}`,
    `identifier=${x}&identifier=${x}&gender=male&_format=json`,
    `_pretty=true&gender=male,male&identifier=${encodeURIComponent(x)}`,
  ];
}

test('24 concurrent conditional creates with 4 spellings of the same criteria store exactly one Patient', async () => {
  for (let round = 0; round < 3; round++) {
    const system = 'http://race.example/mrn';
    const value = `spell-${round}-${Date.now()}`;
    const forms = spellings(system, value);
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => fhir(srv.url, 'POST', 'Patient',
      { resourceType: 'Patient', gender: 'male', identifier: [{ system, value }] }, { 'if-none-exist': forms[i % forms.length] })));
    const statuses = results.map((r) => r.status);
    assert.ok(statuses.every((s) => s === 200 || s === 201), statuses.join(','));
    assert.equal(statuses.filter((s) => s === 201).length, 1, statuses.join(','));
    assert.equal(new Set(results.map((r) => r.json.id)).size, 1, 'every answer names the same Patient');
    const found = await fhir(srv.url, 'GET', `Patient?identifier=${system}|${value}&_total=accurate`);
    assert.equal(found.json.total, 1);
  }
});

test('24 concurrent transactions whose ifNoneExist spells the same criteria 4 ways store exactly one Patient', async () => {
  const system = 'http://race.example/mrn';
  const value = `tx-${Date.now()}`;
  const forms = spellings(system, value);
  const results = await Promise.all(Array.from({ length: 24 }, (_, i) => fhir(srv.url, 'POST', '', {
    resourceType: 'Bundle', type: 'transaction',
    entry: [{ request: { method: 'POST', url: 'Patient', ifNoneExist: forms[i % forms.length] }, resource: { resourceType: 'Patient', gender: 'male', identifier: [{ system, value }] } }],
  })));
  assert.deepEqual([...new Set(results.map((r) => r.status))], [200], results.map((r) => r.text.slice(0, 200)).join('\n'));
  const answers = results.map((r) => r.json.entry[0].response);
  assert.equal(answers.filter((a: any) => a.status.startsWith('201')).length, 1, answers.map((a: any) => a.status).join(','));
  assert.ok(answers.every((a: any) => /^20[01]/.test(a.status)));
  assert.equal(new Set(answers.map((a: any) => /Patient\/([^/]+)/.exec(a.location)![1])).size, 1, 'every entry names the same Patient');
  const found = await fhir(srv.url, 'GET', `Patient?identifier=${system}|${value}&_total=accurate`);
  assert.equal(found.json.total, 1);
});
