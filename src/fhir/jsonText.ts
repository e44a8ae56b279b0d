// Sets the server's id and meta on a resource's JSON text without re-serializing
// the rest, so what a client wrote (key order, decimal precision such as 70.50)
// is stored and returned as written. JSON.parse would turn 70.50 into 70.5.

/** Index just past the JSON value that starts at i (the text is known to be valid JSON). */
function skipValue(s: string, i: number): number {
  const c = s[i];
  if (c === '"') {
    for (let j = i + 1; ; j++) {
      if (s[j] === '\\') j++;
      else if (s[j] === '"') return j + 1;
    }
  }
  if (c === '{' || c === '[') {
    let depth = 0;
    for (let j = i; j < s.length; j++) {
      const d = s[j];
      if (d === '"') j = skipValue(s, j) - 1;
      else if (d === '{' || d === '[') depth++;
      else if (d === '}' || d === ']') {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
  }
  let j = i;
  while (j < s.length && !/[,}\]\s]/.test(s[j])) j++;
  return j;
}

function skipSpace(s: string, i: number): number {
  while (/\s/.test(s[i] ?? '')) i++;
  return i;
}

/** Top-level members of a JSON object text, as raw [key, valueText] pairs in order. */
export function topLevelMembers(text: string): [string, string][] {
  const members: [string, string][] = [];
  let i = skipSpace(text, 0);
  if (text[i] !== '{') throw new Error('not a JSON object');
  i = skipSpace(text, i + 1);
  while (text[i] !== '}') {
    const keyEnd = skipValue(text, i);
    const key = JSON.parse(text.slice(i, keyEnd)) as string;
    i = skipSpace(text, skipSpace(text, keyEnd) + 1); // past ':'
    const valueEnd = skipValue(text, i);
    members.push([key, text.slice(i, valueEnd)]);
    i = skipSpace(text, valueEnd);
    if (text[i] === ',') i = skipSpace(text, i + 1);
  }
  return members;
}

/**
 * The resource text with `id` and `meta` replaced, placed right after resourceType;
 * every other member keeps its original text and order.
 */
export function withServerFields(text: string, id: string, meta: object): string {
  const members = topLevelMembers(text);
  const rest = members.filter(([k]) => k !== 'id' && k !== 'meta' && k !== 'resourceType');
  const resourceType = members.find(([k]) => k === 'resourceType')![1];
  const parts = [`"resourceType":${resourceType}`, `"id":${JSON.stringify(id)}`, `"meta":${JSON.stringify(meta)}`,
    ...rest.map(([k, v]) => `${JSON.stringify(k)}:${v}`)];
  return `{${parts.join(',')}}`;
}
