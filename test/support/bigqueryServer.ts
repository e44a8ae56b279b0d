// A local stand-in for Google BigQuery (REST v2) and for the GCE metadata server that
// application-default credentials use, so the real @google-cloud/bigquery client runs
// offline: point it at `url` (apiEndpoint) and set GCE_METADATA_HOST to `metadataHost`.
// It keeps datasets, tables and jobs in memory, validates uploaded NEWLINE_DELIMITED_JSON
// rows against the table schema as BigQuery does (types, modes, unknown fields; a load is
// all or nothing), answers in Google's shapes (kind, id, selfLink, jobReference, status,
// statistics, errorResult; error bodies with code/message/errors[]/status), and records
// every request for assertions.
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface TableField {
  name: string;
  type: string;
  mode?: string;
  fields?: TableField[];
  description?: string;
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  authorization?: string;
  body?: any;
  /** For media uploads: the job resource part and the data part. */
  upload?: { metadata: any; data: string };
}

interface Dataset { resource: any }
interface Table { resource: any; rows: Record<string, unknown>[] }
interface Job { resource: any; gets: number }

/** A scripted failure for the next load into a table. */
export type LoadFailure =
  | 'job-error' // the job runs and ends DONE with errorResult (backendError); nothing is appended
  | 'http-503' // jobs.insert answers 503 before creating anything
  | 'lost-response'; // the job is created and succeeds, but the HTTP answer is a 502

export interface FakeBigQuery {
  url: string;
  /** host:port for GCE_METADATA_HOST. */
  metadataHost: string;
  requests: RecordedRequest[];
  datasets: Map<string, Dataset>;
  tables: Map<string, Table>;
  jobs: Map<string, Job>;
  /** The access token the metadata server hands out and the API accepts. */
  accessToken: string;
  createDataset(projectId: string, datasetId: string, location?: string): void;
  rows(projectId: string, datasetId: string, tableId: string): Record<string, unknown>[];
  failNextLoad(tableId: string, failure: LoadFailure): void;
  reset(): void;
  close(): Promise<void>;
}

const API = 'https://bigquery.googleapis.com/bigquery/v2';
const RESERVED_PREFIXES = ['_TABLE_', '_FILE_', '_PARTITION', '_ROW_TIMESTAMP', '__ROOT__', '_COLIDENTIFIER'];
const TYPE_ALIASES: Record<string, string> = { INT64: 'INTEGER', FLOAT64: 'FLOAT', BOOL: 'BOOLEAN', STRUCT: 'RECORD' };
const TYPES = new Set(['STRING', 'BYTES', 'INTEGER', 'FLOAT', 'NUMERIC', 'BIGNUMERIC', 'BOOLEAN', 'TIMESTAMP', 'DATE', 'TIME', 'DATETIME', 'RECORD', 'JSON', 'GEOGRAPHY']);
const STATUS_NAMES: Record<number, string> = { 400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 409: 'ALREADY_EXISTS', 500: 'INTERNAL', 502: 'UNAVAILABLE', 503: 'UNAVAILABLE' };

class ApiError extends Error {
  constructor(public code: number, public reason: string, message: string, public extra: Record<string, string> = {}) { super(message); }
}

function errorBody(e: ApiError) {
  return { error: { code: e.code, message: e.message, errors: [{ message: e.message, domain: 'global', reason: e.reason, ...e.extra }], status: STATUS_NAMES[e.code] ?? 'UNKNOWN' } };
}

/** Canonical field as tables.get returns it: legacy type names, mode always present. */
function normalizeFields(fields: TableField[]): TableField[] {
  return fields.map((f) => {
    const type = TYPE_ALIASES[String(f.type).toUpperCase()] ?? String(f.type).toUpperCase();
    const out: TableField = { name: f.name, type, mode: (f.mode ?? 'NULLABLE').toUpperCase() };
    if (f.fields) out.fields = normalizeFields(f.fields);
    if (f.description) out.description = f.description;
    return out;
  });
}

