// A stand-in for NVIDIA's nvidia-smi: answers `--query-gpu=<fields> --format=csv[,noheader][,nounits]`
// for any field list (ours and systeminformation's), `-L`, and the bare summary, from a JSON fixture.
// Environment:
//   DUMONT_FAKE_NVIDIA_SMI_FIXTURE  a fixture name in ./fixtures (without .json) or a path; default "demo"
//   DUMONT_FAKE_NVIDIA_SMI_FAIL=1   behave like a host whose driver is not loaded (message, exit 9)
//   DUMONT_FAKE_NVIDIA_SMI_TICK     which entry of a list-valued field to print; default changes every 5 s
// A fixture is { "about", "common"?: {field: value}, "gpus": [{field: value}] }, fields named as in
// `nvidia-smi --help-query-gpu`, values as the driver prints them with nounits ("[N/A]" included); a value
// may be a list, cycled by tick. A test that wants to steer values writes its own fixture file and passes
// its path.
import { readFileSync, realpathSync } from "node:fs";
import path from "node:path";

const FIXTURES_DIR = path.join(path.dirname(realpathSync(process.argv[1])), "fixtures");
const TICK_MS = 5000;

// Aliases nvidia-smi accepts for the same property (nvidia-smi --help-query-gpu).
const ALIASES = { gpu_name: "name", gpu_uuid: "uuid", gpu_bus_id: "pci.bus_id", "pci.bus": "pci.bus_id" };

// Units printed after a value unless `nounits` is given; temperatures are printed bare by the real tool.
const UNITS = [
  [/^memory\./, "MiB"],
  [/^(utilization\.|fan\.speed)/, "%"],
  [/^power\.(draw|limit|default_limit|max_limit|min_limit)/, "W"],
  [/^clocks\./, "MHz"],
];

function fail(message, code) {
  process.stdout.write(`${message}\n`);
  process.exit(code);
}

function loadFixture() {
  const chosen = process.env.DUMONT_FAKE_NVIDIA_SMI_FIXTURE || "demo";
  const file =
    chosen.includes("/") || chosen.endsWith(".json") ? path.resolve(chosen) : path.join(FIXTURES_DIR, `${chosen}.json`);
  let fixture;
  try {
    fixture = JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    // Not a real nvidia-smi message: a broken fixture is a test bug and should say so plainly.
    process.stderr.write(
      `fake nvidia-smi: cannot read fixture ${file} (DUMONT_FAKE_NVIDIA_SMI_FIXTURE): ${error.message}\n`,
    );
    process.exit(3);
  }
  return fixture.gpus.map((gpu, i) => ({ index: String(i), ...fixture.common, ...gpu }));
}

function tick() {
  const forced = process.env.DUMONT_FAKE_NVIDIA_SMI_TICK;
  return forced ? Number.parseInt(forced, 10) : Math.floor(Date.now() / TICK_MS);
}

function fieldValue(gpus, gpu, requested) {
  const field = ALIASES[requested] ?? requested;
  let value = gpu[field];
  if (Array.isArray(value)) value = value[tick() % value.length];
  if (value !== undefined) return String(value);
  if (field === "count") return String(gpus.length);
  if (field === "pci.bus_id")
    return `00000000:${(Number(gpu.index) + 1).toString(16).toUpperCase().padStart(2, "0")}:00.0`;
  if (field === "memory.free") {
    const total = Number(fieldValue(gpus, gpu, "memory.total"));
    const used = Number(fieldValue(gpus, gpu, "memory.used"));
    if (Number.isFinite(total) && Number.isFinite(used)) return String(total - used);
  }
  return "[N/A]";
}

function withUnit(field, value, units) {
  if (!units || value.includes("N/A") || value.startsWith("[")) return value;
  const unit = UNITS.find(([pattern]) => pattern.test(field))?.[1];
  return unit ? `${value} ${unit}` : value;
}

function optionValue(args, names) {
  for (let i = 0; i < args.length; i++) {
    for (const name of names) {
      if (args[i] === name) return args[i + 1] ?? "";
      if (args[i].startsWith(`${name}=`)) return args[i].slice(name.length + 1);
    }
  }
  return undefined;
}

function selectGpus(gpus, args) {
  const ids = optionValue(args, ["-i", "--id"]);
  const wanted = ids?.split(",");
  const selected = wanted ? gpus.filter((gpu) => wanted.includes(gpu.index) || wanted.includes(gpu.uuid)) : gpus;
  if (selected.length === 0) fail("No devices were found", 6);
  return selected;
}

function queryGpus(gpus, args, query) {
  const fields = query.split(",").filter(Boolean);
  const format = (optionValue(args, ["--format"]) ?? "").split(",");
  if (fields.length === 0 || !format.includes("csv")) {
    fail("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.", 2);
  }
  const units = !format.includes("nounits");
  const lines = [];
  if (!format.includes("noheader")) {
    lines.push(
      fields
        .map((field) => {
          const unit = units ? UNITS.find(([pattern]) => pattern.test(field))?.[1] : undefined;
          return unit ? `${field} [${unit}]` : field;
        })
        .join(", "),
    );
  }
  for (const gpu of selectGpus(gpus, args)) {
    lines.push(fields.map((field) => withUnit(field, fieldValue(gpus, gpu, field), units)).join(", "));
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

function listGpus(gpus) {
  for (const gpu of gpus) process.stdout.write(`GPU ${gpu.index}: ${gpu.name} (UUID: ${gpu.uuid})\n`);
}

// Enough of the default table for a person (or install.sh) to see the driver answer.
function summary(gpus) {
  const driver = fieldValue(gpus, gpus[0] ?? {}, "driver_version");
  process.stdout.write(`NVIDIA-SMI ${driver}    Driver Version: ${driver}    (fake: tests/fakes/nvidia-smi)\n`);
  for (const gpu of gpus) {
    const used = fieldValue(gpus, gpu, "memory.used");
    const total = fieldValue(gpus, gpu, "memory.total");
    const util = fieldValue(gpus, gpu, "utilization.gpu");
    process.stdout.write(`| ${gpu.index}  ${gpu.name} | ${used}MiB / ${total}MiB | ${util}% |\n`);
  }
}

function main(args) {
  if (process.env.DUMONT_FAKE_NVIDIA_SMI_FAIL === "1") {
    fail(
      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. " +
        "Make sure that the latest NVIDIA driver is installed and running.\n",
      9,
    );
  }
  const gpus = loadFixture();
  const query = optionValue(args, ["--query-gpu"]);
  if (query !== undefined) return queryGpus(gpus, args, query);
  if (args.includes("-L") || args.includes("--list-gpus")) return listGpus(selectGpus(gpus, args));
  if (args.length === 0) return summary(gpus);
  fail("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.", 2);
}

main(process.argv.slice(2));
