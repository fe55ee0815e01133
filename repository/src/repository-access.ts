// What the writer and the chunk source need of a Repository. They take this rather than the class, so the
// repository module (which creates them) is the only one that depends on the other.
import type { BlobStore } from "./blob-store.js";
import type { SnapshotRecord } from "./snapshot-record.js";

export interface RepositoryAccess {
  readonly store: BlobStore;
  /** The repository (tenant) key. */
  readonly key: Buffer;
  /** A snapshot by id, unique prefix, or `latest`. */
  findSnapshot(idOrPrefix: string): Promise<SnapshotRecord>;
  readManifestBlobs(record: SnapshotRecord): Promise<Buffer[]>;
}