function leafCount(fields: TableField[]): number {
  return fields.reduce((n, f) => n + (f.fields ? leafCount(f.fields) : 1), 0);
}

/** tables.insert's checks on a schema: names, types, modes, duplicates, nesting, column count. */
function checkSchema(fields: TableField[], depth = 1, prefix = ''): void {
  if (depth > 15) throw new ApiError(400, 'invalid', `Field ${prefix.slice(0, -1)} exceeds the maximum nesting depth of 15.`);
  const seen = new Set<string>();
  for (const f of fields) {
    const full = prefix + f.name;
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,299}$/.test(f.name ?? '')) throw new ApiError(400, 'invalid', `Invalid field name "${f.name}". Fields must contain only letters, numbers, and underscores, start with a letter or underscore, and be at most 300 characters long.`);
    if (depth === 1 && RESERVED_PREFIXES.some((p) => f.name.toUpperCase().startsWith(p))) throw new ApiError(400, 'invalid', `Invalid field name "${f.name}": reserved prefix.`);
    const key = f.name.toLowerCase();
    if (seen.has(key)) throw new ApiError(400, 'invalid', `Field ${full} already exists in schema`);
    seen.add(key);
    if (!TYPES.has(f.type)) throw new ApiError(400, 'invalid', `Invalid value for type: ${f.type} is not a valid value`);
    if (!['NULLABLE', 'REQUIRED', 'REPEATED'].includes(f.mode!)) throw new ApiError(400, 'invalid', `Invalid value for mode: ${f.mode} is not a valid value`);
    if (f.type === 'RECORD') {
      if (!f.fields?.length) throw new ApiError(400, 'invalid', `Field ${full} is type RECORD but has no schema`);
      checkSchema(f.fields, depth + 1, `${full}.`);
    } else if (f.fields) {
      throw new ApiError(400, 'invalid', `Field ${full} is type ${f.type} but has subfields`);
    }
  }
  if (depth === 1 && leafCount(fields) > 10000) throw new ApiError(400, 'invalid', 'Too many total leaf fields: more than 10000.');
}

/** What tables.patch / a load with ALLOW_FIELD_ADDITION may change: add NULLABLE/REPEATED fields, relax REQUIRED. */
function checkSchemaChange(table: string, old: TableField[], next: TableField[], prefix = ''): void {
  for (const o of old) {
    const n = next.find((f) => f.name.toLowerCase() === o.name.toLowerCase());
    const full = prefix + o.name;
    if (!n) throw new ApiError(400, 'invalid', `Provided Schema does not match Table ${table}. Field ${full} is missing in new schema`);
    if (n.type !== o.type) throw new ApiError(400, 'invalid', `Provided Schema does not match Table ${table}. Field ${full} has changed type from ${o.type} to ${n.type}`);
    if (n.mode !== o.mode && !(o.mode === 'REQUIRED' && n.mode === 'NULLABLE')) throw new ApiError(400, 'invalid', `Provided Schema does not match Table ${table}. Field ${full} has changed mode from ${o.mode} to ${n.mode}`);
    if (o.fields) checkSchemaChange(table, o.fields, n.fields!, `${full}.`);
  }
  for (const n of next) {
    if (!old.some((o) => o.name.toLowerCase() === n.name.toLowerCase()) && n.mode === 'REQUIRED') {
      throw new ApiError(400, 'invalid', `Provided Schema does not match Table ${table}. Cannot add required fields to an existing schema. (field: ${prefix}${n.name})`);
    }
  }
}

function sameSchema(a: TableField[], b: TableField[]): boolean {
  return JSON.stringify(strip(a)) === JSON.stringify(strip(b));
  function strip(fs: TableField[]): unknown[] {
    return fs.map((f) => [f.name.toLowerCase(), f.type, f.mode, f.fields ? strip(f.fields) : null]);
  }
}

