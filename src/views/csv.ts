// A view's rows as CSV (RFC 4180), shared by $run and $viewdefinition-export so a row reads the
// same in both: a record ends with CRLF; collections and complex values are JSON text.

/** One field: empty for null, quoted when it holds a comma, quote or line break. */
export function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** One record of the given columns' values (the header is the names' record). */
export function csvRecord(columns: readonly string[], values: (c: string) => unknown): string {
  return `${columns.map((c) => csvField(values(c))).join(',')}\r\n`;
}
