// The typed schema kysely checks our queries against. Migrations (frozen) create it.

import type { SkippedEntry } from "@dumont/repository";
import type { ColumnType, Generated, Insertable, Selectable } from "kysely";

type Timestamp = ColumnType<Date, Date | string, Date | string>;
/** bigint columns: both drivers are set to parse int8 as a JS number (our values stay below 2^53). */
type BigIntColumn = ColumnType<number, number | bigint | string, number | bigint | string>;
/** Columns with a database default (Generated<ColumnType<…>> would leak the wrapper into selects). */
type GeneratedTimestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type GeneratedBigInt = ColumnType<number, number | undefined, number>;

export interface TenantsTable {
  id: string;
  name: string;
  created_at: GeneratedTimestamp;
}

export interface ApiKeysTable {
  id: string;
  tenant_id: string;
  /** consumer | provider | admin */
  role: string;
  /** sha256 of the secret part; the key itself is shown once and never stored. */
  secret_hash: string;
  label: string;
  created_at: GeneratedTimestamp;
  revoked_at: Timestamp | null;
  /** Null: never. */
  expires_at: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
  /** When an API call last carried it, to the minute (KeyUses); null: never. */
  last_used_at: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
}

export interface JoinTokensTable {
  /** sha256 of the token; the token itself is shown once. */
  token_hash: string;
  tenant_id: string;
  created_at: GeneratedTimestamp;
  expires_at: Timestamp;
  used_at: Timestamp | null;
  used_by_host: string | null;
  /** The API key (id) it was made with: the token works only while that key does; null before the column. */
  created_by_key: string | null;
}

export interface HostsTable {
  id: string;
  tenant_id: string;
  name: string;
  hostname: string;
  /** online | lost */
  status: string;
  agent_version: string;
  protocol_version: Generated<number>;
  simulated: Generated<boolean>;
  cert_serial: string;
  /** A renewed certificate's serial, accepted beside cert_serial until first presented (then it replaces it). */
  next_cert_serial: ColumnType<string | null, string | null | undefined, string | null>;
  /** When the certificate the host last presented (or was enrolled with) expires; null if not seen since. */
  cert_expires_at: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
  enrolled_at: GeneratedTimestamp;
  last_seen_at: Timestamp | null;
  /** Latest telemetry as JSON (GPU list, cpu, memory, disk). */
  latest: ColumnType<HostLatestState | null, string | null, string | null>;
}

export interface HostLatestState {
  gpus: GpuState[];
  cpu: { cores: number; utilizationPercent: number | null };
  memory: { totalBytes: number; usedBytes: number };
  disk: { totalBytes: number; usedBytes: number };
}

export interface GpuState {
  index: number;
  uuid: string;
  model: string;
  memoryTotalMiB: number | null;
  memoryUsedMiB: number | null;
  utilizationPercent: number | null;
  temperatureC: number | null;
  powerW: number | null;
}

export interface HostMetricsTable {
  id: GeneratedBigInt;
  host_id: string;
  at: Timestamp;
  /** raw | 1m */
  resolution: string;
  cpu_percent: number | null;
  memory_used_bytes: BigIntColumn;
  disk_used_bytes: BigIntColumn;
  gpus: ColumnType<GpuSampleRow[], string, string>;
}

export interface GpuSampleRow {
  index: number;
  utilizationPercent: number | null;
  memoryUsedMiB: number | null;
  temperatureC: number | null;
  powerW: number | null;
}

export interface HostEventsTable {
  id: GeneratedBigInt;
  host_id: string;
  kind: string;
  message: string;
  at: GeneratedTimestamp;
}

export interface ControlPlaneStateTable {
  key: string;
  value: string;
}

export interface TenantKeysTable {
  tenant_id: string;
  wrapped_key: string;
  created_at: GeneratedTimestamp;
}

export interface SnapshotsTable {
  id: string;
  tenant_id: string;
  host_id: string;
  workspace_id: string;
  path: string;
  epoch: BigIntColumn;
  created_at: GeneratedTimestamp;
  files: BigIntColumn;
  bytes_read: BigIntColumn;
  bytes_new: BigIntColumn;
  bytes_stored: BigIntColumn;
  /** The bytes of its files (its record's totals); null for rows from before this column, shown as unknown. */
  bytes_total: ColumnType<number | null, number | bigint | string | null | undefined, number | bigint | string | null>;
  chunks_new: BigIntColumn;
  seconds: number;
  /** Entries of the directory the snapshot left out (see api.Snapshot.files_skipped). */
  files_skipped: ColumnType<number, number | undefined, number>;
  /** The first MAX_SKIPPED_LISTED of them (jsonb). */
  skipped: ColumnType<SkippedEntry[], string | undefined, string>;
  /** The snapshot this one was made from by repair-snapshots (its record's repairedFrom); null for any other. */
  repaired_from: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface Database {
  tenants: TenantsTable;
  api_keys: ApiKeysTable;
  join_tokens: JoinTokensTable;
  hosts: HostsTable;
  host_metrics: HostMetricsTable;
  host_events: HostEventsTable;
  control_plane_state: ControlPlaneStateTable;
  tenant_keys: TenantKeysTable;
  snapshots: SnapshotsTable;
}

export type SnapshotRow = Selectable<SnapshotsTable>;

export type HostRow = Selectable<HostsTable>;
export type NewHostRow = Insertable<HostsTable>;
export type HostMetricRow = Selectable<HostMetricsTable>;
