// @dumont/repository: the self-describing snapshot repository (packs, index objects, manifests, snapshots,
// AES-256-GCM + LZ4 sealing) over a BlobStore (file:// or s3://). Shared by the agent's direct mode and the
// control plane. The format is documented in ../FORMAT.md.

export { alignedBuffer, alignedMemory, isPageAligned, PAGE } from "./aligned-memory.js";
export { enableArrayBufferTransferInWorkers } from "./array-buffer-transfer.js";
export { readSecretFile, SecretFileModeError, syncDirectory, writeFileAtomic } from "./atomic-file.js";
export type { BlobCallOptions, BlobInfo, BlobStore, BlobWriter, GetOptions } from "./blob-store.js";
export { BufferPool } from "./buffer-pool.js";
export {
  type AffectedFile,
  type CheckOptions,
  type CheckProblem,
  type CheckProblemKind,
  type CheckReport,
  checkRepository,
  describeFiles,
} from "./check.js";
export {
  type ChunkCodec,
  type ChunkCodecDeps,
  createChunkCodec,
  type OpenedChunkBatch,
  type SealedChunkBatch,
} from "./chunk-codec.js";
export { type ChunkSourceOptions, RepositoryChunkSource } from "./chunk-source.js";
export { copyBytes } from "./copy-bytes.js";
export { counted, firstFew } from "./counted.js";
export {
  chunkArrivedDamaged,
  isObjectError,
  isRepositoryError,
  RepositoryError,
  type RepositoryErrorCode,
  unwritableReason,
} from "./errors.js";
export { FileBlobStore } from "./file-blob-store.js";
export { IdSet } from "./id-set.js";
export { IdTable } from "./id-table.js";
export { generateRepositoryKey, KEY_LENGTH, parseRepositoryKey } from "./key.js";
export { MAX_OFFER_CHUNK_IDS, MAX_RESTORE_REQUEST_IDS, RESTORE_REQUEST_IDS } from "./limits.js";
export { type ListedEntry, listedEntry, listingLine, mtimeText } from "./listing.js";
export { acquireLock, type HeldLock, LOCK_STALE_AFTER_MS } from "./lock.js";
export {
  createLz4Wasm,
  LZ4_WASM,
  type Lz4Decoder,
  type Lz4Encoder,
  type Lz4WasmModules,
} from "./lz4-wasm.js";
export {
  assertRestorable,
  cutManifestParts,
  MANIFEST_PART_BYTES,
  MAX_CHUNK_LENGTH,
  MAX_MANIFEST_BYTES,
  MAX_MANIFEST_PARTS,
  MAX_PART_PLAIN_BYTES,
  type Manifest,
  type ManifestEntries,
  type ManifestEntry,
  type ManifestRoot,
  type ManifestTotals,
  manifestEntryMinBytes,
  manifestPartEntries,
  manifestTooLarge,
  manifestTotals,
  type Ownership,
  openManifest,
  openManifestParts,
  type PlainManifestPart,
  pathHash,
  RestorableCheck,
  type RestorableOptions,
  sealManifest,
  sealManifestPart,
  sealManifestParts,
  symlinkEscapes,
} from "./manifest.js";
export {
  type DiffChange,
  type DiffEntry,
  type DiffSummary,
  diffLine,
  diffManifests,
  diffSummaryLine,
} from "./manifest-diff.js";
export { ManifestPartsReceiver } from "./manifest-parts.js";
export { type MountTables, refuseUnmountedNewRepository } from "./mount-points.js";
export {
  type OpenBlobStoreOptions,
  openBlobStore,
  parseRepositoryUrl,
  type RepositoryLocation,
} from "./open-blob-store.js";
export { indexKey, type PackEntry, type PackIndex, packKey } from "./pack.js";
export {
  checkExcludePatterns,
  checkPathPatterns,
  IGNORE_FILE,
  IncludedSelection,
  MAX_PATH_PATTERN_LENGTH,
  MAX_PATH_PATTERNS,
  nothingIncluded,
  pathMatcher,
  selectIncluded,
} from "./path-patterns.js";
export { type ProcessIdentity, processIsGone, thisProcess } from "./process-identity.js";
export { formatBytes, formatDuration, ProgressMeter, roundSeconds } from "./progress-meter.js";
export {
  emptyPruneReport,
  type ForgetOptions,
  type ForgetReport,
  forgetSnapshots,
  type PruneOptions,
  type PruneReport,
  pruneAfterForget,
  pruneRepository,
} from "./prune.js";
export { type ReadSubset, readSubsetOption } from "./read-subset.js";
export { pathInside, realPath } from "./real-path.js";
export { type RepairIndexOptions, repairIndex } from "./repair-index.js";
export {
  type RepairIndexReport,
  repairIndexAdvice,
  repairIndexText,
  type UnrepairablePack,
} from "./repair-index-report.js";
export { type RepairPacksOptions, repairPacks } from "./repair-packs.js";
export {
  type DamagedChunk,
  damagedPacks,
  emptyRepairPacksReport,
  packRepairMends,
  type RepairedPack,
  type RepairPacksReport,
  repairPacksAdvice,
  repairPacksText,
  type SkippedPack,
} from "./repair-packs-report.js";
export { type RepairSnapshotsOptions, repairSnapshots } from "./repair-snapshots.js";
export {
  emptyRepairSnapshotsReport,
  MAX_REMOVED_LISTED,
  type RemovedFile,
  type RepairedSnapshot,
  type RepairSnapshotsReport,
  repairSnapshotsText,
  type UnrepairableSnapshot,
  unreadableSnapshotAdvice,
} from "./repair-snapshots-report.js";
export {
  type ChunkLocation,
  type LoadIndexOptions,
  Repository,
  type RepositoryConfig,
  RepositoryIndex,
} from "./repository.js";
export {
  DEFAULT_PACK_SIZE,
  RepositoryWriter,
  type RepositoryWriterOptions,
  type WriterStats,
} from "./repository-writer.js";
export {
  hasRetentionRule,
  planRetention,
  type RetentionInput,
  type RetentionPlan,
  type RetentionPolicy,
} from "./retention.js";
export {
  maxAttemptsFromEnv,
  S3BlobStore,
  type S3BlobStoreOptions,
  s3EndpointFromEnv,
} from "./s3-blob-store.js";
export { chunkCodec } from "./sealing.js";
export type { SnapshotRecord } from "./snapshot-record.js";
export { emptyRepositoryStats, type RepositoryStats, repositoryStats, statsText } from "./stats.js";
export { table } from "./text-table.js";
export type {
  ChunkBuffers,
  ChunkSink,
  ChunkSource,
  FetchedChunk,
  GetChunksOptions,
  ManifestPartBlob,
  SealedChunk,
  SkippedEntry,
  SnapshotMeta,
  SnapshotStats,
} from "./transfer.js";
export { MAX_SKIPPED_LISTED, MAX_SKIPPED_REASON, NO_OTHER_COPY, NOT_INDEXED } from "./transfer.js";
