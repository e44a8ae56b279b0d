// A body worker thread: parses and validates big request bodies (src/fhir/body.ts) so the
// main thread keeps serving others. Loads the R4 definitions once, when it starts.
import { parentPort } from 'node:worker_threads';
import { FhirError } from './outcome.ts';
import { readBody, refusalOf } from './body.ts';
import { loadDefinitions, validate } from './validate.ts';
import type { Task } from './bodyPool.ts';

loadDefinitions();
const port = parentPort!;

port.on('message', ({ id, task }: { id: number; task: Task }) => {
  try {
    if (task.op === 'read') {
      port.postMessage({ id, result: readBody(task.bytes, task.use, true) });
    } else {
      validate(task.resource);
      port.postMessage({ id, result: null });
    }
  } catch (e) {
    if (e instanceof FhirError) port.postMessage({ id, refusal: refusalOf(e) });
    else port.postMessage({ id, bug: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  }
});
