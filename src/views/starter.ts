// The starter views Kiln ships (conformance/views/*.json): patient demographics, encounters, vital
// signs, medications and the access log, installed into a tenant by `kiln views install`.
import fs from 'node:fs';
import path from 'node:path';
import type { ViewDefinition } from './types.ts';
import { fromRoot } from '../paths.ts';

export const STARTER_DIR = fromRoot('conformance', 'views');

/** The starter views, by file name. */
export function starterViews(): ViewDefinition[] {
  return fs.readdirSync(STARTER_DIR).filter((f) => f.endsWith('.json')).sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(STARTER_DIR, f), 'utf8')) as ViewDefinition);
}
