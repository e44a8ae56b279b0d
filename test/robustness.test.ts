// Odd and hostile requests: each gets a 4xx OperationOutcome (never a 500 or a
// stack trace), and the server keeps serving afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const cases: [string, string, unknown?, Record<string, string>?][] = [
  ['GET', 'Patient/%E0%A4%A'],                       // broken percent-encoding
  ['GET', 'Patient/a%2Fb'],
  ['GET', 'Patient/..%2F..%2Fetc'],
  ['GET', 'Patient/x/_history/abc'],
  ['GET', 'Patient/x/_history/1/extra'],
  ['GET', 'Patient?_count=abc'],
  ['GET', 'Patient?birthdate=not-a-date', undefined, { prefer: 'handling=strict' }],
  ['GET', 'Patient/_history?_page=garbage'],
  ['GET', '_history?_since=2020-13-45T00:00:00Z'],
  ['POST', 'Patient', 'null'],
  ['POST', 'Patient', '[]'],
  ['POST', 'Patient', '"a string"'],
  ['POST', 'Patient', '{"resourceType":"Patient","name":"not-an-array"}'],
  ['POST', 'Patient', '{"resourceType":"Patient","id":{"nested":true}}'],
  ['POST', 'Patient', '{"resourceType":"Patient","meta":{"profile":"x"}}'],
  ['POST', 'Patient', '{"resourceType":"Patient","birthDate":19800101}'],
  ['POST', 'Patient', '{"resourceType":"Patient","extension":[{"url":1}]}'],
  ['POST', 'Patient', '{"resourceType":"Patient"}', { 'if-none-exist': '' }],
  ['POST', 'Patient', '{"resourceType":"Patient"}', { 'if-none-exist': 'identifier=' }],
  ['POST', 'Observation', '{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/%%%"}}'],
  ['POST', 'Observation', '{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2020-02-30"}'],
  ['PUT', 'Patient/abc', '{"resourceType":"Patient","id":"abc"}', { 'if-match': 'W/"99999999999999999999"' }],
  ['PUT', 'Patient', '{"resourceType":"Patient"}'],
  ['DELETE', 'Patient'],
  ['DELETE', 'Patient?unknown-param=1'],
  ['PATCH', 'Patient/abc', '{"op":"add"}', { 'content-type': 'application/json-patch+json' }],
  ['PATCH', 'Patient/abc', '[{"op":"move","from":"/a"}]', { 'content-type': 'application/json-patch+json' }],
  ['OPTIONS', 'Patient'],
  ['GET', '$export'],
  ['GET', 'patient/1'],
];

test('hostile requests get 4xx OperationOutcomes and the server stays up', async () => {
  const problems: string[] = [];
  for (const [method, path, body, headers] of cases) {
    const r = await fhir(srv.url, method, path, body, headers);
    if (r.status < 400 || r.status >= 500) problems.push(`${method} ${path} -> ${r.status} ${r.text}`);
    else if (r.json?.resourceType !== 'OperationOutcome') problems.push(`${method} ${path}: not an OperationOutcome: ${r.text}`);
    else if (/\.ts:\d+|node_modules|at [A-Za-z]+ \(/.test(r.text)) problems.push(`${method} ${path} leaks internals: ${r.text}`);
  }
  assert.deepEqual(problems, []);
  assert.equal((await fhir(srv.url, 'GET', 'metadata')).status, 200);
});

test('a JSON Patch on a valid resource that yields an invalid one changes nothing', async () => {
  const c = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', gender: 'male' });
  const r = await fhir(srv.url, 'PATCH', `Patient/${c.json.id}`, [{ op: 'add', path: '/deceasedBoolean', value: 'yes' }], { 'content-type': 'application/json-patch+json' });
  assert.equal(r.status, 400);
  assert.equal((await fhir(srv.url, 'GET', `Patient/${c.json.id}`)).json.meta.versionId, '1');
});
