// SQL on FHIR v2 ViewDefinition (spec/models.fsh of the specification), as the in-memory runner
// (src/views) and the PostgreSQL compiler (src/store/views) read it. Only what the runners use is
// typed; a stored view keeps every other CanonicalResource element as it came.

export interface ViewDefinition {
  resourceType?: 'ViewDefinition';
  id?: string;
  url?: string;
  name?: string;
  title?: string;
  status?: string;
  description?: string;
  /** The FHIR resource type the view reads, e.g. Patient. */
  resource: string;
  profile?: string[];
  fhirVersion?: string[];
  constant?: ViewConstant[];
  select: ViewSelect[];
  where?: ViewWhere[];
  [element: string]: unknown;
}

/** `name` and exactly one `value[x]` (valueString, valueInteger, valueDate, ...). */
export interface ViewConstant {
  name: string;
  [valueX: string]: unknown;
}

export interface ViewSelect {
  column?: ViewColumn[];
  select?: ViewSelect[];
  /** At most one of forEach, forEachOrNull and repeat. */
  forEach?: string;
  forEachOrNull?: string;
  repeat?: string[];
  unionAll?: ViewSelect[];
}

export interface ViewColumn {
  name: string;
  path: string;
  description?: string;
  /** Several values allowed (an array in the row); otherwise more than one is an error. */
  collection?: boolean;
  /** A FHIR type name or StructureDefinition URI (relative to http://hl7.org/fhir/StructureDefinition/). */
  type?: string;
  tag?: { name: string; value: string }[];
}

export interface ViewWhere {
  path: string;
  description?: string;
}

/** One output row: column name to value (null when the path gave nothing, an array for a collection column). */
export type Row = Record<string, unknown>;
