// A repository: the config object (with its key check), the index of every pack, and the snapshots.
import { randomBytes } from "node:crypto";
import { type BlobStore, getObject } from "./blob-store.js";
import { type ChunkSourceOptions, RepositoryChunkSource } from "./chunk-source.js";
import { SNAPSHOT_ID_OR_PREFIX } from "./cli-flags.js";
import { isObjectError, isRepositoryError, RepositoryError } from "./errors.js";
import { forEachLimited } from "./for-each-limited.js";
import { assertKey } from "./key.js";
import { MAX_SEALED_MANIFEST_BYTES } from "./limits.js";
import { type Manifest, type ManifestEntry, manifestPartEntries, openManifestParts } from "./manifest.js";
import { indexKey, openIndex, type PackIndex } from "./pack.js";
import type { RepositoryAccess } from "./repository-access.js";
import { RepositoryIndex } from "./repository-index.js";
import { RepositoryWriter, type RepositoryWriterOptions } from "./repository-writer.js";
import { chunkCodec, isObjectId, isRepositoryKey, ObjectKind, openObject, sha256 } from "./sealing.js";
import { manifestKey, openSnapshotRecord, type SnapshotRecord, snapshotKey } from "./snapshot-record.js";

export { type ChunkLocation, RepositoryIndex } from "./repository-index.js";

export const CONFIG_KEY = "config";
const FORMAT = "dumont-repository";
/** What `findSnapshot` (and so every `--id`) takes for the newest snapshot. */
export const LATEST = "latest";

export interface RepositoryConfig {
  format: typeof FORMAT;
  version: 1;
  /** Random, 32 hex characters; names the repository in local indexes. */
  id: string;
  created: string;
  /** The repository id sealed with the key: opening it proves the key is right. */
  keyCheck: string;
}

export interface LoadIndexOptions {
  /** Called for an index object that cannot be read; without it such an object fails the load. */
  onCorrupt?: (key: string, err: RepositoryError) => void;
  /** Called for a name under index/ that no writer gives (isRepositoryKey); it is left out either way. */
  onForeign?: (key: string) => void;
  concurrency?: number;
  /**
   * Brings this (cached) index up to date instead of building a new one: index objects it lacks are read,
   * packs whose index object is gone (pruned) are forgotten. Index objects are immutable, so only new
   * ones cost a read. Loads into one index run one after the other (the later one finds little left to do).
   */
  into?: RepositoryIndex;
}

/** The last load into each cached index (loadIndex `into`): the next waits for it. */
const loadsInto = new WeakMap<RepositoryIndex, Promise<unknown>>();

export class Repository implements RepositoryAccess {
  private constructor(
    readonly store: BlobStore,
    readonly key: Buffer,
    readonly config: RepositoryConfig,
  ) {}

  get id(): string {
    return this.config.id;
  }

  get url(): string {
    return this.store.url;
  }

  static async exists(store: BlobStore): Promise<boolean> {
    return (await store.stat(CONFIG_KEY)) !== undefined;
  }

