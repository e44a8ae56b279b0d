// Entry of a body worker thread (src/fhir/bodyPool.ts): workers do not inherit the main
// thread's TypeScript loader, so this plain module registers tsx before loading the worker.
import { register } from 'tsx/esm/api';

register();
await import('./bodyWorker.ts');
