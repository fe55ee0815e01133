// What a user is told to do when a workspace's manifest is too large for one snapshot (said by the repository
// and by the agent), and the sizes of a manifest's parts. Constants only, so the agent's session code can import
// them without loading the repository.
export const SMALLER_SNAPSHOT_ADVICE =
  "snapshot a smaller directory, or leave caches, datasets and installed dependencies out of it (list them in " +
  "its .dumontignore, or pass --exclude)";

/**
 * A manifest is stored in parts of about this many plain bytes (about 12,000 files each), so no object nears the
 * 64 MiB cap and each part fits one stream message. The parts, in order, are the manifest; see FORMAT.md.
 */
export const MANIFEST_PART_BYTES = 2 * 1024 * 1024;
/**
 * The most plain bytes the parts of one manifest hold together: over a million files (~200 bytes each with a
 * short path; 1,000,000 files measured 200 MB, 101 parts, sealed and opened in about 4 s each, ~1 GiB of heap).
 */
export const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;
/** The most parts one manifest has (a snapshot record lists them; MAX_MANIFEST_BYTES is reached long before). */
export const MAX_MANIFEST_PARTS = 256;
/** The most bytes the parts of a manifest of MAX_MANIFEST_BYTES seal to (a few bytes more a part). */
export const MAX_SEALED_MANIFEST_BYTES = MAX_MANIFEST_BYTES + MAX_MANIFEST_PARTS * 1024;

/**
 * The most bytes any object but a pack takes in a store (config, locks, snapshot records, manifest parts and index
 * objects: at most 64 MiB sealed, plus the envelope). Read whole, an object over it is refused before any of it is
 * read (BlobStore.get's maxBytes): a file of GiBs under snapshots/ was read into memory by every listing.
 */
export const MAX_STORED_OBJECT_BYTES = 64 * 1024 * 1024 + 64;

/**
 * The most chunk ids one offer (SnapshotOffer) may carry. The agent offers OFFER_BATCH (4,096) at a time; a
 * message's worth (~480,000 ids, ~70 MB of heap once each is a Buffer) would let an agent that offers and never
 * reads its answers pin gigabytes of the control plane before its stream is paused.
 */
export const MAX_OFFER_CHUNK_IDS = 16_384;

/**
 * The most chunk ids one restore request (RestoreChunkRequest) may carry; the control plane refuses more. The
 * agent asks in requests of at most RESTORE_REQUEST_IDS (a window of 16,384 one-chunk files, or 1 GiB of
 * large ones, needs ~20,000), so four being answered hold ~10 MB of ids here rather than a message's worth each
 * (~490,000 ids, ~65 MB as held).
 */
export const MAX_RESTORE_REQUEST_IDS = 65_536;
/** The most chunk ids the agent puts in one restore request (a larger window is asked for in several). */
export const RESTORE_REQUEST_IDS = 16_384;
