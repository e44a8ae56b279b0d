// Kiln's version, from package.json: the CapabilityStatement's software.version and `kiln --version`.
import fs from 'node:fs';
import { fromRoot } from './paths.ts';

export const VERSION: string = JSON.parse(fs.readFileSync(fromRoot('package.json'), 'utf8')).version;
