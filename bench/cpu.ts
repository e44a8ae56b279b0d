// CPU accounting for the benches, from /proc (Linux; undefined elsewhere): the machine's
// busy time, and each process's, so a figure can say which process paid for it.
import fs from 'node:fs';

/** Machine-wide busy, steal (given to other guests by the hypervisor) and total jiffies from /proc/stat (undefined off Linux). */
export function machineCpu(): { busy: number; steal: number; total: number } | undefined {
  try {
    // user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map((v) => Number(v) || 0);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3] - f[4] - f[7], steal: f[7], total };
  } catch {
    return undefined;
  }
}

export type ProcSnapshot = Map<number, { ppid: number; jiffies: number }>;

/** CPU jiffies (self + waited-for children) and parent of every process (undefined off Linux). */
export function procSnapshot(): ProcSnapshot | undefined {
  try {
    const procs: ProcSnapshot = new Map();
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
        procs.set(Number(d), { ppid: Number(f[1]), jiffies: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) });
      } catch { /* exited meanwhile */ }
    }
    return procs;
  } catch {
    return undefined;
  }
}

/** Pids of the tree rooted at `root`: this process, the load generator, the embedded PostgreSQL and its backends. */
export function treeOf(procs: ProcSnapshot, root: number): Set<number> {
  const children = new Map<number, number[]>();
  for (const [pid, p] of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), pid]);
  const tree = new Set<number>();
  const stack = [root];
  while (stack.length) {
    const pid = stack.pop()!;
    tree.add(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return tree;
}

export function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ').slice(0, 100);
  } catch {
    return `pid ${pid}`;
  }
}

export interface CpuUse {
  /** CPU of this process (the Kiln server for HTTP runs, the pg client loops for direct runs), % of one core. */
  benchProcessPct: number;
  /** All cores, all processes, % of the machine. */
  machinePct: number | null;
  /** Machine CPU used by processes outside the bench's tree (other work on the box), % of the machine. */
  foreignPct: number | null;
  /** The biggest visible consumers among those (processes that start and exit within the window are not seen). */
  topForeign: { pct: number; process: string }[];
}

/** The machine's, every process's and this process's CPU counters at one moment. */
export interface CpuSample {
  machine: ReturnType<typeof machineCpu>;
  procs: ProcSnapshot | undefined;
  self: NodeJS.CpuUsage;
}

export function cpuSample(): CpuSample {
  return { machine: machineCpu(), procs: procSnapshot(), self: process.cpuUsage() };
}

/** This process's CPU microseconds since `from`. */
export function selfUs(from: CpuSample, to: CpuSample): number {
  return to.self.user - from.self.user + to.self.system - from.self.system;
}

export async function withCpu<T>(fn: () => Promise<T>): Promise<{ result: T; cpu: CpuUse }> {
  const s0 = cpuSample();
  const t0 = performance.now();
  const result = await fn();
  const s1 = cpuSample();
  const wallMs = performance.now() - t0;
  const [m0, m1, p0, p1] = [s0.machine, s1.machine, s0.procs, s1.procs];
  const span = m0 && m1 ? m1.total - m0.total : 0;
  const pct = (jiffies: number) => Math.max(0, Math.round((jiffies / span) * 100));
  const cpu: CpuUse = {
    benchProcessPct: Math.round((selfUs(s0, s1) / 1000 / wallMs) * 100),
    machinePct: m0 && m1 && span > 0 ? pct(m1.busy - m0.busy) : null,
    foreignPct: null,
    topForeign: [],
  };
  if (m0 && m1 && span > 0 && p0 && p1) {
    const tree = treeOf(p1, process.pid);
    let mine = 0;
    const foreign: { pid: number; jiffies: number }[] = [];
    for (const [pid, p] of p1) {
      const delta = p.jiffies - (p0.get(pid)?.jiffies ?? 0);
      if (tree.has(pid)) mine += delta;
      else if (delta > 0) foreign.push({ pid, jiffies: delta });
    }
    cpu.foreignPct = pct(m1.busy - m0.busy - mine);
    cpu.topForeign = foreign.sort((x, y) => y.jiffies - x.jiffies).slice(0, 3)
      .filter((f) => pct(f.jiffies) >= 2).map((f) => ({ pct: pct(f.jiffies), process: cmdline(f.pid) }));
  }
  return { result, cpu };
}

/** Milliseconds of CPU per jiffy (USER_HZ, 100 on Linux). */
const MS_PER_JIFFY = 10;

/** CPU milliseconds the processes of `pids` used between two snapshots (processes seen in the second). */
export function cpuMsOf(p0: ProcSnapshot, p1: ProcSnapshot, pids: Set<number>): number {
  let jiffies = 0;
  for (const pid of pids) jiffies += (p1.get(pid)?.jiffies ?? 0) - (p0.get(pid)?.jiffies ?? 0);
  return jiffies * MS_PER_JIFFY;
}

/** The embedded PostgreSQL's postmaster (first line of postmaster.pid in its data directory). */
export function postmasterPid(pgDataDir: string): number | undefined {
  try {
    return Number(fs.readFileSync(`${pgDataDir}/postmaster.pid`, 'utf8').split('\n')[0]) || undefined;
  } catch {
    return undefined;
  }
}
