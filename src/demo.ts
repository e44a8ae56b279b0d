// `kiln demo`: a `demo` tenant holding the shared Synthea data (loaded by the importer, the
// Organization and Practitioner bundles first), then a token and five requests to paste.
// Running it again loads nothing twice: a file counts as loaded when the tenant already holds
// its first resource (found by its first identifier, or by id for NDJSON, which keeps ids).
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import cliProgress from 'cli-progress';
import type { Resource } from '@medplum/fhirtypes';
import { cliConfig, serverBaseUrl } from './runtime.ts';
import { openDatabase, type Database } from './store/database.ts';
import { createOrg, findOrg, type Org } from './store/tenants.ts';
import { withTenant } from './store/resources.ts';
import { runSearch } from './store/searchRun.ts';
import { parseSearch } from './search/query.ts';
import { importFiles } from './importer.ts';
import { loadDefinitions } from './fhir/validate.ts';
import { mintAdminToken } from './auth/tokens.ts';
import { tenantBase } from './auth/urls.ts';
import { TABLES } from '../mappings/postgres/index.ts';
import { ROOT } from './paths.ts';

export const DEMO_TENANT = 'demo';
const DEFAULT_DATA = path.resolve(ROOT, '../shared/data/synthea-r4');
const TOKEN_MINUTES = 60;

const DEMO_USAGE = `  kiln demo [--data <dir>]   creates (or reuses) the tenant 'demo', loads the FHIR Bundles (.json) and NDJSON (.ndjson)
                             of <dir> (default ${DEFAULT_DATA}) once, and prints a token and example requests`;

/** Bundles other bundles refer to (Synthea's hospital and practitioner exports) load first. */
const SHARED_FIRST = /^(hospital|practitioner)Information/i;

function demoFiles(dir: string): string[] {
  const names = fs.readdirSync(dir).filter((f) => /\.(json|ndjson)$/.test(f)).sort();
  return [...names.filter((f) => SHARED_FIRST.test(f)), ...names.filter((f) => !SHARED_FIRST.test(f))].map((f) => path.join(dir, f));
}

/** The search pairs that find a file's first resource in a tenant, when it can be found again. */
async function firstResource(file: string): Promise<{ type: string; pairs: [string, string][]; resource: Resource } | undefined> {
  let resource: Resource | undefined;
  if (file.endsWith('.ndjson')) {
    const lines = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
    for await (const line of lines) {
      if (!line.trim()) continue;
      try { resource = JSON.parse(line); } catch { /* the importer reports it */ }
      break;
    }
    lines.close();
    return resource?.id && TABLES[resource.resourceType] ? { type: resource.resourceType, pairs: [['_id', resource.id]], resource } : undefined;
  }
  let bundle: { entry?: { resource?: Resource }[] };
  try { bundle = JSON.parse(fs.readFileSync(file, 'utf8')); } catch { return undefined; }
  resource = bundle.entry?.find((e) => e.resource && TABLES[e.resource.resourceType])?.resource;
  const id = (resource as { identifier?: { system?: string; value?: string }[] } | undefined)?.identifier?.find((i) => i.system && i.value);
  return resource && id ? { type: resource.resourceType, pairs: [['identifier', `${id.system}|${id.value}`]], resource } : undefined;
}

async function findIn(db: Database, org: Org, type: string, pairs: [string, string][]): Promise<Resource | undefined> {
  const q = parseSearch(type, pairs);
  const page = await withTenant(db.app, org.id, (tx) => runSearch(tx, { orgId: org.id, type, criteria: q.criteria, sort: q.sort, count: 1, total: 'none' }));
  return page.rows[0] && JSON.parse(page.rows[0].json);
}

const nameOf = (p: { name?: { given?: string[]; family?: string }[] }) =>
  [...p.name?.[0]?.given ?? [], p.name?.[0]?.family].filter(Boolean).join(' ') || 'this patient';

