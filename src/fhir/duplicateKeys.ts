// Checks on a JSON text that JSON.parse does not make: duplicate object keys, nesting depth,
// and characters FHIR strings forbid. JSON.parse silently keeps the last of
// {"gender":"male","gender":"female"}, but Kiln stores the text as written, so both would
// be kept. One linear pass with an explicit stack (no recursion, so deep input is safe).

const QUOTE = 0x22, BACKSLASH = 0x5c, COMMA = 0x2c, COLON = 0x3a;
const LBRACE = 0x7b, RBRACE = 0x7d, LBRACKET = 0x5b, RBRACKET = 0x5d;

/** Objects compare a new key against their earlier keys linearly; past this many, a Set. */
const SET_THRESHOLD = 16;

interface Frame {
  array: boolean;
  /** Object: the key whose value is being read (or the last key). Array: unused. */
  key: string;
  /** Array: index of the current element. */
  index: number;
  /** Object: true while the next string is a key. */
  expectKey: boolean;
  /** Object: where its keys begin in the shared key stack (no array per object). */
  keysStart: number;
  /** Object with many keys: its keys, instead of the key stack. */
  keySet: Set<string> | undefined;
}

/** Whether the string closingQuote last scanned has an escape. */
let hadEscape = false;

/** Index of the quote closing the string whose opening quote is at `open` (a tight loop beats indexOf here). */
function closingQuote(s: string, open: number): number {
  let j = open + 1;
  let esc = false;
  for (;;) {
    const c = s.charCodeAt(j);
    if (c === QUOTE) {
      hadEscape = esc;
      return j;
    }
    if (c === BACKSLASH) {
      esc = true;
      j += 2;
    } else j++;
  }
}

/** The path of the current key, without the root's resourceType. */
function location(stack: Frame[], depth: number): string {
  let out = '';
  for (let d = 0; d <= depth; d++) {
    const f = stack[d];
    if (f.array) out += `[${f.index}]`;
    else out += out ? `.${f.key}` : f.key;
  }
  return out;
}

/**
 * The FHIRPath-like location of the first duplicated object key at any depth (e.g.
 * `Patient.gender`, `Patient.name[0].family`), or undefined. Keys are compared decoded, so
 * "a" and "\u0061" are the same key. The path starts with the root object's resourceType
 * when it has one (even if that member comes later in the text); without one it is relative
 * (`a.b`, `[0].op`). `text` must be valid JSON (JSON.parse accepted it).
 */
export function findDuplicateKey(text: string): string | undefined {
  return findDuplicate(text)?.location;
}

/** Like findDuplicateKey, with the decoded duplicated key as well. */
export function findDuplicate(text: string): { key: string; location: string } | undefined {
  const p = findProblem(text, { maxDepth: Infinity, strings: false });
  return p && { key: p.key, location: p.location };
}

/**
 * Names no FHIR element has but every plain object inherits (toString, constructor,
 * __proto__, hasOwnProperty, ...), bare or `_`-prefixed (a primitive's extensions). Code
 * that asks `key in obj` or `obj[key]` of a plain object finds them (Medplum's unknown-element
 * check does), and assigning `__proto__` replaces an object's prototype.
 */
const INHERITED = new Set(Object.getOwnPropertyNames(Object.prototype));

export function isInheritedName(key: string): boolean {
  return INHERITED.has(key) || (key.charCodeAt(0) === 0x5f && INHERITED.has(key.slice(1)));
}

export interface JsonProblem {
  kind: 'duplicate' | 'depth' | 'character' | 'inherited';
  /** The duplicated key, or the key (or index) under which the problem sits. */
  key: string;
  location: string;
  message: string;
}

/**
 * C0 control characters but tab, LF and CR (FHIR's string type forbids them), and lone
 * UTF-16 surrogates (no Unicode text holds one; PostgreSQL's json refuses them).
 * Raw control characters and surrogates cannot reach a parsed string (JSON.parse refuses
 * the first, a fatal UTF-8 decoder the second), so only strings with escapes are examined.
 */
const FORBIDDEN_CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function stringProblem(decoded: string): string | undefined {
  const c = FORBIDDEN_CONTROL.exec(decoded);
  if (c) return `a control character (U+${c[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}); FHIR strings allow only tab, CR and LF`;
  if (LONE_SURROGATE.test(decoded)) return 'an unpaired UTF-16 surrogate';
  return undefined;
}

/**
 * The first problem of a JSON text, in text order: a duplicated key, nesting deeper than
 * `maxDepth` containers, or (with `strings`) a string holding a forbidden character (keys
 * included) or a key that is an inherited name (isInheritedName). Locations as for
 * findDuplicateKey. `text` must be valid JSON.
 */
