// The CapabilityStatement, derived from what the code really serves: the mapped
// types, the interactions the router dispatches, the operations its routes run (each
// from its OperationDefinition in conformance/), the search parameters the store
// evaluates and the profiles the validator enforces.
import type { CapabilityStatement, CapabilityStatementRestResourceOperation, CapabilityStatementRestResource } from '@medplum/fhirtypes';
import { TABLES } from '../../mappings/postgres/index.ts';
import { searchParamsFor } from '../../mappings/search/definitions.ts';
import { knownProfiles } from './validate.ts';
import { smartSecurityExtension } from '../auth/discovery.ts';
import { interactionsOf, supports } from '../interactions/supported.ts';
import { OPERATIONS, typesOf, type Operation } from '../operations/definitions.ts';
import { EXACT_TOTAL_BOUND } from '../store/searchRun.ts';
import { baseProfile } from '../../mappings/resourceTypes.ts';
import { RUN_DOCUMENTATION } from '../operations/viewRun.ts';

/** What a type's entry says beyond its elements (the SQL on FHIR spec asks $run's formats and references to be documented). */
const TYPE_DOCUMENTATION: Record<string, string> = { ViewDefinition: RUN_DOCUMENTATION };

const entryOf = (op: Operation): CapabilityStatementRestResourceOperation => ({ name: op.definition.code!, definition: op.definition.url! });

/** rest.operation: the operations defined at the system level. */
const SYSTEM_OPERATIONS = OPERATIONS.filter((op) => op.definition.system).map(entryOf);

/** Each type's operations (at the type or instance level), in the route table's order. */
function typeOperations(): Map<string, CapabilityStatementRestResourceOperation[]> {
  const byType = new Map<string, CapabilityStatementRestResourceOperation[]>();
  for (const op of OPERATIONS) {
    if (!op.definition.type && !op.definition.instance) continue;
    for (const t of typesOf(op.definition)) byType.set(t, [...(byType.get(t) ?? []), entryOf(op)]);
  }
  return byType;
}

export interface CapabilityOptions {
  /** KILN_AUTH=smart: rest.security carries the SMART extension. */
  smart?: boolean;
}

/** The per-type entries depend on no request: built once (145 types; about 0.3 s of CPU). */
let restResources: CapabilityStatementRestResource[] | undefined;

function buildRestResources(): CapabilityStatementRestResource[] {
  const profilesByType = new Map<string, string[]>();
  for (const sd of knownProfiles()) {
    profilesByType.set(sd.type!, [...(profilesByType.get(sd.type!) ?? []), sd.url!]);
  }
  // Which reference parameters may point at each type, in one pass over every type's parameters.
  const revIncludes = new Map<string, string[]>();
  for (const t of Object.keys(TABLES)) {
    for (const d of searchParamsFor(t)) {
      if (d.type !== 'reference') continue;
      for (const target of d.target ?? []) revIncludes.set(target, [...(revIncludes.get(target) ?? []), `${t}:${d.code}`]);
    }
  }
  const operations = typeOperations();
  const resource: CapabilityStatementRestResource[] = Object.keys(TABLES).map((type) => ({
    type: type as CapabilityStatementRestResource['type'],
    profile: baseProfile(type),
    ...(Object.hasOwn(TYPE_DOCUMENTATION, type) ? { documentation: TYPE_DOCUMENTATION[type] } : {}),
    ...(profilesByType.has(type) ? { supportedProfile: profilesByType.get(type) } : {}),
    interaction: interactionsOf(type).map((code) => ({ code })),
    versioning: 'versioned-update',
    readHistory: true,
    updateCreate: supports(type, 'update'),
    conditionalCreate: true,
    conditionalRead: 'modified-since',
    conditionalUpdate: supports(type, 'update'),
    conditionalDelete: supports(type, 'delete') ? 'single' : 'not-supported',
    referencePolicy: ['literal', 'enforced', 'local'],
    ...(operations.has(type) ? { operation: operations.get(type) } : {}),
    searchParam: searchParamsFor(type).map((d) => ({ name: d.code, definition: d.url, type: d.type as 'token' })),
    searchInclude: [...searchParamsFor(type).filter((d) => d.type === 'reference').map((d) => `${type}:${d.code}`), '*'],
    searchRevInclude: revIncludes.get(type) ?? [],
  }));
  return resource;
}

export function capabilityStatement(base: string, version: string, opts: CapabilityOptions = {}): CapabilityStatement {
  const resource = (restResources ??= buildRestResources());
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'],
    software: { name: 'Kiln', version },
    implementation: { description: 'Kiln FHIR R4 server', url: base },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'application/json'],
    patchFormat: ['application/json-patch+json', 'application/fhir+json'],
    rest: [{
      mode: 'server',
      documentation: `Search: \`_total=accurate\` counts every match; \`_total=estimate\` counts exactly up to ${EXACT_TOTAL_BOUND.toLocaleString('en-US')} matches, and past that gives the database's estimate (at least ${(EXACT_TOTAL_BOUND + 1).toLocaleString('en-US')}) with an OperationOutcome entry saying so.`,
      ...(opts.smart ? { security: smartSecurityExtension(base) } : {}),
      resource,
      interaction: [{ code: 'history-system' }, { code: 'search-system' }, { code: 'transaction' }, { code: 'batch' }],
      operation: SYSTEM_OPERATIONS,
      searchParam: ['_id', '_lastUpdated', '_tag', '_profile', '_security', '_source'].map((name) => ({ name, type: name === '_lastUpdated' ? 'date' : name === '_profile' || name === '_source' ? 'uri' : 'token' })),
    }],
  };
}
