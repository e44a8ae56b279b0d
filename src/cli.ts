#!/usr/bin/env -S npx tsx
// `npm run kiln -- <command>`: operator commands that work beside a running server
// (the embedded PostgreSQL is shared when it is already up) or against DATABASE_URL.
import { loadConfig } from './config.ts';
import { openDatabase } from './store/database.ts';
import { createOrg, listOrgs } from './store/tenants.ts';

const USAGE = `usage:
  kiln tenant create <slug> [name]   create a tenant (organization) and its partitions
  kiln tenant list                   list tenants`;

async function main(argv: string[]): Promise<number> {
  const [group, command, ...rest] = argv;
  if (group !== 'tenant' || !['create', 'list'].includes(command ?? '')) {
    console.error(USAGE);
    return 2;
  }
  if (command === 'create' && !/^[a-z0-9][a-z0-9-]{0,62}$/.test(rest[0] ?? '')) {
    console.error('A tenant slug is 1-63 lowercase letters, digits or hyphens, starting with a letter or digit.');
    return 2;
  }
  const db = await openDatabase(loadConfig());
  try {
    if (command === 'list') {
      for (const org of await listOrgs(db.owner)) console.log(`${org.id}\t${org.slug}\t${org.name}`);
    } else {
      const org = await createOrg(db.owner, rest[0], rest.slice(1).join(' ') || rest[0]);
      console.log(`created tenant ${org.slug} (id ${org.id}); its FHIR base is /fhir/${org.slug}`);
    }
    return 0;
  } catch (e) {
    const err = e as { code?: string; message: string };
    console.error(err.code === '23505' ? `tenant '${rest[0]}' already exists` : err.message);
    return 1;
  } finally {
    await db.close();
  }
}

process.exit(await main(process.argv.slice(2)));
