// The shared test data lives beside the repository (../shared/data), as in CI.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SHARED_DATA = process.env.KILN_SHARED_DATA
  ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../shared/data');
export const EXAMPLES_DIR = path.join(SHARED_DATA, 'fhir-r4-examples');
