// Medplum checks the shape of date, dateTime and instant values with regular
// expressions, which let through days that do not exist (2020-02-30). Such a value
// would silently file a row under the wrong clinical time, so it is an error here.
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { dateRange } from '../../mappings/search/precision.ts';

const DATE_ELEMENT = /(Date|DateTime|Instant)$|^(start|end|issued|recorded|lastUpdated|dateAsserted|date|time|creation|event|authoredOn)$/;
const DATE_SHAPE = /^\d{4}-\d{2}-\d{2}/;

function realDay(value: string): boolean {
  // Year or year-month only: the format check covers those.
  return !DATE_SHAPE.test(value) || dateRange(value) !== undefined;
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
