// Content negotiation and FHIR response writing (JSON only: fhir+json and json).
import type { Request, Response } from 'express';
import type { OperationOutcome } from '@medplum/fhirtypes';
import { FhirError } from '../fhir/outcome.ts';
import { parseJson, type BodyUse, type ReadBody } from '../fhir/body.ts';
import { readRequestBody } from '../fhir/bodyPool.ts';

export const FHIR_JSON = 'application/fhir+json';
const JSON_TYPES = new Set(['application/fhir+json', 'application/json', 'application/json+fhir']);
const FORMAT_ALIASES: Record<string, string> = { json: FHIR_JSON, 'application/fhir+json': FHIR_JSON, 'application/json': 'application/json', 'application/json+fhir': FHIR_JSON };

/** The media type to answer with, from _format (wins) or Accept; 406 when only XML/other is acceptable. */
export function responseType(req: Request): string {
  const format = typeof req.query._format === 'string' ? req.query._format.trim() : undefined;
  if (format) {
    const t = FORMAT_ALIASES[format.split(';')[0].trim().toLowerCase()];
    if (!t) throw new FhirError(406, 'not-supported', `_format '${format}' is not supported; use json`);
    return t;
  }
  const accept = req.get('accept');
  if (!accept) return FHIR_JSON;
  const ranges = accept.split(',').map((r) => r.split(';')[0].trim().toLowerCase());
  for (const r of ranges) {
    if (r === 'application/json') return 'application/json';
    if (JSON_TYPES.has(r) || r === '*/*' || r === 'application/*') return FHIR_JSON;
  }
  throw new FhirError(406, 'not-supported', `Cannot produce any of '${accept}'; Kiln serves application/fhir+json`);
}

/** Checks a request body's Content-Type: FHIR JSON, or JSON Patch where allowed. */
export function requireBodyType(req: Request, allowPatch = false): 'resource' | 'json-patch' {
  const ct = (req.get('content-type') ?? '').split(';')[0].trim().toLowerCase();
  if (allowPatch && ct === 'application/json-patch+json') return 'json-patch';
  if (JSON_TYPES.has(ct)) return 'resource';
  throw new FhirError(415, 'not-supported',
    `Unsupported Content-Type '${ct || '(none)'}'; send application/fhir+json${allowPatch ? ' or application/json-patch+json' : ''}`);
}

function rawBody(req: Request): Buffer {
  const raw = req.body;
  if (!Buffer.isBuffer(raw) || raw.length === 0) throw new FhirError(400, 'invalid', 'Request body is empty');
  return raw;
}

/** The parsed JSON body, on this thread; anything src/fhir/body.ts refuses (bad UTF-8, malformed JSON, duplicate keys, ...) is a 400. */
export function jsonBody(req: Request): unknown {
  return parseJson(rawBody(req)).value;
}

/**
 * The body read for its use (a resource is validated too, a Bundle's entries are when big),
 * with its text as written; a big body is read off the main thread (src/fhir/bodyPool.ts).
 */
export function readJsonBody(req: Request, use: BodyUse): Promise<ReadBody> {
  return readRequestBody(rawBody(req), use);
}

function pretty(req: Request): boolean {
  return req.query._pretty === 'true';
}

/** Writes a JSON body; stored JSON text is sent as-is unless _pretty asks otherwise. */
export function sendJson(req: Request, res: Response, status: number, body: unknown | string): void {
  let type: string;
  try {
    type = responseType(req);
  } catch {
    type = FHIR_JSON; // errors about negotiation itself still need a body
  }
  let text = typeof body === 'string' ? body : JSON.stringify(body);
  if (pretty(req)) text = JSON.stringify(JSON.parse(text), null, 2);
  res.status(status).type(`${type}; charset=utf-8`).send(text);
}

export function sendOutcome(req: Request, res: Response, status: number, oo: OperationOutcome): void {
  sendJson(req, res, status, oo);
}

export type PreferReturn = 'minimal' | 'representation' | 'OperationOutcome';

export function preferReturn(req: Request): PreferReturn {
  const m = /return=(minimal|representation|OperationOutcome)/i.exec(req.get('prefer') ?? '');
  if (!m) return 'representation';
  const v = m[1].toLowerCase();
  return v === 'minimal' ? 'minimal' : v === 'operationoutcome' ? 'OperationOutcome' : 'representation';
}

export function preferStrict(req: Request): boolean {
  return /handling=strict/i.test(req.get('prefer') ?? '');
}

/** W/"3" -> 3; a malformed ETag is a 400. */
export function parseETag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(?:W\/)?"(\d+)"$/.exec(value.trim());
  if (!m) throw new FhirError(400, 'invalid', `Malformed ETag '${value}'; expected W/"<versionId>"`);
  return Number(m[1]);
}

export const etag = (versionId: number | string) => `W/"${versionId}"`;
export const httpDate = (instant: string) => new Date(instant).toUTCString();
