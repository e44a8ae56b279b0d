// Request bodies a client gets wrong are 400 OperationOutcomes that store nothing, whichever
// interaction carries them (create, update, PATCH, a transaction or batch Bundle entry, a
// Bundle's PATCH Binary) and whether the body is read inline or, when big, off the main
// thread (src/fhir/body.ts, src/fhir/bodyPool.ts). Issue 21, items 5, 7 and 9.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';
import { validate } from '../src/fhir/validate.ts';
import { FhirError } from '../src/fhir/outcome.ts';
import { OFF_THREAD_BYTES, readRequestBody, BodyPoolBusy } from '../src/fhir/bodyPool.ts';

let srv: TestServer;
before(async () => { srv = await startTestServer(); });
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

const FHIR_JSON = 'application/fhir+json';
const PATCH_JSON = 'application/json-patch+json';

async function send(method: string, path: string, body: string | Buffer, type = FHIR_JSON) {
  const res = await fetch(`${srv.url}/${path}`, { method, headers: { 'content-type': type, accept: FHIR_JSON }, body: typeof body === 'string' ? body : new Uint8Array(body) });
  const text = await res.text();
  let json: any;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}

const bytes = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));

/** A narrative long enough to send a body off the main thread. */
const PADDING = `,"text":{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">${'x'.repeat(OFF_THREAD_BYTES + 1024)}</div>"}`;

let seq = 0;
const tag = () => `body-${process.pid}-${++seq}`;

/** How many Patients carry the identifier: 0 proves a refused create stored nothing. */
async function stored(mark: string): Promise<number> {
  const r = await fhir(srv.url, 'GET', `Patient?identifier=urn:test|${mark}&_total=accurate`);
  assert.equal(r.status, 200, r.text);
  return r.json.total;
}

/** A stored Patient to update and patch; returns its id. */
async function patient(mark: string): Promise<string> {
  const r = await fhir(srv.url, 'POST', 'Patient', { resourceType: 'Patient', identifier: [{ system: 'urn:test', value: mark }], name: [{ family: 'Before' }] });
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

/** The stored Patient is still its version 1, family 'Before'. */
async function unchanged(id: string) {
  const r = await fhir(srv.url, 'GET', `Patient/${id}`);
  assert.equal(r.json.meta.versionId, '1');
  assert.equal(r.json.name[0].family, 'Before');
}

const assertRefused = (r: { status: number; json: any; text: string }, why: RegExp, label: string) => {
  assert.equal(r.status, 400, `${label}: ${r.text.slice(0, 300)}`);
  assert.equal(r.json?.resourceType, 'OperationOutcome', label);
  const said = r.json.issue.map((i: any) => `${i.diagnostics ?? ''} ${i.details?.text ?? ''}`).join(' | ');
  assert.match(said, why, label);
};

// ------------------------------------------------------------------ the interactions
// Each places a raw JSON value (text or bytes) where a client's data goes, sends it, and
// checks that a 400 stored nothing. `big` pads the body past OFF_THREAD_BYTES.

type Raw = string | Buffer;
const asBuf = (v: Raw) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v);

/** A Patient whose name[0] gets `member` (`"key":value` text or bytes) spliced in. */
const patientText = (mark: string, member: Raw, opts: { id?: string; big?: boolean } = {}) => bytes(
  `{"resourceType":"Patient",${opts.id ? `"id":"${opts.id}",` : ''}"identifier":[{"system":"urn:test","value":"${mark}"}]${opts.big ? PADDING : ''},"name":[{`,
  [...asBuf(member)], '}]}');

const interactions: { name: string; run: (member: Raw, big: boolean) => Promise<{ status: number; json: any; text: string }>; check: () => Promise<void> }[] = [];
{
  let mark = '';
  let id = '';
  interactions.push({
    name: 'create',
    run: async (member, big) => { mark = tag(); return send('POST', 'Patient', patientText(mark, member, { big })); },
    check: async () => assert.equal(await stored(mark), 0),
  });
  interactions.push({
    name: 'update',
    run: async (member, big) => { id = await patient(tag()); return send('PUT', `Patient/${id}`, patientText(tag(), member, { id, big })); },
    check: async () => unchanged(id),
  });
  interactions.push({
    name: 'PATCH (the value of an add)',
    run: async (member, big) => {
      id = await patient(tag());
      const pad = big ? `,{"op":"test","path":"/id","value":"${id}"}`.repeat(Math.ceil(OFF_THREAD_BYTES / 40)) : '';
      return send('PATCH', `Patient/${id}`, bytes(`[{"op":"add","path":"/name/0","value":{`, [...asBuf(member)], `}}${pad}]`), PATCH_JSON);
    },
    check: async () => unchanged(id),
  });
  interactions.push({
    name: 'transaction Bundle entry',
    run: async (member, big) => {
      mark = tag();
      const ok = `{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:test","value":"${mark}"}]},"request":{"method":"POST","url":"Patient"}}`;
      return send('POST', '', bytes(`{"resourceType":"Bundle","type":"transaction","entry":[${ok},{"resource":`, [...patientText(mark, member, { big })], `,"request":{"method":"POST","url":"Patient"}}]}`));
    },
    check: async () => assert.equal(await stored(mark), 0),
  });
  interactions.push({
    name: 'transaction Bundle PATCH (Binary)',
    run: async (member, big) => {
      id = await patient(tag());
      const doc = bytes(`[{"op":"add","path":"/name/0","value":{`, [...asBuf(member)], '}}]');
      const pad = big ? `,{"resource":{"resourceType":"Patient"${PADDING}},"request":{"method":"POST","url":"Patient"}}` : '';
      return send('POST', '', `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Binary","contentType":"${PATCH_JSON}","data":"${doc.toString('base64')}"},"request":{"method":"PATCH","url":"Patient/${id}"}}${pad}]}`);
    },
    check: async () => unchanged(id),
  });
}