const TIMESTAMP = /^\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[ T]\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d{1,6})?)?)?\s*(?:Z|UTC|[+-]\d{1,2}(?::\d{2})?)?$/i;

function decimalFits(v: unknown, intDigits: number, fracDigits: number): boolean {
  const s = typeof v === 'number' ? String(v) : v;
  if (typeof s !== 'string') return false;
  const m = /^[+-]?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(s.trim());
  if (!m || (m[1] === '' && !m[2])) return false;
  if (m[3] !== undefined) return Math.abs(Number(s)) < 10 ** intDigits; // exponent forms: range only
  return m[1].replace(/^0+/, '').length <= intDigits && (m[2] ?? '').replace(/0+$/, '').length <= fracDigits;
}

/** BigQuery's JSON value conversion for one scalar, or an error message. */
function scalarError(field: TableField, v: unknown): string | undefined {
  const bad = `Could not convert value '${typeof v === 'string' ? v : JSON.stringify(v)}' to ${field.type}. Field: ${field.name}`;
  switch (field.type) {
    case 'STRING': case 'JSON': case 'BYTES': case 'GEOGRAPHY':
      // BigQuery would coerce a number or boolean into a STRING column; Kiln must never rely on it.
      return typeof v === 'string' ? undefined : `${bad} (the fake accepts only JSON strings here)`;
    case 'INTEGER':
      if (typeof v === 'number') return Number.isInteger(v) ? undefined : bad;
      return typeof v === 'string' && /^[+-]?\d+$/.test(v) && BigInt(v) <= 9223372036854775807n && BigInt(v) >= -9223372036854775808n ? undefined : bad;
    case 'FLOAT':
      return typeof v === 'number' || (typeof v === 'string' && v.trim() !== '' && !Number.isNaN(Number(v))) ? undefined : bad;
    case 'NUMERIC': return decimalFits(v, 29, 9) ? undefined : `Invalid NUMERIC value: ${v} Field: ${field.name}`;
    case 'BIGNUMERIC': return decimalFits(v, 38, 38) ? undefined : `Invalid BIGNUMERIC value: ${v} Field: ${field.name}`;
    case 'BOOLEAN':
      return typeof v === 'boolean' || (typeof v === 'string' && /^(true|false)$/i.test(v)) ? undefined : bad;
    case 'TIMESTAMP':
      return typeof v === 'number' || (typeof v === 'string' && TIMESTAMP.test(v) && !Number.isNaN(Date.parse(v.replace(' ', 'T').replace(/\s*UTC$/i, 'Z')))) ? undefined : `Couldn't convert value to timestamp: Could not parse '${v}' as a timestamp. Field: ${field.name}`;
    case 'DATE': return typeof v === 'string' && /^\d{4}-\d{1,2}-\d{1,2}$/.test(v) ? undefined : bad;
    case 'DATETIME': case 'TIME': return typeof v === 'string' ? undefined : bad;
    default: return bad;
  }
}

/** Validates one decoded JSON row against the schema; returns BigQuery's message or undefined. */
export function rowError(fields: TableField[], row: unknown, ignoreUnknownValues = false, prefix = ''): string | undefined {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) return `JSON object specified for non-record field: ${prefix.slice(0, -1) || 'row'}`;
  const byName = new Map(fields.map((f) => [f.name.toLowerCase(), f]));
  for (const key of Object.keys(row)) {
    if (!byName.has(key.toLowerCase()) && !ignoreUnknownValues) return `No such field: ${prefix}${key}.`;
  }
  const obj = row as Record<string, unknown>;
  for (const f of fields) {
    const key = Object.keys(obj).find((k) => k.toLowerCase() === f.name.toLowerCase());
    const v = key === undefined ? undefined : obj[key];
    const full = prefix + f.name;
    if (v === undefined || v === null) {
      if (f.mode === 'REQUIRED') return `Missing required field: ${full}.`;
      continue;
    }
    const values = f.mode === 'REPEATED' ? v : [v];
    if (f.mode === 'REPEATED' && !Array.isArray(v)) return `Non-array value specified for repeated field: ${full}.`;
    if (f.mode !== 'REPEATED' && Array.isArray(v)) return `Array specified for non-repeated field: ${full}.`;
    for (const item of values as unknown[]) {
      if (item === null) return `Only optional fields can be set to NULL. Field: ${full}; Value: NULL`;
      if (f.type === 'RECORD') {
        const err = rowError(f.fields!, item, ignoreUnknownValues, `${full}.`);
        if (err) return err;
      } else {
        const err = scalarError({ ...f, name: full }, item);
        if (err) return err;
      }
    }
  }
  return undefined;
}

