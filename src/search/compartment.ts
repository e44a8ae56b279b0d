// The patient compartment (R4 CompartmentDefinition/patient, 4.0.1, read in
// mappings/resourceTypes.ts) of every stored type: the one definition that patient-level
// tokens (searches as a criterion, reads and writes on the resource), compartment search,
// $everything and Patient/Group $export use. Pure: no I/O.
import type { Resource } from '@medplum/fhirtypes';
import { extractIndexWith } from '../../mappings/search/extract.ts';
import { storedParams, type SearchParamDef } from '../../mappings/search/definitions.ts';
import { paramDef, type Criterion } from './criteria.ts';
import { PATIENT_COMPARTMENT } from '../../mappings/resourceTypes.ts';

export { PATIENT_COMPARTMENT };

export function hasCompartment(type: string): boolean {
  return Object.hasOwn(PATIENT_COMPARTMENT, type);
}

/** Definitions per type, one array each: the extractor compiles once per array. */
const defsOf = new Map<string, SearchParamDef[]>();
function compartmentDefs(type: string): SearchParamDef[] {
  let defs = defsOf.get(type);
  if (!defs) defsOf.set(type, (defs = (hasCompartment(type) ? PATIENT_COMPARTMENT[type] : []).map((code) => paramDef(type, code)).filter((d): d is SearchParamDef => d?.type === 'reference')));
  return defs;
}

/**
 * The reference parameters whose index rows hold the type's compartment references to
 * patients: the compartment parameters, or those they are stored as (Encounter `patient`
 * is `subject` rows of type Patient; definitions.ts StoredAs). Readers of those rows ask
 * for target type Patient, which is the only filter such a parameter carries.
 */
export function compartmentIndexParams(type: string): string[] {
  const params = compartmentDefs(type).map(storedParams)
    .filter((s) => !s.targetType || s.targetType === 'Patient').flatMap((s) => s.params);
  return [...new Set(params)];
}

/**
 * Patient ids whose compartment holds this resource. The references come from the same
 * extraction that fills the search index, so a read and a search agree on membership.
 */
export function compartmentPatients(type: string, resource: Record<string, any>): string[] {
  const own = type === 'Patient' && typeof resource.id === 'string' ? [resource.id] : [];
  if (!hasCompartment(type)) return own;
  const refs = extractIndexWith({ ...resource, resourceType: type } as Resource, compartmentDefs(type)).references;
  const linked = refs.filter((r) => r.targetType === 'Patient' && r.targetId).map((r) => r.targetId!);
  return [...new Set([...own, ...linked])];
}

export function inCompartment(type: string, resource: Record<string, any>, patient: string): boolean {
  return compartmentPatients(type, resource).includes(patient);
}

/**
 * The parameter naming the patient a resource is about: `patient` (Condition.subject as a
 * Patient, ...), else `subject`; a type with neither (Coverage, Appointment, Group, ...) is
 * about every patient of its compartment.
 */
const OWNER_PARAMS = ['patient', 'subject'];
const ownerDefs = new Map<string, SearchParamDef[]>();

/**
 * The patients a resource is about, which a patient-level write must be limited to: a
 * Patient's own id, else whom its `patient` parameter names (Observation.subject,
 * Encounter.subject, ...). Narrower than the compartment, which also holds resources
 * that merely name the patient (Observation.performer, Patient.link): those are read,
 * not written, through a patient's grant.
 */
export function ownerPatients(type: string, resource: Record<string, any>): string[] {
  if (type === 'Patient') return typeof resource.id === 'string' ? [resource.id] : [];
  if (!hasCompartment(type)) return [];
  let defs = ownerDefs.get(type);
  if (!defs) {
    const owner = OWNER_PARAMS.map((code) => paramDef(type, code)).find((d) => d?.type === 'reference');
    ownerDefs.set(type, (defs = owner ? [owner] : compartmentDefs(type)));
  }
  const refs = extractIndexWith({ ...resource, resourceType: type } as Resource, defs).references;
  return [...new Set(refs.filter((r) => r.targetType === 'Patient' && r.targetId).map((r) => r.targetId!))];
}

/**
 * Whether a resource is `patient`'s own to write: about that patient (see ownerPatients)
 * and in no other patient's compartment, so a write through one patient's grant cannot
 * show up in another's (as performer, or a Patient.link).
 */
export function ownedBy(type: string, resource: Record<string, any>, patient: string): boolean {
  const owners = ownerPatients(type, resource);
  return owners.length > 0 && owners.every((p) => p === patient) && compartmentPatients(type, resource).every((p) => p === patient);
}

/**
 * The search criterion "in Patient/{patient}'s compartment": any compartment parameter
 * references the patient (or, for Patient, it is the patient). No request syntax parses
 * to it; enforcement adds it (src/auth/scopes.ts).
 */
export function compartmentCriterion(type: string, patient: string): Criterion | undefined {
  if (!hasCompartment(type) || !compartmentDefs(type).length) return undefined;
  return {
    def: compartmentDefs(type)[0], values: [],
    anyRef: { params: compartmentIndexParams(type), targetType: 'Patient', targetId: patient, self: type === 'Patient' },
  };
}
