// A tenant's blob store as the coordinator uses it: every call fails once it has run past a deadline. The S3
// client bounds its own requests (S3_TIMEOUTS), but nothing bounded a file:// store on a mount that stopped
// answering (a read or an fsync that never returns), and snapshots and restores waited on such a call for good,
// holding their tenant's count (no prune ran) and their agent's stream. A call given up on is also cancelled
// (BlobCallOptions.signal): an S3 request ends at once, and a file:// write that hung in the kernel is not made
// visible when it returns.
import {
  type BlobCallOptions,
  type BlobInfo,
  type BlobStore,
  type GetOptions,
  RepositoryError,
} from "@dumont/repository";

/**
 * How long one call of a tenant's blob store may take: ten times what writing a 32 MiB pack takes at 1 MB/s,
 * and under OPERATION_SILENCE_MS, so a restore whose read hangs fails naming the store, not its silent agent
 * (which waits for the chunks).
 */
export const STORE_CALL_DEADLINE_MS = 5 * 60 * 1000;

/**
 * How many calls given up on may still be running in the blob store before no new call is started. A call on a
 * `file://` store holds one of libuv's threads until it returns, and a mount that stopped answering never
 * returns it: without a limit each operation tried would take one more, until the control plane's file
 * reads and writes, and its DNS lookups, all queued behind them (the database, the API and the agents' streams
 * with them). The control plane runs 16 such threads (bin/dumont.cjs). What this bounds is the operations tried
 * once the store is known to hang: the calls already under way when it stopped answering (a snapshot's few
 * uploads, an index load's 8 reads) each hold a thread until their deadline shows them hung, and after.
 */
export const STORE_CALLS_UNRETURNED_MAX = 4;

/**
 * The calls of a blob store given up on that have not returned yet, counted across every tenant's store of one
 * control plane (they share the one root, and one hung mount hangs them all). At the limit a new call fails at
 * once; the count falls, and calls start again, as the old ones return.
 */
export class UnreturnedCalls {
  private count = 0;

  constructor(
    readonly max = STORE_CALLS_UNRETURNED_MAX,
    /** Told the count whenever it changes (the dumont_blob_store_calls_unreturned gauge). */
    private readonly onChange: (count: number) => void = () => {},
  ) {}

  get size(): number {
    return this.count;
  }

  get full(): boolean {
    return this.count >= this.max;
  }

  /** Counts `running`, a call given up on, until it settles. */
  add(running: Promise<unknown>): void {
    this.count++;
    this.onChange(this.count);
    const done = () => {
      this.count--;
      this.onChange(this.count);
    };
    void running.then(done, done);
  }
}

/** A signal aborted with either: the deadline's, and the caller's where it gave one. */
function either(own: AbortSignal, caller: AbortSignal | undefined): AbortSignal {
  return caller ? AbortSignal.any([own, caller]) : own;
}

/** Where repository locks live (lock.ts): see DeadlineBlobStore.delete. */
const LOCKS_PREFIX = "locks/";

/**
 * Every call of BlobStore is declared here (Record<keyof BlobStore, …>): an optional call added to BlobStore and
 * not passed on here would be one the repository silently never made through the control plane.
 */
export class DeadlineBlobStore implements BlobStore, Record<keyof BlobStore, unknown> {
  readonly url: string;
  readonly allocate: BlobStore["allocate"];
  readonly openWriter: BlobStore["openWriter"];
  readonly removeAbandoned: BlobStore["removeAbandoned"];
  readonly syncEntries: BlobStore["syncEntries"];
  /**
   * Writes and deletes given up on that are still running in the store: cancelled, but a PUT whose whole body S3
   * had taken may still land after its caller failed (see `delete`).
   */
  private readonly abandoned = new Set<Promise<void>>();

  private readonly deadlineMs: number;
  private readonly unreturned: UnreturnedCalls;

  constructor(
    private readonly store: BlobStore,
    options: {
      /** How long one call may take (STORE_CALL_DEADLINE_MS). */
      deadlineMs?: number;
      /** Calls given up on and still running, shared with the control plane's other stores; a count of its own if left out. */
      unreturned?: UnreturnedCalls;
    } = {},
  ) {
    this.deadlineMs = options.deadlineMs ?? STORE_CALL_DEADLINE_MS;
    this.unreturned = options.unreturned ?? new UnreturnedCalls();
    this.url = store.url;
    // The optional calls only where the store has them: the repository takes their presence as a choice (a pack
    // streamed through openWriter, or put from memory that allocate gave).
    const { allocate, openWriter, removeAbandoned, syncEntries } = store;
    this.allocate = allocate && ((size) => allocate.call(store, size));
    this.openWriter =
      openWriter &&
      (async (key) => {
        // One signal for the writer's life: any of its calls given up on cancels the object (no commit lands).
        const cancel = new AbortController();
        const writer = await this.timed(
          `opening ${key} to write`,
          (signal) => openWriter.call(store, key, { signal }),
          // Opened after all, once given up on (a mount that hung and came back): dropped, or its temp file, its
          // handle and its staging memory stayed until the process ended.
          { changes: true, cancel, late: (opened) => void opened.abort().catch(() => {}) },
        );
        return {
          write: (data) => this.timed(`writing ${key}`, () => writer.write(data), { changes: true, cancel }),
          commit: () => this.timed(`committing ${key}`, () => writer.commit(), { changes: true, cancel }),
          abort: () => this.timed(`dropping ${key}`, () => writer.abort(), { changes: true }),
        };
      });
    this.removeAbandoned =
      removeAbandoned &&
      ((prefix, options) =>
        this.timed(
          `removing what interrupted writes left under ${prefix}`,
          () => removeAbandoned.call(store, prefix, options),
          { changes: true },
        ));
    this.syncEntries =
      syncEntries &&
      ((keys) =>
        this.timed(`making ${keys.length} objects' names durable`, () => syncEntries.call(store, keys), {
          changes: true,
        }));
  }

