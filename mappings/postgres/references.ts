// Every outgoing reference of a resource, for referential checks and _revinclude.
// Contained resources are skipped: their references belong to them, and a
// `#id` pointing at them is still reported from the container's own elements.

/** Every `reference` string of an object in the resource (outside `contained`), deduplicated, in document order. */
export function collectReferences(resource: unknown): string[] {
  const found = new Set<string>();
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item);
      return;
    }
    if (node === null || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node)) {
      if (key === 'contained') continue;
      if (key === 'reference' && typeof value === 'string') {
        if (value !== '') found.add(value);
      } else {
        walk(value);
      }
    }
  };
  walk(resource);
  return [...found];
}
