// Requests whose handlers are still running. A client that hangs up closes its socket
// while its handler goes on (a read still has its AuditEvent to store), so the server
// cannot stop when its sockets are closed: it waits for the handlers too.
export class InFlight {
  private count = 0;
  private waiters: (() => void)[] = [];

  /** Counts `work` as in flight until it settles. */
  track<T>(work: Promise<T>): Promise<T> {
    this.count++;
    return work.finally(() => {
      if (--this.count === 0) for (const w of this.waiters.splice(0)) w();
    });
  }

  get size(): number {
    return this.count;
  }

  /** Resolves when nothing is in flight, or after `limitMs` (true when it settled). */
  settled(limitMs: number): Promise<boolean> {
    if (this.count === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), limitMs);
      this.waiters.push(() => { clearTimeout(timer); resolve(true); });
    });
  }
}
