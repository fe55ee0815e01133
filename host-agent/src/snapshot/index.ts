// The agent's snapshot engine: content-defined chunking, sealing in worker threads, the local index, and
// snapshot create/restore through a ChunkSink/ChunkSource (direct mode or the control-plane stream).
export { type ChunkerParams, chunkLengths, DEFAULT_CHUNKER } from "./chunker.js";
export {
  type CreateProgress,
  type CreateSnapshotOptions,
  type CreateSnapshotResult,
  createSnapshot,
} from "./create-snapshot.js";
export {
  createDirectSnapshot,
  type DirectCreateOptions,
  type DirectRepositoryOptions,
  type DirectRestoreOptions,
  defaultStateDir,
  restoreDirectSnapshot,
  withDirectRepository,
} from "./direct-mode.js";
export { LocalIndex, type LocalIndexFile, loadLocalIndex, localIndexPath } from "./local-index.js";
export {
  type DamagedFile,
  RestoreDamagedError,
  RestoreLeftBehindError,
  type RestoreProgress,
  type RestoreSnapshotOptions,
  type RestoreSnapshotResult,
  restoreSnapshot,
} from "./restore-snapshot.js";
export { SnapshotWorkerPool, type WorkerPoolOptions } from "./worker-pool.js";
