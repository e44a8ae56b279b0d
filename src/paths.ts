// The checkout's root, where sql/, profiles/, conformance/, package.json and the JSON kept beside
// modules live. Found once by walking up to package.json, so a module reads the same files whether
// it runs from src/ under tsx (tests, benches, the CLI) or compiled from dist/src/ (`npm start`).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${here}`);
  }
}

export const ROOT = findRoot();

/** A path under the checkout's root: fromRoot('sql'), fromRoot('conformance', file). */
export const fromRoot = (...parts: string[]): string => path.join(ROOT, ...parts);
