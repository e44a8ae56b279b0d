// What EHRs send must load: all 32 Synthea bundles of ../shared/data/synthea-r4 (hospital
// and practitioner bundles first, as the README says), through `POST /fhir` as transactions
// and through `kiln import`, with the same result: every entry of all 16 types stored,
// readable and searchable, every urn:uuid and conditional reference resolved to a stored
// resource of the tenant.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { SHARED_DATA } from './support/data.ts';

const run = promisify(execFile);
const DIR = path.join(SHARED_DATA, 'synthea-r4');
/** Organization, Location, Practitioner and PractitionerRole bundles first: patient bundles refer to them by identifier. */
const FILES = fs.readdirSync(DIR).filter((f) => f.endsWith('.json'))
  .sort((a, b) => Number(!/Information/.test(a)) - Number(!/Information/.test(b)) || a.localeCompare(b));
const bundles = FILES.map((f) => JSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8')));

/** Entries per resource type in the files. */
const expected = new Map<string, number>();
for (const b of bundles) for (const e of b.entry) expected.set(e.resource.resourceType, (expected.get(e.resource.resourceType) ?? 0) + 1);

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

/** Every stored resource of the given types, read through search pages. */
async function everyResource(base: string, types: string[]): Promise<Map<string, any[]>> {
  const out = new Map<string, any[]>();
  for (const type of types) {
    const found: any[] = [];
    let url: string | undefined = `${type}?_count=1000`;
    while (url) {
      const page = await fhir(base, 'GET', url);
      assert.equal(page.status, 200, page.text);
      found.push(...(page.json.entry ?? []).map((e: any) => e.resource));
      const next = page.json.link?.find((l: any) => l.relation === 'next')?.url as string | undefined;
      url = next?.slice(base.length + 1);
    }
    out.set(type, found);
  }
  return out;
}

/** Every `reference` string in a resource. */
function references(node: unknown, acc: string[] = []): string[] {
  if (Array.isArray(node)) node.forEach((n) => references(n, acc));
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'reference' && typeof v === 'string') acc.push(v);
      else references(v, acc);
    }
  }
  return acc;
}

/** Checks one tenant holds exactly what the files hold, every reference resolving within it. */
async function checkTenant(base: string) {
  const types = [...expected.keys()].sort();
  assert.equal(types.length, 16, `types in the files: ${types.join(', ')}`);
  const stored = await everyResource(base, types);
  for (const type of types) assert.equal(stored.get(type)!.length, expected.get(type), `${type}: stored as many as the files hold`);
  const ids = new Set([...stored].flatMap(([type, rs]) => rs.map((r) => `${type}/${r.id}`)));
  let refs = 0;
  for (const [type, rs] of stored) {
    for (const r of rs) {
      for (const ref of references(r)) {
        if (ref.startsWith('#')) continue;
        refs++;
        assert.ok(ids.has(ref), `${type}/${r.id} refers to ${ref}, which is not a stored resource of the tenant`);
      }
    }
  }
  assert.ok(refs > 10_000, `references checked: ${refs}`);
  // Searchable by their own parameters, across the generic store and the first-class tables.
  const patient = stored.get('Patient')![0];
  const conditions = await fhir(base, 'GET', `Condition?patient=Patient/${patient.id}&_summary=count`);
  assert.equal(conditions.json.total, stored.get('Condition')!.filter((c) => c.subject.reference === `Patient/${patient.id}`).length);
  // Patient bundles carry their own copies of some practitioners: as many hits as the files hold.
  const npi = stored.get('Practitioner')![0].identifier[0];
  const withNpi = bundles.flatMap((b) => b.entry).filter((e: any) => e.resource.resourceType === 'Practitioner'
    && e.resource.identifier?.some((i: any) => i.system === npi.system && i.value === npi.value)).length;
  const byNpi = await fhir(base, 'GET', `Practitioner?identifier=${encodeURIComponent(`${npi.system}|${npi.value}`)}`);
  assert.equal(byNpi.json.entry.length, withNpi);
  assert.ok(withNpi >= 1);
  const claims = await fhir(base, 'GET', `Claim?patient=${patient.id}&_include=Claim:provider&_count=500`);
  assert.ok(claims.json.entry.some((e: any) => e.search.mode === 'include' && e.resource.resourceType === 'Organization'), 'Claim:provider includes the Organization');
  return stored;
}

test('all 32 Synthea bundles load as transactions through POST /fhir, every resource stored, readable and searchable', async () => {
  assert.equal(FILES.length, 32);
  const started = Date.now();
  for (const [i, b] of bundles.entries()) {
    const r = await fhir(srv.url, 'POST', '', b);
    assert.equal(r.status, 200, `${FILES[i]}: ${r.text.slice(0, 500)}`);
    assert.ok(r.json.entry.every((e: any) => /^20[01]/.test(e.response.status)), FILES[i]);
  }
  const total = [...expected.values()].reduce((a, n) => a + n, 0);
  console.log(`# ${total} resources in ${FILES.length} transactions: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const stored = await checkTenant(srv.url);
  // Each resource is readable by id, from whichever table holds it.
  for (const type of ['Organization', 'Practitioner', 'Condition', 'Immunization', 'Patient', 'Observation']) {
    const r = stored.get(type)![0];
    const read = await fhir(srv.url, 'GET', `${type}/${r.id}`);
    assert.equal(read.status, 200);
    assert.deepEqual(read.json, r);
  }
});

test('kiln import stores the same bundles the same way, through the same transaction code', async () => {
  const env = { ...process.env, KILN_DATA_DIR: srv.dataDir, KILN_PG_PORT: String(srv.pgPort), DATABASE_URL: '' };
  await run('npx', ['tsx', 'src/cli.ts', 'tenant', 'create', 'synthea'], { env });
  const result = await run('npx', ['tsx', 'src/cli.ts', 'import', '--tenant', 'synthea', ...FILES.map((f) => path.join(DIR, f))], { env, maxBuffer: 1 << 24 });
  const total = [...expected.values()].reduce((a, n) => a + n, 0);
  assert.match(result.stdout, new RegExp(`imported ${total} resources from 32 files into 'synthea'`));
  assert.match(result.stdout, /skipped 0 of types Kiln does not store; 0 failures/);
  await checkTenant(`${srv.url}/synthea`);
});
