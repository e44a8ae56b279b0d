// NDJSON output: decoding PostgreSQL's COPY text format into plain lines, and writing
// lines into numbered files of at most N lines each. A file is written as
// `<name>.part`, fsynced and renamed into place only when complete, so a file under
// its final name never holds a partial line.
//
// Speed: the bytes are never turned into strings (except for _elements). Files are
// written asynchronously in large batches (the libuv thread pool), so the event loop
// keeps reading the COPY socket while the kernel copies the previous batch; dirty
// pages are flushed behind the writer (fdatasync every FLUSH_BEHIND bytes, in the
// background) and a full file is fsynced, checked and renamed in the background
// while the next one fills. finish() waits for all of that.
import fs from 'node:fs';
import path from 'node:path';
import { Transform, Writable } from 'node:stream';

const BACKSLASH = 0x5c;
const NEWLINE = 0x0a;
const DROP = -1;
// COPY TO (text format) writes a backslash as \\ and these control bytes as \b \f \n \r \t \v.
// A raw CR or LF inside valid JSON can only be whitespace between tokens (strings hold
// them escaped), so they are dropped: every row is exactly one NDJSON line.
const UNESCAPE: Record<number, number> = { 0x5c: 0x5c, 0x62: 0x08, 0x66: 0x0c, 0x6e: DROP, 0x72: DROP, 0x74: 0x09, 0x76: 0x0b };

/**
 * Undoes COPY text-format escaping of a single-column result, dropping raw CR/LF of
 * the stored text. Rows end with a raw newline, which is kept: one row, one line.
 */