/** Runs one bad member through every interaction, inline and off the main thread. */
async function refusedEverywhere(member: Raw, why: RegExp, label: string) {
  for (const big of [false, true]) {
    for (const i of interactions) {
      const r = await i.run(member, big);
      // A transaction answers for its failed entry; the Binary's own parse says why inside.
      assertRefused(r, why, `${label} / ${i.name}${big ? ' / big body' : ''}`);
      await i.check();
    }
  }
}

describe('Object.prototype names are unknown elements (item 5)', () => {
  const names = Object.getOwnPropertyNames(Object.prototype);
  test('the names under test include the reported ones', () => {
    for (const n of ['toString', 'constructor', '__proto__', 'hasOwnProperty', 'valueOf']) assert.ok(names.includes(n), n);
  });

  test('a key named after an Object.prototype member (bare or _-prefixed) is a 400 in every interaction; nothing is stored', async () => {
    for (const name of names) {
      for (const key of [name, `_${name}`]) {
        await refusedEverywhere(`"family":"A","${key}":{"x":1}`, new RegExp(`Invalid additional property "${key}"`), key);
      }
    }
  });

  test('at the top level of a create and of a transaction entry too', async () => {
    for (const name of names) {
      const mark = tag();
      const r = await send('POST', 'Patient', `{"resourceType":"Patient","identifier":[{"system":"urn:test","value":"${mark}"}],"${name}":{"x":1}}`);
      assertRefused(r, /Invalid additional property/, name);
      const b = await send('POST', '', `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:test","value":"${mark}"}],"${name}":1},"request":{"method":"POST","url":"Patient"}}]}`);
      assertRefused(b, /Invalid additional property/, `${name} in a Bundle`);
      assert.equal(await stored(mark), 0, name);
    }
  });

  test('a JSON Patch path through an Object.prototype name is a 400 (it would set a prototype, not an element)', async () => {
    for (const name of names) {
      const id = await patient(tag());
      for (const path of [`/${name}`, `/name/0/${name}`, `/name/0/${name}/family`]) {
        const r = await send('PATCH', `Patient/${id}`, JSON.stringify([{ op: 'add', path, value: { family: 'Evil' } }]), PATCH_JSON);
        assertRefused(r, new RegExp(`names "${name}"`), path);
      }
      await unchanged(id);
    }
  });

  test('validate() refuses them as own keys wherever a resource comes from (a PATCH result, the importer)', () => {
    for (const name of names) {
      for (const text of [`{"resourceType":"Patient","${name}":{"x":1}}`, `{"resourceType":"Patient","name":[{"family":"A","_${name}":{}}]}`,
        `{"resourceType":"Patient","contained":[{"resourceType":"Patient","${name}":1}]}`]) {
        assert.throws(() => validate(JSON.parse(text)), (e: unknown) => e instanceof FhirError && e.status === 400 && /Invalid additional property/.test(e.message + JSON.stringify(e.issues)), text);
      }
    }
    assert.doesNotThrow(() => validate(JSON.parse('{"resourceType":"Patient","name":[{"family":"A"}]}')));
  });

  test('a key that starts like a choice element but names none of its types is refused beside a valid one (valueBogus)', async () => {
    const obs = (extra: Record<string, unknown>) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueQuantity: { value: 1 }, ...extra });
    const refused: [string, object][] = [
      ['Observation.valueBogus', obs({ valueBogus: 1 })],
      ['Observation.valueOf', obs({ valueOf: { x: 1 } })],
      ['Observation.effectiveBogus', obs({ effectiveDateTime: '2020-01-01', effectiveBogus: 1 })],
      ['Observation.component[0].valueFoo', obs({ component: [{ code: { text: 'c' }, valueString: 'a', valueFoo: 'b' }] })],
      ['Observation.extension[0].valueBogus', obs({ extension: [{ url: 'http://example.org/x', valueString: 'a', valueBogus: 'b' }] })],
      ['Observation.contained[0].valueBogus', obs({ contained: [{ resourceType: 'Observation', id: 'c', status: 'final', code: { text: 'x' }, valueBoolean: true, valueBogus: 1 }] })],
    ];
    for (const [where, body] of refused) {
      const r = await fhir(srv.url, 'POST', 'Observation', body);
      assert.equal(r.status, 400, `${where}: ${r.text}`);
      assert.ok(r.json.issue.some((i: any) => i.expression?.includes(where)), `${where}: ${r.text}`);
      const b = await fhir(srv.url, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: body, request: { method: 'POST', url: 'Observation' } }] });
      assert.equal(b.status, 400, `${where} in a Bundle: ${b.text}`);
    }
    for (const body of [obs({}), obs({ effectivePeriod: { start: '2020-01-01' }, extension: [{ url: 'http://example.org/x', valueDateTime: '2020-01-01' }] }),
      obs({ component: [{ code: { text: 'c' }, valueCodeableConcept: { text: 'a' } }], _status: { extension: [{ url: 'http://example.org/y', valueBoolean: true }] } })]) {
      const r = await fhir(srv.url, 'POST', 'Observation', body);
      assert.equal(r.status, 201, r.text);
    }
  });

  test('Bundle entry methods and resource types named after Object.prototype members are refused per entry, not a 500', async () => {
    for (const name of names) {
      const r = await send('POST', '', JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [
        { request: { method: name, url: 'Patient' } },
        { request: { method: 'GET', url: `${name}/1` } },
        { request: { method: 'POST', url: name }, resource: { resourceType: 'Patient' } },
      ] }));
      assert.equal(r.status, 200, `${name}: ${r.text}`);
      assert.deepEqual(r.json.entry.map((e: any) => e.response.status), ['400', '404', '404'], name);
    }
  });

  test('an unknown key still gets the same answer', async () => {
    const r = await send('POST', 'Patient', '{"resourceType":"Patient","bogusKey":{"x":1}}');
    assert.equal(r.status, 400);
  });
});

