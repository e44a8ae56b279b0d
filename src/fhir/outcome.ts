// FHIR errors: every failure leaves as an OperationOutcome with a status code.
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';

export type IssueCode = OperationOutcomeIssue['code'];

export class FhirError extends Error {
  readonly status: number;
  readonly issues: OperationOutcomeIssue[];
  constructor(status: number, code: IssueCode, message: string, expression?: string[]) {
    super(message);
    this.status = status;
    this.issues = [{ severity: 'error', code, diagnostics: message, ...(expression ? { expression } : {}) }];
  }
  static withIssues(status: number, issues: OperationOutcomeIssue[], message: string): FhirError {
    const e = new FhirError(status, issues[0]?.code ?? 'invalid', message);
    (e as { issues: OperationOutcomeIssue[] }).issues = issues;
    return e;
  }
}

export const badRequest = (msg: string, expression?: string[]) => new FhirError(400, 'invalid', msg, expression);
export const notFound = (msg: string) => new FhirError(404, 'not-found', msg);
export const gone = (msg: string) => new FhirError(410, 'deleted', msg);
export const conflict = (msg: string) => new FhirError(409, 'conflict', msg);
export const preconditionFailed = (msg: string) => new FhirError(412, 'conflict', msg);
export const unprocessable = (msg: string, expression?: string[]) => new FhirError(422, 'processing', msg, expression);

/** The issues as an OperationOutcome; an empty array is left out (FHIR JSON has no empty arrays). */
export function outcome(issues: OperationOutcomeIssue[]): OperationOutcome {
  const issue = issues.map((i) => Object.fromEntries(Object.entries(i).filter(([, v]) => !(Array.isArray(v) && v.length === 0))) as OperationOutcomeIssue);
  return { resourceType: 'OperationOutcome', issue };
}

/** A 503's body: the server cannot serve now (database away, stopping); the client retries after Retry-After. */
export function transient(message: string): OperationOutcome {
  return outcome([{ severity: 'error', code: 'transient', diagnostics: message }]);
}

export function informational(message: string): OperationOutcome {
  return outcome([{ severity: 'information', code: 'informational', diagnostics: message }]);
}
