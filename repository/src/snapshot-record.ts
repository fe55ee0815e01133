// Snapshot objects: `snapshots/<id>` holds the sealed record; its id is the SHA-256 of the sealed bytes.
import { RepositoryError } from "./errors.js";
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
  /** Id (SHA-256 of the sealed bytes) of the object `manifests/<id>`. */
  manifest: string;
  totals: ManifestTotals;
  stats?: SnapshotStats;
}

export function snapshotKey(id: string): string {
  return `snapshots/${id}`;
}

export function manifestKey(id: string): string {
  return `manifests/${id}`;
}

export function sealSnapshotRecord(key: Buffer, record: Omit<SnapshotRecord, "id">): { id: string; sealed: Buffer } {
  const sealed = sealJson(key, ObjectKind.snapshot, { version: 1, ...record });
  return { id: sha256(sealed).toString("hex"), sealed };
}

export function openSnapshotRecord(key: Buffer, id: string, sealed: Buffer): SnapshotRecord {
  const what = `snapshot ${id}`;
  if (sha256(sealed).toString("hex") !== id) throw new RepositoryError("corrupt", `${what} does not match its id`);
  const value = openJson(key, ObjectKind.snapshot, sealed, what) as Record<string, unknown> & { version?: unknown };
  if (
    value.version !== 1 ||
    typeof value.time !== "string" ||
    typeof value.workspace !== "string" ||
    typeof value.manifest !== "string" ||
    typeof value.epoch !== "number"
  ) {
    throw new RepositoryError("corrupt", `${what} has an unknown layout`);
  }
  const { version: _version, ...rest } = value;
  return { ...(rest as unknown as Omit<SnapshotRecord, "id">), id };
}
