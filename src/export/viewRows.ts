// $viewdefinition-export: a view's rows as file records. Resources arrive as NDJSON lines
// (the export's COPY stream, or pages of a search); each becomes its rows (the in-memory
// runner of src/views, as $run uses for anything but a whole-type run), each row one record
// in the job's format, written by LineFiles in record mode (src/export/ndjson.ts).
import { Transform, Writable } from 'node:stream';
import type { Resource } from '@medplum/fhirtypes';
import { FhirError } from '../fhir/outcome.ts';
import { csvRecord, prepareView, ViewError, type PreparedView } from '../views/index.ts';
import type { LineFiles, RecordFormat } from './ndjson.ts';
import type { ViewFormat } from './params.ts';

export class ViewRecords {
  readonly view: PreparedView;
  private readonly columns: string[];

  constructor(view: unknown, private readonly format: ViewFormat, private readonly header: boolean) {
    this.view = prepareView(view);
    this.columns = this.view.columns.map((c) => c.name);
  }

  /** How LineFiles writes this format's files. */
  fileFormat(): RecordFormat {
    if (this.format === 'csv') return { ext: 'csv', keepEmpty: true, ...(this.header ? { header: csvRecord(this.columns, (c) => c) } : {}) };
    if (this.format === 'json') return { ext: 'json', keepEmpty: true, header: '[\n', separator: ',\n', footer: '\n]\n' };
    return { ext: 'ndjson', keepEmpty: true };
  }

  /** The records of one resource; a resource the view cannot turn into rows fails the job with the view's problem. */
  recordsOf(resource: Resource): string[] {
    const out: string[] = [];
    try {
      for (const row of this.view.rowsOf(resource)) {
        out.push(this.format === 'csv' ? csvRecord(this.columns, (c) => row[c]) : this.format === 'json' ? JSON.stringify(row) : `${JSON.stringify(row)}\n`);
      }
    } catch (e) {
      if (e instanceof ViewError) throw new FhirError(400, 'processing', `ViewDefinition: ${e.message}`);
      throw e;
    }
    return out;
  }

  /** NDJSON resource bytes -> arrays of records (object mode out). */
  transform(): Transform {
    let rest = '';
    const lines = (text: string, push: (r: string[]) => void) => {
      const records: string[] = [];
      for (const line of text.split('\n')) if (line) records.push(...this.recordsOf(JSON.parse(line) as Resource));
      if (records.length) push(records);
    };
    return new Transform({
      readableObjectMode: true,
      transform(chunk: Buffer, _enc, done) {
        try {
          const text = rest + chunk.toString('utf8');
          const cut = text.lastIndexOf('\n');
          rest = text.slice(cut + 1);
          if (cut >= 0) lines(text.slice(0, cut), (r) => this.push(r));
          done();
        } catch (e) {
          done(e as Error);
        }
      },
      flush(done) {
        try {
          lines(rest, (r) => this.push(r));
          done();
        } catch (e) {
          done(e as Error);
        }
      },
    });
  }
}

/** Arrays of records -> the writer's files. */
export function recordSink(writer: LineFiles): Writable {
  return new Writable({
    objectMode: true,
    write(records: string[], _enc, done) {
      writer.writeRecords(records).then(() => done(), done);
    },
  });
}
