// The public API (dumont.api.v1), re-exported as one namespace: `api.HostService`, `api.Snapshot`, …
export * from "./gen/dumont/api/v1/hosts_pb.js";
export * from "./gen/dumont/api/v1/keys_pb.js";
export * from "./gen/dumont/api/v1/snapshots_pb.js";
