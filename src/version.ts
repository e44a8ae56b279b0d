// Kiln's version, from package.json: the CapabilityStatement's software.version and `kiln --version`.
import fs from 'node:fs';

export const VERSION: string = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
