// Where the authorization server lives: every URL derives from the tenant's FHIR base
// (the same base the FHIR router computes), so discovery, token audiences and the
// endpoints agree. Pure functions.
import type { Request } from 'express';
import type { Config } from '../config.ts';

export const DEFAULT_TENANT = 'default';

/** The FHIR root of the default tenant, e.g. http://host/fhir (BASE_URL when set). */
export function fhirRoot(req: Request, config: Config): string {
  return config.baseUrl ?? `${req.protocol}://${req.get('host')}/fhir`;
}

export function tenantBase(root: string, tenant: string): string {
  return tenant === DEFAULT_TENANT ? root : `${root}/${tenant}`;
}

export type AuthEndpoint = 'authorize' | 'token' | 'introspect' | 'revoke' | 'jwks' | 'login' | 'pick' | 'consent';

export function authUrl(base: string, endpoint: AuthEndpoint): string {
  return `${base}/auth/${endpoint}`;
}

/** A FHIR user reference made absolute against the tenant base (id_token fhirUser is a URL). */
export function absoluteFhirUser(base: string, ref: string | undefined): string | undefined {
  if (!ref) return undefined;
  return /^https?:\/\//.test(ref) ? ref : `${base}/${ref}`;
}

/** The reverse: Type/id when the URL lies under the tenant base, else as given. */
export function relativeFhirUser(base: string, ref: string | undefined): string | undefined {
  if (!ref) return undefined;
  return ref.startsWith(`${base}/`) ? ref.slice(base.length + 1) : ref;
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

/** An http URL on a loopback name, as its port and path (the same for every such name); else undefined. */
export function loopbackSpot(url: string): { port: number; path: string } | undefined {
  let u: URL;
  try { u = new URL(url); } catch { return undefined; }
  if (u.protocol !== 'http:' || !LOOPBACK_NAMES.has(u.hostname) || u.search || u.hash || u.username) return undefined;
  return { port: Number(u.port || 80), path: u.pathname };
}
