// FHIRPath Patch (R4 fhirpatch.html): a Parameters resource whose `operation` parameters add,
// insert, delete, replace or move elements named by FHIRPath, applied in order to a resource's
// JSON. Paths are evaluated with Medplum's FHIRPath. JS cannot hold a primitive by reference,
// so a path must end in an element name, optionally narrowed by [n], first(), last(),
// where(...), ...: the name's parents are evaluated, and the narrowing runs over their
// children with known places (object, key, index), so `birthDate` can be replaced in place.
// A malformed patch, or one that does not fit the resource's type, is a 400; one whose paths
// do not fit the resource's content (no match, several, an index out of range, adding a
// single element that exists) is a 422 (the patch cannot apply). Validity of the result is
// the caller's check.
import {
  DotAtom, FhirPathAtom, FunctionAtom, IndexerAtom, SymbolAtom, capitalize, getElementDefinition, getTypedPropertyValue,
  isPrimitiveType, parseFhirPath, toTypedValue, tryGetDataType, type AtomContext, type InternalSchemaElement, type TypedValue,
} from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { FhirError, badRequest, unprocessable } from './outcome.ts';
import { isInheritedName } from './duplicateKeys.ts';
import { loadDefinitions } from './validate.ts';

type Json = Record<string, unknown>;
type Atom = FhirPathAtom['child'];

/** A value to write: value[x] (its type known), a resource, or parts to assemble for the element's type. */
type PatchValue =
  | { kind: 'typed'; type: string; value: unknown }
  | { kind: 'resource'; value: Json }
  | { kind: 'parts'; parts: Json[] };

/** Where a path ends: an element name under parents (absent: the resource), then narrowing. */
interface CompiledPath {
  text: string;
  /** The type name the path starts at (Patient in Patient.name), if it names one. */
  start?: string;
  parent?: Atom;
  name: string;
  /** The path again, over a stand-in for the named children (identity is kept through the narrowing). */
  rebuild: (children: Atom) => Atom;
  narrowed: boolean;
}

export type FhirPathPatchOp =
  | { type: 'add'; path: CompiledPath; name: string; value: PatchValue }
  | { type: 'insert'; path: CompiledPath; value: PatchValue; index: number }
  | { type: 'delete'; path: CompiledPath }
  | { type: 'replace'; path: CompiledPath; value: PatchValue }
  | { type: 'move'; path: CompiledPath; source: number; destination: number };

/** The parts each operation type takes besides `type` (fhirpatch.html's table), all required. */
const PARTS: Record<FhirPathPatchOp['type'], { required: string[] }> = {
  add: { required: ['path', 'name', 'value'] },
  insert: { required: ['path', 'value', 'index'] },
  delete: { required: ['path'] },
  replace: { required: ['path', 'value'] },
  move: { required: ['path', 'source', 'destination'] },
};
const PART_NAMES = new Set(['type', 'path', 'name', 'value', 'index', 'source', 'destination']);

/** Functions that only pick from their input collection, keeping each picked item as it was. */
const NARROWING = new Set(['where', 'first', 'last', 'single', 'tail', 'skip', 'take', 'ofType', 'distinct', 'exclude', 'intersect']);

const ELEMENT_NAME = /^[A-Za-z][A-Za-z0-9]*$/;
const MAX_PATH = 2000;

