// Calls that share a key run one at a time in this process, in arrival order. The login
// page counts a sign-in under PostgreSQL advisory locks per username and address; queueing
// here first means concurrent sign-ins wait in memory, not holding a pooled connection
// while they wait for the lock (150 guesses from one address would otherwise fill the pool).
const tails = new Map<string, Promise<void>>();

function acquire(key: string): Promise<() => void> {
  const before = tails.get(key) ?? Promise.resolve();
  let release!: () => void;
  const held = new Promise<void>((resolve) => { release = resolve; });
  const tail = before.then(() => held);
  tails.set(key, tail);
  return before.then(() => () => {
    release();
    if (tails.get(key) === tail) tails.delete(key);
  });
}

/** Runs fn once no earlier call holding any of `keys` runs; keys are taken in the order given,
 *  so callers that always list them in the same order (user, then address) cannot deadlock. */
export async function inTurn<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
  const releases: (() => void)[] = [];
  try {
    for (const key of keys) releases.push(await acquire(key));
    return await fn();
  } finally {
    for (const release of releases.reverse()) release();
  }
}
