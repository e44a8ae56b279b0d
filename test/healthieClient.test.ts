// The Healthie GraphQL client against the local Healthie server (real HTTP, real schema).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeHealthie } from './support/healthieServer.ts';
import { HealthieClient, HealthieError, HealthieMutationError, DEFAULT_API_VERSION } from '../src/healthie/client.ts';
import { healthieSettings } from '../src/healthie/settings.ts';
import { USERS, USER, CREATE_CLIENT, ENTRIES } from '../src/healthie/queries.ts';

const KEY = 'sk-test-0123456789abcdef';
const fake = new FakeHealthie(KEY);
let client: HealthieClient;
before(async () => {
  await fake.start();
  fake.seedExamples();
  fake.seedMany(25);
  client = new HealthieClient({ url: fake.url, apiKey: KEY, baseDelayMs: 5, maxDelayMs: 20 });
});
after(() => fake.stop());

describe('healthie client', () => {
  test('sends Basic <raw key>, AuthorizationSource: API and the pinned API version', async () => {
    const data = await client.request(USER, { id: '1204417' });
    assert.equal(data.user.first_name, 'Jo');
    const h = fake.requests.at(-1)!.headers;
    assert.equal(h.authorization, `Basic ${KEY}`);
    assert.equal(h.authorizationsource, 'API');
    assert.equal(h['healthie-graphql-api-version'], DEFAULT_API_VERSION);
  });

  test('cursor paging walks every user once', async () => {
    const ids: string[] = [];
    for await (const page of client.pages<{ id: string; cursor?: string }>(USERS, 'users', 7)) ids.push(...page.map((u) => u.id));
    assert.equal(ids.length, 26);
    assert.equal(new Set(ids).size, 26);
    const afters = fake.requests.filter((r) => r.operation === 'Users').map((r) => r.variables.after);
    assert.equal(afters[0], null);
    assert.ok(afters.slice(1).every((a) => typeof a === 'string'), 'later pages pass the last cursor');
  });

  test('retries TOO_MANY_REQUESTS (HTTP 200), 429 and 5xx with backoff, then succeeds', async () => {
    fake.failures.push('rate', 429, 500, 503, 'rate');
    const before = client.stats.retries;
    const data = await client.request(USER, { id: '1204417' });
    assert.equal(data.user.id, '1204417');
    assert.equal(client.stats.retries - before, 5);
  });

  test('gives up after maxRetries with a clear error', async () => {
    const impatient = new HealthieClient({ url: fake.url, apiKey: KEY, baseDelayMs: 1, maxRetries: 2 });
    fake.failures.push('rate', 'rate', 'rate');
    await assert.rejects(impatient.request(USER, { id: '1' }), (e: HealthieError) => e.code === 'TOO_MANY_REQUESTS' && /Too many requests/.test(e.message));
  });

  test('mutation messages[] become a HealthieMutationError naming the field', async () => {
    await assert.rejects(client.mutate(CREATE_CLIENT, { input: { first_name: 'Sam' } }, 'createClient', 'user'),
      (e: HealthieMutationError) => e instanceof HealthieMutationError && /createClient: first_name can't be blank/.test(e.message));
    const created = await client.mutate(CREATE_CLIENT, { input: { first_name: 'Sam', last_name: 'Lee', dont_send_welcome: true } }, 'createClient', 'user');
    assert.ok(created.id);
  });

  test('an invalid document is refused by the server as by Healthie, and not retried', async () => {
    const n = fake.requests.length;
    await assert.rejects(client.request('query { users { no_such_field } }'), /Cannot query field "no_such_field"/);
    assert.equal(fake.requests.length, n + 1);
    await assert.rejects(client.request(ENTRIES, { page_size: 'ten' }), /Int cannot represent/);
  });

  test('a wrong key is 401 and the key never appears in errors or JSON', async () => {
    const bad = new HealthieClient({ url: fake.url, apiKey: 'wrong-secret-key', baseDelayMs: 1 });
    await assert.rejects(bad.request(USER, { id: '1' }), (e: Error) => /refused the API key/.test(e.message) && !e.message.includes('wrong-secret-key'));
    assert.doesNotMatch(JSON.stringify(bad), /wrong-secret-key/);
    assert.doesNotMatch(String(Object.keys(bad)), /apiKey/);
  });

  test('settings: tenant-specific env wins, key from a secret file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'healthie-'));
    const file = path.join(dir, 'key');
    fs.writeFileSync(file, 'file-key\n');
    const s = healthieSettings('acme-clinic', { HEALTHIE_API_URL: 'http://x', HEALTHIE_API_URL_ACME_CLINIC: 'http://acme', HEALTHIE_API_KEY_FILE_ACME_CLINIC: file, HEALTHIE_WEBHOOK_SECRET: 'w' });
    assert.deepEqual(s, { url: 'http://acme', apiKey: 'file-key', webhookSecret: 'w', apiVersion: DEFAULT_API_VERSION });
    fs.rmSync(dir, { recursive: true });
  });
});
