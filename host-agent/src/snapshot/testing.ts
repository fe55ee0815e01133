// For tests that run part of the snapshot engine in a Node process of its own (what happens when a process has
// nothing left to wait for is seen only there): the built modules, and a script run as an ES module.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The URL of a built module of the engine (`index`, `worker-pool`, ...); says to build when it is missing. */
export function builtSnapshotModule(name: string): string {
  const entry = fileURLToPath(new URL(`../../dist/snapshot/${name}.js`, import.meta.url));
  if (!existsSync(entry)) throw new Error(`build the agent first (npm run build): ${entry} is missing`);
  return pathToFileURL(entry).href;
}

/** Runs `script` as an ES module in a new Node process; its exit code (null if killed) and its stdout. */
export function runModuleScript(script: string, timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--input-type=module", "-e", script], { timeout: timeoutMs }, (err, out) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out }),
    );
  });
}
