// Small tmpfs mounts for tests that need a real full filesystem (ENOSPC from the kernel, not a mock). Mounting
// takes root and CAP_SYS_ADMIN: `canMountTmpfs` tries one once, so a runner without them (a container, a
// user's machine) skips those tests instead of failing them.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

let probed: boolean | undefined;

/** Whether this process can mount a tmpfs (Linux, root, allowed to mount): tried once, then remembered. */
export function canMountTmpfs(): boolean {
  if (probed !== undefined) return probed;
  probed = false;
  if (process.platform !== "linux" || process.getuid?.() !== 0) return probed;
  const dir = mkdtempSync(join(tmpdir(), "dumont-tmpfs-probe-"));
  try {
    mountTmpfs(dir, "1m");
    unmountTmpfs(dir);
    probed = true;
  } catch {
    // no mount(8), or not allowed to mount here
  } finally {
    rmdirSync(dir);
  }
  return probed;
}

/** Mounts a tmpfs of `size` ("8m") on the existing directory `dir`. */
export function mountTmpfs(dir: string, size: string): void {
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { stdio: "ignore" });
}

/** Makes the tmpfs on `dir` read-only: writes then fail with EROFS, for root too. */
export function remountReadOnly(dir: string): void {
  execFileSync("mount", ["-o", "remount,ro", dir], { stdio: "ignore" });
}

export function unmountTmpfs(dir: string): void {
  execFileSync("umount", [dir], { stdio: "ignore" });
}