export function copyTextDecoder(): Transform {
  let pending = false; // the previous chunk ended in the middle of an escape
  const unescape = (out: Buffer, o: number, b: number): number => {
    const u = UNESCAPE[b] ?? b;
    if (u !== DROP) out[o++] = u;
    return o;
  };
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
        o = unescape(out, o, chunk[0]);
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
        o = unescape(out, o, chunk[b + 1]);
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

/** Bytes a writer may buffer before its stream pushes back (the COPY socket then waits). */
const WRITE_BATCH = 4 * 1024 * 1024;
/** Dirty bytes of a file after which a background fdatasync starts, so the final fsync is short. */
const FLUSH_BEHIND = 32 * 1024 * 1024;

interface OpenFile extends WrittenFile {
  fh: fs.promises.FileHandle;
  /** Segments appended but not yet written. */
  pending: Buffer[];
  pendingBytes: number;
  unsynced: number;
  /** The running background fdatasync, if any. */
  flushing?: Promise<void>;
}

/**
 * Record files (view rows, src/export/viewRows.ts): `<prefix>.<n>.<ext>`, each record one
 * whole write (a CSV record may hold line breaks in a quoted field, so newlines are not
 * counted), the header written at the top of every file, the separator between records and
 * the footer at the end (a JSON array per file); keepEmpty: a unit with no records still
 * has one file (a view's output needs a location).
 */
export interface RecordFormat {
  ext: string;
  header?: string;
  separator?: string;
  footer?: string;
  keepEmpty?: boolean;
}

/** Lines into `<prefix>.<n>.ndjson` files of at most maxLines lines each (or records, with a RecordFormat). */
export class LineFiles {
  readonly files: WrittenFile[] = [];
  private cur: OpenFile | undefined;
  private opened: string[] = [];
  /** Full files being fsynced and renamed in the background, in order. */
  private closing: Promise<void>[] = [];
  private failure: unknown;
  private discarded = false;
  private lines = 0;

  constructor(private dir: string, private prefix: string, private maxLines: number, private onLines?: (n: number) => void,
    private records?: RecordFormat) {}

  /** Total lines written so far. */
  get count(): number {
    return this.lines;
  }

  /** Appends bytes (whole lines, or a line continued by the next call) and writes them. */
  async write(buf: Buffer): Promise<void> {
    await this.append([buf]);
  }

  /** Closes the last file and waits for every file to be synced and renamed; each ends with a complete line. */
  async finish(): Promise<WrittenFile[]> {
    if (!this.cur && !this.opened.length && this.records?.keepEmpty) this.cur = await this.open();
    if (this.cur) {
      const cur = this.cur;
      this.cur = undefined;
      this.seal(cur);
      await this.flush(cur);
      this.closeInBackground(cur);
    }
    await Promise.all(this.closing);
    if (this.failure) throw this.failure;
    return this.files;
  }

  /** Removes whatever this writer made (a failed or cancelled unit). */
  async discard(): Promise<void> {
    this.discarded = true; // a write still in flight (a failed pipeline) opens no new file
    const cur = this.cur;
    this.cur = undefined;
    await Promise.allSettled([...this.closing, cur?.flushing]);
    if (cur) await cur.fh.close().catch(() => {});
    for (const name of this.opened) {
      fs.rmSync(path.join(this.dir, name), { force: true });
      fs.rmSync(path.join(this.dir, `${name}.part`), { force: true });
    }
  }

  /** A Writable over this writer, for stream.pipeline: batches of chunks are written at once. */
  writable(): Writable {
    return new Writable({
      highWaterMark: WRITE_BATCH,
      writev: (chunks, done) => {
        this.append(chunks.map((c) => c.chunk as Buffer)).then(() => done(), done);
      },
    });
  }

  /** Appends whole records (record mode), starting a new file after maxLines of them. */
  async writeRecords(records: string[]): Promise<void> {
    if (this.failure) throw this.failure;
    const separator = this.records?.separator;
    for (const record of records) {
      const cur = this.cur ?? (this.cur = await this.open());
      const buf = Buffer.from(cur.count && separator ? separator + record : record, 'utf8');
      cur.pending.push(buf);
      cur.pendingBytes += buf.length;
      cur.bytes += buf.length;
      cur.count++;
      this.lines++;
      this.onLines?.(1);
      if (cur.count >= this.maxLines) {
        this.cur = undefined;
        this.seal(cur);
        await this.flush(cur);
        this.closeInBackground(cur);
      } else if (cur.pendingBytes >= WRITE_BATCH) {
        await this.flush(cur);
      }
    }
    if (this.cur) await this.flush(this.cur);
  }

  /** Record mode: the footer ends the file. */
  private seal(f: OpenFile): void {
    const footer = this.records?.footer;
    if (!footer) return;
    const buf = Buffer.from(footer, 'utf8');
    f.pending.push(buf);
    f.pendingBytes += buf.length;
    f.bytes += buf.length;
  }

  private async append(bufs: Buffer[]): Promise<void> {
    if (this.failure) throw this.failure;
    for (const buf of bufs) {
      let pos = 0;
      while (pos < buf.length) {
        const cur = this.cur ?? (this.cur = await this.open());
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
        cur.pending.push(buf.subarray(pos, stop));
        cur.pendingBytes += stop - pos;
        cur.count += n;
        cur.bytes += stop - pos;
        this.lines += n;
        if (n) this.onLines?.(n);
        pos = stop;
        if (full) {
          this.cur = undefined;
          await this.flush(cur);
          this.closeInBackground(cur);
        }
      }
    }
    if (this.cur) await this.flush(this.cur);
  }

  private async open(): Promise<OpenFile> {
    if (this.discarded) throw new Error('export unit discarded');
    const name = `${this.prefix}.${this.opened.length + 1}.${this.records?.ext ?? 'ndjson'}`;
    this.opened.push(name);
    const fh = await fs.promises.open(path.join(this.dir, `${name}.part`), 'w+', OWNER_ONLY_FILE); // w+: the last byte is read back at close
    await fh.chmod(OWNER_ONLY_FILE); // a .part left by an earlier attempt keeps the mode it was made with
    const header = this.records?.header ? [Buffer.from(this.records.header, 'utf8')] : [];
    const bytes = header.reduce((n, b) => n + b.length, 0);
    return { name, count: 0, bytes, fh, pending: header, pendingBytes: bytes, unsynced: 0 };
  }

  /** Writes the pending segments; starts a background flush once enough is dirty. */
  private async flush(f: OpenFile): Promise<void> {
    if (!f.pendingBytes) return;
    const bufs = f.pending;
    const total = f.pendingBytes;
    f.pending = [];
    f.pendingBytes = 0;
    const { bytesWritten } = await f.fh.writev(bufs);
    if (bytesWritten < total) await f.fh.write(Buffer.concat(bufs).subarray(bytesWritten)); // a short write: the rest at once
    f.unsynced += total;
    if (f.unsynced >= FLUSH_BEHIND && !f.flushing) {
      f.unsynced = 0;
      // An error is kept here: Linux reports a writeback error to one fsync of the file only.
      f.flushing = f.fh.datasync().catch((e) => { this.failure ??= e; }).finally(() => { f.flushing = undefined; });
    }
  }

  /** fsync, close, check the last line, rename; the file takes its place in `files` now, in order. */
  private closeInBackground(f: OpenFile): void {
    const part = path.join(this.dir, `${f.name}.part`);
    const entry: WrittenFile = { name: f.name, count: f.count, bytes: f.bytes };
    const keep = !!this.records?.keepEmpty && this.files.length === 0 && f.count === 0;
    const done = (async () => {
      try {
        if (!this.records && f.count === 0 && f.bytes > 0) throw new Error(`${f.name}: data without a line end`);
        await f.flushing;
        await f.fh.sync();
        if (f.bytes > 0 && !await lastByteIsNewline(f.fh, f.bytes)) throw new Error(`${f.name}: the last line is incomplete`);
      } finally {
        await f.fh.close();
      }
      if (f.bytes > 0 || keep) await fs.promises.rename(part, path.join(this.dir, f.name));
      else await fs.promises.rm(part, { force: true });
    })().catch((e) => { this.failure ??= e; });
    if (f.bytes > 0 || keep) this.files.push(entry);
    this.closing.push(done);
  }
}

async function lastByteIsNewline(fh: fs.promises.FileHandle, size: number): Promise<boolean> {
  const b = Buffer.alloc(1);
  const { bytesRead } = await fh.read(b, 0, 1, size - 1);
  return bytesRead === 1 && b[0] === NEWLINE;
}

/** Exported files hold PHI: readable by the server's user alone, whatever the umask. */
export const OWNER_ONLY_FILE = 0o600;

/**
 * Makes `dir` (and parents it has to create) owner-only, 0700, whatever the umask (which
 * masks mkdir's mode, not chmod's). Parents that already exist keep their mode: an
 * operator's KILN_EXPORT_DIR is theirs; the job's own directory is made 0700 even if it exists.
 */
export function ownerOnlyDir(dir: string): void {
  const first = fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    fs.chmodSync(d, 0o700);
    if (!first || d === path.resolve(first) || d === path.dirname(d)) break;
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
