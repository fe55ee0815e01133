// Every migration, in order. Names are timestamps; a merged migration is never edited.
import type { Migration } from "kysely";
import * as foundation from "./2026_11_23_00_00_00_foundation.js";
import * as snapshots from "./2026_11_23_01_00_00_snapshots.js";
import * as snapshotSkipped from "./2026_12_02_00_00_00_snapshot_skipped.js";
import * as hostCertRenewal from "./2026_12_04_00_00_00_host_cert_renewal.js";
import * as hostCertExpiry from "./2026_12_04_01_00_00_host_cert_expiry.js";
import * as apiKeyExpiry from "./2026_12_04_02_00_00_api_key_expiry.js";
import * as apiKeyLastUsed from "./2026_12_04_03_00_00_api_key_last_used.js";
import * as snapshotBytesTotal from "./2026_12_04_04_00_00_snapshot_bytes_total.js";
import * as snapshotRepairedFrom from "./2026_12_07_00_00_00_snapshot_repaired_from.js";
import * as joinTokenKey from "./2026_12_07_01_00_00_join_token_key.js";

export const migrations: Record<string, Migration> = {
  "2026_11_23_00_00_00_foundation": foundation,
  "2026_11_23_01_00_00_snapshots": snapshots,
  "2026_12_02_00_00_00_snapshot_skipped": snapshotSkipped,
  "2026_12_04_00_00_00_host_cert_renewal": hostCertRenewal,
  "2026_12_04_01_00_00_host_cert_expiry": hostCertExpiry,
  "2026_12_04_02_00_00_api_key_expiry": apiKeyExpiry,
  "2026_12_04_03_00_00_api_key_last_used": apiKeyLastUsed,
  "2026_12_04_04_00_00_snapshot_bytes_total": snapshotBytesTotal,
  "2026_12_07_00_00_00_snapshot_repaired_from": snapshotRepairedFrom,
  "2026_12_07_01_00_00_join_token_key": joinTokenKey,
};
