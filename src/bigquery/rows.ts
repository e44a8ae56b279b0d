// FHIR resource JSON -> a BigQuery row that conforms to schema.ts's table schema, and back
// (pure). Numbers keep their exact text: NDJSON lines are parsed with every number kept as
// its lexeme, so a decimal such as 3.14159265358979323846 reaches its BIGNUMERIC column and
// the JSON-string fallbacks unrounded.
import { LOAD_COLUMNS, UNMAPPED, schemaTree, type SchemaNode } from './schema.ts';

/** A parsed number is this prefix + its JSON lexeme (JSON.parse in Node 20 cannot give the source text). */
const NUM = '\u0000N:';
const TOKEN = /"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Row = Record<string, unknown>;

/** JSON.parse that keeps number lexemes (as NUM-prefixed strings). */
export function parseLossless(text: string): Json {
  // A literal \u0000 escape would be mistaken for a marker; such text is parsed plainly.
  if (text.includes('\\u0000')) return JSON.parse(text);
  return JSON.parse(text.replace(TOKEN, (m, num: string | undefined) => (num === undefined ? m : `"\\u0000N:${num}"`)));
}

/** JSON.stringify that writes kept lexemes back as numbers. */
export function stringifyLossless(value: unknown): string {
  return JSON.stringify(value).replace(/"\\u0000N:([-+.0-9eE]+)"/g, '$1');
}

function lexeme(v: unknown): string | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  if (typeof v === 'string' && v.startsWith(NUM)) return v.slice(NUM.length);
  return undefined;
}

const isObject = (v: unknown): v is Record<string, Json> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A BIGNUMERIC literal (38 fractional digits, 38 integer digits), or undefined when out of range. */
export function bigNumeric(lex: string): string | undefined {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(lex);
  if (!m) return undefined;
  const [, sign, intPart, frac = '', exp] = m;
  let out = lex;
  if (exp !== undefined) {
    // Exponent forms are written out in plain digits; plain lexemes pass unchanged (trailing zeros too).
    const digits = intPart + frac;
    const point = intPart.length + Number(exp);
    const padded = point <= 0 ? '0'.repeat(1 - point) + digits : point > digits.length ? digits + '0'.repeat(point - digits.length) : digits;
    const at = Math.max(point, 1);
    const i = padded.slice(0, at).replace(/^0+(?=\d)/, '');
    const f = padded.slice(at);
    out = `${sign}${i}${f ? `.${f}` : ''}`;
  }
  const [i, f = ''] = out.replace('-', '').split('.');
  if (i.replace(/^0+/, '').length > 38 || f.length > 38) return undefined;
  return out;
}

const INSTANT = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/;

/** A BigQuery TIMESTAMP literal for a FHIR instant (fraction cut to microseconds), or undefined. */
export function timestamp(v: string): string | undefined {
  const m = INSTANT.exec(v);
  if (!m) return undefined;
  const [, date, time, frac, zone] = m;
  return frac === undefined || frac.length <= 6 ? v : `${date}T${time}.${frac.slice(0, 6)}${zone}`;
}

/** The column value for a primitive, or undefined when the JSON value does not fit the column. */
function primitive(node: SchemaNode, v: Json): unknown {
  switch (node.type) {
    case 'BOOLEAN': return typeof v === 'boolean' ? v : undefined;
    case 'INTEGER': {
      const lex = lexeme(v);
      return lex !== undefined && /^-?\d+$/.test(lex) && Number.isSafeInteger(Number(lex)) ? Number(lex) : undefined;
    }
    case 'BIGNUMERIC': {
      const lex = lexeme(v);
      return lex === undefined ? undefined : bigNumeric(lex);
    }
    case 'TIMESTAMP': return typeof v === 'string' && !v.startsWith(NUM) ? timestamp(v) : undefined;
    default: return typeof v === 'string' && !v.startsWith(NUM) ? v : undefined;
  }
}

function single(node: SchemaNode, v: Json): unknown {
  if (v === null) return undefined;
  if (node.kind === 'json') return stringifyLossless(v);
  if (node.kind === 'record') return isObject(v) ? record(v, node.children!) : undefined;
  return primitive(node, v);
}

/** Whether the column value gives back the JSON value exactly (else the JSON is kept in UNMAPPED too). */
function exact(node: SchemaNode, x: unknown, v: Json): boolean {
  if (x === undefined) return false;
  if (node.type === 'TIMESTAMP') return x === v;
  if (node.type === 'BIGNUMERIC' || node.type === 'INTEGER') return String(x) === lexeme(v);
  return true;
}

