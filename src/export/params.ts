// $export kick-off parameters (Bulk Data Access IG v2, export.html#query-parameters),
// from the URL (GET) or a Parameters body (POST), checked and normalized into what a
// job stores. Pure: no I/O.
import { PATIENT_COMPARTMENT } from '../../mappings/resourceTypes.ts';
import { badRequest } from '../fhir/outcome.ts';
import { parseSearch } from '../search/query.ts';
import { dateRange } from '../../mappings/search/precision.ts';

export type ExportLevel = 'system' | 'patient' | 'group';

export interface ExportParams {
  level: ExportLevel;
  groupId?: string;
  /** Resource types to export, in output order. */
  types: string[];
  /** Only resources changed after this instant (and deletes after it, in `deleted`). */
  since?: string;
  /** Per type, search queries (without `Type?`); a resource is exported when any matches. */
  typeFilters: Record<string, string[]>;
  /** Patient-level and Group exports: the patients whose compartments are exported (undefined = all). */
  patients?: string[];
  /** _elements entries, `element` or `Type.element`. */
  elements?: string[];
  /** A $viewdefinition-export job (src/operations/viewExport.ts): view rows instead of resources. */
  views?: ViewExport;
}

/** View output formats: one row per line (ndjson), CSV records, or a JSON array per file. */
export type ViewFormat = 'ndjson' | 'csv' | 'json';

export interface ViewOutput {
  /** The output's name (view.name, else the view's name): its files' prefix and the manifest's output.name. */
  name: string;
  /** The ViewDefinition as validated at kick-off: a stored view edited later does not change the job. */
  view: unknown;
}

export interface ViewExport {
  outputs: ViewOutput[];
  format: ViewFormat;
  /** csv: a header line in each file. */
  header: boolean;
  clientTrackingId?: string;
  /**
   * The patient of the patient-level token that asked: the status and files are for that
   * patient's tokens only (the client alone could be another patient's app session).
   */
  requesterPatient?: string;
  /** Per type, the granular-scope restriction of the token that asked (a search query); the rows come through search then. */
  restrict?: Record<string, string>;
}

export interface Kickoff {
  params: ExportParams;
  /** Parameters left out under Prefer: handling=lenient. */
  ignored: string[];
}

export const OUTPUT_FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
/** Types of the patient compartment (CompartmentDefinition/patient): what a Patient or Group export holds. */
export const COMPARTMENT_TYPES: readonly string[] = Object.keys(PATIENT_COMPARTMENT);

