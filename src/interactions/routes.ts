// The one route table: every FHIR path under a tenant base, the methods it takes and the
// interaction each names (http.html, the AuditEvent subtype). HTTP requests
// (src/http/router.ts) and Bundle entries (bundle.ts parseEntry) are both matched here, so
// the two cannot disagree on what exists, which interaction it is, or their 404 and 405.
import { FhirError, badRequest, notFound } from '../fhir/outcome.ts';
import { TABLES } from '../../mappings/postgres/index.ts';
import type { TypeInteraction } from './supported.ts';
import type { Permission } from '../auth/scopes.ts';

export type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
export const METHODS: readonly Method[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'];

/** A FHIR restful interaction code ('batch' is batch or transaction, told apart by Bundle.type). */
export type Interaction = TypeInteraction | 'search-system' | 'history-system' | 'batch' | 'operation' | 'capabilities';

export interface Route {
  /** Names the route for its handler (src/http/router.ts holds one per name). */
  name: string;
  methods: readonly Method[];
  /**
   * Segments joined by '/': a literal, or a parameter. `:type` and `:compartmentType` take a
   * stored resource type, the other parameters (`:id`, `:vid`, ...) any segment (ids are checked
   * by the handler, as a 400). A literal beats a parameter in the same place.
   */
  pattern: string;
  interaction: Interaction;
  /**
   * The SMART v2 scope permission (c r u d s) the interaction needs on its type, which the
   * request's session (src/http/session.ts) applies. Operations have none: each decides its
   * own access (src/operations/).
   */
  permission?: Permission;
  /** The operation's name (interaction 'operation'). */
  operation?: string;
  /**
   * The operation's OperationDefinition, a file in conformance/ whose code is `operation`: the
   * CapabilityStatement lists each such operation from it (src/operations/definitions.ts).
   */
  definition?: string;
  /** Whether a batch or transaction entry can run it (bundle.ts runEntry); the others are refused there with 400. */
  entry?: boolean;
}

export const ROUTES = [
  { name: 'capabilities', methods: ['GET', 'HEAD'], pattern: 'metadata', interaction: 'capabilities' },
  { name: 'bundle', methods: ['POST'], pattern: '', interaction: 'batch' },
  { name: 'search-system', methods: ['GET'], pattern: '', interaction: 'search-system', permission: 's' },
  { name: 'history-system', methods: ['GET'], pattern: '_history', interaction: 'history-system', permission: 's' },
  // Bulk Data (src/operations/export.ts): kick-off, status (poll or cancel) and output files.
  { name: 'export', methods: ['GET', 'POST'], pattern: '$export', interaction: 'operation', operation: 'export', definition: 'OperationDefinition-export.json' },
  { name: 'export-patient', methods: ['GET', 'POST'], pattern: 'Patient/$export', interaction: 'operation', operation: 'export', definition: 'OperationDefinition-patient-export.json' },
  { name: 'export-group', methods: ['GET', 'POST'], pattern: 'Group/:id/$export', interaction: 'operation', operation: 'export', definition: 'OperationDefinition-group-export.json' },
  { name: 'export-status', methods: ['GET', 'DELETE'], pattern: '$export-status/:job', interaction: 'operation', operation: 'export-status' },
  { name: 'export-file', methods: ['GET'], pattern: '$export-file/:job/:file', interaction: 'operation', operation: 'export-file' },
  // SQL on FHIR v2 (src/operations/viewExport.ts): views exported as $export is, on its job machinery.
  { name: 'view-export', methods: ['POST'], pattern: '$viewdefinition-export', interaction: 'operation', operation: 'viewdefinition-export', definition: 'OperationDefinition-ViewDefinition-export.json' },
  { name: 'view-export-type', methods: ['POST'], pattern: 'ViewDefinition/$viewdefinition-export', interaction: 'operation', operation: 'viewdefinition-export', definition: 'OperationDefinition-ViewDefinition-export.json' },
  { name: 'view-export-status', methods: ['GET', 'DELETE'], pattern: '$viewdefinition-export-status/:job', interaction: 'operation', operation: 'viewdefinition-export-status' },
  { name: 'view-export-result', methods: ['GET'], pattern: '$viewdefinition-export-result/:job', interaction: 'operation', operation: 'viewdefinition-export-result' },
  { name: 'view-export-file', methods: ['GET'], pattern: '$viewdefinition-export-file/:job/:file', interaction: 'operation', operation: 'viewdefinition-export-file' },
  { name: 'search-type', methods: ['GET'], pattern: ':type', interaction: 'search-type', permission: 's', entry: true },
  { name: 'create', methods: ['POST'], pattern: ':type', interaction: 'create', permission: 'c', entry: true },
  { name: 'conditional-update', methods: ['PUT'], pattern: ':type', interaction: 'update', permission: 'u', entry: true },
  { name: 'conditional-delete', methods: ['DELETE'], pattern: ':type', interaction: 'delete', permission: 'd', entry: true },
  { name: 'search-post', methods: ['POST'], pattern: ':type/_search', interaction: 'search-type', permission: 's' },
  { name: 'history-type', methods: ['GET'], pattern: ':type/_history', interaction: 'history-type', permission: 's' },
  { name: 'validate-type', methods: ['POST'], pattern: ':type/$validate', interaction: 'operation', operation: 'validate', definition: 'OperationDefinition-Resource-validate.json' },
  { name: 'everything-all', methods: ['GET', 'POST'], pattern: 'Patient/$everything', interaction: 'operation', operation: 'everything', definition: 'OperationDefinition-Patient-everything.json' },
  // SQL on FHIR v2 (src/operations/viewRun.ts): a view's rows.
  { name: 'view-run-type', methods: ['GET', 'POST'], pattern: 'ViewDefinition/$run', interaction: 'operation', operation: 'run', definition: 'OperationDefinition-ViewDefinition-run.json' },
  { name: 'read', methods: ['GET', 'HEAD'], pattern: ':type/:id', interaction: 'read', permission: 'r', entry: true },
  { name: 'update', methods: ['PUT'], pattern: ':type/:id', interaction: 'update', permission: 'u', entry: true },
  { name: 'patch', methods: ['PATCH'], pattern: ':type/:id', interaction: 'patch', permission: 'u', entry: true },
  { name: 'delete', methods: ['DELETE'], pattern: ':type/:id', interaction: 'delete', permission: 'd', entry: true },
  { name: 'validate', methods: ['POST', 'GET'], pattern: ':type/:id/$validate', interaction: 'operation', operation: 'validate', definition: 'OperationDefinition-Resource-validate.json' },
  { name: 'everything', methods: ['GET', 'POST'], pattern: 'Patient/:id/$everything', interaction: 'operation', operation: 'everything', definition: 'OperationDefinition-Patient-everything.json' },
  { name: 'view-run', methods: ['GET', 'POST'], pattern: 'ViewDefinition/:id/$run', interaction: 'operation', operation: 'run', definition: 'OperationDefinition-ViewDefinition-run.json' },
  // Compartment search (http.html#search): GET [base]/Patient/[id]/[type]?...
  { name: 'search-compartment', methods: ['GET'], pattern: 'Patient/:id/:compartmentType', interaction: 'search-type', permission: 's' },
  { name: 'history-instance', methods: ['GET'], pattern: ':type/:id/_history', interaction: 'history-instance', permission: 'r' },
  { name: 'vread', methods: ['GET', 'HEAD'], pattern: ':type/:id/_history/:vid', interaction: 'vread', permission: 'r', entry: true },
] as const satisfies readonly Route[];

export type RouteName = typeof ROUTES[number]['name'];

export interface RouteMatch {
  route: Route & { name: RouteName };
  /** Path parameters by name (without the colon), decoded. */
  params: Record<string, string>;
  /** The resource type the interaction is on (`:compartmentType` for a compartment search), if any. */
  type?: string;
}

interface Compiled {
  route: Route & { name: RouteName };
  segments: string[];
  /** One digit per segment, 0 literal and 1 parameter: the smaller key is the more specific pattern. */
  rank: string;
}

const COMPILED: Compiled[] = ROUTES.map((route) => {
  const segments = route.pattern === '' ? [] : route.pattern.split('/');
  return { route, segments, rank: segments.map((s) => (s.startsWith(':') ? '1' : '0')).join('') };
});

const TYPE_PARAMS = new Set([':type', ':compartmentType']);
const TYPE_NAME = /^[A-Z][A-Za-z]+$/;

function fits(pattern: string, segment: string): boolean {
  if (!pattern.startsWith(':')) return pattern === segment;
  // A type never starts with _ or $: those segments are literals (_history, $validate, ...) or unknown.
  return !TYPE_PARAMS.has(pattern) || !/^[_$]/.test(segment);
}

const unknownType = (type: string) => new FhirError(404, 'not-supported', `Resource type ${type} is not supported`);

export const methodNotAllowed = (method: string, path: string) =>
  new FhirError(405, 'not-supported', `${method} is not supported on ${path || 'the base'}`);

/**
 * The route of a method on a path relative to the tenant base: 404 when no route has the path
 * (or it names a type that is not stored), 405 when the path's routes do not take the method.
 * Whether the type supports the interaction is the caller's check (supported.ts requireSupported),
 * made after naming the interaction for the audit.
 */
export function matchRoute(method: string, segments: readonly string[]): RouteMatch {
  const path = segments.join('/');
  let best: Compiled[] = [];
  for (const c of COMPILED) {
    if (c.segments.length !== segments.length || !c.segments.every((p, i) => fits(p, segments[i]))) continue;
    if (!best.length || c.rank < best[0].rank) best = [c];
    else if (c.rank === best[0].rank) best.push(c);
  }
  if (!best.length) {
    const first = segments[0] ?? '';
    if (TYPE_NAME.test(first) && !Object.hasOwn(TABLES, first)) throw unknownType(first);
    throw notFound(`No route for /${path}`);
  }
  const params: Record<string, string> = {};
  best[0].segments.forEach((p, i) => {
    if (!p.startsWith(':')) return;
    if (TYPE_PARAMS.has(p) && !Object.hasOwn(TABLES, segments[i])) {
      throw TYPE_NAME.test(segments[i]) || p === ':compartmentType' ? unknownType(segments[i]) : notFound(`No route for /${path}`);
    }
    params[p.slice(1)] = segments[i];
  });
  const hit = best.find((c) => (c.route.methods as readonly string[]).includes(method));
  if (!hit) throw methodNotAllowed(method, path);
  // A literal type (Patient/$everything, Group/:id/$export) is the type too.
  const type = params.compartmentType ?? params.type ?? (segments.length && Object.hasOwn(TABLES, segments[0]) ? segments[0] : undefined);
  return { route: hit.route, params, ...(type ? { type } : {}) };
}

/** Path segments, percent-decoded (400 on a malformed escape); empty segments dropped. */
export function pathSegments(path: string): string[] {
  return path.split('/').filter((s) => s !== '').map((segment) => {
    try {
      return decodeURIComponent(segment);
    } catch {
      throw badRequest(`Malformed percent-encoding in path segment '${segment}'`);
    }
  });
}

/** The interactions a Bundle entry can run, for the refusal of the others. */
const ENTRY_INTERACTIONS = [...new Set(ROUTES.filter((r: Route) => r.entry).map((r) => r.interaction))].join(', ');

/**
 * The interaction of an entry's route, or 400 naming the entry when a batch or transaction
 * entry cannot run that route (its own request over HTTP can).
 */
export function entryInteraction(match: RouteMatch, index: number, method: string, url: string): TypeInteraction {
  // Every entry route is a type or instance interaction (the ROUTES rows marked entry).
  if (match.route.entry) return match.route.interaction as TypeInteraction;
  const what = match.route.operation ? `$${match.route.operation}` : match.route.interaction;
  throw new FhirError(400, 'not-supported', `Bundle.entry[${index}]: ${method} ${url} is ${what}, which a Bundle entry cannot run (entries run ${ENTRY_INTERACTIONS})`);
}
