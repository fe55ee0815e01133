// Host liveness and (later) failover of the instances on lost hosts.
export { HostLiveness, type HostLivenessOptions } from "./host-liveness.js";
