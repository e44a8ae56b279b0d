// SMART enforcement over real HTTP (KILN_AUTH=smart): who gets in, the scope x
// interaction matrix, and the tokens that must be refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPair, SignJWT, UnsecuredJWT } from 'jose';
import { startTestServer, removeDataDir, fhir, token, rawToken, bearer, type TestServer } from './support/server.ts';
import { createOrg } from '../src/store/tenants.ts';

let srv: TestServer;
let admin: Record<string, string>;

const PATCH = { 'content-type': 'application/json-patch+json' };

async function as(headers: Record<string, string>, method: string, path: string, body?: unknown, extra: Record<string, string> = {}) {
  return fhir(srv.url, method, path, body, { ...headers, ...extra });
}

/** A resource of `type` in the compartment of Patient/`patient`. */
function body(type: string, patient: string, id?: string): any {
  const subject = { reference: `Patient/${patient}` };
  switch (type) {
    case 'Patient': return { resourceType: 'Patient', ...(id ? { id } : {}), name: [{ family: 'Matrix' }] };
    case 'Encounter': return { resourceType: 'Encounter', ...(id ? { id } : {}), status: 'finished', class: { code: 'AMB' }, subject };
    case 'Observation': return { resourceType: 'Observation', ...(id ? { id } : {}), status: 'final', code: { text: 'matrix' }, subject };
    case 'MedicationStatement': return { resourceType: 'MedicationStatement', ...(id ? { id } : {}), status: 'active', medicationCodeableConcept: { text: 'aspirin' }, subject };
    case 'Group': return { resourceType: 'Group', ...(id ? { id } : {}), type: 'person', actual: true, member: [{ entity: subject }] };
    // Outside the patient compartment (CompartmentDefinition/patient lists no parameter for it).
    case 'Organization': return { resourceType: 'Organization', ...(id ? { id } : {}), name: 'Matrix Clinic' };
    // In it through `patient` (Condition.subject as a Patient), from the generic store.
    case 'Condition': return { resourceType: 'Condition', ...(id ? { id } : {}), code: { text: 'matrix' }, subject };
  }
  throw new Error(type);
}

