// GPU and host metrics for the agent: what the session sends in Hello and every telemetry interval.
export { createTelemetryCollector, type TelemetryCollector, type TelemetryOptions } from "./collector.js";
export { NVIDIA_SMI_QUERY_FIELDS, type ParsedGpu, parseNvidiaSmiCsv } from "./nvidia-smi-csv.js";
