// A Kiln server as a child process (`src/main.ts`), for tests that kill -9 it and start it
// again on the same data dir. Auth and audit are off unless env says otherwise.
import { spawn, type ChildProcess } from 'node:child_process';

export interface ChildServer { child: ChildProcess; output: () => string; ready: Promise<void> }

export function startServerProcess(env: Record<string, string>): ChildServer {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, KILN_AUTH: 'off', KILN_AUDIT: 'off', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { out += d; });
  const ready = (async () => {
    const deadline = Date.now() + 90_000;
    while (!out.includes('listening') && Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`server exited: ${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!out.includes('listening')) throw new Error(`server did not start: ${out}`);
  })();
  return { child, output: () => out, ready };
}