async function createAs(headers: Record<string, string>, resource: any): Promise<string> {
  const r = await as(headers, 'POST', resource.resourceType, resource);
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

/** A fresh patient, and (for other types) a resource of the type in its compartment. */
async function target(type: string): Promise<{ patient: string; id: string }> {
  const patient = await createAs(admin, body('Patient', 'x'));
  if (type === 'Patient') return { patient, id: patient };
  return { patient, id: await createAs(admin, body(type, patient)) };
}

before(async () => {
  srv = await startTestServer({ auth: 'smart' });
  admin = bearer(await token(srv, { scope: 'system/*.cruds', clientId: 'admin-client' }));
});
after(async () => {
  await srv.stop();
  removeDataDir(srv.dataDir);
});

describe('who gets in', () => {
  test('metadata and SMART discovery are open; the CapabilityStatement carries the SMART security extension', async () => {
    const cs = await fhir(srv.url, 'GET', 'metadata');
    assert.equal(cs.status, 200);
    const security = cs.json.rest[0].security;
    assert.equal(security.service[0].coding[0].code, 'SMART-on-FHIR');
    const uris = security.extension[0].extension.map((e: any) => e.url).sort();
    assert.deepEqual(uris, ['authorize', 'introspect', 'revoke', 'token']);
    // AuditEvents are read-only for clients, so their update/patch/delete are not advertised.
    const audit = cs.json.rest[0].resource.find((r: any) => r.type === 'AuditEvent');
    assert.deepEqual(audit.interaction.map((i: any) => i.code).sort(), ['create', 'history-instance', 'history-type', 'read', 'search-type', 'vread']);
    const smart = await fetch(`${srv.url}/.well-known/smart-configuration`);
    assert.equal(smart.status, 200);
    assert.ok((await smart.json()).token_endpoint);
  });

  test('no token: 401 OperationOutcome with WWW-Authenticate: Bearer, on every kind of FHIR request', async () => {
    for (const [method, path, b] of [['GET', 'Patient'], ['GET', 'Patient/x'], ['POST', 'Patient', body('Patient', 'x')], ['GET', ''], ['GET', '_history'],
      ['POST', '', { resourceType: 'Bundle', type: 'batch', entry: [] }], ['GET', 'Patient/x/$everything'], ['GET', 'Observation/_history']] as [string, string, unknown?][]) {
      const r = await fhir(srv.url, method, path, b);
      assert.equal(r.status, 401, `${method} /${path}: ${r.text}`);
      assert.equal(r.json.resourceType, 'OperationOutcome');
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer realm="kiln"/);
    }
  });

  test('a bad Authorization header, expired, forged, alg none, HS256, wrong audience and id_token-typed tokens: 401', async () => {
    const now = Math.floor(Date.now() / 1000);
    const { privateKey } = await generateKeyPair('RS256');
    const real = await rawToken(srv, {});
    const kid = JSON.parse(Buffer.from(real.split('.')[0], 'base64url').toString()).kid;
    const cases: Record<string, string> = {
      'not bearer': 'Basic dXNlcjpwYXNz',
      'not a jwt': 'Bearer not-a-jwt',
      expired: `Bearer ${await rawToken(srv, { iat: now - 600, exp: now - 300 })}`,
      forged: `Bearer ${await new SignJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default', jti: 'j' }).setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
        .setIssuer(srv.url).setAudience(srv.url).setSubject('x').setIssuedAt().setExpirationTime('5m').sign(privateKey)}`,
      'alg none': `Bearer ${new UnsecuredJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default', jti: 'j' }).setIssuer(srv.url).setAudience(srv.url).setSubject('x').setIssuedAt().setExpirationTime('5m').encode()}`,
      'HS256': `Bearer ${await new SignJWT({ scope: 'system/*.cruds', client_id: 'x', tenant: 'default', jti: 'j' }).setProtectedHeader({ alg: 'HS256', kid, typ: 'at+jwt' })
        .setIssuer(srv.url).setAudience(srv.url).setSubject('x').setIssuedAt().setExpirationTime('5m').sign(new TextEncoder().encode('k'.repeat(32)))}`,
      'wrong audience': `Bearer ${await rawToken(srv, { aud: 'https://elsewhere.example/fhir' })}`,
      'id_token typ': `Bearer ${await rawToken(srv, {}, { typ: 'JWT' })}`,
    };
    for (const [name, header] of Object.entries(cases)) {
      const r = await fhir(srv.url, 'GET', 'Patient', undefined, { authorization: header });
      assert.equal(r.status, 401, `${name}: ${r.text}`);
      assert.equal(r.json.resourceType, 'OperationOutcome', name);
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer realm="kiln"/, name);
    }
    // The same request with a good token passes: the refusals above are about the tokens.
    assert.equal((await fhir(srv.url, 'GET', 'Patient', undefined, bearer(real))).status, 200);
  });

  test("a token bound to another tenant is 403 on this tenant's base, and works on its own", async () => {
    await createOrg(srv.db.owner, 'acme', 'Acme');
    const acmeBase = `${srv.url}/acme`;
    const acmeToken = await token(srv, { scope: 'system/*.cruds', tenant: 'acme', audience: acmeBase });
    const onDefault = await fhir(srv.url, 'GET', 'Patient', undefined, bearer(acmeToken));
    assert.equal(onDefault.status, 403, onDefault.text);
    assert.equal(onDefault.json.resourceType, 'OperationOutcome');
    const defaultToken = await token(srv, { scope: 'system/*.cruds' });
    assert.equal((await fhir(acmeBase, 'GET', 'Patient', undefined, bearer(defaultToken))).status, 403);
    assert.equal((await fhir(acmeBase, 'GET', 'Patient', undefined, bearer(acmeToken))).status, 200);
  });
});

// ---------------------------------------------------------------- the matrix

const TYPES = ['Patient', 'Encounter', 'Observation', 'MedicationStatement', 'Group', 'Condition', 'Organization'];
const INTERACTIONS = ['read', 'vread', 'search', 'history', 'create', 'update', 'patch', 'delete'] as const;
type Interaction = typeof INTERACTIONS[number];

