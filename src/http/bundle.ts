// Bundle assembly that splices stored JSON text in, rather than parsing and
// re-serializing every resource.
import type { BundleLink } from '@medplum/fhirtypes';

export interface EntryParts {
  fullUrl?: string;
  /** Stored resource JSON text. */
  resourceJson?: string;
  search?: { mode: 'match' | 'include' | 'outcome' };
  request?: { method: string; url: string };
  response?: { status: string; etag?: string; lastModified?: string; location?: string };
}

function entryJson(e: EntryParts): string {
  const { resourceJson, ...rest } = e;
  const head = JSON.stringify(rest);
  if (!resourceJson) return head;
  return head === '{}' ? `{"resource":${resourceJson}}` : `${head.slice(0, -1)},"resource":${resourceJson}}`;
}

export function bundleJson(type: 'history' | 'searchset', entries: EntryParts[], links: BundleLink[], total?: number): string {
  const head = JSON.stringify({
    resourceType: 'Bundle',
    type,
    timestamp: new Date().toISOString(),
    ...(total !== undefined ? { total } : {}),
    link: links,
  });
  return `${head.slice(0, -1)},"entry":[${entries.map(entryJson).join(',')}]}`;
}
