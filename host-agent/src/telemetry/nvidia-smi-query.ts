// Runs nvidia-smi once and turns every way it can go wrong into data: missing (a CPU host), or an error
// text for the session to report. Nothing is logged here.
import { type ExecFileException, execFile } from "node:child_process";
import { NVIDIA_SMI_QUERY_FIELDS, type ParsedGpu, parseNvidiaSmiCsv } from "./nvidia-smi-csv.js";

export type NvidiaSmiResult =
  | { kind: "gpus"; gpus: ParsedGpu[] }
  | { kind: "missing" }
  | { kind: "failed"; error: string };

const ARGS = [`--query-gpu=${NVIDIA_SMI_QUERY_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];

// nvidia-smi prints a few KiB per GPU at most; anything near this is not its query output.
const MAX_OUTPUT_BYTES = 1024 * 1024;

/** Runs `nvidia-smi` by bare name; `env.PATH` decides which one (the real tool, or the fake in tests). */
export function queryNvidiaSmi(options: { env: NodeJS.ProcessEnv; timeoutMs: number }): Promise<NvidiaSmiResult> {
  return new Promise((resolve) => {
    execFile(
      "nvidia-smi",
      ARGS,
      { env: options.env, timeout: options.timeoutMs, maxBuffer: MAX_OUTPUT_BYTES, windowsHide: true },
      (error, stdout, stderr) => {
        if (error) {
          resolve(describeFailure(error, stdout, stderr, options.timeoutMs));
          return;
        }
        try {
          resolve({ kind: "gpus", gpus: parseNvidiaSmiCsv(stdout) });
        } catch (parseError) {
          resolve({ kind: "failed", error: (parseError as Error).message });
        }
      },
    );
  });
}

function describeFailure(error: ExecFileException, stdout: string, stderr: string, timeoutMs: number): NvidiaSmiResult {
  if (error.code === "ENOENT") return { kind: "missing" };
  if (error.killed) return { kind: "failed", error: `nvidia-smi did not answer within ${timeoutMs} ms` };
  // The driver's own explanation ("couldn't communicate with the NVIDIA driver") goes to stdout.
  const said = `${stderr}\n${stdout}`.trim().replace(/\s+/g, " ");
  const status = typeof error.code === "number" ? `exit status ${error.code}` : (error.signal ?? error.code ?? "error");
  return { kind: "failed", error: `nvidia-smi failed (${status})${said ? `: ${said}` : `: ${error.message}`}` };
}
