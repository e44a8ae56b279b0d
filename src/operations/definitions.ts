// Kiln's operations, each from its OperationDefinition in conformance/: every route of the
// route table (src/interactions/routes.ts) that runs an operation names its definition file,
// and the CapabilityStatement lists the operations from those files (code, canonical url,
// levels, resource types). A file whose code or levels disagree with its routes stops the
// server at start, so what metadata advertises is what the routes serve.
import fs from 'node:fs';
import type { OperationDefinition } from '@medplum/fhirtypes';
import { TABLES } from '../../mappings/postgres/index.ts';
import { ROUTES, type Route } from '../interactions/routes.ts';
import { fromRoot } from '../paths.ts';

export type Level = 'system' | 'type' | 'instance';

export interface Operation {
  /** The file in conformance/. */
  file: string;
  definition: OperationDefinition;
  /** The routes that run it, one per level. */
  routes: Route[];
}

/** A route's level from its pattern: `$op`, `[type]/$op` or `[type]/[id]/$op`. */
export function levelOf(route: Route): Level {
  const n = route.pattern.split('/').length;
  return n === 1 ? 'system' : n === 2 ? 'type' : 'instance';
}

/**
 * Where a definition names a stored type that is not R4 (ViewDefinition): `resource` is bound to
 * R4's resource types, so such a type is named by this extension instead.
 */
export const OPERATION_RESOURCE_EXTENSION = 'urn:kiln:StructureDefinition:operation-resource';

/** The types a definition is on: its `resource` codes and its OPERATION_RESOURCE_EXTENSION ones. */
export function resourcesOf(definition: OperationDefinition): string[] {
  const extra = (definition.extension ?? []).filter((e) => e.url === OPERATION_RESOURCE_EXTENSION && e.valueCode).map((e) => e.valueCode!);
  return [...definition.resource ?? [], ...extra];
}

/** The stored types a definition's type or instance level applies to ('Resource': every one). */
export function typesOf(definition: OperationDefinition): string[] {
  const named = resourcesOf(definition);
  return named.includes('Resource') ? Object.keys(TABLES) : named.filter((t) => Object.hasOwn(TABLES, t));
}

function load(file: string, routes: Route[]): Operation {
  const definition = JSON.parse(fs.readFileSync(fromRoot('conformance', file), 'utf8')) as OperationDefinition;
  const wrong = (why: string) => new Error(`conformance/${file}: ${why}`);
  const levels = new Set(routes.map(levelOf));
  const resource = resourcesOf(definition);
  for (const route of routes) {
    if (definition.code !== route.operation) throw wrong(`code '${definition.code}' but route ${route.name} runs $${route.operation}`);
    const type = route.pattern.split('/')[0];
    if (levelOf(route) !== 'system' && !resource.includes(type === ':type' ? 'Resource' : type)) {
      throw wrong(`route ${route.name} (${route.pattern}) is on a type the definition does not list`);
    }
  }
  for (const level of ['system', 'type', 'instance'] as const) {
    if (Boolean(definition[level]) !== levels.has(level)) throw wrong(`${level}: ${String(definition[level])}, but its routes are at ${[...levels].join(', ')} level`);
  }
  return { file, definition, routes };
}

/** One per definition file, in the route table's order. */
export const OPERATIONS: readonly Operation[] = (() => {
  const byFile = new Map<string, Route[]>();
  for (const route of ROUTES as readonly Route[]) {
    if (route.definition) byFile.set(route.definition, [...(byFile.get(route.definition) ?? []), route]);
  }
  return [...byFile].map(([file, routes]) => load(file, routes));
})();
