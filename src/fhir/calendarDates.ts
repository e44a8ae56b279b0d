// Medplum checks the shape of date, dateTime and instant values with regular
// expressions, which let through days that do not exist (2020-02-30). Such a value
// would silently file a row under the wrong clinical time, so it is an error here.
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';

const DATE_ELEMENT = /(Date|DateTime|Instant)$|^(start|end|issued|recorded|lastUpdated|dateAsserted|date|time|creation|event|authoredOn)$/;
const DATE_VALUE = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?)?/;

function realDay(value: string): boolean {
  const m = DATE_VALUE.exec(value);
  if (!m) return true; // year or year-month only: the format check covers those
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(y, mo - 1, d));
  if (date.getUTCFullYear() !== y || date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d) return false;
  return m[4] === undefined || (Number(m[4]) < 24 && Number(m[5]) < 60 && (m[6] === undefined || Number(m[6]) < 60));
}

/** Issues for date-typed elements (found by FHIR's naming) holding impossible calendar values. */
export function checkCalendarDates(resource: Resource): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const walk = (node: unknown, path: string, key: string) => {
    if (typeof node === 'string') {
      if (DATE_ELEMENT.test(key) && !realDay(node)) {
        issues.push({ severity: 'error', code: 'value', diagnostics: `'${node}' is not a real calendar date/time`, expression: [path] });
      }
    } else if (Array.isArray(node)) {
      node.forEach((item, i) => walk(item, `${path}[${i}]`, key));
    } else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) walk(v, `${path}.${k}`, k);
    }
  };
  walk(resource, resource.resourceType, '');
  return issues;
}