  /**
   * The caller's own signal is not passed on to a write: cancelled so, a PUT whose body S3 had taken may still
   * land, and only one given up on here is kept in `abandoned` for a lock's removal to wait for (see `delete`).
   * It runs to its end or its deadline. Reads take the caller's signal as well as the deadline's.
   */
  put(
    key: string,
    data: Buffer | readonly Buffer[],
    options?: { ifAbsent?: boolean } & BlobCallOptions,
  ): Promise<boolean> {
    return this.timed(
      `writing ${key}`,
      (signal) => this.store.put(key, data, { ifAbsent: options?.ifAbsent, signal }),
      {
        changes: true,
      },
    );
  }

  get(key: string, options: GetOptions = {}): Promise<Buffer> {
    return this.timed(`reading ${key}`, (signal) =>
      this.store.get(key, { ...options, signal: either(signal, options.signal) }),
    );
  }

  /**
   * A read given up on may still fill `into` later, when its caller has handed that buffer on: only the reads of
   * the restore that failed with it use those buffers (a pool of its own), and the agent checks every chunk.
   */
  getRange(key: string, offset: number, length: number, into?: Buffer, options: BlobCallOptions = {}): Promise<Buffer> {
    return this.timed(`reading ${length} bytes of ${key}`, (signal) =>
      this.store.getRange(key, offset, length, into, { signal: either(signal, options.signal) }),
    );
  }

  stat(key: string, options: BlobCallOptions = {}): Promise<BlobInfo | undefined> {
    return this.timed(`looking up ${key}`, (signal) =>
      this.store.stat(key, { signal: either(signal, options.signal) }),
    );
  }

  async *list(prefix: string, options: BlobCallOptions = {}): AsyncIterable<BlobInfo> {
    const cancel = new AbortController();
    const listing = this.store.list(prefix, { signal: either(cancel.signal, options.signal) })[Symbol.asyncIterator]();
    try {
      for (;;) {
        const next = await this.timed(`listing ${prefix}`, () => listing.next(), { cancel });
        if (next.done) return;
        yield next.value;
      }
    } finally {
      // Not waited for: after a call that hung it would wait as long.
      void listing.return?.().catch(() => undefined);
    }
  }

  /**
   * A lock is deleted only once no write given up on can still land. A writer releases its lock when it fails,
   * and a prune that then took the repository could delete packs which a snapshot record still being written
   * (its put given up on, not over) names: the record, landing later, would list a snapshot without its data.
   * Held so, the lock goes when those writes end, or, if they never do, is stale as any lock left behind.
   */
  delete(key: string): Promise<void> {
    const lock = key.startsWith(LOCKS_PREFIX);
    const before = lock && this.abandoned.size > 0 ? [...this.abandoned] : [];
    return this.timed(
      `deleting ${key}`,
      async (signal) => {
        await Promise.all(before);
        // A lock's removal given up on is not cancelled: landing late, it still frees the repository.
        await this.store.delete(key, lock ? {} : { signal });
      },
      {
        changes: true,
        // A lock's removal is started even while calls are not returning: refused, a prune's lock (held by this
        // live process, so not stale at once) would keep the tenant's snapshots out for 30 minutes after the
        // store came back.
        refusable: !lock,
      },
    );
  }

  close(): Promise<void> {
    return this.store.close();
  }

  /**
   * `call`, failed as "unavailable" (UNAVAILABLE at the API, as an S3 request past its retries) if it has not
   * settled within the deadline, and then cancelled: `cancel` (the call's own unless given: a writer's or a
   * listing's, shared by its calls) is aborted, and its signal is what `call` passes to the store. A call given
   * up on is counted in `unreturned` until it settles, and one that `changes` the store is kept in `abandoned` as
   * well. While `unreturned` is full no call is started, unless it is not `refusable`.
   */
  private timed<T>(
    what: string,
    call: (signal: AbortSignal) => Promise<T>,
    options: {
      changes?: boolean;
      refusable?: boolean;
      cancel?: AbortController;
      /** Given what the call returns if it returns after it was given up on (what it holds is then this side's to free). */
      late?: (result: T) => void;
    } = {},
  ): Promise<T> {
    const { changes = false, refusable = true, cancel = new AbortController() } = options;
    if (refusable && this.unreturned.full) {
      return Promise.reject(
        new RepositoryError(
          "unavailable",
          `${this.url}: ${what} not started: ${this.unreturned.size} earlier calls to the blob store were given up ` +
            `on after ${this.deadlineMs / 1000} s and have not returned yet, and no more are started until they ` +
            "do (each may hold one of the control plane's I/O threads). The store may be hung (a mount that " +
            "stopped answering, an unreachable endpoint): check it; calls start again once those return",
        ),
      );
    }
    return new Promise<T>((resolve, reject) => {
      const running = call(cancel.signal);
      const timer = setTimeout(() => {
        cancel.abort();
        const settled = running.then(
          (result) => options.late?.(result),
          () => undefined,
        );
        this.unreturned.add(settled);
        if (changes) {
          this.abandoned.add(settled);
          void settled.then(() => this.abandoned.delete(settled));
        }
        reject(
          new RepositoryError(
            "unavailable",
            `${this.url}: ${what} did not finish in ${this.deadlineMs / 1000} s; gave up on it. The store may ` +
              "be hung (a mount that stopped answering, an unreachable endpoint): check it, then try again",
          ),
        );
      }, this.deadlineMs);
      timer.unref(); // the call's caller waits on it; a timer alone keeps nothing running
      void running.then(resolve, reject).finally(() => clearTimeout(timer));
    });
  }
}