  /** Opens an existing repository; a missing one or a wrong key fails with a sentence saying so. */
  static async open(store: BlobStore, key: Buffer): Promise<Repository> {
    assertKey(key);
    let raw: Buffer;
    try {
      raw = await getObject(store, CONFIG_KEY);
    } catch (err) {
      if (isRepositoryError(err, "not-found")) {
        const held = await heldWithoutConfig(store);
        if (held) throw withoutConfig(store, held, "nothing there can be read without it");
        throw new RepositoryError("not-initialised", `there is no repository at ${store.url}`, { cause: err });
      }
      throw err;
    }
    let config: RepositoryConfig;
    try {
      config = JSON.parse(raw.toString("utf8")) as RepositoryConfig;
    } catch (err) {
      throw new RepositoryError("corrupt", `${store.url}/${CONFIG_KEY} is not valid JSON`, { cause: err });
    }
    if (
      typeof config !== "object" ||
      config === null ||
      config.format !== FORMAT ||
      config.version !== 1 ||
      typeof config.keyCheck !== "string"
    ) {
      throw new RepositoryError("corrupt", `${store.url} holds an unknown repository format`);
    }
    // Strictly: Node's decoder skips what is not base64, so a damaged key check could still open.
    if (!/^(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(config.keyCheck)) {
      throw new RepositoryError("corrupt", `${store.url}/${CONFIG_KEY} is damaged: its keyCheck is not base64`);
    }
    let proof: Buffer;
    try {
      proof = chunkCodec.openObject(key, ObjectKind.keyCheck, Buffer.from(config.keyCheck, "base64"));
    } catch (err) {
      throw new RepositoryError(
        "wrong-key",
        `the key does not open the repository at ${store.url}: it was created with a different key`,
        { cause: err },
      );
    }
    if (proof.toString("utf8") !== config.id) {
      throw new RepositoryError("corrupt", `the key check of ${store.url} names another repository`);
    }
    return new Repository(store, key, config);
  }

  /**
   * Creates the repository if the location has none, else opens it (and checks the key). A location holding
   * anything but a config is not made a repository over it (withoutConfig says why and what to do), with one
   * exception: a repository whose config alone was lost (deleted by hand, a sync that skipped it), whose objects
   * open with this key, gets a new config (`recreated`): nothing else can be made of it, and its snapshots are
   * readable again. Its id is new, so the local indexes made for the old one are not used.
   */
  static async openOrInit(
    store: BlobStore,
    key: Buffer,
  ): Promise<{ repository: Repository; created: boolean; recreated?: boolean }> {
    assertKey(key);
    if (await Repository.exists(store)) return { repository: await Repository.open(store, key), created: false };
    const held = await heldWithoutConfig(store);
    let recreated = false;
    if (held) {
      // The config may have landed meanwhile: an initialiser racing this one writes it before anything else.
      if (await Repository.exists(store)) return { repository: await Repository.open(store, key), created: false };
      if (!held.sealed || !(await opensWith(store, key, held.sealed))) {
        throw withoutConfig(store, held, "a new repository is not made over what is there");
      }
      recreated = true;
    }
    const id = randomBytes(16).toString("hex");
    const config: RepositoryConfig = {
      format: FORMAT,
      version: 1,
      id,
      created: new Date().toISOString(),
      keyCheck: chunkCodec.sealObject(key, ObjectKind.keyCheck, Buffer.from(id, "utf8")).toString("base64"),
    };
    const created = await store.put(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`), {
      ifAbsent: true,
    });
    // Re-read either way: with a racing initialiser, whichever config landed is the repository.
    return { repository: await Repository.open(store, key), created, ...(recreated && created ? { recreated } : {}) };
  }

  loadIndex(options: LoadIndexOptions = {}): Promise<RepositoryIndex> {
    const { into } = options;
    if (!into) return this.loadIndexNow(new RepositoryIndex(), options);
    // Two operations of one tenant starting together each read every new index object (a GET each on S3).
    const load = (loadsInto.get(into) ?? Promise.resolve())
      .catch(() => {})
      .then(() => this.loadIndexNow(into, options));
    loadsInto.set(into, load);
    return load;
  }

  private async loadIndexNow(index: RepositoryIndex, options: LoadIndexOptions): Promise<RepositoryIndex> {
    // Only packs known before the listing can have vanished: one a writer adds meanwhile is not in it.
    const known = new Set(index.packs.keys());
    const keys: string[] = [];
    for await (const info of this.store.list("index/")) keys.push(info.key);
    const listed = new Set(keys.map((key) => key.slice("index/".length)));
    const gone = [...known].filter((packId) => !listed.has(packId));
    if (gone.length > 0) index.removePacks(gone);
    const fresh = keys.filter((key) => !index.packs.has(key.slice("index/".length)));
    await forEachLimited(fresh, options.concurrency ?? 8, async (key) => {
      const packId = key.slice("index/".length);
      if (!isObjectId(packId)) return options.onForeign?.(key);
      try {
        index.add(openIndex(this.key, await getObject(this.store, key), packId));
      } catch (err) {
        // Gone since the listing (a prune elsewhere deleted its pack): not damage, as for a snapshot record.
        if (isRepositoryError(err, "not-found")) return;
        if (!isObjectError(err)) throw err;
        if (options.onCorrupt) return options.onCorrupt(key, err);
        // What stops every snapshot and restore of the repository until mended: the way out is said with it.
        throw new RepositoryError(
          err.code,
          `${err.message}; \`snapshot repair-index\` rebuilds it from its pack's own header`,
          { cause: err },
        );
      }
    });
    return index;
  }

  async readPackIndex(packId: string): Promise<PackIndex> {
    return openIndex(this.key, await getObject(this.store, indexKey(packId)), packId);
  }

  /**
   * Every readable snapshot, oldest first; unreadable ones go to `onCorrupt` (or fail the call). One whose record
   * is gone by the time it is read was forgotten meanwhile (a forget elsewhere, a retention policy): left out, as
   * a listing a moment later would, not reported as damaged (a check beside a forget named it a problem).
   */
  async listSnapshots(
    options: {
      onCorrupt?: (id: string, err: RepositoryError) => void;
      /** Called for a name under snapshots/ that no writer gives (isRepositoryKey); it is left out either way. */
      onForeign?: (key: string) => void;
    } = {},
  ): Promise<SnapshotRecord[]> {
    const ids: string[] = [];
    for await (const info of this.store.list("snapshots/")) ids.push(info.key.slice("snapshots/".length));
    const records: SnapshotRecord[] = [];
    await forEachLimited(ids, 8, async (id) => {
      if (!isObjectId(id)) return options.onForeign?.(snapshotKey(id));
      try {
        records.push(openSnapshotRecord(this.key, id, await getObject(this.store, snapshotKey(id))));
      } catch (err) {
        if (isRepositoryError(err, "not-found")) return;
        if (options.onCorrupt && isObjectError(err)) options.onCorrupt(id, err);
        else throw err;
      }
    });
    // A repair has the time of the snapshot it repairs, and comes after it: `latest` is the one that restores whole.
    return records.sort(
      (a, b) =>
        a.time.localeCompare(b.time) ||
        Number(a.repairedFrom !== undefined) - Number(b.repairedFrom !== undefined) ||
        a.id.localeCompare(b.id),
    );
  }

  /** Whether snapshot `id` (a full id) is in the repository: its record is there. */
  async hasSnapshot(id: string): Promise<boolean> {
    return (await this.store.stat(snapshotKey(id))) !== undefined;
  }

  /**
   * Finds a snapshot by its id, a unique prefix of it (at least 4 characters), or `latest`: the newest in the
   * repository, whatever workspace it came from (restic's `latest` without filters).
   */
  async findSnapshot(idOrPrefix: string): Promise<SnapshotRecord> {
    if (idOrPrefix === LATEST) return this.newest(await this.listSnapshots());
    const id = await this.resolveSnapshotId(idOrPrefix);
    return openSnapshotRecord(this.key, id, await getObject(this.store, snapshotKey(id)));
  }

  /**
   * The full ids that `ids` (ids, unique prefixes or `latest`) name, given the listing: `all` as listSnapshots gave
   * it, and `unreadable` the ids of records that did not open. `latest` is refused while one does not open (it
   * might be the newest); `verb` completes the advice ("name the snapshot to forget by id").
   */
  async resolveSnapshotIds(
    ids: readonly string[],
    all: readonly SnapshotRecord[],
    unreadable: readonly string[],
    verb: string,
  ): Promise<Set<string>> {
    const named = new Set<string>();
    for (const id of ids) {
      if (id === LATEST && unreadable.length > 0) {
        throw new RepositoryError(
          "corrupt",
          `the record of snapshot ${unreadable[0]} does not open, so which snapshot is the latest cannot be told: ` +
            `name the snapshot to ${verb} by id`,
        );
      }
      named.add(id === LATEST ? this.newest(all).id : await this.resolveSnapshotId(id));
    }
    return named;
  }

  /** The newest of `snapshots` (listSnapshots' order): what `latest` names. */
  newest(snapshots: readonly SnapshotRecord[]): SnapshotRecord {
    const newest = snapshots.at(-1);
    if (!newest) throw new RepositoryError("not-found", `no snapshots in ${this.url}, so none is the latest`);
    return newest;
  }

  /**
   * The whole id of the snapshot an id or a unique prefix of it (at least 4 characters) names, from the listing
   * alone: the record is not opened (a forget can name one that no longer opens).
   */
  async resolveSnapshotId(idOrPrefix: string): Promise<string> {
    const wanted = idOrPrefix.toLowerCase();
    if (!SNAPSHOT_ID_OR_PREFIX.test(wanted)) {
      throw new RepositoryError(
        "invalid-argument",
        `"${idOrPrefix}" is not a snapshot id (4 to 64 hex characters, or ${LATEST})`,
      );
    }
    const matches: string[] = [];
    for await (const info of this.store.list(`snapshots/${wanted}`)) {
      const id = info.key.slice("snapshots/".length);
      if (isObjectId(id)) matches.push(id);
    }
    if (matches.length === 0)
      throw new RepositoryError(
        "not-found",
        `no snapshot ${idOrPrefix} in ${this.url}; \`snapshot list\` shows the snapshots it holds`,
      );
    if (matches.length > 1) {
      throw new RepositoryError(
        "invalid-argument",
        `snapshot id prefix ${idOrPrefix} is ambiguous; give more characters`,
      );
    }
    return matches[0];
  }

  /** The sealed parts of a snapshot's manifest, in order, each checked against its id. */
  async readManifestBlobs(record: SnapshotRecord): Promise<Buffer[]> {
    const blobs: Buffer[] = [];
    let bytes = 0;
    for (const id of record.manifests) {
      const blob = await getObject(this.store, manifestKey(id));
      if (sha256(blob).toString("hex") !== id) {
        throw new RepositoryError("corrupt", `manifest ${id} of snapshot ${record.id} does not match its id`);
      }
      // Stopped as soon as the parts are more than a writer seals, not once all are in memory (a record naming a
      // 64 MiB part 256 times would have held 16 GiB).
      bytes += blob.length;
      if (bytes > MAX_SEALED_MANIFEST_BYTES) {
        throw new RepositoryError(
          "corrupt",
          `the manifest parts of snapshot ${record.id} hold more than the ${MAX_SEALED_MANIFEST_BYTES} bytes a writer seals`,
        );
      }
      blobs.push(blob);
    }
    return blobs;
  }

  async readManifest(record: SnapshotRecord): Promise<Manifest> {
    return openManifestParts(this.key, await this.readManifestBlobs(record), `manifest of snapshot ${record.id}`);
  }

  /**
   * A snapshot's manifest a part at a time (manifestPartEntries): each part is opened as it is reached, so a
   * reader that needs one entry at a time (check, prune) never holds the whole manifest as objects.
   */
  async manifestParts(record: SnapshotRecord): Promise<Iterable<ManifestEntry[]>> {
    return manifestPartEntries(this.key, await this.readManifestBlobs(record), `manifest of snapshot ${record.id}`);
  }

  /**
   * A writer (ChunkSink) over a freshly loaded or given index. The index is read once the writer holds its shared lock, so no prune can remove packs it
   * relies on. `index` is used as given (prune hands in one it has edited), unless `refreshIndex` asks
   * for it to be brought up to date first (a cache kept between snapshots).
   */
  async writer(
    options: RepositoryWriterOptions & { index?: RepositoryIndex; refreshIndex?: boolean } = {},
  ): Promise<RepositoryWriter> {
    const { index, refreshIndex, ...rest } = options;
    return RepositoryWriter.start(
      this,
      () => (index && !refreshIndex ? Promise.resolve(index) : this.loadIndex({ into: index })),
      rest,
    );
  }

  /** A ChunkSource reading packs; unless given, the index loads in the background (its `get` waits for it). */
  async chunkSource(options: ChunkSourceOptions & { index?: RepositoryIndex } = {}): Promise<RepositoryChunkSource> {
    return new RepositoryChunkSource(this, options.index ?? this.loadIndex(), options);
  }
}

