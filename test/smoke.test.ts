import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

test('create then read a Patient', async () => {
  const c = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Smoke' }] });
  assert.equal(c.status, 201);
  const r = await fhir(srv.url, 'GET', `Patient/${c.json.id}`);
  assert.equal(r.status, 200);
  assert.equal(r.json.name[0].family, 'Smoke');
});
