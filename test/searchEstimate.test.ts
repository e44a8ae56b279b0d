// `_total=estimate` right after a bulk load, before any ANALYZE (issue #23 item 7: it said
// 141 where 2,938 matched): exact while a search has at most EXACT_TOTAL_BOUND matches,
// more than the bound beyond it, whatever the planner's statistics say.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';
import { EXACT_TOTAL_BOUND } from '../src/store/searchRun.ts';
import { importFiles } from '../src/importer.ts';

let srv: TestServer;
let base: string;
const SMALL = 700;
const LARGE = 1300;

const observation = (code: string, i: number) => ({
  resource: {
    resourceType: 'Observation', status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code }] },
    effectiveDateTime: `2024-0${1 + (i % 9)}-1${i % 10}T08:00:00Z`, valueQuantity: { value: i },
  },
  request: { method: 'POST', url: 'Observation' },
});

before(async () => {
  srv = await startTestServer();
  // A tenant of its own, created with its partitions and never analyzed.
  await createOrg(srv.db.owner, 'estimates', 'Estimates');
  base = `${srv.url}/estimates`;
  const entry = [
    ...Array.from({ length: SMALL }, (_, i) => observation('2339-0', i)),
    ...Array.from({ length: LARGE }, (_, i) => observation('8867-4', i)),
  ];
  const r = await fhir(base, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry });
  assert.equal(r.status, 200, r.text.slice(0, 500));
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

/** An estimate past the bound is flagged by an outcome entry (Bundle.total cannot say it). */
const flagged = (bundle: any) => bundle.entry.some((e: any) => e.search.mode === 'outcome' && /total is an estimate/.test(e.resource.issue[0].diagnostics));

async function totals(query: string, at = base) {
  const estimate = await fhir(at, 'GET', `${query}${query.includes('?') ? '&' : '?'}_total=estimate&_count=1`);
  assert.equal(estimate.status, 200, estimate.text);
  const accurate = await fhir(at, 'GET', `${query}${query.includes('?') ? '&' : '?'}_total=accurate&_count=1`);
  return { estimate: estimate.json.total as number, accurate: accurate.json.total as number, flagged: flagged(estimate.json) };
}

test('the bound is documented as 1,000', () => {
  assert.equal(EXACT_TOTAL_BOUND, 1000);
});

test('at most the bound matches: the estimate is the exact count, before any ANALYZE', async () => {
  for (const query of ['Observation?code=2339-0', 'Observation?code=2339-0&date=ge2024-05-01', 'Observation?code=nothing-matches',
    'Observation?code=8867-4&value-quantity=lt500']) {
    const t = await totals(query);
    assert.ok(t.accurate <= EXACT_TOTAL_BOUND, `${query}: ${t.accurate} matches`);
    assert.equal(t.estimate, t.accurate, `${query}: estimate ${t.estimate}, accurate ${t.accurate}`);
    assert.equal(t.flagged, false, `${query}: an exact count is not flagged`);
  }
  assert.equal((await totals('Observation?code=2339-0')).accurate, SMALL);
});

test('more than the bound: the estimate says more than the bound, and an outcome entry says it is an estimate', async () => {
  for (const query of ['Observation?code=8867-4', 'Observation?status=final']) {
    const t = await totals(query);
    assert.ok(t.accurate > EXACT_TOTAL_BOUND, `${query}: ${t.accurate} matches`);
    assert.ok(t.estimate > EXACT_TOTAL_BOUND, `${query}: estimate ${t.estimate}, accurate ${t.accurate}`);
    assert.equal(t.flagged, true, query);
  }
});

test('_summary=count with _total=estimate follows the same rule', async () => {
  const r = await fhir(base, 'GET', 'Observation?code=2339-0&_summary=count&_total=estimate');
  assert.equal(r.status, 200);
  assert.equal(r.json.total, SMALL);
});

// Past the bound the planner's statistics size the result: the importer refreshes them, so a
// count of a tenant's Observations is right at once (the planner said 27 for 910 before).
test('the importer analyzes the partitions it filled: past the bound the estimate is within 10% at once', async () => {
  const org = await createOrg(srv.db.owner, 'imported', 'Imported');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-estimate-'));
  const file = path.join(dir, 'observations.ndjson');
  fs.writeFileSync(file, [
    ...Array.from({ length: LARGE }, (_, i) => ({ ...observation('8867-4', i).resource, id: `hr-${i}` })),
    ...Array.from({ length: SMALL }, (_, i) => ({ ...observation('2339-0', i).resource, id: `gl-${i}` })),
  ].map((r) => JSON.stringify(r)).join('\n'));
  const summary = await importFiles([file], { db: srv.db, orgId: org.id, base: `${srv.url}/imported`, maxEntries: 10_000, maxCount: 1000 });
  assert.deepEqual(summary.failures, []);
  const { rows } = await srv.db.owner.query(`SELECT relname FROM pg_stat_user_tables WHERE relname LIKE $1 AND last_analyze IS NOT NULL`, [`%_o${org.id}%`]);
  assert.ok(rows.some((r) => r.relname.startsWith(`observations_o${org.id}`)) && rows.some((r) => r.relname === `search_tokens_o${org.id}`), JSON.stringify(rows));
  const t = await totals('Observation', `${srv.url}/imported`);
  assert.equal(t.accurate, LARGE + SMALL);
  assert.ok(Math.abs(t.estimate - t.accurate) <= t.accurate / 10, `estimate ${t.estimate}, accurate ${t.accurate}`);
  // Below the bound it stays exact.
  assert.equal((await totals('Observation?code=2339-0', `${srv.url}/imported`)).estimate, SMALL);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the CapabilityStatement documents the bound', async () => {
  const r = await fhir(srv.url, 'GET', 'metadata');
  assert.match(r.json.rest[0].documentation, /_total=estimate` counts exactly up to 1,000 matches/);
});
