// `kiln import` beside a running server: Synthea bundles and an NDJSON file land in a
// tenant, a type Kiln does not store (Parameters) is skipped, bad lines are reported, not fatal.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { SHARED_DATA } from './support/data.ts';

const run = promisify(execFile);
let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

test('imports Synthea bundles and NDJSON into a tenant with a summary', async () => {
  const env = { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), DATABASE_URL: '' };
  await run('npx', ['tsx', 'src/cli.ts', 'tenant', 'create', 'imports'], { env });
  const dir = path.join(SHARED_DATA, 'synthea-r4');
  const bundles = fs.readdirSync(dir).filter((f) => !/Information/.test(f)).sort().slice(0, 2).map((f) => path.join(dir, f));
  // Every entry, of every type (test/synthea.test.ts loads all 32 bundles).
  const expected = bundles.flatMap((f) => JSON.parse(fs.readFileSync(f, 'utf8')).entry).length;
  const ndjson = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-ndjson-')), 'patients.ndjson');
  fs.writeFileSync(ndjson, [
    JSON.stringify({ resourceType: 'Patient', id: 'nd-1', name: [{ family: 'Ndjson' }] }),
    '{"resourceType":"Observation","id":"nd-2","status":"final","code":{"text":"w"},"subject":{"reference":"Patient/nd-1"},"valueQuantity":{"value":70.50}}',
    '{not json',
    JSON.stringify({ resourceType: 'Patient', id: 'nd-3', birthDate: 'never' }),
    // Parameters has no RESTful endpoint, so it is not stored: skipped, not failed.
    JSON.stringify({ resourceType: 'Parameters', id: 'p1', parameter: [{ name: 'x', valueString: 'y' }] }),
  ].join('\n'));
  const result = await run('npx', ['tsx', 'src/cli.ts', 'import', '--tenant', 'imports', ...bundles, ndjson], { env }).catch((e) => e);
  assert.equal(result.code, 1, 'failures make the exit status non-zero');
  assert.match(result.stdout, new RegExp(`imported ${expected + 2} resources from 3 files into 'imports'`));
  assert.match(result.stdout, /\d+ resources\/s/);
  assert.match(result.stdout, /skipped 1 of types Kiln does not store; 2 failures/);
  assert.match(result.stdout, /line 3: malformed JSON/);
  assert.match(result.stdout, /line 4: 400 /);
  const base = `${srv.url}/imports`;
  const obs = await fhir(base, 'GET', 'Observation/nd-2');
  assert.match(obs.text, /"value":70.50/, 'NDJSON lines are stored as written');
  const search = await fhir(base, 'GET', 'Patient?_summary=count');
  assert.equal(search.json.total, 2 + 1);
  assert.equal((await fhir(srv.url, 'GET', 'Observation/nd-2')).status, 404, 'only the named tenant received the data');
});
