// Snapshot objects: `snapshots/<id>` holds the sealed record; its id is the SHA-256 of the sealed bytes.
import { RepositoryError } from "./errors.js";
import { MAX_MANIFEST_PARTS } from "./limits.js";
import type { ManifestTotals } from "./manifest.js";
import { isObjectId, ObjectKind, openJson, sealJson, sha256 } from "./sealing.js";
import type { SnapshotStats } from "./transfer.js";

export interface SnapshotRecord {
  id: string;
  time: string;
  workspace: string;
  epoch: number;
  tenant: string;
  hostname?: string;
  source?: string;
  /**
   * Ids (SHA-256 of the sealed bytes) of the objects `manifests/<id>` holding the manifest's parts, in order:
   * one for most snapshots (a version 1 record's `manifest`), more for one of over ~12,000 files.
   */
  manifests: string[];
  totals: ManifestTotals;
  stats?: SnapshotStats;
  /**
   * The snapshot this one was made from by `repair-snapshots`, without the files whose data is gone: absent in a
   * snapshot as taken.
   */
  repairedFrom?: string;
}

export function snapshotKey(id: string): string {
  return `snapshots/${id}`;
}

export function manifestKey(id: string): string {
  return `manifests/${id}`;
}

/**
 * Seals a record. One manifest part is written as version 1 (`manifest`: its id), which every reader opens;
 * several as version 2 (`manifests`: their ids), which a reader from before manifest parts refuses as an
 * unknown layout rather than restore part of a snapshot.
 */
export function sealSnapshotRecord(key: Buffer, record: Omit<SnapshotRecord, "id">): { id: string; sealed: Buffer } {
  const { manifests, ...rest } = record;
  const value =
    manifests.length === 1 ? { version: 1, ...rest, manifest: manifests[0] } : { version: 2, ...rest, manifests };
  const sealed = sealJson(key, ObjectKind.snapshot, value);
  return { id: sha256(sealed).toString("hex"), sealed };
}

export function openSnapshotRecord(key: Buffer, id: string, sealed: Buffer): SnapshotRecord {
  const what = `snapshot ${id}`;
  if (sha256(sealed).toString("hex") !== id) throw new RepositoryError("corrupt", `${what} does not match its id`);
  const value = openJson(key, ObjectKind.snapshot, sealed, what);
  const layout = recordLayout(value);
  if (typeof layout === "string") throw new RepositoryError("corrupt", `${what} has an unknown layout (${layout})`);
  const { version: _version, manifest: _manifest, manifests: _manifests, ...rest } = layout.value;
  return { ...(rest as unknown as Omit<SnapshotRecord, "id" | "manifests">), manifests: layout.manifests, id };
}

/**
 * The record's fields checked against its layout (FORMAT.md), or the first that is not as it should be: what
 * opened under the key is still only JSON, and every reader (listing, the control plane's catalogue, the CLIs'
 * tables) takes these fields as their types.
 */
function recordLayout(value: unknown): { value: Record<string, unknown>; manifests: string[] } | string {
  if (!isObject(value)) return "not an object";
  const manifests =
    value.version === 1 && typeof value.manifest === "string"
      ? [value.manifest]
      : value.version === 2 && Array.isArray(value.manifests)
        ? (value.manifests as unknown[])
        : undefined;
  if (!manifests) return "version, manifest";
  if (manifests.length === 0 || manifests.length > MAX_MANIFEST_PARTS) return "manifests";
  if (!manifests.every((m) => typeof m === "string" && isObjectId(m))) return "manifests";
  // Parts hold distinct paths, so no two are the same object: a record naming one twice is not a writer's.
  if (new Set(manifests).size !== manifests.length) return "manifests";
  for (const field of ["time", "workspace", "tenant"]) if (typeof value[field] !== "string") return field;
  for (const field of ["hostname", "source"]) {
    if (value[field] !== undefined && typeof value[field] !== "string") return field;
  }
  if (value.repairedFrom !== undefined && !(typeof value.repairedFrom === "string" && isObjectId(value.repairedFrom))) {
    return "repairedFrom";
  }
  if (!isCount(value.epoch)) return "epoch";
  const { totals, stats } = value;
  if (!isObject(totals) || !TOTALS.every((f) => isCount(totals[f]))) return "totals";
  if (stats !== undefined && !statsLayout(stats)) return "stats";
  return { value, manifests: manifests as string[] };
}

const TOTALS = ["files", "dirs", "symlinks", "bytes", "chunks"] as const;
const STATS = ["files", "bytesRead", "bytesNew", "bytesStored", "chunksNew"] as const;

function statsLayout(stats: unknown): boolean {
  if (!isObject(stats) || !STATS.every((f) => isCount(stats[f]))) return false;
  if (typeof stats.seconds !== "number" || !(stats.seconds >= 0) || !Number.isFinite(stats.seconds)) return false;
  if (stats.filesSkipped !== undefined && !isCount(stats.filesSkipped)) return false;
  const { skipped } = stats;
  return (
    skipped === undefined ||
    (Array.isArray(skipped) &&
      skipped.every((e) => isObject(e) && typeof e.path === "string" && typeof e.reason === "string"))
  );
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}