describe('bodies that become 500s elsewhere are 400s here (item 9)', () => {
  const C0 = [0, 1, 7, 8, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f];
  test('C0 control characters but tab, CR and LF are refused in strings (FHIR string)', async () => {
    for (const c of C0) {
      const esc = `\\u${c.toString(16).padStart(4, '0')}`;
      await refusedEverywhere(`"family":"a${esc}b"`, /control character/, `family with ${esc}`);
    }
    for (const esc of ['\\b', '\\f']) await refusedEverywhere(`"family":"a${esc}b"`, /control character/, esc);
    await refusedEverywhere(`"fam\\u0000ily":"a"`, /control character/, 'NUL in a key');
  });

  test('tab, CR, LF and other escapes are accepted and stored as sent', async () => {
    const mark = tag();
    const r = await send('POST', 'Patient', patientText(mark, '"family":"a\\tb\\r\\nc\\u00e9\\ud83d\\ude00\\/\\\\u0000"'));
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.name[0].family, 'a\tb\r\nc\u00e9\u{1F600}/\\u0000');
  });

  test('a lone surrogate is refused, a pair accepted', async () => {
    for (const s of ['\\ud800', '\\udbff', '\\udc00', '\\udfff', '\\udc00\\ud800', 'a\\ud800', '\\ud800a']) {
      await refusedEverywhere(`"family":"${s}"`, /unpaired UTF-16 surrogate/, s);
    }
  });

  test('nesting of 10,000 levels (and of 101) is refused without recursion', async () => {
    for (const n of [10_000, 200_000]) {
      await refusedEverywhere(`"family":"a","extension":${'['.repeat(n)}${']'.repeat(n)}`, /nested deeper than 100 levels/, `${n} arrays`);
    }
    const objects = (n: number) => `"extension":[${'{"url":"http://x","extension":['.repeat(n)}${']}'.repeat(n)}]`;
    await refusedEverywhere(objects(5_000), /nested deeper than 100 levels/, '5,000 extensions');
    // name[0] (4 levels: resource, name, name[0], ...): 101 containers in all.
    await refusedEverywhere(`"family":"a","extension":${'['.repeat(98)}${']'.repeat(98)}`, /nested deeper than 100 levels/, '101 levels');
  });

  test('invalid UTF-8 is refused, not replaced with U+FFFD', async () => {
    const cases: [string, number[]][] = [
      ['0xFF', [0xff]], ['a lone continuation byte', [0x80]], ['an overlong slash', [0xc0, 0xaf]],
      ['an encoded surrogate', [0xed, 0xa0, 0x80]], ['a truncated sequence', [0xe2, 0x82]], ['past U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
    ];
    for (const [label, b] of cases) await refusedEverywhere(bytes('"family":"a', b, 'b"'), /not valid UTF-8/, label);
  });

  test('invalid UTF-8 at the very end of a body', async () => {
    const r = await send('POST', 'Patient', bytes('{"resourceType":"Patient"}', [0xc3]));
    assertRefused(r, /not valid UTF-8/, 'trailing byte');
  });
});