export async function demoCommand(args: string[]): Promise<number> {
  let dir = DEFAULT_DATA;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--help' || args[i] === '-h') { console.log(`usage:\n${DEMO_USAGE}`); return 0; }
    if (args[i] === '--data' && args[i + 1]) dir = path.resolve(args[++i]);
    else { console.error(`usage:\n${DEMO_USAGE}`); return 2; }
  }
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    console.error(`kiln demo: no data directory ${dir}; give --data <dir> holding FHIR Bundles (.json) or NDJSON (.ndjson), such as Synthea's output`);
    return 2;
  }
  const files = demoFiles(dir);
  if (!files.length) {
    console.error(`kiln demo: ${dir} holds no .json or .ndjson files`);
    return 2;
  }
  loadDefinitions();
  // The running server's base and ports (its runtime card), unless the environment says otherwise.
  const config = await cliConfig();
  const base = tenantBase(serverBaseUrl(config), DEMO_TENANT);
  const db = await openDatabase(config);
  try {
    let org = await findOrg(db.owner, DEMO_TENANT);
    const created = !org;
    org ??= await createOrg(db.owner, DEMO_TENANT, 'Demo (Synthea)');

    const firsts = new Map<string, Awaited<ReturnType<typeof firstResource>>>();
    const toLoad: string[] = [];
    for (const file of files) {
      const first = await firstResource(file);
      firsts.set(file, first);
      if (!first || !await findIn(db, org, first.type, first.pairs)) toLoad.push(file);
    }
    let failed = 0;
    if (toLoad.length) {
      const bar = new cliProgress.SingleBar({
        format: 'demo [{bar}] {value}/{total} files | {resources} resources', stream: process.stderr, noTTYOutput: false,
      }, cliProgress.Presets.shades_classic);
      bar.start(toLoad.length, 0, { resources: 0 });
      let last = '';
      const summary = await importFiles(toLoad, {
        db, orgId: org.id, base, maxEntries: Number.MAX_SAFE_INTEGER, maxCount: config.maxCount,
        onProgress: (resources, file) => { if (file !== last) { last = file; bar.increment(1, { resources }); } else bar.update({ resources }); },
      });
      bar.update(toLoad.length, { resources: summary.resources });
      bar.stop();
      failed = summary.failures.length;
      console.log(`${created ? 'created' : 'reused'} tenant '${DEMO_TENANT}'; loaded ${summary.resources} resources from ${summary.files} files of ${dir} ` +
        `in ${summary.seconds.toFixed(1)} s (${files.length - toLoad.length} files were already loaded); ${failed} failures`);
      for (const f of summary.failures) console.log(`  failed: ${f.file} ${f.what}: ${f.reason}`);
    } else {
      console.log(`reused tenant '${DEMO_TENANT}'; all ${files.length} files of ${dir} were already loaded`);
    }

    // The example patient: the first patient file's, else any Patient of the tenant.
    let patient: Resource | undefined;
    for (const file of files) {
      const first = firsts.get(file);
      if (first?.type === 'Patient' && (patient = await findIn(db, org, 'Patient', first.pairs))) break;
    }
    patient ??= await findIn(db, org, 'Patient', []);
    if (!patient?.id) {
      console.error(`kiln demo: the tenant '${DEMO_TENANT}' holds no Patient to show requests for`);
      return 1;
    }
    const who = nameOf(patient as { name?: { given?: string[]; family?: string }[] });
    const observation = await findIn(db, org, 'Observation', [['patient', patient.id]]) as { code?: { coding?: { system?: string; code?: string; display?: string }[] } } | undefined;
    const coding = observation?.code?.coding?.find((c) => c.code);
    const codeParam = coding ? `&code=${coding.system ? `${coding.system}|` : ''}${coding.code}` : '';

    const system = await mintAdminToken(db, { tenant: DEMO_TENANT, audience: base, minutes: TOKEN_MINUTES });
    const scoped = await mintAdminToken(db, { tenant: DEMO_TENANT, audience: base, minutes: TOKEN_MINUTES, scopes: ['patient/*.rs'], patient: patient.id });
    const auth = '-H "Authorization: Bearer $TOKEN"';
    console.log(`
Paste these into a shell beside the running server (the tokens last ${TOKEN_MINUTES} minutes; run the demo again for new ones):

BASE='${base}'
TOKEN='${system.accessToken}'
PATIENT_TOKEN='${scoped.accessToken}'

# 1. Read a Patient (${who})
curl -sS --fail-with-body "$BASE/Patient/${patient.id}" ${auth}

# 2. Search: ${who}'s Observations${coding ? ` coded ${coding.code}${coding.display ? ` (${coding.display})` : ''}` : ''}
curl -sS --fail-with-body "$BASE/Observation?patient=${patient.id}${codeParam}" ${auth}

# 3. Everything in ${who}'s record ($everything: the Patient first, 50 a page; follow the "next" link)
curl -sS --fail-with-body "$BASE/Patient/${patient.id}/\\$everything?_count=50" ${auth}

# 4. Bulk export of every patient's Patient and Observations: kick off, poll the Content-Location until 200, print the manifest
STATUS=$(curl -sS --fail-with-body -o /dev/null -D - "$BASE/Patient/\\$export?_type=Patient,Observation" ${auth} -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' | tr -d '\\r' | awk 'tolower($1) == "content-location:" { print $2 }')
while [ "$(curl -sS -o /dev/null -w '%{http_code}' "$STATUS" ${auth})" = 202 ]; do sleep 1; done
curl -sS --fail-with-body "$STATUS" ${auth}

# 5. A patient-scoped token (patient/*.rs for ${who}): a search of every Patient finds only ${who}
curl -sS --fail-with-body "$BASE/Patient?_total=accurate&_elements=name,birthDate" -H "Authorization: Bearer $PATIENT_TOKEN"
`);
    return failed ? 1 : 0;
  } finally {
    await db.close();
  }
}