/** The scope sets of the matrix, described independently of the server's parser. */
const SCOPES: { scope: string; level: 'patient' | 'user' | 'system' | 'none'; types: string[]; perms: string }[] = [
  { scope: 'patient/Observation.rs', level: 'patient', types: ['Observation'], perms: 'rs' },
  { scope: 'user/*.read', level: 'user', types: TYPES, perms: 'rs' },
  { scope: 'system/*.cruds', level: 'system', types: TYPES, perms: 'cruds' },
  { scope: 'patient/*.cruds', level: 'patient', types: TYPES, perms: 'cruds' },
  { scope: 'patient/Observation.read', level: 'patient', types: ['Observation'], perms: 'rs' },
  { scope: 'user/*.write', level: 'user', types: TYPES, perms: 'cud' },
  { scope: 'openid fhirUser', level: 'none', types: [], perms: '' },
];

const PERM: Record<Interaction, string> = { read: 'r', vread: 'r', search: 's', history: 'r', create: 'c', update: 'u', patch: 'u', delete: 'd' };
const OK: Record<Interaction, number> = { read: 200, vread: 200, search: 200, history: 200, create: 201, update: 200, patch: 200, delete: 204 };

/**
 * Expected status. Every cell acts on the token's own patient's compartment, so a
 * patient-level grant is refused only where there is no compartment to confine it to:
 * Organization, and a new Patient (its id is not the context patient's).
 */
function expected(s: typeof SCOPES[number], type: string, i: Interaction): number {
  if (!s.types.includes(type) || !s.perms.includes(PERM[i])) return 403;
  if (s.level === 'patient' && (type === 'Organization' || (type === 'Patient' && i === 'create'))) return 403;
  return OK[i];
}

async function run(h: Record<string, string>, type: string, i: Interaction, t: { patient: string; id: string }): Promise<{ status: number; text: string; json: any }> {
  switch (i) {
    case 'read': return as(h, 'GET', `${type}/${t.id}`);
    case 'vread': return as(h, 'GET', `${type}/${t.id}/_history/1`);
    case 'search': return as(h, 'GET', `${type}?_id=${t.id}`);
    case 'history': return as(h, 'GET', `${type}/${t.id}/_history`);
    case 'create': return as(h, 'POST', type, body(type, t.patient));
    case 'update': return as(h, 'PUT', `${type}/${t.id}`, { ...body(type, t.patient, t.id), language: 'en' });
    case 'patch': return as(h, 'PATCH', `${type}/${t.id}`, [{ op: 'add', path: '/language', value: 'de' }], PATCH);
    case 'delete': return as(h, 'DELETE', `${type}/${t.id}`);
  }
}

describe('scope x interaction matrix', () => {
  for (const s of SCOPES) {
    test(`${s.scope}: ${TYPES.length} types x ${INTERACTIONS.length} interactions`, async () => {
      const got: Record<string, number> = {};
      const want: Record<string, number> = {};
      for (const type of TYPES) {
        for (const i of INTERACTIONS) {
          const t = await target(type);
          const h = bearer(await token(srv, { scope: s.scope, patient: s.level === 'patient' ? t.patient : undefined }));
          const r = await run(h, type, i, t);
          got[`${type} ${i}`] = r.status;
          want[`${type} ${i}`] = expected(s, type, i);
          if (r.status >= 400) assert.equal(r.json?.resourceType, 'OperationOutcome', `${type} ${i}: ${r.text}`);
          if (i === 'search' && r.status === 200) assert.deepEqual(r.json.entry.map((e: any) => e.resource.id), [t.id], `${type} search`);
          // A refused write changed nothing; an allowed one did.
          if (['update', 'patch', 'delete'].includes(i)) {
            const after = await as(admin, 'GET', `${type}/${t.id}`);
            if (r.status >= 400) assert.equal(after.json?.meta?.versionId, '1', `${type} ${i} refused but stored`);
            else assert.equal(after.status, i === 'delete' ? 410 : 200);
          }
        }
      }
      assert.deepEqual(got, want);
    });
  }
});
