// Per-tenant Healthie settings from the environment (never from the repo):
//   HEALTHIE_API_URL[_<TENANT>]                  GraphQL endpoint (default: the sandbox)
//   HEALTHIE_API_KEY[_<TENANT>] or HEALTHIE_API_KEY_FILE[_<TENANT>]
//   HEALTHIE_WEBHOOK_SECRET[_<TENANT>] or HEALTHIE_WEBHOOK_SECRET_FILE[_<TENANT>]
//   HEALTHIE_API_VERSION                         pinned Healthie-GraphQL-API-Version
// <TENANT> is the slug upper-cased with '-' as '_'; the tenant-specific value wins.
import fs from 'node:fs';
import { DEFAULT_API_VERSION, HealthieClient, type HealthieClientOptions } from './client.ts';

export const SANDBOX_URL = 'https://staging-api.gethealthie.com/graphql';

export interface HealthieSettings {
  url: string;
  apiKey?: string;
  webhookSecret?: string;
  apiVersion: string;
}

function lookup(env: NodeJS.ProcessEnv, name: string, slug: string): string | undefined {
  const suffix = slug.toUpperCase().replace(/-/g, '_');
  const direct = env[`${name}_${suffix}`] ?? env[name];
  if (direct) return direct.trim();
  const file = env[`${name}_FILE_${suffix}`] ?? env[`${name}_FILE`];
  return file ? fs.readFileSync(file, 'utf8').trim() : undefined;
}

export function healthieSettings(slug: string, env: NodeJS.ProcessEnv = process.env): HealthieSettings {
  return {
    url: lookup(env, 'HEALTHIE_API_URL', slug) ?? SANDBOX_URL,
    apiKey: lookup(env, 'HEALTHIE_API_KEY', slug),
    webhookSecret: lookup(env, 'HEALTHIE_WEBHOOK_SECRET', slug),
    apiVersion: env.HEALTHIE_API_VERSION ?? DEFAULT_API_VERSION,
  };
}

export function clientFor(settings: HealthieSettings, extra: Partial<HealthieClientOptions> = {}): HealthieClient {
  return new HealthieClient({ url: settings.url, apiKey: settings.apiKey ?? '', apiVersion: settings.apiVersion, ...extra });
}