/** Where a repository's objects lie (FORMAT.md): a prune deletes under the first, data/. */
const OBJECT_PREFIXES = ["data/", "index/", "manifests/", "snapshots/"] as const;

/** What a location without a config holds: the first key listed, and a sealed object of the repository's. */
interface HeldWithoutConfig {
  first: string;
  /** The first snapshot record or index object listed, if any: what a key is tried on (opensWith). */
  sealed?: { key: string; kind: string };
}

/**
 * What the location holds where a repository's objects go, though it has no config (undefined: nothing, so a
 * repository may be made there). Only those four prefixes, each to its first key: the rest of a directory (a
 * README beside, a root-only lost+found of a fresh filesystem) is neither read nor counted, and nothing under it
 * would ever be deleted.
 */
async function heldWithoutConfig(store: BlobStore): Promise<HeldWithoutConfig | undefined> {
  let first: string | undefined;
  for (const prefix of OBJECT_PREFIXES) {
    for await (const info of store.list(prefix)) {
      first = info.key;
      break;
    }
    if (first !== undefined) break;
  }
  if (first === undefined) return undefined;
  for (const [prefix, kind] of [
    ["snapshots/", ObjectKind.snapshot],
    ["index/", ObjectKind.index],
  ] as const) {
    for await (const info of store.list(prefix)) {
      if (isRepositoryKey(info.key)) return { first, sealed: { key: info.key, kind } };
    }
  }
  return { first };
}

