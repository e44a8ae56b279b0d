// `npm start`: run the server until SIGINT/SIGTERM.
import { startServer } from './server.ts';

// A stray rejection is a bug to log, not a reason to drop every in-flight request.
process.on('unhandledRejection', (e) => console.error('unhandled rejection', e));

const running = await startServer();
console.log(`Kiln FHIR R4 server listening on ${running.url} (${running.config.databaseUrl ? 'DATABASE_URL' : `embedded PostgreSQL in ${running.config.dataDir}`})`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    console.log(`${signal}: finishing in-flight requests and stopping`);
    const force = setTimeout(() => process.exit(1), 30_000);
    force.unref();
    await running.stop();
    process.exit(0);
  });
}
