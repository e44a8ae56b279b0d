// `kiln auth ...`: register clients and users, list and revoke clients, disable, enable
// and re-password users, mint a local admin token or an EHR launch, revoke one access
// token, rotate the signing keys. Works beside a running server.
import crypto from 'node:crypto';
import fs from 'node:fs';
import readline from 'node:readline';
import { decodeJwt, importJWK, type JSONWebKeySet, type JWK } from 'jose';
import { loadConfig, type Config } from '../config.ts';
import { cliConfig, serverBaseUrl } from '../runtime.ts';
import { tenantBase } from './urls.ts';
import { openDatabase, type Database } from '../store/database.ts';
import { findOrg } from '../store/tenants.ts';
import { insertClient, listClients, revokeClient, type ClientAuthMethod } from '../store/authClients.ts';
import { insertUser, listUsers, setUserDisabled, setUserPassword } from '../store/authUsers.ts';
import { clearUserLoginFailures } from '../store/authLoginFailures.ts';
import { revokeTokenAsOwner } from '../store/authRevocation.ts';
import { insertLaunch } from '../store/authFlow.ts';
import { keyRingFor, MAX_TOKEN_SECONDS, REVOKED_REFRESH_MS } from './keys.ts';
import { mintAdminToken } from './tokens.ts';
import { hashPassword, randomToken, sha256 } from './secrets.ts';
import { parseClinicalScope } from './scopeGrant.ts';
import { jwksUrlRefusal } from './clientJwks.ts';
import { commandWords, usageError, usageOf, wantsHelp } from '../cliUsage.ts';

const USAGE = `usage:
  kiln auth client add --tenant <slug> --name <name> --scope "<scopes>" one of:
        --jwks <file|https-url> [--redirect-uri <uri>]...   private_key_jwt (Backend Services, or an asymmetric app)
        --secret [--redirect-uri <uri>]...                   client_secret_basic (the secret is printed once)
        --public --redirect-uri <uri>...                     public app (PKCE, no secret)
  kiln auth client list [--tenant <slug>]
  kiln auth client revoke <client_id>
  kiln auth user add --tenant <slug> <username> [--fhir-user Practitioner/123]   password from KILN_AUTH_PASSWORD, a prompt or a line of stdin
  kiln auth user list [--tenant <slug>]
  kiln auth user disable|enable --tenant <slug> <username>   disabling also revokes the user's refresh tokens
  kiln auth user password --tenant <slug> <username>   new password from KILN_AUTH_PASSWORD or a prompt; revokes the user's refresh tokens
  kiln auth token [--tenant default] [--scope "system/*.cruds"] [--minutes 15] [--patient <id>] [--fhir-user <ref>] [--aud <fhir-base>]
  kiln auth token revoke <jti|access token> [--tenant default]   refused by every server within 5 s (the jti is in introspection)
  kiln auth launch --tenant <slug> --client <client_id> --patient <id> [--user <username>] [--encounter <id>] [--minutes 60]
        EHR launch id for one authorize request of that client (and that user, when given)
  kiln auth rotate-keys                                   new signing key; the old one stays published until its tokens expire`;

const FLAGS_WITHOUT_VALUE = new Set(['--public', '--secret']);

/** Each command's options and positional arguments: anything else is a usage error, never ignored. */
const COMMANDS: Record<string, { flags: string[]; positional: number }> = {
  'client add': { flags: ['--tenant', '--name', '--scope', '--jwks', '--secret', '--public', '--redirect-uri'], positional: 0 },
  'client list': { flags: ['--tenant'], positional: 0 },
  'client revoke': { flags: [], positional: 1 },
  'user add': { flags: ['--tenant', '--fhir-user'], positional: 1 },
  'user list': { flags: ['--tenant'], positional: 0 },
  'user disable': { flags: ['--tenant'], positional: 1 },
  'user enable': { flags: ['--tenant'], positional: 1 },
  'user password': { flags: ['--tenant'], positional: 1 },
  'token': { flags: ['--tenant', '--scope', '--minutes', '--patient', '--fhir-user', '--aud'], positional: 0 },
  'token revoke': { flags: ['--tenant'], positional: 1 },
  'launch': { flags: ['--tenant', '--client', '--patient', '--user', '--encounter', '--minutes'], positional: 0 },
  'rotate-keys': { flags: [], positional: 0 },
};