/** Whether the key opens the sealed object (authentication failing says it is another key's, or damaged). */
async function opensWith(store: BlobStore, key: Buffer, sealed: { key: string; kind: string }): Promise<boolean> {
  try {
    openObject(key, sealed.kind, await getObject(store, sealed.key), sealed.key);
    return true;
  } catch (err) {
    if (isObjectError(err)) return false;
    throw err;
  }
}

/**
 * A location with no config that holds something: a repository whose config was lost, or no repository at all.
 * Neither is made a repository over what is there (a first snapshot into a project's directory would put its packs
 * beside the project's files, and a prune would take the files under data/ for leftovers; a config made with
 * another key would lock the repository's own key out).
 */
function withoutConfig(store: BlobStore, held: HeldWithoutConfig, consequence: string): RepositoryError {
  if (held.sealed) {
    return new RepositoryError(
      "corrupt",
      `${store.url} holds a repository's objects (${held.sealed.key}) but no ${CONFIG_KEY}: its config was lost, and ` +
        `${consequence}. Put ${CONFIG_KEY} back from a copy (a backup, or an earlier version of the object); ` +
        "or, with the repository's own key, `snapshot create` makes a new one (it checks that the objects open with " +
        "the key first)",
    );
  }
  return new RepositoryError(
    "invalid-argument",
    `there is no repository at ${store.url}, and it is not empty (it holds ${held.first}): a repository is made ` +
      "only in an empty directory or prefix; give the repository URL of an existing repository, or of an empty " +
      "or new location",
  );
}