describe('large bodies are read off the main thread (item 7)', () => {
  test('a 9 MB refused Patient and a 2 MB accepted one do not stall the event loop', async (t) => {
    const invalid = JSON.stringify({ resourceType: 'Patient', identifier: Array.from({ length: 95_000 }, (_, i) => ({ system: 'urn:test', value: `v${i}-${'x'.repeat(61)}`, bogus: i === 94_999 ? 1 : undefined })) });
    // Three photos: Medplum refuses a string over 1 MB.
    const photo = { contentType: 'image/png', data: Buffer.alloc(500_000, 7).toString('base64') };
    const valid = JSON.stringify({ resourceType: 'Patient', photo: [photo, photo, photo] });
    assert.ok(invalid.length > 9e6 && invalid.length < 10e6, `${invalid.length}`);
    await send('POST', 'Patient', valid); // the workers are warm
    for (const [body, status] of [[invalid, 400], [valid, 201]] as const) {
      const h = monitorEventLoopDelay({ resolution: 5 });
      h.enable();
      const r = await send('POST', 'Patient', body);
      h.disable();
      assert.equal(r.status, status, r.text.slice(0, 300));
      const maxMs = h.max / 1e6;
      t.diagnostic(`${(body.length / 1e6).toFixed(1)} MB body, status ${r.status}: event loop held at most ${maxMs.toFixed(0)} ms`);
      // Inline, the 9 MB body held the loop for over a second; off the thread the main
      // thread only receives and copies it (generous bound for a shared test machine).
      assert.ok(maxMs < 400, `event loop held for ${maxMs.toFixed(0)} ms by a ${(body.length / 1e6).toFixed(1)} MB body`);
    }
  });

  test('the workers answer as the inline parse does', async () => {
    const member = '"family":"A","toString":1';
    const small = await send('POST', 'Patient', patientText(tag(), member));
    const big = await send('POST', 'Patient', patientText(tag(), member, { big: true }));
    assert.equal(small.status, 400);
    assert.equal(big.status, 400);
    assert.deepEqual(big.json.issue, small.json.issue);
    const mark = tag();
    const ok = await send('POST', 'Patient', patientText(mark, '"family":"Big"', { big: true }));
    assert.equal(ok.status, 201, ok.text.slice(0, 300));
    assert.equal(await stored(mark), 1);
  });

  test('the queue for the workers is bounded: beyond it, 503 (busy) rather than unbounded memory', async () => {
    const body = Buffer.from(JSON.stringify({ resourceType: 'Patient', identifier: Array.from({ length: 4_000 }, (_, i) => ({ system: 'urn:test', value: `v${i}` })) }));
    const results = await Promise.allSettled(Array.from({ length: 200 }, () => readRequestBody(body, { kind: 'resource', type: 'Patient' })));
    const busy = results.filter((r) => r.status === 'rejected' && r.reason instanceof BodyPoolBusy);
    const done = results.filter((r) => r.status === 'fulfilled');
    assert.ok(busy.length > 0, 'some were refused');
    assert.ok(done.length > 0, 'the others were read');
    assert.equal(busy.length + done.length, results.length);
    assert.equal((busy[0] as PromiseRejectedResult).reason.status, 503);
  });

  test('a body over KILN_BODY_LIMIT is a 413 and is not buffered', async () => {
    const small = await startTestServer({ bodyLimit: '1mb' });
    try {
      const before = process.memoryUsage().arrayBuffers;
      let sent = 0;
      const chunk = Buffer.alloc(1 << 20, 0x20);
      // 64 MB, chunked (no Content-Length for the server to refuse up front).
      const stream = new ReadableStream({
        pull(c) { if (sent >= 64 << 20) c.close(); else { sent += chunk.length; c.enqueue(chunk); } },
      });
      const res = await fetch(`${small.url}/Patient`, { method: 'POST', headers: { 'content-type': FHIR_JSON }, body: stream, duplex: 'half' } as RequestInit);
      assert.equal(res.status, 413);
      assert.equal((await res.json()).resourceType, 'OperationOutcome');
      const grown = process.memoryUsage().arrayBuffers - before;
      assert.ok(grown < 16 << 20, `buffers grew by ${(grown / 1e6).toFixed(1)} MB for a 1 MB limit`);
    } finally {
      await small.stop();
      removeDataDir(small.dataDir);
    }
  });
});
