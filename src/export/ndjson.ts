// NDJSON output: decoding PostgreSQL's COPY text format into plain lines, and writing
// lines into numbered files of at most N lines each. A file is written as
// `<name>.part`, fsynced and renamed into place only when complete, so a file under
// its final name never holds a partial line.
import fs from 'node:fs';
import path from 'node:path';
import { Transform, Writable } from 'node:stream';

const BACKSLASH = 0x5c;
const NEWLINE = 0x0a;
// COPY TO (text format) writes a backslash as \\ and these control bytes as \b \f \n \r \t \v.
const UNESCAPE: Record<number, number> = { 0x5c: 0x5c, 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09, 0x76: 0x0b };

/**
 * Undoes COPY text-format escaping of a single-column result. Rows end with a raw
 * newline, which is kept: the stored JSON has its raw newlines removed in SQL, so
 * each row is exactly one NDJSON line.
 */
export function copyTextDecoder(): Transform {
  let pending = false; // the previous chunk ended in the middle of an escape
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (!pending && chunk.indexOf(BACKSLASH) < 0) {
        done(null, chunk);
        return;
      }
      const out = Buffer.allocUnsafe(chunk.length);
      let o = 0;
      let i = 0;
      if (pending) {
        out[o++] = UNESCAPE[chunk[0]] ?? chunk[0];
        i = 1;
        pending = false;
      }
      while (i < chunk.length) {
        const b = chunk.indexOf(BACKSLASH, i);
        const end = b < 0 ? chunk.length : b;
        o += chunk.copy(out, o, i, end);
        if (b < 0) break;
        if (b + 1 === chunk.length) {
          pending = true;
          break;
        }
        out[o++] = UNESCAPE[chunk[b + 1]] ?? chunk[b + 1];
        i = b + 2;
      }
      done(null, out.subarray(0, o));
    },
  });
}

/** Splits a byte stream into lines and maps each (e.g. _elements); fn gets a line without its newline. */
export function mapLines(fn: (line: string) => string): Transform {
  let rest = '';
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      const text = rest + chunk.toString('utf8');
      const lines = text.split('\n');
      rest = lines.pop()!;
      done(null, lines.length ? lines.map((l) => fn(l) + '\n').join('') : undefined);
    },
    flush(done) {
      done(null, rest ? fn(rest) + '\n' : undefined);
    },
  });
}

export interface WrittenFile {
  name: string;
  count: number;
  bytes: number;
}

/** Lines into `<prefix>.<n>.ndjson` files of at most maxLines lines each. */
export class LineFiles {
  readonly files: WrittenFile[] = [];
  private fd = -1;
  private cur: WrittenFile | undefined;
  private lines = 0;

  constructor(private dir: string, private prefix: string, private maxLines: number, private onLines?: (n: number) => void) {}

  /** Total lines written so far. */
  get count(): number {
    return this.lines;
  }

  write(buf: Buffer): void {
    let pos = 0;
    while (pos < buf.length) {
      if (this.fd < 0) this.open();
      const cur = this.cur!;
      const room = this.maxLines - cur.count;
      let end = pos;
      let n = 0;
      while (n < room) {
        const nl = buf.indexOf(NEWLINE, end);
        if (nl < 0) break;
        end = nl + 1;
        n++;
      }
      const full = n === room;
      const stop = full ? end : buf.length;
      fs.writeSync(this.fd, buf, pos, stop - pos);
      cur.count += n;
      cur.bytes += stop - pos;
      this.lines += n;
      if (n) this.onLines?.(n);
      pos = stop;
      if (full) this.close();
    }
  }

  /** Closes the last file; every file then ends with a complete line. */
  finish(): WrittenFile[] {
    if (this.fd >= 0) this.close();
    return this.files;
  }

  /** Removes whatever this writer made (a failed or cancelled unit). */
  discard(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
    for (const f of [...this.files, ...(this.cur ? [this.cur] : [])]) {
      fs.rmSync(path.join(this.dir, f.name), { force: true });
      fs.rmSync(path.join(this.dir, `${f.name}.part`), { force: true });
    }
  }

  /** A Writable over this writer, for stream.pipeline. */
  writable(): Writable {
    return new Writable({
      write: (chunk: Buffer, _enc, done) => {
        try {
          this.write(chunk);
          done();
        } catch (e) {
          done(e as Error);
        }
      },
    });
  }

  private open(): void {
    const name = `${this.prefix}.${this.files.length + 1}.ndjson`;
    this.cur = { name, count: 0, bytes: 0 };
    this.fd = fs.openSync(path.join(this.dir, `${name}.part`), 'w');
  }

  private close(): void {
    const cur = this.cur!;
    if (cur.count === 0 && cur.bytes > 0) throw new Error(`${cur.name}: data without a line end`);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = -1;
    const part = path.join(this.dir, `${cur.name}.part`);
    if (cur.bytes > 0 && this.lastByteIsNewline(part)) {
      fs.renameSync(part, path.join(this.dir, cur.name));
      this.files.push(cur);
    } else if (cur.bytes === 0) {
      fs.rmSync(part, { force: true });
    } else {
      throw new Error(`${cur.name}: the last line is incomplete`);
    }
    this.cur = undefined;
  }

  private lastByteIsNewline(file: string): boolean {
    const fd = fs.openSync(file, 'r');
    try {
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, fs.fstatSync(fd).size - 1);
      return b[0] === NEWLINE;
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** fsyncs a directory so the renames in it survive a crash of the machine, not only of the process. */
export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
