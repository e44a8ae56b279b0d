// What every authorization-server handler receives.
import type { Request, Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import type { Org } from '../store/tenants.ts';
import type { Tx } from '../store/resources.ts';
import { withTenant } from '../store/resources.ts';
import type { KeyRing } from './keys.ts';

export interface AuthCtx {
  req: Request;
  res: Response;
  db: Database;
  config: Config;
  ring: KeyRing;
  org: Org;
  /** The tenant's FHIR base: issuer and audience of its tokens. */
  base: string;
}

export function inOrg<T>(a: AuthCtx, fn: (tx: Tx) => Promise<T>): Promise<T> {
  return withTenant(a.db.app, a.org.id, fn);
}
