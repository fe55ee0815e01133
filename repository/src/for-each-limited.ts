// Runs an async function over items, at most `limit` at a time (store calls: listings, index objects, parts).

/**
 * Calls `fn` for every item, `limit` at a time. Once a call fails no further item is started, and the calls under
 * way are waited for before the first failure is thrown: a caller's cleanup (a lock released, a writer aborted)
 * then never runs while some of its calls still write.
 */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  // A limit of 0 (or NaN) ran nothing and resolved: a loadIndex({ concurrency: 0 }) would have loaded no index.
  if (!Number.isInteger(limit) || limit < 1)
    throw new RangeError(`forEachLimited: limit must be a whole number ≥ 1, got ${limit}`);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const run = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  if (failure) throw failure.error;
}