/** Why args cannot be those of `name`, if they cannot: an option it does not take, or too many arguments. */
function argsError(name: string, args: Args): string | undefined {
  const spec = COMMANDS[name];
  const unknown = [...args.flags.keys()].find((f) => !spec.flags.includes(f));
  if (unknown) return `kiln auth ${name} does not take ${unknown}`;
  if (args.positional.length > spec.positional) return `unexpected '${args.positional[spec.positional]}'`;
  return undefined;
}

interface Args { positional: string[]; flags: Map<string, string[]> }

function parseArgs(argv: string[]): Args {
  const positional: string[] = [];
  const flags = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { positional.push(a); continue; }
    const value = FLAGS_WITHOUT_VALUE.has(a) ? 'true' : argv[++i];
    if (value === undefined) throw new UsageError(`${a} needs a value`);
    flags.set(a, [...(flags.get(a) ?? []), value]);
  }
  return { positional, flags };
}

class UsageError extends Error {}

const one = (args: Args, flag: string) => args.flags.get(flag)?.at(-1);
const many = (args: Args, flag: string) => (args.flags.get(flag) ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);

async function orgOf(db: Database, slug: string | undefined) {
  if (!slug) throw new UsageError('--tenant is required');
  const org = await findOrg(db.owner, slug);
  if (!org) throw new UsageError(`unknown tenant '${slug}'`);
  return org;
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth'];

/** A JWKS (or single JWK) file of public keys, each importable as RS384 or ES384. */
async function readJwksFile(file: string): Promise<JSONWebKeySet> {
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  const keys: JWK[] = Array.isArray(parsed.keys) ? parsed.keys : [parsed];
  if (keys.length === 0) throw new UsageError(`${file} holds no keys`);
  for (const k of keys) {
    if (PRIVATE_MEMBERS.some((m) => m in k)) throw new UsageError(`${file} holds a private key; register the public key only`);
    if (k.kty !== 'RSA' && k.kty !== 'EC') throw new UsageError(`${file}: key type ${String(k.kty)} is not RSA or EC`);
    await importJWK(k, k.alg ?? (k.kty === 'RSA' ? 'RS384' : 'ES384'));
  }
  return { keys };
}

async function clientAdd(db: Database, args: Args): Promise<number> {
  const org = await orgOf(db, one(args, '--tenant'));
  const name = one(args, '--name');
  if (!name) throw new UsageError('--name is required');
  const scopes = many(args, '--scope');
  if (scopes.length === 0) throw new UsageError('--scope is required, e.g. --scope "system/*.rs"');
  const unknown = scopes.filter((s) => !parseClinicalScope(s) && !['openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access'].includes(s));
  if (unknown.length) throw new UsageError(`not SMART scopes: ${unknown.join(' ')}`);
  const redirectUris = many(args, '--redirect-uri');
  for (const uri of redirectUris) {
    let u: URL;
    try { u = new URL(uri); } catch { throw new UsageError(`--redirect-uri ${uri} is not an absolute URL`); }
    if (u.hash) throw new UsageError('a redirect URI has no fragment');
  }
  const jwks = one(args, '--jwks');
  const kinds = [jwks !== undefined, args.flags.has('--secret'), args.flags.has('--public')].filter(Boolean).length;
  if (kinds !== 1) throw new UsageError('give exactly one of --jwks, --secret, --public');
  let authMethod: ClientAuthMethod;
  let secret: string | undefined;
  const extra: { jwks?: JSONWebKeySet; jwksUri?: string; secretHash?: string } = {};
  if (jwks !== undefined) {
    authMethod = 'private_key_jwt';
    if (/^https?:\/\//.test(jwks)) {
      // Refused at registration as the token endpoint would refuse it at every use.
      const refusal = jwksUrlRefusal(jwks, loadConfig().auth.allowHttpJwks);
      if (refusal) throw new UsageError(`--jwks ${jwks} ${refusal}`);
      extra.jwksUri = jwks;
    }
    else extra.jwks = await readJwksFile(jwks);
  } else if (args.flags.has('--secret')) {
    authMethod = 'client_secret_basic';
    secret = randomToken();
    extra.secretHash = sha256(secret);
  } else {
    authMethod = 'none';
    if (redirectUris.length === 0) throw new UsageError('a public client needs --redirect-uri');
  }
  const client = await insertClient(db.owner, { orgId: org.id, clientId: crypto.randomUUID(), name, authMethod, redirectUris, scopes, ...extra });
  console.log(`client_id: ${client.clientId}`);
  if (secret) console.log(`client_secret: ${secret}   (shown once; Kiln keeps only its hash)`);
  console.log(`tenant ${org.slug}, ${authMethod}, scopes: ${scopes.join(' ')}${redirectUris.length ? `, redirect URIs: ${redirectUris.join(' ')}` : ''}`);
  return 0;
}

async function clientList(db: Database, args: Args): Promise<number> {
  const slug = one(args, '--tenant');
  const org = slug ? await orgOf(db, slug) : undefined;
  for (const c of await listClients(db.owner, org?.id)) {
    console.log([c.clientId, c.tenant, c.authMethod, c.revokedAt ? `revoked ${c.revokedAt}` : 'active', c.name, c.scopes.join(' '), c.redirectUris.join(' ')].join('\t'));
  }
  return 0;
}

/** How long a password piped on stdin may take to arrive: stdin left open and silent is an error, not a hang. */
const STDIN_PASSWORD_WAIT_MS = 10_000;

/** The first line of a non-terminal stdin; a stdin that ends (or stays silent) without one is a usage error. */
function passwordFromStdin(): Promise<string> {
  const none = 'no password: set KILN_AUTH_PASSWORD, run the command in a terminal to be prompted, or pipe the password as one line on stdin';
  return new Promise((resolve, reject) => {
    let text = '';
    const done = (fail?: boolean) => {
      clearTimeout(timer);
      process.stdin.removeAllListeners('data').removeAllListeners('end').pause();
      process.stdin.unref?.();
      const line = text.split(/\r?\n/)[0];
      if (fail || !line) reject(new UsageError(none));
      else resolve(line);
    };
    const timer = setTimeout(() => done(true), STDIN_PASSWORD_WAIT_MS);
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk: string) => { text += chunk; if (text.includes('\n')) done(); });
    process.stdin.on('end', () => done());
    process.stdin.on('error', () => done(true));
  });
}