/** Splits a multipart/related body into its parts (headers, body). */
function parseMultipart(body: Buffer, contentType: string): { headers: Record<string, string>; body: Buffer }[] {
  const boundary = /boundary="?([^";]+)"?/i.exec(contentType)?.[1];
  if (!boundary) throw new ApiError(400, 'badRequest', 'Missing multipart boundary');
  const delim = Buffer.from(`--${boundary}`);
  const parts: { headers: Record<string, string>; body: Buffer }[] = [];
  let pos = body.indexOf(delim);
  while (pos !== -1) {
    const start = pos + delim.length;
    if (body.subarray(start, start + 2).toString() === '--') break;
    const next = body.indexOf(delim, start);
    if (next === -1) break;
    let chunk = body.subarray(start, next);
    if (chunk.subarray(0, 2).toString() === '\r\n') chunk = chunk.subarray(2);
    if (chunk.subarray(chunk.length - 2).toString() === '\r\n') chunk = chunk.subarray(0, chunk.length - 2);
    const sep = chunk.indexOf('\r\n\r\n');
    const headers: Record<string, string> = {};
    for (const line of chunk.subarray(0, sep).toString().split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    parts.push({ headers, body: chunk.subarray(sep + 4) });
    pos = next;
  }
  return parts;
}

const now = () => String(Date.now());
const etag = () => crypto.randomBytes(12).toString('base64');

