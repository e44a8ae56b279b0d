// Test-only helpers that make third-party FHIR examples loadable into a server that
// enforces referential integrity (see ../shared/data/README.md, "The references
// are not resolvable"), and compare what was written with what is read back.
//
// JSON here is parsed and written losslessly: a number keeps its literal text
// (FHIR decimals are significant to their precision: 1.00 is not 1.0), so a
// comparison also catches a server that re-serializes 70.50 as 70.5.
import { RESOURCE_TYPES } from '../../mappings/resourceTypes.ts';

/** A JSON number, kept as its literal text. */
export class JsonNumber {
  readonly raw: string;
  constructor(raw: string) {
    this.raw = raw;
  }
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/** JSON.parse, except that numbers become JsonNumber (their text kept). */
export function parseLossless(text: string): any {
  let i = 0;
  const space = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const fail = (what: string): never => { throw new SyntaxError(`${what} at offset ${i}`); };
  const value = (): any => {
    space();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: Record<string, any> = {};
      space();
      if (text[i] === '}') { i++; return obj; }
      for (;;) {
        space();
        if (text[i] !== '"') fail('expected a key');
        const key = value() as string;
        space();
        if (text[i++] !== ':') fail('expected ":"');
        Object.defineProperty(obj, key, { value: value(), enumerable: true, writable: true, configurable: true });
        space();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] === '}') return obj;
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: any[] = [];
      space();
      if (text[i] === ']') { i++; return arr; }
      for (;;) {
        arr.push(value());
        space();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] === ']') return arr;
        fail('expected "," or "]"');
      }
    }
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const str = JSON.parse(text.slice(i, j + 1)) as string;
      i = j + 1;
      return str;
    }
    for (const [lit, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(lit, i)) { i += lit.length; return v; }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail('unexpected character');
    i += m![0].length;
    return new JsonNumber(m![0]);
  };
  const result = value();
  space();
  if (i !== text.length) fail('trailing text');
  return result;
}