/** A password from KILN_AUTH_PASSWORD, a hidden prompt on a terminal, or a line of stdin. */
async function readPassword(): Promise<string> {
  if (process.env.KILN_AUTH_PASSWORD) return process.env.KILN_AUTH_PASSWORD;
  if (!process.stdin.isTTY) return passwordFromStdin();
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Echo nothing while the password is typed.
  (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = (s: string) => {
    if (s.includes('Password')) process.stderr.write(s);
  };
  // Ctrl-D closes the prompt without an answer: no password, not a hang.
  const password = await new Promise<string | undefined>((resolve) => {
    rl.once('close', () => resolve(undefined));
    rl.question('Password: ', resolve);
  });
  rl.close();
  process.stderr.write('\n');
  if (password === undefined) throw new UsageError('no password given (or set KILN_AUTH_PASSWORD)');
  return password;
}

const USERNAME = /^[A-Za-z0-9._@-]{1,100}$/;

async function newPassword(): Promise<string> {
  const password = await readPassword();
  if (password.length < 8) throw new UsageError('the password needs at least 8 characters');
  return password;
}

async function userAdd(db: Database, args: Args): Promise<number> {
  const org = await orgOf(db, one(args, '--tenant'));
  const username = args.positional[0];
  if (!username || !USERNAME.test(username)) throw new UsageError('a username (letters, digits, . _ @ -) is required');
  const fhirUser = one(args, '--fhir-user');
  if (fhirUser && !/^(Patient|Practitioner|PractitionerRole|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/.test(fhirUser)) {
    throw new UsageError('--fhir-user is Type/id, e.g. Practitioner/123 or Patient/456');
  }
  const password = await newPassword();
  try {
    await insertUser(db.owner, { orgId: org.id, username, passwordHash: await hashPassword(password), fhirUser });
  } catch (e) {
    if ((e as { code?: string }).code === '23505') throw new UsageError(`user '${username}' already exists in ${org.slug}`);
    throw e;
  }
  console.log(`user ${username} added to ${org.slug}${fhirUser ? ` as ${fhirUser}` : ''}`);
  return 0;
}

/** disable, enable or password: a change to one existing user. */
async function userChange(db: Database, args: Args, change: 'disable' | 'enable' | 'password'): Promise<number> {
  const org = await orgOf(db, one(args, '--tenant'));
  const username = args.positional[0];
  if (!username) throw new UsageError('a username is required');
  const found = change === 'password'
    ? await setUserPassword(db.owner, org.id, username, await hashPassword(await newPassword()))
    : await setUserDisabled(db.owner, org.id, username, change === 'disable');
  if (!found) {
    console.error(`no user '${username}' in ${org.slug}`);
    return 1;
  }
  // A new password or a re-enabled account starts with a clean sign-in record.
  if (change !== 'disable') await clearUserLoginFailures(db.owner, org.id, username);
  console.log(change === 'disable' ? `user ${username} disabled in ${org.slug}: sign-in refused, refresh tokens revoked`
    : change === 'enable' ? `user ${username} enabled in ${org.slug}`
    : `password of ${username} in ${org.slug} changed; their refresh tokens are revoked`);
  return 0;
}

async function userList(db: Database, args: Args): Promise<number> {
  const slug = one(args, '--tenant');
  const org = slug ? await orgOf(db, slug) : undefined;
  for (const u of await listUsers(db.owner, org?.id)) {
    console.log([u.username, u.tenant, u.fhirUser ?? '-', u.disabledAt ? 'disabled' : 'active', u.createdAt].join('\t'));
  }
  return 0;
}

async function token(db: Database, config: Config, args: Args): Promise<number> {
  const minutes = Number(one(args, '--minutes') ?? 15);
  const tenant = one(args, '--tenant') ?? 'default';
  const t = await mintAdminToken(db, {
    // By default, for the running server's base (src/runtime.ts), wherever it listens.
    tenant, audience: one(args, '--aud') ?? tenantBase(serverBaseUrl(config), tenant), scopes: many(args, '--scope'), minutes,
    patient: one(args, '--patient'), fhirUser: one(args, '--fhir-user'),
  });
  console.error(`token for ${t.audience}, scope "${t.scope}", expires ${new Date(t.expiresAt * 1000).toISOString()}`);
  console.log(t.accessToken);
  return 0;
}

/** Revokes one access token, named by its jti or given whole (its jti, expiry and tenant are read from it). */
async function tokenRevoke(db: Database, args: Args): Promise<number> {
  const given = args.positional[0];
  if (!given) throw new UsageError('a jti or an access token is required');
  let jti = given;
  let expiresAt = Math.floor(Date.now() / 1000) + MAX_TOKEN_SECONDS; // a bare jti: as long as any Kiln token lives
  let clientId = '-';
  let tenant = one(args, '--tenant') ?? 'default';
  if (given.split('.').length === 3) {
    let claims: ReturnType<typeof decodeJwt>;
    try { claims = decodeJwt(given); } catch { throw new UsageError('the token is not a JWT'); }
    if (typeof claims.jti !== 'string' || typeof claims.exp !== 'number') throw new UsageError('the token has no jti or exp');
    ({ jti } = claims);
    expiresAt = claims.exp;
    if (typeof claims.client_id === 'string') clientId = claims.client_id;
    if (typeof claims.tenant === 'string') tenant = claims.tenant;
  }
  const org = await orgOf(db, tenant);
  const added = await revokeTokenAsOwner(db.owner, org.id, { jti, clientId, expiresAt });
  console.log(`${added ? 'revoked' : 'already revoked:'} access token ${jti} in ${org.slug}; servers refuse it within ${REVOKED_REFRESH_MS / 1000} s`);
  return 0;
}

async function launch(db: Database, args: Args): Promise<number> {
  const org = await orgOf(db, one(args, '--tenant'));
  const patient = one(args, '--patient');
  if (!patient) throw new UsageError('--patient is required');
  // A launch is the EHR's hand-off to one app: any other client presenting it is refused.
  const clientId = one(args, '--client');
  if (!clientId) throw new UsageError('--client is required: the app the launch is for');
  const username = one(args, '--user');
  const minutes = Number(one(args, '--minutes') ?? 60);
  if (!Number.isInteger(minutes) || minutes < 1 || minutes > 1440) throw new UsageError('--minutes must be a whole number between 1 and 1440');
  const id = randomToken();
  const made = await insertLaunch(db.owner, {
    orgId: org.id, launchHash: sha256(id), clientId, username, patient, encounter: one(args, '--encounter'), minutes,
  });
  if (!made) throw new UsageError(`no active client '${clientId}' in ${org.slug}`);
  console.error(`launch for Patient/${patient} in ${org.slug}, for client ${clientId}${username ? ` and user ${username}` : ''}, usable once; pass it as launch=... to the authorize endpoint`);
  console.log(id);
  return 0;
}

async function rotateKeys(db: Database): Promise<number> {
  const ring = keyRingFor(db.owner);
  await ring.keys(); // a first key exists before there is one to retire
  const r = await ring.rotate();
  console.log(`new signing key ${r.kid}; retired ${r.retired.join(', ') || 'none'} (published until their tokens expire); dropped ${r.dropped} expired keys`);
  return 0;
}

export async function authCommand(argv: string[]): Promise<number> {
  const [group, command, ...rest] = argv;
  const words = ['auth', ...commandWords(argv)];
  if (wantsHelp(argv) || group === 'help') {
    console.log(usageOf(USAGE, group === 'help' ? ['auth'] : words));
    return 0;
  }
  const sub = group === 'client' || group === 'user' || (group === 'token' && command === 'revoke');
  const name = sub ? `${group} ${command}` : group;
  if (!name || !COMMANDS[name]) {
    return usageError(USAGE, words.slice(0, sub ? 2 : 1), group === undefined ? 'an auth command is required'
      : sub && command === undefined ? `kiln auth ${group} needs a command` : `unknown command 'kiln ${words.join(' ')}'`);
  }
  let args: Args;
  try {
    args = parseArgs(sub ? rest : argv.slice(1));
  } catch (e) {
    return usageError(USAGE, ['auth', ...name.split(' ')], (e as Error).message);
  }
  const bad = argsError(name, args);
  if (bad) return usageError(USAGE, ['auth', ...name.split(' ')], bad);
  const run: ((db: Database) => Promise<number>) | undefined =
    group === 'client' && command === 'add' ? (db) => clientAdd(db, args)
      : group === 'client' && command === 'list' ? (db) => clientList(db, args)
      : group === 'client' && command === 'revoke' && args.positional[0] ? async (db) => {
        if (!await revokeClient(db.owner, args.positional[0])) { console.error(`no active client '${args.positional[0]}'`); return 1; }
        console.log(`revoked ${args.positional[0]}; its refresh tokens are revoked and its access tokens refused`);
        return 0;
      }
      : group === 'user' && command === 'add' ? (db) => userAdd(db, args)
      : group === 'user' && command === 'list' ? (db) => userList(db, args)
      : group === 'user' && (command === 'disable' || command === 'enable' || command === 'password') ? (db) => userChange(db, args, command)
      : group === 'token' && command === 'revoke' ? (db) => tokenRevoke(db, args)
      : group === 'token' ? (db) => token(db, config, args)
      : group === 'launch' ? (db) => launch(db, args)
      : group === 'rotate-keys' ? (db) => rotateKeys(db)
      : undefined;
  if (!run) return usageError(USAGE, ['auth', 'client', 'revoke'], 'a client_id is required');
  const config = await cliConfig();
  const db = await openDatabase(config);
  try {
    return await run(db);
  } catch (e) {
    if (e instanceof UsageError || /^unknown tenant|^minutes must/.test(String((e as Error)?.message))) {
      return usageError(USAGE, ['auth', ...name.split(' ')], (e as Error).message);
    }
    throw e;
  } finally {
    await db.close();
  }
}
