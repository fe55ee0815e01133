// Reads the CSV that `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY_FIELDS> --format=csv,noheader,nounits` prints.

/** The fields we ask nvidia-smi for, in the order the parser expects them. */
export const NVIDIA_SMI_QUERY_FIELDS = [
  "index",
  "uuid",
  "name",
  "driver_version",
  "memory.total",
  "memory.used",
  "utilization.gpu",
  "temperature.gpu",
  "power.draw",
  "mig.mode.current",
] as const;

/** One GPU as nvidia-smi reported it; a value the driver could not give is undefined (shaped like GpuInfo). */
export interface ParsedGpu {
  index: number;
  uuid: string;
  model: string;
  driverVersion: string;
  memoryTotalMib?: bigint;
  memoryUsedMib?: bigint;
  utilizationPercent?: number;
  temperatureC?: number;
  powerW?: number;
  migMode?: string;
}

const NAME_COLUMN = NVIDIA_SMI_QUERY_FIELDS.indexOf("name");

// The driver writes "[N/A]", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]", ... in
// brackets, and a few fields (temperature.memory) as a bare "N/A". None of them is a value.
function driverText(raw: string): string | undefined {
  const text = raw.trim();
  if (text === "" || text === "N/A" || (text.startsWith("[") && text.endsWith("]"))) return undefined;
  return text;
}

// Anything that is not a finite number ("ERR!", a future non-value form) is reported as unknown, never NaN.
function driverNumber(raw: string): number | undefined {
  const text = driverText(raw);
  if (text === undefined) return undefined;
  const value = Number(text);
  return Number.isFinite(value) ? value : undefined;
}

function driverMib(raw: string): bigint | undefined {
  const value = driverNumber(raw);
  return value === undefined || value < 0 ? undefined : BigInt(Math.round(value));
}

function parseLine(line: string): ParsedGpu {
  let cells = line.split(", ");
  const extra = cells.length - NVIDIA_SMI_QUERY_FIELDS.length;
  if (extra < 0) {
    throw new Error(
      `nvidia-smi printed ${cells.length} of the ${NVIDIA_SMI_QUERY_FIELDS.length} fields asked for: "${line}"`,
    );
  }
  if (extra > 0) {
    // Only the product name is free text; a ", " inside it must not shift the columns after it.
    const name = cells.slice(NAME_COLUMN, NAME_COLUMN + extra + 1).join(", ");
    cells = [...cells.slice(0, NAME_COLUMN), name, ...cells.slice(NAME_COLUMN + extra + 1)];
  }
  const [index, uuid, name, driverVersion, memoryTotal, memoryUsed, utilization, temperature, power, migMode] = cells;
  const gpuIndex = driverNumber(index);
  if (gpuIndex === undefined || !Number.isInteger(gpuIndex) || gpuIndex < 0) {
    throw new Error(`nvidia-smi printed a GPU without a valid index: "${line}"`);
  }
  return {
    index: gpuIndex,
    uuid: driverText(uuid) ?? "",
    model: driverText(name) ?? "",
    driverVersion: driverText(driverVersion) ?? "",
    memoryTotalMib: driverMib(memoryTotal),
    memoryUsedMib: driverMib(memoryUsed),
    utilizationPercent: driverNumber(utilization),
    temperatureC: driverNumber(temperature),
    powerW: driverNumber(power),
    migMode: driverText(migMode),
  };
}

/**
 * Parses nvidia-smi's query output, one GPU per line. Throws on a line that does not have the fields asked
 * for (an error message printed with exit status 0, or a driver whose output changed), naming the line.
 */
export function parseNvidiaSmiCsv(text: string): ParsedGpu[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .map(parseLine);
}
