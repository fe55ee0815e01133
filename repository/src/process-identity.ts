// Who holds something (a repository lock, a restore target): enough to tell later, from this machine, whether
// that process is gone. A pid means something only on the same boot of the same machine, in the same pid
// namespace: two machines may share a hostname (cloned VMs, containers given one name), and the host's own pid
// namespace has the same inode on every Linux machine.
import { readFileSync, readlinkSync } from "node:fs";
import { hostname } from "node:os";

export interface ProcessIdentity {
  hostname: string;
  pid: number;
  /**
   * The holder's pid namespace (Linux's /proc/self/ns/pid link, e.g. "pid:[4026531836]"): containers on the
   * host's network share its hostname but not its pids. Absent where unknown (not Linux, older writers).
   */
  pidns?: string;
  /** The kernel's boot id (/proc/sys/kernel/random/boot_id). Absent where unknown. */
  bootId?: string;
  /** The machine's id (/etc/machine-id). Absent where unknown. */
  machineId?: string;
}

const PID_NAMESPACE = (() => {
  try {
    return readlinkSync("/proc/self/ns/pid");
  } catch {
    return undefined; // not Linux
  }
})();

/** The first line of `file`, or undefined where it cannot be read (not Linux, no systemd, a bare container). */
function firstLine(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8").split("\n")[0].trim() || undefined;
  } catch {
    return undefined;
  }
}

const BOOT_ID = firstLine("/proc/sys/kernel/random/boot_id");
const MACHINE_ID = firstLine("/etc/machine-id");

/** This process, as others will judge it. */
export function thisProcess(): ProcessIdentity {
  return {
    hostname: hostname(),
    pid: process.pid,
    ...(PID_NAMESPACE ? { pidns: PID_NAMESPACE } : {}),
    ...(BOOT_ID ? { bootId: BOOT_ID } : {}),
    ...(MACHINE_ID ? { machineId: MACHINE_ID } : {}),
  };
}

/** Whether `holder` said it ran under another boot than this process's (this machine before it restarted, or another). */
export function ofAnotherBoot(holder: ProcessIdentity): boolean {
  return holder.bootId !== undefined && BOOT_ID !== undefined && holder.bootId !== BOOT_ID;
}

/**
 * Whether `holder` is a process of this host that no longer exists: in this pid namespace and boot, gone (kill
 * -9); or one from before this machine last started (the same machine id, another boot id), as a restore target's
 * marker is judged (locks judge those by age: a clone of this machine looks the same; see lock.ts). False where
 * that cannot be told from here (another host, another pid namespace): such a holder is judged otherwise (by age).
 */
export function processIsGone(holder: ProcessIdentity): boolean {
  if (holder.hostname !== hostname()) return false;
  if (ofAnotherBoot(holder)) {
    // Another running kernel: this machine before a restart, whose processes all ended with it; or another
    // machine of the same name, whose pids mean nothing here. Containers of one image share its machine id
    // wherever they run: the pid namespace must be this one too (the host's own is the same after a restart; a
    // container's is not).
    return holder.machineId !== undefined && holder.machineId === MACHINE_ID && holder.pidns === PID_NAMESPACE;
  }
  if (holder.pid === process.pid) return false;
  // Only a holder known to be of this boot and pid namespace is asked after by its pid: one of another pid
  // namespace (a container on the host's network), or one that did not say (not Linux, an older writer: perhaps
  // another machine of this name), is judged by age.
  if (holder.pidns === undefined || holder.pidns !== PID_NAMESPACE) return false;
  if (holder.bootId === undefined || holder.bootId !== BOOT_ID) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
  return false;
}
