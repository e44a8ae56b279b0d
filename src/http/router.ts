// Dispatches /fhir[/{tenant}]/... paths to FHIR interactions; everything else
// under the base is a 404 or 405 OperationOutcome.
import type { Request, Response } from 'express';
import type { Config } from '../config.ts';
import type { Database } from '../store/database.ts';
import type { Ctx } from './context.ts';
import { queryPairs } from './context.ts';
import { responseType, sendJson } from './format.ts';
import { FhirError, notFound } from '../fhir/outcome.ts';
import { capabilityStatement } from '../fhir/capability.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import { findOrg } from '../store/tenants.ts';
import * as crud from './crud.ts';
import { historyInteraction } from './history.ts';
import { searchInteraction, systemSearchInteraction } from './search.ts';
import { bundleInteraction } from './bundles.ts';
import { everythingInteraction } from './everything.ts';
import { exportInteraction, isExportFilePath, isExportPath } from './export.ts';

const TENANT_SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const RESERVED = new Set(['metadata']);
const DEFAULT_SLUG = 'default';

const methodNotAllowed = (method: string, path: string) =>
  new FhirError(405, 'not-supported', `${method} is not supported on ${path || 'the base'}`);

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new FhirError(400, 'invalid', `Malformed percent-encoding in path segment '${segment}'`);
  }
}

export function fhirRouter(db: Database, config: Config, version: string) {
  const orgIds = new Map<string, number>(); // slug -> id; tenants are never renamed

  async function orgId(slug: string): Promise<number> {
    let id = orgIds.get(slug);
    if (id === undefined) {
      const org = await findOrg(db.app, slug);
      if (!org) throw notFound(`Unknown tenant '${slug}'`);
      id = org.id;
      orgIds.set(slug, id);
    }
    return id;
  }

  return async function dispatch(req: Request, res: Response): Promise<void> {
    if (!isExportFilePath(req.path)) responseType(req); // 406 before any work (export files are NDJSON)
    const segments = req.path.split('/').filter((s) => s !== '').map(decodeSegment);
    let slug = DEFAULT_SLUG;
    if (segments.length && TENANT_SLUG.test(segments[0]) && !RESERVED.has(segments[0])) slug = segments.shift()!;
    const origin = config.baseUrl ?? `${req.protocol}://${req.get('host')}/fhir`;
    const base = slug === DEFAULT_SLUG ? origin : `${origin}/${slug}`;
    const ctx: Ctx = { req, res, db, config, orgId: await orgId(slug), base };
    const m = req.method;
    const [first, second, third, fourth] = segments;
    const path = segments.join('/');

    if (segments.length === 0) {
      if (m === 'POST') return bundleInteraction(ctx);
      if (m === 'GET') return systemSearchInteraction(ctx, queryPairs(req));
      throw methodNotAllowed(m, '');
    }
    if (isExportPath(segments)) return exportInteraction(ctx, segments);
    if (first === 'metadata' && segments.length === 1) {
      if (m !== 'GET' && m !== 'HEAD') throw methodNotAllowed(m, path);
      return sendJson(req, res, 200, capabilityStatement(base, version));
    }
    if (first === '_history' && segments.length === 1) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      return historyInteraction(ctx);
    }
    if (!TABLES[first]) {
      if (/^[A-Z][A-Za-z]+$/.test(first)) throw new FhirError(404, 'not-supported', `Resource type ${first} is not supported`);
      throw notFound(`No route for /${path}`);
    }
    const type = first;
    if (segments.length === 1) {
      if (m === 'GET') return searchInteraction(ctx, type, queryPairs(req));
      if (m === 'POST') return crud.create(ctx, type);
      if (m === 'PUT') return crud.conditionalUpdate(ctx, type);
      if (m === 'DELETE') return crud.conditionalDelete(ctx, type);
      throw methodNotAllowed(m, path);
    }
    if (segments.length === 2 && second === '_search') {
      if (m !== 'POST') throw methodNotAllowed(m, path);
      const form = Buffer.isBuffer(req.body) && /x-www-form-urlencoded/.test(req.get('content-type') ?? '') ? req.body.toString('utf8') : '';
      return searchInteraction(ctx, type, [...queryPairs(req), ...new URLSearchParams(form).entries()]);
    }
    if (type === 'Patient' && (second === '$everything' || (segments.length === 3 && third === '$everything'))) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      if (segments.length === 2) return everythingInteraction(ctx);
      return everythingInteraction(ctx, second);
    }
    if (segments.length === 2 && second === '_history') {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      return historyInteraction(ctx, type);
    }
    if (segments.length === 2) {
      if (m === 'GET' || m === 'HEAD') return crud.read(ctx, type, second);
      if (m === 'PUT') return crud.update(ctx, type, second);
      if (m === 'PATCH') return crud.patch(ctx, type, second);
      if (m === 'DELETE') return crud.remove(ctx, type, second);
      throw methodNotAllowed(m, path);
    }
    if (third === '_history' && segments.length === 3) {
      if (m !== 'GET') throw methodNotAllowed(m, path);
      return historyInteraction(ctx, type, second);
    }
    if (third === '_history' && segments.length === 4) {
      if (m !== 'GET' && m !== 'HEAD') throw methodNotAllowed(m, path);
      return crud.vread(ctx, type, second, fourth);
    }
    throw notFound(`No route for /${path}`);
  };
}