const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const PATIENT_REF = /^(?:[A-Za-z][A-Za-z0-9+.-]*:\/\/[^?#]*\/)?Patient\/([A-Za-z0-9\-.]{1,64})$/;
const SEARCH_CONTROLS = ['_sort', '_count', '_include', '_revinclude', '_summary', '_elements', '_total', '_page'];

/** Parameters resource (POST kick-off) -> [name, value] pairs; `patient` keeps its reference. */
export function parametersToPairs(body: unknown): [string, string][] {
  const p = body as { resourceType?: string; parameter?: unknown };
  if (!p || typeof p !== 'object' || p.resourceType !== 'Parameters') throw badRequest('A POST $export body must be a Parameters resource');
  if (p.parameter === undefined) return [];
  if (!Array.isArray(p.parameter)) throw badRequest('Parameters.parameter must be an array');
  return p.parameter.map((param: Record<string, any>, i: number) => {
    const name = param?.name;
    if (typeof name !== 'string') throw badRequest(`Parameters.parameter[${i}] has no name`);
    const key = Object.keys(param).find((k) => k.startsWith('value'));
    const value = key === 'valueReference' ? param.valueReference?.reference : key ? param[key] : undefined;
    if (typeof value !== 'string' && typeof value !== 'boolean') throw badRequest(`Parameters.parameter[${i}] (${name}) needs a value`);
    return [name, String(value)];
  });
}

/** Splits `Observation?code=x,Patient?gender=y` on the commas that start a new `Type?`. */
function splitTypeFilters(raw: string): string[] {
  return raw.split(/,(?=[A-Z][A-Za-z]+\?)/).filter(Boolean);
}

export function parseKickoff(level: ExportLevel, pairs: [string, string][], opts: {
  lenient: boolean; storedTypes: string[]; groupId?: string;
}): Kickoff {
  const ignored: string[] = [];
  const refuse = (msg: string, name: string) => {
    if (!opts.lenient) throw badRequest(msg, [name]);
    ignored.push(name);
  };
  const defaults = level === 'system' ? opts.storedTypes : COMPARTMENT_TYPES.filter((t) => opts.storedTypes.includes(t));
  let types: string[] | undefined;
  let since: string | undefined;
  const filters: string[] = [];
  let patients: string[] | undefined;
  let elements: string[] | undefined;
  for (const [name, value] of pairs) {
    switch (name) {
      case '_outputFormat':
        if (!OUTPUT_FORMATS.has(value)) refuse(`_outputFormat '${value}' is not supported; use application/fhir+ndjson`, name);
        break;
      case '_type':
        for (const t of value.split(',').map((s) => s.trim()).filter(Boolean)) {
          if (!defaults.includes(t)) {
            refuse(level === 'system' || !opts.storedTypes.includes(t)
              ? `_type: Kiln does not store ${t}` : `_type: ${t} is not in the patient compartment`, name);
            continue;
          }
          types = [...(types ?? []), t];
        }
        break;
      case '_since': {
        // dateRange: a real calendar time from year 1 (PostgreSQL has no year 0), offset within ±14:00.
        const instant = INSTANT.test(value) ? dateRange(value) : undefined;
        if (!instant) throw badRequest(`_since must be a FHIR instant with a time zone (e.g. 2024-01-01T00:00:00Z), got '${value}'`, [name]);
        since = instant.lo;
        break;
      }
      case '_typeFilter':
        filters.push(...splitTypeFilters(value));
        break;
      case 'patient':
        if (level === 'system') {
          refuse('patient applies to Patient/$export and Group/[id]/$export only', name);
          break;
        }
        for (const ref of value.split(',').map((s) => s.trim()).filter(Boolean)) {
          const m = PATIENT_REF.exec(ref);
          if (!m) throw badRequest(`patient must be a Patient reference (Patient/[id]), got '${ref}'`, [name]);
          patients = [...new Set([...(patients ?? []), m[1]])];
        }
        break;
      case '_elements':
        elements = [...(elements ?? []), ...value.split(',').map((s) => s.trim()).filter(Boolean)];
        for (const e of elements) {
          if (!/^([A-Z][A-Za-z]+\.)?[a-z][A-Za-z0-9]*$/.test(e)) throw badRequest(`_elements entry '${e}' is not an element name`, [name]);
        }
        break;
      default:
        refuse(`Parameter '${name}' is not supported by $export${name === 'includeAssociatedData' ? ' (Kiln has no associated data to add)' : ''}`, name);
    }
  }
  const chosen = types ?? defaults;
  const typeFilters: Record<string, string[]> = {};
  const unfiltered = new Set<string>();
  for (const f of filters) {
    const q = f.indexOf('?');
    const type = q < 0 ? f : f.slice(0, q);
    if (q < 0 || !opts.storedTypes.includes(type)) {
      refuse(`_typeFilter '${f}' must be [type]?[search query] for a type Kiln stores`, '_typeFilter');
      continue;
    }
    if (!chosen.includes(type)) continue; // a filter on a type not exported changes nothing
    const pairsOf = [...new URLSearchParams(f.slice(q + 1)).entries()];
    const kept: [string, string][] = [];
    for (const [n, v] of pairsOf) {
      if (SEARCH_CONTROLS.includes(n.split(':')[0])) throw badRequest(`_typeFilter '${f}': ${n} is not a search criterion`, ['_typeFilter']);
      const parsed = parseSearch(type, [[n, v]]); // 400 on malformed values
      if (parsed.unknown.length) {
        refuse(`_typeFilter '${f}': unknown search parameter '${n}' for ${type}`, '_typeFilter');
        continue;
      }
      kept.push([n, v]);
    }
    if (!kept.length) unfiltered.add(type); // a query with nothing left matches everything
    else (typeFilters[type] ??= []).push(new URLSearchParams(kept).toString());
  }
  for (const t of unfiltered) delete typeFilters[t];
  const params: ExportParams = { level, types: chosen, typeFilters };
  if (opts.groupId) params.groupId = opts.groupId;
  if (since) params.since = since;
  if (patients) params.patients = patients;
  if (elements?.length) params.elements = elements;
  return { params, ignored };
}

/** The _elements entries that apply to a type (bare names apply to every type). */
export function elementsFor(elements: string[] | undefined, type: string): string[] | undefined {
  if (!elements) return undefined;
  const list = elements.filter((e) => !e.includes('.') || e.startsWith(`${type}.`)).map((e) => e.replace(/^[A-Za-z]+\./, ''));
  return list.length ? list : undefined;
}
