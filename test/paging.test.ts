// Paging links (search.html#paging, http.html#history): every paged Bundle links self,
// first, next and previous; walking next to the end and previous back to the start
// gives the same pages, for searches, system search, history and $everything.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, removeDataDir, fhir, type TestServer } from './support/server.ts';

let srv: TestServer;
const patients: string[] = [];
let updated = '';

before(async () => {
  srv = await startTestServer();
  const post = async (body: object): Promise<string> => {
    const r = await fhir(srv.url, 'POST', (body as any).resourceType, body);
    assert.equal(r.status, 201, r.text);
    return r.json.id;
  };
  // Few distinct birth dates (ties) and some without one (sorted by the sentinel).
  for (let i = 0; i < 22; i++) {
    patients.push(await post({
      resourceType: 'Patient', name: [{ family: `Fam${i % 5}`, given: [`G${i}`] }],
      ...(i % 7 === 6 ? {} : { birthDate: `19${70 + (i % 4)}-01-0${1 + (i % 2)}` }),
    }));
  }
  // Observations of the first two patients: tied and missing dates, one code for most.
  for (let i = 0; i < 23; i++) {
    await post({
      resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: i % 6 === 5 ? '29463-7' : '8867-4' }] },
      subject: { reference: `Patient/${patients[i % 2]}` },
      ...(i % 8 === 7 ? {} : { effectiveDateTime: `2024-0${1 + (i % 3)}-1${i % 4}T08:00:00Z` }),
      valueQuantity: { value: 60 + i, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
  }
  for (let i = 0; i < 4; i++) {
    await post({ resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${patients[0]}` } });
  }
  // Nine versions of one patient, for instance history.
  updated = patients[3];
  for (let v = 2; v <= 9; v++) {
    const r = await fhir(srv.url, 'PUT', `Patient/${updated}`, { resourceType: 'Patient', id: updated, name: [{ family: `Fam3v${v}` }], birthDate: '1973-01-02' });
    assert.equal(r.status, 200, r.text);
  }
});
after(async () => { await srv.stop(); removeDataDir(srv.dataDir); });

interface Page { url: string; entries: string[]; links: Record<string, string> }

/** A URL's path and its query pairs in a canonical order. */
const queryOf = (url: string) => { const u = new URL(url); return [u.pathname.replace(/\/$/, ''), [...u.searchParams].sort()]; };

async function getPage(url: string): Promise<Page> {
  const r = await fetch(url, { headers: { accept: 'application/fhir+json' } });
  const body: any = await r.json();
  assert.equal(r.status, 200, `${url}: ${JSON.stringify(body)}`);
  const links: Record<string, string> = {};
  for (const l of body.link ?? []) {
    assert.equal(links[l.relation], undefined, `one ${l.relation} link`);
    links[l.relation] = l.url;
  }
  assert.deepEqual(queryOf(links.self), queryOf(url), 'self is the page asked for');
  // An entry is its resource and, in a history, its version.
  const entries = (body.entry ?? []).map((e: any) => `${e.fullUrl} ${e.response?.etag ?? ''}`);
  return { url, entries, links };
}

/**
 * Walks next to the end and previous back to the start: the same pages in reverse, the
 * first without previous, every later one with it; returns the forward pages' entries.
 */
async function walkBothWays(path: string, minPages = 4): Promise<string[][]> {
  const forward: Page[] = [await getPage(`${srv.url}/${path}`)];
  assert.equal(forward[0].links.previous, undefined, `${path}: the first page has no previous`);
  assert.ok(forward[0].links.first, `${path}: first link`);
  while (forward[forward.length - 1].links.next) forward.push(await getPage(forward[forward.length - 1].links.next));
  assert.ok(forward.length >= minPages, `${path}: ${forward.length} pages, wanted at least ${minPages}`);
  for (const p of forward.slice(1)) assert.ok(p.links.previous, `${path}: a page reached through a cursor has previous`);
  for (const p of forward.slice(0, -1)) assert.ok(p.entries.length > 0, `${path}: no empty page before the last`);
  // Every entry once, across the pages.
  const all = forward.flatMap((p) => p.entries);
  assert.equal(new Set(all).size, all.length, `${path}: an entry on two pages`);

  const back: Page[] = [forward[forward.length - 1]];
  while (back[back.length - 1].links.previous) back.push(await getPage(back[back.length - 1].links.previous));
  assert.equal(back.length, forward.length, `${path}: as many pages back as forward`);
  back.reverse();
  back.forEach((p, i) => assert.deepEqual(p.entries, forward[i].entries, `${path}: page ${i + 1} back and forward`));
  // The first page reached going back is the first page, with first's and next's pages as before.
  assert.equal(back[0].links.previous, undefined);
  assert.deepEqual((await getPage(back[0].links.first)).entries, forward[0].entries, `${path}: first`);
  assert.deepEqual((await getPage(back[0].links.next)).entries, forward[1].entries, `${path}: next of a page reached back`);
  return forward.map((p) => p.entries);
}

/** The whole listing in one page. */
async function onePage(path: string): Promise<string[]> {
  const p = await getPage(`${srv.url}/${path}`);
  assert.equal(p.links.next, undefined, `${path} fits one page`);
  return p.entries;
}

const ids = (entries: string[]) => entries.map((e) => e.split(' ')[0].replace(/^.*\/fhir\//, ''));

describe('type search', () => {
  test('default sort: no criteria (23 Observations in fives) and a driving criterion (in threes)', async () => {
    const pages = await walkBothWays('Observation?_count=5');
    assert.equal(pages.length, 5);
    assert.deepEqual(pages.flat(), await onePage('Observation?_count=100'));
    const coded = await walkBothWays('Observation?code=8867-4&_count=3');
    assert.deepEqual(coded.flat(), await onePage('Observation?code=8867-4&_count=100'));
    assert.equal(coded.flat().length, 20);
  });

  test('_sort=-date (ties and missing dates) and with a driving criterion', async () => {
    const pages = await walkBothWays('Observation?_sort=-date&_count=4');
    assert.deepEqual(pages.flat(), await onePage('Observation?_sort=-date&_count=100'));
    await walkBothWays(`Observation?subject=Patient/${patients[0]}&_sort=-date&_count=2`);
  });

  test('_sort=birthdate,-_id and -birthdate,family: several keys, each way', async () => {
    for (const sort of ['birthdate,-_id', '-birthdate,family', 'family,-birthdate,_id']) {
      const pages = await walkBothWays(`Patient?_sort=${sort}&_count=4`);
      assert.deepEqual(pages.flat(), await onePage(`Patient?_sort=${sort}&_count=100`), sort);
    }
    // birthdate ascending, then id descending among equal birth dates
    const listing = ids(await onePage('Patient?_sort=birthdate,-_id&_count=100'));
    const birth = new Map<string, string>();
    for (const e of (await fhir(srv.url, 'GET', 'Patient?_count=100')).json.entry) birth.set(`Patient/${e.resource.id}`, e.resource.birthDate ?? '9999');
    for (let i = 1; i < listing.length; i++) {
      const [a, b] = [listing[i - 1], listing[i]];
      assert.ok(birth.get(a)! < birth.get(b)! || (birth.get(a) === birth.get(b) && a > b), `${a} before ${b}`);
    }
  });

  test('the query and _count survive in every link, _total too', async () => {
    const p = await getPage(`${srv.url}/Observation?code=8867-4&_sort=-date&_count=3&_total=accurate`);
    const next = await getPage(p.links.next);
    for (const rel of ['self', 'first', 'previous', 'next']) {
      const u = new URL(next.links[rel]);
      assert.equal(u.searchParams.get('code'), '8867-4', rel);
      assert.equal(u.searchParams.get('_sort'), '-date', rel);
      assert.equal(u.searchParams.get('_count'), '3', rel);
      assert.equal(u.searchParams.get('_page') === null, rel === 'first', rel);
    }
  });
});

describe('system search, history, $everything', () => {
  test('system search over Patient and Observation', async () => {
    const pages = await walkBothWays('?_type=Patient,Observation&_count=7');
    assert.deepEqual(pages.flat(), await onePage('?_type=Patient,Observation&_count=100'));
    assert.equal(pages.flat().length, 45);
  });

  test('system, type and instance history', async () => {
    const system = await walkBothWays('_history?_count=6');
    assert.deepEqual(system.flat(), await onePage('_history?_count=100'));
    assert.equal(system.flat().length, 22 + 23 + 4 + 8);
    const type = await walkBothWays('Patient/_history?_count=4');
    assert.equal(type.flat().length, 30);
    const instance = await walkBothWays(`Patient/${updated}/_history?_count=2`);
    assert.deepEqual(instance.flat().map((e) => e.split(' ')[1]), [9, 8, 7, 6, 5, 4, 3, 2, 1].map((v) => `W/"${v}"`));
  });

  test('Patient/[id]/$everything and Patient/$everything', async () => {
    const mine = await walkBothWays(`Patient/${patients[0]}/$everything?_count=3`);
    // The patient, its 12 Observations and 4 Encounters.
    assert.equal(mine.flat().length, 17);
    assert.deepEqual(mine.flat(), await onePage(`Patient/${patients[0]}/$everything?_count=100`));
    await walkBothWays('Patient/$everything?_count=9');
  });
});

describe('cursors', () => {
  const decode = (url: string) => JSON.parse(Buffer.from(new URL(url).searchParams.get('_page')!, 'base64url').toString('utf8'));
  const encode = (c: unknown) => Buffer.from(JSON.stringify(c)).toString('base64url');
  const withPage = (url: string, page: string) => { const u = new URL(url); u.searchParams.set('_page', page); return u.toString(); };

  test('a tampered cursor is a 400 OperationOutcome, going either way', async () => {
    const lists = ['Observation?_count=3', 'Observation?code=8867-4&_count=3', 'Observation?_sort=-date&_count=3',
      'Patient?_sort=birthdate,-_id&_count=3', '?_type=Patient,Observation&_count=3', '_history?_count=3',
      `Patient/${updated}/_history?_count=2`, `Patient/${patients[0]}/$everything?_count=3`];
    for (const list of lists) {
      const second = await getPage((await getPage(`${srv.url}/${list}`)).links.next);
      for (const rel of ['next', 'previous']) {
        const url = second.links[rel];
        const c = decode(url);
        const tampered = [
          'garbage', '%00', encode(c.slice(1)), encode(['?', ...c.slice(1)]), encode([c[0]]), encode([...c, 'x']),
          encode([c[0], ...c.slice(1, -1), 'a\u0000']), encode(c.map((x: string, i: number) => (i === 1 ? 5 : x))), encode({ dir: c[0] }),
        ];
        // A value that does not cast to its key's type (a date, an instant).
        if (list.includes('date') || list.includes('_history')) tampered.push(encode([c[0], 'not-a-time', ...c.slice(2)]));
        // Ids and types outside what the server makes.
        if (list.startsWith('?') || list.includes('$everything') || list.includes('_history')) {
          tampered.push(encode(c.map((x: string) => (['Patient', 'Observation', 'Encounter'].includes(x) ? 'toString' : x))));
        }
        for (const page of tampered) {
          const r = await fetch(withPage(url, page), { headers: { accept: 'application/fhir+json' } });
          const body: any = await r.json();
          assert.equal(r.status, 400, `${list} ${rel} ${page}: ${JSON.stringify(body)}`);
          assert.equal(body.resourceType, 'OperationOutcome');
        }
      }
    }
  });

  test('a cursor is opaque and carries its direction', async () => {
    const first = await getPage(`${srv.url}/Patient?_sort=birthdate,-_id&_count=3`);
    const second = await getPage(first.links.next);
    for (const rel of ['self', 'next', 'previous']) assert.match(new URL(second.links[rel]).searchParams.get('_page')!, /^[A-Za-z0-9_-]+$/);
    const third = await getPage(second.links.next);
    // The same key read the other way: after the second page's first row, and before the first page's last.
    const after = await getPage(withPage(second.url, encode(['>', ...decode(second.links.previous).slice(1)])));
    assert.deepEqual(after.entries, [...second.entries.slice(1), third.entries[0]]);
    const before = await getPage(withPage(second.url, encode(['<', ...decode(first.links.next).slice(1)])));
    assert.deepEqual(before.entries, first.entries.slice(0, -1));
    assert.equal(before.links.previous, undefined, 'nothing precedes it');
  });
});