export function isFhirPathPatch(body: unknown): boolean {
  return typeof body === 'object' && body !== null && !Array.isArray(body) && (body as Json).resourceType === 'Parameters';
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The value[x] key of a Parameters part, if it has one (several: 400). */
function valueKey(part: Json, where: string): string | undefined {
  const keys = Object.keys(part).filter((k) => /^value[A-Z]/.test(k));
  if (keys.length > 1) throw badRequest(`${where} has several values (${keys.join(', ')})`);
  return keys[0];
}

/** The FHIR type a value[x] key carries: valueDate -> date, valueHumanName -> HumanName. */
function typeOfKey(key: string, where: string): string {
  const suffix = key.slice('value'.length);
  const primitive = suffix[0].toLowerCase() + suffix.slice(1);
  if (isPrimitiveType(primitive)) return primitive;
  if (tryGetDataType(suffix)) return suffix;
  throw badRequest(`${where}: '${key}' names no FHIR data type`);
}

function checkName(name: string, where: string): void {
  if (!ELEMENT_NAME.test(name) || isInheritedName(name)) throw badRequest(`${where}: '${name}' is not an element name`);
}

function parseValue(part: Json, where: string): PatchValue {
  const key = valueKey(part, where);
  const kinds = [key, part.part, part.resource].filter((v) => v !== undefined).length;
  if (kinds !== 1) throw badRequest(`${where} needs exactly one of value[x], part or resource`);
  if (key) return { kind: 'typed', type: typeOfKey(key, where), value: part[key] };
  if (part.resource !== undefined) {
    if (!isObject(part.resource) || typeof part.resource.resourceType !== 'string') throw badRequest(`${where}.resource is not a resource`);
    return { kind: 'resource', value: part.resource };
  }
  if (!Array.isArray(part.part) || part.part.length === 0 || !part.part.every(isObject)) throw badRequest(`${where}.part must be a non-empty list of parts`);
  return { kind: 'parts', parts: part.part as Json[] };
}

function integerPart(part: Json, where: string): number {
  const v = part.valueInteger;
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw badRequest(`${where} needs a valueInteger of 0 or more`);
  return v as number;
}

function stringPart(part: Json, where: string, key = 'valueString'): string {
  const v = part[key];
  if (typeof v !== 'string' || v.trim() === '') throw badRequest(`${where} needs a ${key}`);
  return v;
}

/**
 * Splits a path into the parents of its last element name and the narrowing after it.
 * Only the shape is checked here; whether it matches is the resource's business.
 */
export function compilePath(text: string, where = 'path'): CompiledPath {
  // Paths are short; a long one would only deepen the recursion over its atoms.
  if (text.length > MAX_PATH) throw badRequest(`${where} is longer than ${MAX_PATH} characters`);
  let ast: FhirPathAtom;
  try {
    ast = parseFhirPath(text);
  } catch (e) {
    throw badRequest(`${where} '${text}' is not FHIRPath: ${(e as Error).message}`);
  }
  const split = (atom: Atom): Omit<CompiledPath, 'text'> => {
    if (atom instanceof SymbolAtom && !atom.name.startsWith('$') && !atom.name.startsWith('%')) {
      checkName(atom.name, `${where} '${text}'`);
      return { name: atom.name, rebuild: (c) => c, narrowed: false };
    }
    if (atom instanceof DotAtom && atom.right instanceof SymbolAtom && !atom.right.name.startsWith('$') && !atom.right.name.startsWith('%')) {
      checkName(atom.right.name, `${where} '${text}'`);
      return { parent: atom.left, name: atom.right.name, rebuild: (c) => c, narrowed: false };
    }
    if (atom instanceof DotAtom && atom.right instanceof FunctionAtom && NARROWING.has(atom.right.name)) {
      const inner = split(atom.left);
      const fn = atom.right;
      return { ...inner, rebuild: (c) => new DotAtom(inner.rebuild(c), fn), narrowed: true };
    }
    // extension(url) is extension.where(url = ...): the extension list, narrowed by url.
    if (atom instanceof DotAtom && atom.right instanceof FunctionAtom && atom.right.name === 'extension' && atom.right.args.length === 1) {
      const urlAtom = atom.right.args[0];
      const byUrl: Atom = {
        eval: (ctx: AtomContext, input: TypedValue[]) => {
          const url = urlAtom.eval(ctx, input)[0]?.value;
          return input.filter((tv) => isObject(tv.value) && tv.value.url === url);
        },
        toString: () => `where(url = ${urlAtom.toString()})`,
      };
      return { parent: atom.left, name: 'extension', rebuild: (c) => new DotAtom(c, byUrl), narrowed: true };
    }
    if (atom instanceof IndexerAtom) {
      const inner = split(atom.left);
      const expr = atom.expr;
      return { ...inner, rebuild: (c) => new IndexerAtom(inner.rebuild(c), expr), narrowed: true };
    }
    throw badRequest(`${where} '${text}' must end in an element name, optionally followed by [n], first(), last(), where(...) or another function that picks from it`);
  };
  let start: Atom = ast.child;
  while (start instanceof DotAtom || start instanceof IndexerAtom) start = start.left;
  return { text, start: start instanceof SymbolAtom && /^[A-Z]/.test(start.name) ? start.name : undefined, ...split(ast.child) };
}

/** Parses a FHIRPath Patch Parameters resource into its operations (400 for anything malformed). */
export function parseFhirPathPatch(body: unknown): FhirPathPatchOp[] {
  loadDefinitions(); // value[x] types are checked against the data types
  if (!isFhirPathPatch(body)) throw badRequest('A FHIRPath Patch is a Parameters resource');
  const params = (body as Json).parameter;
  if (params === undefined) return [];
  if (!Array.isArray(params)) throw badRequest('Parameters.parameter must be a list');
  return params.map((param: unknown, i: number) => {
    const where = `Parameters.parameter[${i}]`;
    if (!isObject(param) || param.name !== 'operation') throw badRequest(`${where}: a FHIRPath Patch has only parameters named 'operation'`);
    if (!Array.isArray(param.part)) throw badRequest(`${where}: an operation needs its parts (type, path, ...)`);
    if (valueKey(param, where) || param.resource !== undefined) throw badRequest(`${where}: an operation has parts, not a value`);
    const parts = new Map<string, Json>();
    for (const [j, part] of (param.part as unknown[]).entries()) {
      const name = isObject(part) ? part.name : undefined;
      if (typeof name !== 'string' || !PART_NAMES.has(name)) throw badRequest(`${where}.part[${j}]: unknown part '${String(name)}'; parts are ${[...PART_NAMES].join(', ')}`);
      if (parts.has(name)) throw badRequest(`${where}: part '${name}' appears twice`);
      parts.set(name, part as Json);
    }
    const typePart = parts.get('type');
    const type = typePart?.valueCode;
    if (typeof type !== 'string' || !Object.hasOwn(PARTS, type)) throw badRequest(`${where}: type must be a valueCode of ${Object.keys(PARTS).join(', ')}`);
    const op = type as FhirPathPatchOp['type'];
    const allowed = new Set(['type', ...PARTS[op].required]);
    for (const name of parts.keys()) if (!allowed.has(name)) throw badRequest(`${where}: a ${op} operation takes no '${name}' part`);
    for (const name of PARTS[op].required) if (!parts.has(name)) throw badRequest(`${where}: a ${op} operation needs a '${name}' part`);
    const at = (name: string) => `${where} (${op}) ${name}`;
    const path = compilePath(stringPart(parts.get('path')!, at('path')), at('path'));
    switch (op) {
      case 'add': {
        const name = stringPart(parts.get('name')!, at('name'));
        checkName(name, at('name'));
        return { type: op, path, name, value: parseValue(parts.get('value')!, at('value')) };
      }
      case 'insert':
        return { type: op, path: listPath(path, at('path')), value: parseValue(parts.get('value')!, at('value')), index: integerPart(parts.get('index')!, at('index')) };
      case 'delete':
        return { type: op, path };
      case 'replace':
        return { type: op, path, value: parseValue(parts.get('value')!, at('value')) };
      case 'move':
        return {
          type: op, path: listPath(path, at('path')),
          source: integerPart(parts.get('source')!, at('source')), destination: integerPart(parts.get('destination')!, at('destination')),
        };
    }
  });
}

/** insert and move name a list itself: nothing after its element name. */
function listPath(path: CompiledPath, where: string): CompiledPath {
  if (path.narrowed) throw badRequest(`${where} '${path.text}' must name a list (end in its element name)`);
  return path;
}

/** One element a path selects, by its place. */
interface Located {
  tv: TypedValue;
  owner: Json;
  key: string;
  index?: number;
  /** The element name without a choice type's suffix (deceased for deceasedBoolean). */
  base: string;
  def?: InternalSchemaElement;
}

/** Every object of the resource, with its place (for pruning what a delete empties). */
type Places = Map<object, { owner: Json; key: string; index?: number } | null>;

function places(resource: Json): Places {
  const map: Places = new Map([[resource, null]]);
  const stack: Json[] = [resource];
  while (stack.length) {
    const owner = stack.pop()!;
    for (const [key, v] of Object.entries(owner)) {
      const items = Array.isArray(v) ? v : [v];
      items.forEach((item, i) => {
        if (isObject(item) && !map.has(item)) {
          map.set(item, { owner, key, ...(Array.isArray(v) ? { index: i } : {}) });
          stack.push(item);
        }
      });
    }
  }
  return map;
}

function isChoice(def: InternalSchemaElement | undefined): boolean {
  return !!def && def.path.endsWith('[x]');
}

function baseName(def: InternalSchemaElement | undefined, name: string): string {
  return isChoice(def) ? def!.path.slice(def!.path.lastIndexOf('.') + 1, -3) : name;
}

/** The JSON key holding `name` on an object of a type (a choice's typed key), if present. */
function presentKey(owner: Json, name: string, def: InternalSchemaElement | undefined): string | undefined {
  const has = (k: string) => Object.hasOwn(owner, k) || Object.hasOwn(owner, '_' + k);
  if (!isChoice(def) || name !== baseName(def, name)) return has(name) ? name : undefined;
  return def!.type.map((t) => name + capitalize(t.code)).find(has);
}

class Evaluation {
  readonly root: TypedValue;
  readonly places: Places;
  readonly ctx: AtomContext;

  constructor(readonly resource: Json) {
    this.root = toTypedValue(resource);
    this.places = places(resource);
    this.ctx = { variables: { '%resource': this.root, '%rootResource': this.root, '%context': this.root } };
  }

  private run(atom: Atom, path: CompiledPath): TypedValue[] {
    try {
      return atom.eval(this.ctx, [this.root]);
    } catch (e) {
      throw badRequest(`the path could not be evaluated: ${(e as Error).message}`);
    }
  }

  /** A path starting at a type name starts at this resource's type (Observation.code on a Patient is a mistake). */
  checkStart(path: CompiledPath): void {
    if (path.start !== undefined && path.start !== this.resource.resourceType) {
      throw badRequest(`the path starts at ${path.start}, but the resource is a ${String(this.resource.resourceType)}`);
    }
  }

  /** The objects the path's name hangs off (the resource for a bare name), each in the resource. */
  parents(path: CompiledPath): TypedValue[] {
    this.checkStart(path);
    if (!path.parent) return [this.root];
    const found = this.run(path.parent, path);
    for (const tv of found) {
      if (!isObject(tv.value) || !this.places.has(tv.value)) {
        throw badRequest('the path goes through something that is not an element with children of the resource (a primitive\'s extensions, a resolved reference, a computed value)');
      }
    }
    return found;
  }

  /** The elements a path selects; undefined when it names the resource itself. */
  locate(path: CompiledPath): Located[] | undefined {
    this.checkStart(path);
    if (!path.parent && !path.narrowed && path.name === this.resource.resourceType) return undefined;
    const places = new Map<TypedValue, Located>();
    const children: TypedValue[] = [];
    for (const parent of this.parents(path)) {
      for (const located of this.children(parent, path.name)) {
        places.set(located.tv, located);
        children.push(located.tv);
      }
    }
    const standIn: Atom = { eval: () => children, toString: () => path.name };
    return this.run(path.rebuild(standIn), path).map((tv) => {
      const located = places.get(tv);
      if (!located) throw badRequest('the path selects something that is not an element of the resource');
      return located;
    });
  }

  children(parent: TypedValue, name: string): Located[] {
    const owner = parent.value as Json;
    const def = getElementDefinition(parent.type, name);
    const key = presentKey(owner, name, def);
    if (!key) return [];
    const found = getTypedPropertyValue(parent, key);
    const list = found === undefined ? [] : Array.isArray(found) ? found : [found];
    const many = Array.isArray(owner[key]) || Array.isArray(owner['_' + key]);
    return list.map((tv, i) => ({ tv, owner, key, base: baseName(def, name), def, ...(many ? { index: i } : {}) }));
  }
}

const noMatch = () => unprocessable('the path matches nothing in the resource');
const several = (n: number, what = 'elements') => unprocessable(`the path matches ${n} ${what}; it must match one`);
const itself = () => badRequest('the path names the resource itself');

/** The one element a path selects (422 for none or several). */
function one(ev: Evaluation, path: CompiledPath): Located {
  const found = ev.locate(path);
  if (!found) throw itself();
  if (found.length === 0) throw noMatch();
  if (found.length > 1) throw several(found.length);
  return found[0];
}

/** The one object a list path's name hangs off, and the list's definition. */
function listOwner(ev: Evaluation, path: CompiledPath): { owner: Json; type: string; def?: InternalSchemaElement } {
  const parents = ev.parents(path);
  if (parents.length === 0) throw noMatch();
  if (parents.length > 1) throw several(parents.length, 'lists');
  const def = getElementDefinition(parents[0].type, path.name);
  if (!def && tryGetDataType(parents[0].type)) throw badRequest(`${parents[0].type} has no element '${path.name}'`);
  if (def && !def.isArray) throw badRequest(`${parents[0].type}.${path.name} is not a list`);
  return { owner: parents[0].value as Json, type: parents[0].type, def };
}

/** Builds the JSON of a value for an element whose type is `type` (undefined: not known). */
function build(value: PatchValue, type: string | undefined, where: string): unknown {
  if (value.kind !== 'parts') return structuredClone(value.value);
  if (!type || isPrimitiveType(type)) throw badRequest(`${where}: parts give a complex value, but the element's type is ${type ?? 'not known'}; use value[x]`);
  const out: Json = {};
  for (const [i, part] of value.parts.entries()) {
    const at = `${where}.part[${i}]`;
    const name = part.name;
    if (typeof name !== 'string') throw badRequest(`${at} needs a name`);
    checkName(name, at);
    const def = getElementDefinition(type, name);
    if (!def) throw badRequest(`${at}: ${type} has no element '${name}'`);
    const sub = parseValue(part, at);
    let key = name;
    let subType: string | undefined = def.type.length === 1 ? def.type[0].code : undefined;
    if (isChoice(def)) {
      if (sub.kind !== 'typed') throw badRequest(`${at}: ${type}.${name} has a choice of types; give it as value[x]`);
      key = name + capitalize(sub.type);
      subType = sub.type;
    }
    const json = build(sub, subType, at);
    if (def.isArray) {
      out[key] = [...((out[key] as unknown[] | undefined) ?? []), json];
    } else if (Object.hasOwn(out, key)) {
      throw badRequest(`${at}: ${type}.${name} takes one value`);
    } else {
      out[key] = json;
    }
  }
  return out;
}

/** The key a value goes under for an element: a choice's key takes the value's type, one of the choice's. */
function keyFor(base: string, def: InternalSchemaElement | undefined, name: string, value: PatchValue): string {
  if (!isChoice(def) || name !== base) return name;
  if (value.kind !== 'typed') throw badRequest(`${def!.path} has a choice of types; give the value as value[x]`);
  if (!def!.type.some((t) => t.code === value.type)) {
    throw badRequest(`${def!.path} takes ${def!.type.map((t) => t.code).join(', ')}, not ${value.type}`);
  }
  return base + capitalize(value.type);
}

function typeOf(value: PatchValue, def: InternalSchemaElement | undefined): string | undefined {
  if (value.kind === 'typed') return value.type;
  return def && def.type.length === 1 ? def.type[0].code : undefined;
}

/** Removes an element at its place, with its primitive extensions, and what that leaves empty. */
function removeAt(ev: Evaluation, owner: Json, key: string, index: number | undefined): void {
  for (const k of [key, '_' + key]) {
    const v = owner[k];
    if (index !== undefined && Array.isArray(v)) {
      v.splice(index, 1);
      if (v.length === 0 || v.every((x) => x === null)) delete owner[k];
    } else if (index === undefined) {
      delete owner[k];
    }
  }
  const place = ev.places.get(owner);
  if (place && Object.keys(owner).length === 0) removeAt(ev, place.owner, place.key, place.index);
}

/** Keeps a primitive list's `_key` extensions aligned when the list changes. */
function alignExtensions(owner: Json, key: string, change: (list: unknown[]) => void): void {
  const ext = owner['_' + key];
  if (Array.isArray(ext)) {
    while (ext.length < ((owner[key] as unknown[] | undefined)?.length ?? 0)) ext.push(null);
    change(ext);
    if (ext.every((x) => x === null)) delete owner['_' + key];
  }
}

function apply(ev: Evaluation, op: FhirPathPatchOp): void {
  switch (op.type) {
    case 'add': {
      const found = ev.locate(op.path);
      if (found && found.length !== 1) throw found.length ? several(found.length) : noMatch();
      const target = found ? found[0].tv : ev.root;
      if (!isObject(target.value) || !ev.places.has(target.value)) throw unprocessable('the path selects a primitive; add needs an element with children');
      const owner = target.value;
      const def = getElementDefinition(target.type, op.name);
      if (!def && tryGetDataType(target.type)) throw badRequest(`${target.type} has no element '${op.name}'`);
      const base = baseName(def, op.name);
      const key = keyFor(base, def, op.name, op.value);
      const json = build(op.value, typeOf(op.value, def), 'value');
      if (def?.isArray ?? Array.isArray(owner[key])) {
        alignExtensions(owner, key, (ext) => ext.push(null));
        owner[key] = [...((owner[key] as unknown[] | undefined) ?? []), json];
      } else {
        if (presentKey(owner, base, def) || Object.hasOwn(owner, key)) {
          throw unprocessable(`${target.type}.${base} already has a value and does not repeat; use replace`);
        }
        owner[key] = json;
      }
      return;
    }
    case 'insert': {
      const { owner, def } = listOwner(ev, op.path);
      const list = (owner[op.path.name] as unknown[] | undefined) ?? [];
      if (op.index > list.length) throw unprocessable(`index ${op.index} is past the end of the list (${list.length} elements)`);
      const json = build(op.value, typeOf(op.value, def), 'value');
      alignExtensions(owner, op.path.name, (ext) => ext.splice(op.index, 0, null));
      owner[op.path.name] = [...list.slice(0, op.index), json, ...list.slice(op.index)];
      return;
    }
    case 'delete': {
      const found = ev.locate(op.path);
      if (!found) throw itself();
      if (found.length === 0) return; // nothing to delete is not an error
      if (found.length > 1) throw several(found.length);
      removeAt(ev, found[0].owner, found[0].key, found[0].index);
      return;
    }
    case 'replace': {
      const target = one(ev, op.path);
      const json = build(op.value, op.value.kind === 'typed' ? op.value.type : target.tv.type, 'value');
      const { owner, index } = target;
      if (index !== undefined) {
        (owner[target.key] as unknown[])[index] = json;
        alignExtensions(owner, target.key, (ext) => { ext[index] = null; });
        return;
      }
      // A choice element takes the key of its new type (valueQuantity -> valueString).
      const key = isChoice(target.def) && target.key !== target.base ? keyFor(target.base, target.def, target.base, op.value) : target.key;
      delete owner[target.key];
      delete owner['_' + target.key];
      owner[key] = json;
      return;
    }
    case 'move': {
      const { owner } = listOwner(ev, op.path);
      const list = (owner[op.path.name] as unknown[] | undefined) ?? [];
      for (const [what, at] of [['source', op.source], ['destination', op.destination]] as const) {
        if (at >= list.length) throw unprocessable(`${what} ${at} is outside the list (${list.length} elements)`);
      }
      const move = (l: unknown[]) => l.splice(op.destination, 0, l.splice(op.source, 1)[0]);
      alignExtensions(owner, op.path.name, move);
      move(list);
      return;
    }
  }
}

/**
 * Applies a FHIRPath Patch to a resource (changed in place and returned). Operations run in
 * order, each on the result of the one before; the first that fails throws (400 or 422).
 */
export function applyFhirPathPatch<T extends Resource>(resource: T, patch: unknown): T {
  return applyFhirPathOps(resource, parseFhirPathPatch(patch));
}

/** Applies operations parseFhirPathPatch returned. */
export function applyFhirPathOps<T extends Resource>(resource: T, ops: FhirPathPatchOp[]): T {
  loadDefinitions();
  for (const [i, op] of ops.entries()) {
    try {
      apply(new Evaluation(resource as unknown as Json), op);
    } catch (e) {
      if (!(e instanceof FhirError)) throw e;
      const message = `FHIRPath Patch operation ${i} (${op.type} ${op.path.text}): ${e.message}`;
      throw FhirError.withIssues(e.status, e.issues.map((x) => ({ ...x, diagnostics: message })), message);
    }
  }
  return resource;
}