/**
 * One level: each member goes to its column; what has no column, or does not fit it, goes
 * whole into UNMAPPED as JSON (primitive extensions `_birthDate`, arrays holding nulls, values
 * of the wrong JSON type, decimals beyond BIGNUMERIC or in exponent form, instants finer than microseconds), so the row is always loadable
 * and the resource can be rebuilt exactly (rowToResource).
 */
const columnMaps = new WeakMap<SchemaNode[], Map<string, SchemaNode>>();

function columnsOf(nodes: SchemaNode[]): Map<string, SchemaNode> {
  let map = columnMaps.get(nodes);
  if (!map) {
    map = new Map(nodes.filter((n) => n.kind !== 'unmapped' && n.fhirType !== 'kiln').map((n) => [n.name, n]));
    columnMaps.set(nodes, map);
  }
  return map;
}

function record(obj: Record<string, Json>, nodes: SchemaNode[]): Row {
  const row: Row = {};
  let unmapped: Record<string, Json> | undefined;
  const columns = columnsOf(nodes);
  // Walk the members (few) rather than the columns (many).
  for (const key of Object.keys(obj)) {
    const v = obj[key];
    const node = columns.get(key);
    if (!node) { (unmapped ??= {})[key] = v; continue; }
    if (node.repeated) {
      const items = Array.isArray(v) ? v.map((x) => single(node, x)) : [];
      const kept = items.filter((x) => x !== undefined);
      if (kept.length) row[key] = kept;
      if (!Array.isArray(v) || !v.every((x, i) => exact(node, items[i], x))) (unmapped ??= {})[key] = v;
    } else {
      const x = Array.isArray(v) ? undefined : single(node, v);
      if (x !== undefined) row[key] = x;
      if (!exact(node, x, v)) (unmapped ??= {})[key] = v;
    }
  }
  if (unmapped) row[UNMAPPED] = stringifyLossless(unmapped);
  return row;
}

export interface LoadMeta {
  tenant: string;
  /** The export's transactionTime (FHIR instant). */
  transactionTime: string;
}

/** The BigQuery row for one resource version (parsed with parseLossless, or plain JSON.parse). */
export function resourceToRow(resource: Json, meta: LoadMeta): Row {
  if (!isObject(resource) || typeof resource.resourceType !== 'string') throw new Error('not a FHIR resource');
  const row = record(resource, schemaTree(resource.resourceType));
  row[LOAD_COLUMNS.tenant] = meta.tenant;
  row[LOAD_COLUMNS.transactionTime] = timestamp(meta.transactionTime) ?? meta.transactionTime;
  row[LOAD_COLUMNS.deleted] = false;
  return row;
}

/**
 * The row recording that a resource was deleted. Bulk export reports a deletion without its
 * version or time, so only the id and the export's transactionTime say when.
 */
export function deletionRow(resourceType: string, id: string, meta: LoadMeta): Row {
  return {
    resourceType,
    id,
    [LOAD_COLUMNS.tenant]: meta.tenant,
    [LOAD_COLUMNS.transactionTime]: timestamp(meta.transactionTime) ?? meta.transactionTime,
    [LOAD_COLUMNS.deleted]: true,
  };
}

function unrecord(row: Row, nodes: SchemaNode[]): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const node of nodes) {
    if (node.fhirType === 'kiln' || !(node.name in row)) continue;
    const v = row[node.name];
    if (node.kind === 'unmapped') continue;
    const back = (x: unknown): Json => {
      if (node.kind === 'json') return parseLossless(x as string);
      if (node.kind === 'record') return unrecord(x as Row, node.children!);
      if (node.type === 'INTEGER' || node.type === 'BIGNUMERIC') return `${NUM}${x}`;
      return x as Json;
    };
    out[node.name] = node.repeated ? (v as unknown[]).map(back) : back(v);
  }
  if (typeof row[UNMAPPED] === 'string') Object.assign(out, parseLossless(row[UNMAPPED] as string) as Record<string, Json>);
  return out;
}

/** Rebuilds the resource from its row (numbers as kept lexemes, like parseLossless). */
export function rowToResource(row: Row): Json {
  return unrecord(row, schemaTree(row.resourceType as string));
}
