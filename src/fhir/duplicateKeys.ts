// Duplicate object keys in a JSON text. JSON.parse silently keeps the last of
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

/** Index of the quote closing the string whose opening quote is at `open` (a tight loop beats indexOf here). */
function closingQuote(s: string, open: number): number {
  let j = open + 1;
  for (;;) {
    const c = s.charCodeAt(j);
    if (c === QUOTE) return j;
    j += c === BACKSLASH ? 2 : 1;
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
  const stack: Frame[] = [];
  // Keys of all open objects, innermost last: an object's keys are keys[keysStart .. keyTop).
  const keys: string[] = [];
  let keyTop = 0;
  let depth = -1; // index of the innermost open container in `stack` (frames are reused)
  let found: string | undefined; // location without root prefix, once a duplicate is seen
  let foundKey = '';
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
          if (dup && found === undefined) {
            found = location(stack, depth);
            foundKey = key;
            // Done unless the root is an object whose resourceType may still follow.
            if (rootType !== undefined || stack[0].array) return result(found, foundKey, rootType);
          }
        } else if (rootTypeNext) {
          rootTypeNext = false;
          const v = text.slice(i + 1, end);
          rootType = v.indexOf('\\') === -1 ? v : (JSON.parse(text.slice(i, end + 1)) as string);
          if (found !== undefined) return result(found, foundKey, rootType);
        }
        i = end;
        break;
      }
      case LBRACE:
      case LBRACKET: {
        rootTypeNext = false; // "resourceType": {...} is not a type name
        const array = c === LBRACKET;
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
        if (depth < 0 && found !== undefined) return result(found, foundKey, rootType);
        break;
      case RBRACKET:
        depth--;
        if (depth < 0 && found !== undefined) return result(found, foundKey, rootType);
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
  return found === undefined ? undefined : result(found, foundKey, rootType);
}

function result(found: string, key: string, rootType: string | undefined): { key: string; location: string } {
  if (rootType === undefined) return { key, location: found };
  return { key, location: found.startsWith('[') ? rootType + found : `${rootType}.${found}` };
}
