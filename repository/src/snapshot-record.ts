// Snapshot objects: `snapshots/<id>` holds the sealed record; its id is the SHA-256 of the sealed bytes.
import { RepositoryError } from "./errors.js";
import { MAX_MANIFEST_PARTS } from "./limits.js";
import type { ManifestTotals } from "./manifest.js";
import { ObjectKind, openJson, sealJson, sha256 } from "./sealing.js";
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

const HEX_ID = /^[0-9a-f]{64}$/;

export function openSnapshotRecord(key: Buffer, id: string, sealed: Buffer): SnapshotRecord {
  const what = `snapshot ${id}`;
  if (sha256(sealed).toString("hex") !== id) throw new RepositoryError("corrupt", `${what} does not match its id`);
  const value = openJson(key, ObjectKind.snapshot, sealed, what) as Record<string, unknown> & { version?: unknown };
  const manifests =
    value.version === 1 && typeof value.manifest === "string"
      ? [value.manifest]
      : value.version === 2 && Array.isArray(value.manifests)
        ? (value.manifests as unknown[])
        : undefined;
  if (
    !manifests ||
    manifests.length === 0 ||
    manifests.length > MAX_MANIFEST_PARTS ||
    !manifests.every((m) => typeof m === "string" && HEX_ID.test(m)) ||
    typeof value.time !== "string" ||
    typeof value.workspace !== "string" ||
    typeof value.epoch !== "number"
  ) {
    throw new RepositoryError("corrupt", `${what} has an unknown layout`);
  }
  const { version: _version, manifest: _manifest, manifests: _manifests, ...rest } = value;
  return { ...(rest as unknown as Omit<SnapshotRecord, "id" | "manifests">), manifests: manifests as string[], id };
}
