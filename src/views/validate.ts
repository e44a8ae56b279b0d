// Is this a ViewDefinition a runner can run? The structure (viewDefinition.schema.json, written from
// the specification's models.fsh) is checked by ajv; then what a schema cannot say: FHIRPath that
// parses and uses known functions and defined constants, one iteration per select, unique column
// names, unionAll branches with the same columns in the same order, constants with one value, and
// where paths that are plain element paths of a non-boolean type. Each problem names where it is
// (`select[1].column[0].path`). What only the data can show (several values in a non-collection
// column, a where path giving a non-boolean) is refused by the runner when it happens.
import fs from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { DotAtom, SymbolAtom, getElementDefinition, tryGetDataType, type Atom } from '@medplum/core';
import { loadDefinitions } from '../fhir/validate.ts';
import { constantValue, constantValueKeys, selectColumns } from './columns.ts';
import { compilePath, pathProblems } from './fhirpath.ts';
import type { ViewDefinition, ViewSelect } from './types.ts';
import { fromRoot } from '../paths.ts';

const SCHEMA_FILE = fromRoot('src', 'views', 'viewDefinition.schema.json');
const schema = JSON.parse(fs.readFileSync(SCHEMA_FILE, 'utf8')) as object;
const checkStructure = new Ajv({ allErrors: true, strict: false }).compile(schema);

/** The problems of a candidate ViewDefinition, each naming where it is; empty when it is valid. Never throws. */
export function validateView(view: unknown): string[] {
  try {
    if (typeof view !== 'object' || view === null || Array.isArray(view)) return ['(root): a ViewDefinition must be a JSON object'];
    if (!checkStructure(view)) return (checkStructure.errors ?? []).map(describe);
    return semanticProblems(view as ViewDefinition);
  } catch (e) {
    return [`(root): cannot check this view: ${(e as Error).message}`];
  }
}

/** `/select/0/column/1` -> `select[0].column[1]`. */
function location(instancePath: string, child?: string): string {
  const parts = instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (child !== undefined) parts.push(child);
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out ? `.${p}` : p;
  return out || '(root)';
}

function describe(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return `${location(e.instancePath, String(p.missingProperty))}: required`;
    case 'additionalProperties':
      return `${location(e.instancePath, String(p.additionalProperty))}: not an element of a ViewDefinition here`;
    case 'pattern':
      if (e.instancePath.endsWith('/name')) return `${location(e.instancePath)}: must be letters, digits or _, starting with a letter`;
      return `${location(e.instancePath)}: must match ${String(p.pattern)}`;
    case 'enum':
      return `${location(e.instancePath)}: must be one of ${(p.allowedValues as unknown[]).join(', ')}`;
    default:
      return `${location(e.instancePath)}: ${e.message ?? e.keyword}`;
  }
}

function semanticProblems(view: ViewDefinition): string[] {
  const problems: string[] = [];
  loadDefinitions();
  if (!tryGetDataType(view.resource)) problems.push(`resource: ${view.resource} is not a FHIR R4 resource type`);

  const constants = new Set<string>();
  (view.constant ?? []).forEach((c, i) => {
    const keys = constantValueKeys(c);
    if (keys.length !== 1) problems.push(`constant[${i}]: needs exactly one value[x] (has ${keys.length})`);
    else if (!constantValue(c)) problems.push(`constant[${i}].${keys[0]}: not a constant type`);
    if (constants.has(c.name)) problems.push(`constant[${i}].name: ${c.name} is defined twice`);
    constants.add(c.name);
  });

  const checkPath = (expression: string, where: string): void => {
    for (const p of pathProblems(expression, constants)) problems.push(`${where}: ${p}`);
  };
  (view.where ?? []).forEach((w, i) => {
    const where = `where[${i}].path`;
    const before = problems.length;
    checkPath(w.path, where);
    if (problems.length === before) {
      const type = elementPathType(view.resource, w.path);
      if (type && type !== 'boolean') problems.push(`${where}: ${w.path} is a ${type}, not a boolean`);
    }
  });

  const walk = (select: ViewSelect, where: string): void => {
    const iterations = (['forEach', 'forEachOrNull', 'repeat'] as const).filter((k) => select[k] !== undefined);
    if (iterations.length > 1) problems.push(`${where}: at most one of forEach, forEachOrNull and repeat (has ${iterations.join(', ')})`);
    if (select.forEach !== undefined) checkPath(select.forEach, `${where}.forEach`);
    if (select.forEachOrNull !== undefined) checkPath(select.forEachOrNull, `${where}.forEachOrNull`);
    select.repeat?.forEach((r, i) => checkPath(r, `${where}.repeat[${i}]`));
    select.column?.forEach((c, i) => checkPath(c.path, `${where}.column[${i}].path`));
    select.select?.forEach((s, i) => walk(s, `${where}.select[${i}]`));
    select.unionAll?.forEach((s, i) => walk(s, `${where}.unionAll[${i}]`));
    if (select.unionAll && select.unionAll.length > 1) {
      const first = selectColumns(select.unionAll[0]).map((c) => c.name);
      select.unionAll.slice(1).forEach((branch, i) => {
        const names = selectColumns(branch).map((c) => c.name);
        if (names.join(',') !== first.join(',')) {
          problems.push(`${where}.unionAll[${i + 1}]: columns (${names.join(', ')}) differ from unionAll[0]'s (${first.join(', ')}); every branch needs the same names in the same order`);
        }
      });
    }
  };
  view.select.forEach((s, i) => walk(s, `select[${i}]`));

  const seen = new Set<string>();
  for (const column of view.select.flatMap(selectColumns)) {
    if (seen.has(column.name)) problems.push(`column ${column.name}: the name is used by more than one column of the view`);
    seen.add(column.name);
  }
  return [...new Set(problems)];
}

/**
 * The FHIR type of a plain element path (`name.family`, `active`) on a resource type, when every
 * step names an element of one known type; undefined for anything else (functions, operators,
 * choice elements), which only the data can judge.
 */
function elementPathType(resourceType: string, expression: string): string | undefined {
  const names = symbolChain(compilePath(expression).child);
  if (!names) return undefined;
  let typeName = resourceType;
  for (const name of names) {
    const element = getElementDefinition(typeName, name);
    if (!element || element.type.length !== 1) return undefined;
    const code = element.type[0].code;
    typeName = code === 'BackboneElement' || code === 'Element' ? backboneTypeName(element.path) : code;
  }
  return typeName;
}

// Medplum names a backbone element's type after its path: Patient.contact -> PatientContact.
function backboneTypeName(elementPath: string): string {
  return elementPath.split('.').map((s) => s[0].toUpperCase() + s.slice(1)).join('');
}

function symbolChain(atom: Atom): string[] | undefined {
  if (atom instanceof SymbolAtom) return atom.name.startsWith('%') || atom.name.startsWith('$') ? undefined : [atom.name];
  if (atom instanceof DotAtom) {
    const left = symbolChain(atom.left);
    const right = symbolChain(atom.right);
    return left && right ? [...left, ...right] : undefined;
  }
  return undefined;
}