/** JSON.stringify (compact) that writes a JsonNumber as its literal text. */
export function stringifyLossless(value: unknown): string {
  if (value instanceof JsonNumber) return value.raw;
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : stringifyLossless(v))).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const members = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${members.map(([k, v]) => `${JSON.stringify(k)}:${stringifyLossless(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Deep copy of parsed JSON that keeps JsonNumber (structuredClone would not). */
export function cloneJson<T>(value: T): T {
  if (value instanceof JsonNumber || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(cloneJson) as T;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    Object.defineProperty(out, k, { value: cloneJson(v), enumerable: true, writable: true, configurable: true });
  }
  return out as T;
}

/** The types Kiln stores (every R4 type): a literal reference to one of them must resolve. */
export const STORED_TYPES: ReadonlySet<string> = new Set(RESOURCE_TYPES);

/** `Type/id` (relative, or absolute URL ending in it), with an optional `/_history/n`. */
const LITERAL = /^(?:[A-Za-z][A-Za-z0-9+.-]*:\/\/[^?#]*\/)?([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

export interface LiteralRef {
  type: string;
  id: string;
  /** `/_history/n` or ''. */
  history: string;
}

export function parseLiteral(reference: string): LiteralRef | undefined {
  const m = LITERAL.exec(reference);
  return m ? { type: m[1], id: m[2], history: m[3] ?? '' } : undefined;
}

/** What to do with one Reference: a new `reference` string, `null` for display-only, `undefined` to keep it. */
export type RefDecision = string | null | undefined;

/**
 * Walks every object with a string `reference` outside `contained` (same rule as the
 * server's reference collector) and applies `decide`. A `null` decision removes
 * `reference` and keeps the object's `display`, or puts the original reference there.
 * Mutates and returns `resource`.
 */
export function rewriteReferences<T>(resource: T, decide: (reference: string, path: string) => RefDecision): T {
  const walk = (node: unknown, path: string): void => {
    if (Array.isArray(node)) {
      node.forEach((item, i) => walk(item, `${path}[${i}]`));
      return;
    }
    if (node === null || typeof node !== 'object') return;
    const obj = node as Record<string, unknown>;
    if (typeof obj.reference === 'string') {
      const original = obj.reference;
      const decision = decide(original, path);
      if (decision === null) {
        delete obj.reference;
        if (typeof obj.display !== 'string' || obj.display === '') obj.display = original;
      } else if (decision !== undefined) {
        obj.reference = decision;
      }
    }
    for (const [key, value] of Object.entries(obj)) {
      if (key === 'contained' || key === 'reference') continue;
      walk(value, path ? `${path}.${key}` : key);
    }
  };
  walk(resource, '');
  return resource;
}

export interface ExampleContext {
  /** Server id of the one Patient every Patient reference is pointed at. */
  anchorPatientId: string;
  /** `Type/originalId` -> server id, for resources the test created (non-Patient stored types). */
  created: Map<string, string>;
  /** Server Encounter id -> its subject Patient id (or null): lets hub-and-spoke hold. */
  encounterPatient: Map<string, string | null>;
  /** How references were handled, for the test's report. */
  stats?: { toAnchor: number; toCreated: number; displayOnly: number; keptAsGiven: number };
}

/** Patient id of a resource's subject, when it is a literal Patient reference. */
export function subjectPatientId(resource: Record<string, any>): string | null {
  const ref = resource.subject?.reference ? parseLiteral(resource.subject.reference) : undefined;
  return ref?.type === 'Patient' ? ref.id : null;
}

/**
 * The README's `localize()`: drops `id`; every Patient reference -> the anchor Patient;
 * references to other stored types -> what the test created from that example, or
 * display-only when there is none; references to types Kiln does not store
 * (Practitioner, Organization, ...), `#contained` and others are kept as given.
 * An Observation `encounter` / MedicationStatement `context` is kept only when that
 * Encounter has the same patient as the resource's subject (else display-only).
 */
export function localizeExample<T extends { resourceType: string; id?: string }>(example: T, ctx: ExampleContext): T {
  const r = cloneJson(example) as T & Record<string, any>;
  delete r.id;
  const subjectPatient = subjectPatientId(r) === null ? null : ctx.anchorPatientId;
  const encounterField = r.resourceType === 'Observation' ? 'encounter' : r.resourceType === 'MedicationStatement' ? 'context' : undefined;
  const count = (what: keyof NonNullable<ExampleContext['stats']>) => { if (ctx.stats) ctx.stats[what]++; };
  rewriteReferences(r, (reference, path) => {
    const lit = parseLiteral(reference);
    if (!lit || !STORED_TYPES.has(lit.type)) {
      count('keptAsGiven');
      return undefined;
    }
    // Every resource here is at version 1 when referenced: a version-specific reference means that one.
    const history = lit.history ? '/_history/1' : '';
    if (lit.type === 'Patient') {
      count('toAnchor');
      return `Patient/${ctx.anchorPatientId}${history}`;
    }
    const serverId = ctx.created.get(`${lit.type}/${lit.id}`);
    if (!serverId || (path === encounterField && lit.type === 'Encounter' && ctx.encounterPatient.get(serverId) !== subjectPatient)) {
      count('displayOnly');
      return null;
    }
    count('toCreated');
    return `${lit.type}/${serverId}${history}`;
  });
  return r;
}

/** Same-type stored references of an example (`Type/id` keys), for ordering creates. */
export function storedReferenceKeys(resource: unknown): string[] {
  const keys: string[] = [];
  rewriteReferences(cloneJson(resource), (reference) => {
    const lit = parseLiteral(reference);
    if (lit && STORED_TYPES.has(lit.type) && lit.type !== 'Patient') keys.push(`${lit.type}/${lit.id}`);
    return undefined;
  });
  return keys;
}

/**
 * Orders items so that each comes after the items it references (when those are in
 * the list); ties keep the input order, and items in a reference cycle are emitted
 * in input order once nothing else can go (their cyclic references go display-only).
 */
export function dependencyOrder<T>(items: T[], keyOf: (item: T) => string | undefined, depsOf: (item: T) => string[]): T[] {
  const inList = new Set(items.map(keyOf).filter((k): k is string => !!k));
  const done = new Set<string>();
  const left = [...items];
  const out: T[] = [];
  while (left.length) {
    let idx = left.findIndex((item) => depsOf(item).every((d) => d === keyOf(item) || !inList.has(d) || done.has(d)));
    if (idx < 0) idx = 0; // a cycle: break it at the first remaining item
    const [item] = left.splice(idx, 1);
    out.push(item);
    const k = keyOf(item);
    if (k) done.add(k);
  }
  return out;
}

/** A resource as compared after a round trip: no `id`, no server-owned meta.versionId / meta.lastUpdated. */
export function comparable(resource: unknown): unknown {
  const r = cloneJson(resource) as Record<string, any>;
  delete r.id;
  if (r.meta && typeof r.meta === 'object') {
    delete r.meta.versionId;
    delete r.meta.lastUpdated;
    if (Object.keys(r.meta).length === 0) delete r.meta;
  }
  return r;
}