export function findProblem(text: string, limits: { maxDepth: number; strings: boolean }): JsonProblem | undefined {
  const stack: Frame[] = [];
  // Keys of all open objects, innermost last: an object's keys are keys[keysStart .. keyTop).
  const keys: string[] = [];
  let keyTop = 0;
  let depth = -1; // index of the innermost open container in `stack` (frames are reused)
  let found: string | undefined; // location without root prefix, once a problem is seen
  let foundKey = '';
  let foundKind: JsonProblem['kind'] = 'duplicate';
  let foundWhat = '';
  let rootType: string | undefined;
  let rootTypeNext = false; // the next string value is the root's resourceType
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    switch (c) {
      case QUOTE: {
        const end = closingQuote(text, i);
        const top = depth >= 0 ? stack[depth] : undefined;
        if (top && !top.array && top.expectKey) {
          let key = text.slice(i + 1, end);
          if (key.indexOf('\\') !== -1) key = JSON.parse(text.slice(i, end + 1)) as string;
          top.key = key;
          top.expectKey = false;
          if (depth === 0 && key === 'resourceType' && rootType === undefined) rootTypeNext = true;
          let dup = false;
          if (top.keySet) {
            dup = top.keySet.has(key);
            top.keySet.add(key);
          } else {
            for (let k = top.keysStart; k < keyTop; k++) {
              if (keys[k] === key) { dup = true; break; }
            }
            keys[keyTop++] = key;
            if (keyTop - top.keysStart > SET_THRESHOLD) {
              top.keySet = new Set(keys.slice(top.keysStart, keyTop));
              keyTop = top.keysStart;
            }
          }
          const inherited = limits.strings && isInheritedName(key);
          if (found === undefined && (dup || inherited || (limits.strings && hadEscape))) {
            const what = dup || inherited ? undefined : stringProblem(key);
            if (dup || inherited || what) {
              found = location(stack, depth);
              foundKey = key;
              foundKind = dup ? 'duplicate' : inherited ? 'inherited' : 'character';
              foundWhat = what ?? '';
              // Done unless the root is an object whose resourceType may still follow.
              if (rootType !== undefined || stack[0].array) return done();
            }
          }
        } else {
          const isRootType = rootTypeNext;
          rootTypeNext = false;
          let v: string | undefined;
          if (isRootType || (found === undefined && limits.strings && hadEscape)) {
            v = text.slice(i + 1, end);
            if (v.indexOf('\\') !== -1) v = JSON.parse(text.slice(i, end + 1)) as string;
          }
          if (found === undefined && v !== undefined && limits.strings) {
            const what = stringProblem(v);
            if (what) {
              found = top ? location(stack, depth) : '';
              foundKey = top ? (top.array ? `[${top.index}]` : top.key) : '';
              foundKind = 'character';
              foundWhat = what;
            }
          }
          if (isRootType) rootType = v;
          if (found !== undefined && (isRootType || rootType !== undefined || !top || stack[0].array)) return done();
        }
        i = end;
        break;
      }
      case LBRACE:
      case LBRACKET: {
        rootTypeNext = false; // "resourceType": {...} is not a type name
        const array = c === LBRACKET;
        if (depth + 1 >= limits.maxDepth && found === undefined) {
          const top = stack[depth];
          found = depth >= 0 ? location(stack, depth) : '';
          foundKey = top ? (top.array ? `[${top.index}]` : top.key) : '';
          foundKind = 'depth';
          if (rootType !== undefined || stack[0]?.array !== false) return done();
        }
        depth++;
        let f = stack[depth];
        if (!f) stack.push((f = { array, key: '', index: 0, expectKey: !array, keysStart: keyTop, keySet: undefined }));
        else {
          f.array = array; f.key = ''; f.index = 0; f.expectKey = !array; f.keysStart = keyTop; f.keySet = undefined;
        }
        break;
      }
      case RBRACE:
        keyTop = stack[depth].keysStart;
        stack[depth].keySet = undefined;
        depth--;
        if (depth < 0 && found !== undefined) return done();
        break;
      case RBRACKET:
        depth--;
        if (depth < 0 && found !== undefined) return done();
        break;
      case COMMA: {
        const top = stack[depth];
        if (top.array) top.index++;
        else top.expectKey = true;
        break;
      }
      case COLON:
        break;
      default:
        // Whitespace, numbers, true/false/null.
        if (rootTypeNext && c > 0x20) rootTypeNext = false;
    }
  }
  return found === undefined ? undefined : done();

  function done(): JsonProblem {
    const at = found!;
    const loc = rootType === undefined ? at : at === '' ? rootType : at.startsWith('[') ? rootType + at : `${rootType}.${at}`;
    const where = loc === '' ? 'the top level' : loc;
    const message = foundKind === 'duplicate' ? `Duplicate JSON key '${foundKey}' at ${where}`
      : foundKind === 'depth' ? `JSON nested deeper than ${limits.maxDepth} levels at ${where}`
      : foundKind === 'inherited' ? `Invalid additional property "${foundKey}" at ${where}`
      : `The string at ${where} holds ${foundWhat}`;
    return { kind: foundKind, key: foundKey, location: loc, message };
  }
}