export async function startFakeBigQuery(opts: { location?: string } = {}): Promise<FakeBigQuery> {
  const location = opts.location ?? 'US';
  const accessToken = `ya29.fake-${crypto.randomBytes(8).toString('hex')}`;
  const requests: RecordedRequest[] = [];
  const datasets = new Map<string, Dataset>();
  const tables = new Map<string, Table>();
  const jobs = new Map<string, Job>();
  const failures = new Map<string, LoadFailure[]>();

  const dsKey = (p: string, d: string) => `${p}:${d}`;
  const tKey = (p: string, d: string, t: string) => `${p}:${d}.${t}`;

  function datasetResource(projectId: string, datasetId: string, loc: string) {
    const t = now();
    return {
      kind: 'bigquery#dataset', etag: etag(), id: dsKey(projectId, datasetId),
      selfLink: `${API}/projects/${projectId}/datasets/${datasetId}`,
      datasetReference: { datasetId, projectId }, access: [], creationTime: t, lastModifiedTime: t,
      location: loc, type: 'DEFAULT',
    };
  }

  function createDataset(projectId: string, datasetId: string, loc = location) {
    datasets.set(dsKey(projectId, datasetId), { resource: datasetResource(projectId, datasetId, loc) });
  }

  function requireDataset(p: string, d: string): Dataset {
    const ds = datasets.get(dsKey(p, d));
    if (!ds) throw new ApiError(404, 'notFound', `Not found: Dataset ${dsKey(p, d)}`);
    return ds;
  }

  function tableResource(p: string, d: string, t: string, body: any, loc: string) {
    const ts = now();
    const res: any = {
      kind: 'bigquery#table', etag: etag(), id: tKey(p, d, t),
      selfLink: `${API}/projects/${p}/datasets/${d}/tables/${t}`,
      tableReference: { projectId: p, datasetId: d, tableId: t },
      numBytes: '0', numLongTermBytes: '0', numRows: '0', creationTime: ts, lastModifiedTime: ts,
      type: body.view ? 'VIEW' : 'TABLE', location: loc,
    };
    if (body.description) res.description = body.description;
    if (body.friendlyName) res.friendlyName = body.friendlyName;
    if (body.view) res.view = { query: body.view.query, useLegacySql: body.view.useLegacySql ?? true };
    if (body.schema?.fields) res.schema = { fields: normalizeFields(body.schema.fields) };
    return res;
  }

  function insertTable(p: string, d: string, body: any): any {
    const ds = requireDataset(p, d);
    const t = body?.tableReference?.tableId;
    if (!t || !/^[\p{L}\p{M}\p{N}\p{Pc}\p{Pd}\p{Zs}]{1,1024}$/u.test(t)) throw new ApiError(400, 'invalid', `Invalid table ID "${t}".`);
    if (tables.has(tKey(p, d, t))) throw new ApiError(409, 'duplicate', `Already Exists: Table ${tKey(p, d, t)}`);
    if (body.view) {
      if (typeof body.view.query !== 'string' || !body.view.query.trim()) throw new ApiError(400, 'invalid', 'View query is empty');
    } else if (body.schema?.fields) {
      checkSchema(normalizeFields(body.schema.fields));
    }
    const res = tableResource(p, d, t, body, ds.resource.location);
    tables.set(tKey(p, d, t), { resource: res, rows: [] });
    return res;
  }

  function patchTable(p: string, d: string, t: string, body: any): any {
    requireDataset(p, d);
    const table = tables.get(tKey(p, d, t));
    if (!table) throw new ApiError(404, 'notFound', `Not found: Table ${tKey(p, d, t)}`);
    if (body.schema?.fields) {
      if (table.resource.type === 'VIEW') throw new ApiError(400, 'invalid', 'Cannot set the schema of a view');
      const next = normalizeFields(body.schema.fields);
      checkSchema(next);
      checkSchemaChange(tKey(p, d, t), table.resource.schema?.fields ?? [], next);
      table.resource.schema = { fields: next };
    }
    if (body.view) {
      if (table.resource.type !== 'VIEW') throw new ApiError(400, 'invalid', 'Cannot change a table into a view');
      table.resource.view = { query: body.view.query, useLegacySql: body.view.useLegacySql ?? table.resource.view.useLegacySql };
    }
    if (body.description !== undefined) table.resource.description = body.description;
    table.resource.etag = etag();
    table.resource.lastModifiedTime = now();
    return table.resource;
  }

  function jobId(p: string, loc: string, id: string) { return `${p}:${loc}.${id}`; }

  /** Runs a load to completion (synchronously): all rows or none. */
  function runLoad(p: string, load: any, data: string): { error?: { reason: string; message: string; location?: string }; rows?: number; table?: Table } {
    const dest = load.destinationTable ?? {};
    const dp = dest.projectId ?? p;
    if (!datasets.has(dsKey(dp, dest.datasetId))) return { error: { reason: 'notFound', message: `Not found: Dataset ${dsKey(dp, dest.datasetId)}` } };
    const format = load.sourceFormat ?? 'CSV';
    if (format !== 'NEWLINE_DELIMITED_JSON') return { error: { reason: 'invalid', message: `The fake BigQuery only loads NEWLINE_DELIMITED_JSON, not ${format}` } };
    const key = tKey(dp, dest.datasetId, dest.tableId);
    let table = tables.get(key);
    const given = load.schema?.fields ? normalizeFields(load.schema.fields) : undefined;
    const createDisposition = load.createDisposition ?? 'CREATE_IF_NEEDED';
    const writeDisposition = load.writeDisposition ?? 'WRITE_APPEND';
    if (table?.resource.type === 'VIEW') return { error: { reason: 'invalid', message: `Cannot load into view ${key}` } };
    if (!table && createDisposition === 'CREATE_NEVER') return { error: { reason: 'notFound', message: `Not found: Table ${key}` } };
    if (!table && !given) return { error: { reason: 'invalid', message: 'No schema specified on job or table.' } };
    let schema: TableField[] = table?.resource.schema?.fields ?? given!;
    if (table && given && !sameSchema(schema, given)) {
      const adding = (load.schemaUpdateOptions ?? []).includes('ALLOW_FIELD_ADDITION');
      try {
        if (!adding) throw new ApiError(400, 'invalid', `Provided Schema does not match Table ${key}. Cannot add fields (field: ${given.find((g) => !schema.some((s) => s.name.toLowerCase() === g.name.toLowerCase()))?.name ?? '?'})`);
        checkSchemaChange(key, schema, given);
      } catch (e) {
        return { error: { reason: 'invalid', message: (e as Error).message } };
      }
      schema = given;
    }
    if (given) {
      try { checkSchema(given); } catch (e) { return { error: { reason: 'invalid', message: (e as Error).message } }; }
    }
    const rows: Record<string, unknown>[] = [];
    const lines = data.split('\n');
    let offset = 0;
    for (const line of lines) {
      const at = offset;
      offset += Buffer.byteLength(line) + 1;
      if (!line.trim()) continue;
      let parsed: unknown;
      try { parsed = JSON.parse(line); } catch (e) {
        return { error: { reason: 'invalid', message: `Error while reading data, error message: JSON parsing error in row starting at position ${at}: ${(e as Error).message}`, location: 'file-00000000' } };
      }
      const err = rowError(schema, parsed, load.ignoreUnknownValues === true);
      if (err) {
        return { error: { reason: 'invalid', message: `Error while reading data, error message: JSON parsing error in row starting at position ${at}: ${err}`, location: 'file-00000000' } };
      }
      rows.push(parsed as Record<string, unknown>);
    }
    if (!table) {
      table = { resource: tableResource(dp, dest.datasetId, dest.tableId, { schema: { fields: schema } }, location), rows: [] };
      tables.set(key, table);
    }
    if (writeDisposition === 'WRITE_EMPTY' && table.rows.length) return { error: { reason: 'duplicate', message: `Already Exists: Table ${key}` } };
    if (writeDisposition === 'WRITE_TRUNCATE') table.rows = [];
    table.resource.schema = { fields: schema };
    table.rows.push(...rows);
    table.resource.numRows = String(table.rows.length);
    table.resource.numBytes = String(table.rows.reduce((n, r) => n + JSON.stringify(r).length, 0));
    table.resource.lastModifiedTime = now();
    return { rows: rows.length, table };
  }

  function insertLoadJob(p: string, metadata: any, data: string, res: http.ServerResponse): void {
    const ref = metadata.jobReference ?? {};
    const id = ref.jobId ?? crypto.randomUUID();
    if (!/^[A-Za-z0-9_-]{1,1024}$/.test(id)) throw new ApiError(400, 'invalid', `Invalid job ID "${id}". Job IDs must be alphanumeric (plus underscores and dashes) and must be at most 1024 characters long.`);
    const loc = ref.location ?? location;
    const key = jobId(p, loc, id);
    const load = metadata.configuration?.load;
    if (!load) throw new ApiError(400, 'invalid', 'Required parameter is missing: configuration.load');
    const failure = failures.get(load.destinationTable?.tableId)?.shift();
    if (failure === 'http-503') throw new ApiError(503, 'backendError', 'Backend error. Job aborted.');
    if (jobs.has(key)) throw new ApiError(409, 'duplicate', `Already Exists: Job ${key}`);
    const started = now();
    const outcome = failure === 'job-error'
      ? { error: { reason: 'backendError', message: 'Backend error. Job aborted.' } }
      : runLoad(p, load, data);
    const resource: any = {
      kind: 'bigquery#job', etag: etag(), id: key,
      selfLink: `${API}/projects/${p}/jobs/${id}?location=${loc}`,
      user_email: 'kiln@fake-project.iam.gserviceaccount.com',
      configuration: { load: { ...load, sourceFormat: load.sourceFormat ?? 'CSV', createDisposition: load.createDisposition ?? 'CREATE_IF_NEEDED', writeDisposition: load.writeDisposition ?? 'WRITE_APPEND' }, jobType: 'LOAD' },
      jobReference: { projectId: p, jobId: id, location: loc },
      statistics: { creationTime: started, startTime: started, endTime: now(), load: { inputFiles: '1', inputFileBytes: String(Buffer.byteLength(data)), outputRows: String(outcome.rows ?? 0), outputBytes: String(outcome.error ? 0 : Buffer.byteLength(data)), badRecords: '0' } },
      status: outcome.error
        ? { state: 'DONE', errorResult: outcome.error, errors: [outcome.error] }
        : { state: 'DONE' },
    };
    jobs.set(key, { resource, gets: 0 });
    if (failure === 'lost-response') throw new ApiError(502, 'backendError', 'Bad Gateway');
    // jobs.insert answers before the job has run, as the real service does; jobs.get then says DONE.
    send(res, 200, { ...resource, status: { state: 'RUNNING' }, statistics: { creationTime: started, startTime: started } });
  }

  function send(res: http.ServerResponse, status: number, body: unknown) {
    res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8' });
    res.end(JSON.stringify(body));
  }

  function metadataServer(req: http.IncomingMessage, res: http.ServerResponse, path: string) {
    if (req.headers['metadata-flavor'] !== 'Google') {
      res.writeHead(403, { 'content-type': 'text/html' });
      res.end('Missing Metadata-Flavor:Google header.');
      return;
    }
    const headers = { 'metadata-flavor': 'Google' };
    if (path === '/computeMetadata/v1/instance' || path === '/computeMetadata/v1/instance/') {
      res.writeHead(200, { ...headers, 'content-type': 'application/text' });
      res.end('attributes/\nhostname\nid\nservice-accounts/\nzone\n');
    } else if (/^\/computeMetadata\/v1\/instance\/service-accounts\/[^/]+\/token$/.test(path)) {
      res.writeHead(200, { ...headers, 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: accessToken, expires_in: 3599, token_type: 'Bearer' }));
    } else if (path === '/computeMetadata/v1/project/project-id') {
      res.writeHead(200, { ...headers, 'content-type': 'application/text' });
      res.end('fake-project');
    } else {
      res.writeHead(404, { ...headers, 'content-type': 'text/html' });
      res.end('Not Found');
    }
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse) {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const url = new URL(req.url!, 'http://localhost');
    const path = url.pathname;
    if (path.startsWith('/computeMetadata/')) return metadataServer(req, res, path);
    const rec: RecordedRequest = { method: req.method!, path, query: Object.fromEntries(url.searchParams), authorization: req.headers.authorization };
    requests.push(rec);
    try {
      if (req.headers.authorization !== `Bearer ${accessToken}`) {
        throw new ApiError(401, 'required', 'Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.', { location: 'Authorization', locationType: 'header' });
      }
      const ctype = String(req.headers['content-type'] ?? '');
      if (raw.length && ctype.includes('json')) rec.body = JSON.parse(raw.toString('utf8'));
      let m: RegExpExecArray | null;
      if ((m = /^\/upload\/bigquery\/v2\/projects\/([^/]+)\/jobs$/.exec(path)) && req.method === 'POST') {
        if (rec.query.uploadType !== 'multipart') throw new ApiError(400, 'badRequest', `The fake only implements uploadType=multipart (got ${rec.query.uploadType})`);
        const parts = parseMultipart(raw, ctype);
        if (parts.length !== 2) throw new ApiError(400, 'badRequest', 'A multipart upload has exactly two parts: metadata and media');
        const metadata = JSON.parse(parts[0].body.toString('utf8'));
        const data = parts[1].body.toString('utf8');
        rec.upload = { metadata, data };
        return insertLoadJob(m[1], metadata, data, res);
      }
      if (!path.startsWith('/bigquery/v2/')) throw new ApiError(404, 'notFound', `Not found: URL ${path}`);
      const segs = path.slice('/bigquery/v2/'.length).split('/').map(decodeURIComponent);
      const [projects, p, coll, a, sub, b] = segs;
      if (projects !== 'projects' || !p) throw new ApiError(404, 'notFound', `Not found: URL ${path}`);
      if (coll === 'datasets') {
        if (a === undefined && req.method === 'POST') {
          const d = rec.body?.datasetReference?.datasetId;
          if (!d || !/^[A-Za-z0-9_]{1,1024}$/.test(d)) throw new ApiError(400, 'invalid', `Invalid dataset ID "${d}".`);
          if (datasets.has(dsKey(p, d))) throw new ApiError(409, 'duplicate', `Already Exists: Dataset ${dsKey(p, d)}`);
          createDataset(p, d, rec.body.location ?? location);
          return send(res, 200, datasets.get(dsKey(p, d))!.resource);
        }
        if (a !== undefined && sub === undefined && req.method === 'GET') return send(res, 200, requireDataset(p, a).resource);
        if (a !== undefined && sub === 'tables') {
          if (b === undefined && req.method === 'POST') return send(res, 200, insertTable(p, a, rec.body ?? {}));
          if (b === undefined && req.method === 'GET') {
            // tables.list: every table and view of the dataset, one page.
            requireDataset(p, a);
            const listed = [...tables.entries()].filter(([k]) => k.startsWith(`${p}:${a}.`)).map(([, t]) => ({
              kind: 'bigquery#table', id: t.resource.id, tableReference: t.resource.tableReference, type: t.resource.type,
            }));
            return send(res, 200, { kind: 'bigquery#tableList', tables: listed, totalItems: listed.length });
          }
          if (b !== undefined && segs.length === 6) {
            requireDataset(p, a);
            const table = tables.get(tKey(p, a, b));
            if (!table) throw new ApiError(404, 'notFound', `Not found: Table ${tKey(p, a, b)}`);
            if (req.method === 'GET') return send(res, 200, table.resource);
            if (req.method === 'PATCH' || req.method === 'PUT') return send(res, 200, patchTable(p, a, b, rec.body ?? {}));
            if (req.method === 'DELETE') { tables.delete(tKey(p, a, b)); res.writeHead(204); return res.end(); }
          }
        }
      }
      if (coll === 'jobs' && a !== undefined && sub === undefined && req.method === 'GET') {
        const loc = rec.query.location ?? location;
        const job = jobs.get(jobId(p, loc, a));
        if (!job) throw new ApiError(404, 'notFound', `Not found: Job ${jobId(p, loc, a)}`);
        job.gets++;
        return send(res, 200, job.resource);
      }
      throw new ApiError(404, 'notFound', `Not found: ${req.method} ${path} is not implemented by the fake BigQuery`);
    } catch (e) {
      if (e instanceof ApiError) return send(res, e.code, errorBody(e));
      return send(res, 500, errorBody(new ApiError(500, 'backendError', `fake BigQuery bug: ${(e as Error).message}`)));
    }
  }

  const server = http.createServer((req, res) => { void handle(req, res); });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    metadataHost: `127.0.0.1:${port}`,
    requests, datasets, tables, jobs, accessToken,
    createDataset,
    rows: (p, d, t) => tables.get(tKey(p, d, t))?.rows ?? [],
    failNextLoad(tableId, failure) { failures.set(tableId, [...(failures.get(tableId) ?? []), failure]); },
    reset() { requests.length = 0; datasets.clear(); tables.clear(); jobs.clear(); failures.clear(); },
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
