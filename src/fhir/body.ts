// Request body bytes to a JSON value, the one parse REST writes, JSON Patch documents and
// Bundles (with their entries' resources and PATCH Binaries) share. Everything a client can
// get wrong is a 400 here, never a 500 later: bytes that are not UTF-8 (refused, not turned
// into U+FFFD), malformed JSON, duplicate keys, nesting past MAX_JSON_DEPTH (later code walks
// values recursively), and strings FHIR forbids (C0 controls but tab/CR/LF, lone surrogates).
// Pure and synchronous, so src/fhir/bodyPool.ts can run it in a worker thread for big bodies.
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';
import { FhirError } from './outcome.ts';
import { findProblem } from './duplicateKeys.ts';
import { checkResource, validate } from './validate.ts';

/** Containers (objects and arrays) a body may nest; FHIR resources stay far below. */
export const MAX_JSON_DEPTH = 100;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The parsed JSON of a body and its text as decoded (stored as written). */
export function parseJson(bytes: Uint8Array, what = 'Request body'): { value: unknown; text: string } {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new FhirError(400, 'invalid', `${what} is not valid UTF-8`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new FhirError(400, 'invalid', `Malformed JSON: ${(e as Error).message}`);
  }
  const problem = findProblem(text, { maxDepth: MAX_JSON_DEPTH, strings: true });
  if (problem) throw new FhirError(400, problem.kind === 'depth' ? 'too-costly' : 'invalid', problem.message, problem.location ? [problem.location] : undefined);
  return { value, text };
}

/** What a body is for: any JSON (a JSON Patch), a resource of a type, or a batch/transaction Bundle. */
export type BodyUse = { kind: 'json' } | { kind: 'resource'; type: string } | { kind: 'bundle' };

/** A FhirError as plain data, to cross a thread boundary. */
export interface Refusal {
  status: number;
  message: string;
  issues: OperationOutcomeIssue[];
}

export const refusalOf = (e: FhirError): Refusal => ({ status: e.status, message: e.message, issues: e.issues });
export const errorOf = (r: Refusal): FhirError => FhirError.withIssues(r.status, r.issues, r.message);

export interface ReadBody {
  value: unknown;
  text: string;
  /**
   * Bundles read off the main thread: per entry, the validation of its resource (null: valid;
   * absent: not validated here, for entries without a resource to write).
   */
  entries?: (Refusal | null | undefined)[];
}

/**
 * Parses a body and does the CPU work that grows with it: a resource is checked and
 * validated (validate.ts checkResource); with `validateEntries`, each Bundle entry that
 * writes a resource is validated too, its result returned rather than thrown.
 */
export function readBody(bytes: Uint8Array, use: BodyUse, validateEntries = false): ReadBody {
  const { value, text } = parseJson(bytes);
  if (use.kind === 'resource') checkResource(value, use.type);
  if (use.kind !== 'bundle' || !validateEntries) return { value, text };
  const entry = (value as { entry?: unknown } | null)?.entry;
  if (!Array.isArray(entry)) return { value, text };
  const entries = entry.map((e: { request?: { method?: unknown }; resource?: unknown } | null) => {
    const method = e?.request?.method;
    const resource = e?.resource;
    if ((method !== 'POST' && method !== 'PUT') || typeof resource !== 'object' || resource === null || Array.isArray(resource)) return undefined;
    try {
      validate(resource as Parameters<typeof validate>[0]);
      return null;
    } catch (err) {
      if (err instanceof FhirError) return refusalOf(err);
      throw err;
    }
  });
  return { value, text, entries };
}
