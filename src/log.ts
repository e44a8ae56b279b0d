// The process's one logger (pino): JSON lines on stdout, human-readable when stdout is a
// terminal (or KILN_LOG_FORMAT=pretty). An error is logged by its class, code, message and
// stack only: a PostgreSQL error's other fields (detail, where) can quote a row, which is PHI.
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

function errFields(e: unknown): Record<string, unknown> {
  if (!(e instanceof Error)) return { type: typeof e };
  const code = (e as { code?: unknown }).code;
  return { type: e.constructor.name, ...(code !== undefined ? { code: String(code) } : {}), message: e.message, stack: e.stack };
}

/** On a terminal an access line (src/http/accessLog.ts) reads as "GET /fhir/Patient 200 4.2 ms", its other fields after it. */
function prettyMessage(line: Record<string, unknown>, messageKey: string): string {
  if (line[messageKey] !== 'request') return String(line[messageKey] ?? '');
  return `${String(line.method)} ${String(line.path)} ${String(line.status)} ${String(line.durationMs)} ms`;
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

function makeLogger(): Logger {
  const asked = process.env.KILN_LOG_LEVEL || 'info';
  const level = LEVELS.includes(asked) ? asked : 'info';
  const format = process.env.KILN_LOG_FORMAT || (process.stdout.isTTY ? 'pretty' : 'json');
  const options: pino.LoggerOptions = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: errFields },
    formatters: { level: (label) => ({ level: label }) },
  };
  // Synchronous writes: a line logged just before process.exit (a startup failure) is not lost.
  const out = format === 'pretty'
    ? pretty({ colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', sync: true, singleLine: true, messageFormat: prettyMessage })
    : pino.destination({ dest: 1, sync: true });
  const logger = pino(options, { write(line: string) { out.write(line); if (taps.size) for (const tap of taps) tap(line); } });
  if (level !== asked) logger.warn(`KILN_LOG_LEVEL '${asked}' is not one of ${LEVELS.join(', ')}: logging at info`);
  return logger;
}

type Tap = (line: string) => void;
const taps = new Set<Tap>();

/** Hands each line written (its JSON text) to fn too, until the returned function is called: how an in-process test reads the log. */
export function tapLog(fn: Tap): () => void {
  taps.add(fn);
  return () => { taps.delete(fn); };
}

export const log: Logger = makeLogger();
