// Host facts and metrics that cost no process: os.* reads /proc, statfs is one syscall. Only the OS name
// comes from systeminformation, once, because distributions spell it in too many places.
import { statfs } from "node:fs/promises";
import os from "node:os";
import si from "systeminformation";

export interface CpuMeter {
  /** Logical CPUs the kernel reports. */
  cores(): number;
  /** Busy share of all CPUs since the previous call (or since the meter was made), 0..100; undefined until
   *  the kernel's counters have moved. */
  percent(): number | undefined;
}

interface CpuTimes {
  busy: number;
  total: number;
}

function readCpuTimes(): { cores: number; times: CpuTimes } {
  const cpus = os.cpus();
  let busy = 0;
  let total = 0;
  for (const { times } of cpus) {
    const all = times.user + times.nice + times.sys + times.idle + times.irq;
    busy += all - times.idle;
    total += all;
  }
  return { cores: cpus.length, times: { busy, total } };
}

// Deltas of os.cpus() counters instead of systeminformation's currentLoad(): same numbers, no extra work.
export function createCpuMeter(): CpuMeter {
  let previous = readCpuTimes();
  let lastPercent: number | undefined;
  return {
    cores: () => previous.cores,
    percent() {
      const current = readCpuTimes();
      const total = current.times.total - previous.times.total;
      const busy = current.times.busy - previous.times.busy;
      // Counters tick every 10 ms; two calls inside one tick carry no news, so repeat the last answer.
      if (total > 0) {
        lastPercent = Math.min(100, Math.max(0, (busy / total) * 100));
        previous = current;
      }
      return lastPercent;
    },
  };
}

export function memoryBytes(): { total: bigint; used: bigint } {
  const total = os.totalmem();
  // libuv's freemem is MemAvailable on Linux, so page cache the kernel would give back counts as free.
  return { total: BigInt(total), used: BigInt(total - os.freemem()) };
}

/** Size and use of the filesystem holding `path`, as `df` counts them (used = blocks - free blocks). */
export async function diskBytes(path: string): Promise<{ total: bigint; used: bigint }> {
  const fs = await statfs(path, { bigint: true });
  return { total: fs.blocks * fs.bsize, used: (fs.blocks - fs.bfree) * fs.bsize };
}

/** "Debian GNU/Linux 12", "Ubuntu 22.04.4 LTS", "macOS 14.5"; the kernel's name if that lookup fails. */
export async function operatingSystemName(): Promise<string> {
  try {
    const info = await si.osInfo();
    const name = [info.distro, info.release].filter((part) => part && part !== "unknown").join(" ");
    if (name) return name;
  } catch {
    // systeminformation reads files and runs `hostname`; if that fails the kernel's own name still says enough.
  }
  return `${os.type()} ${os.release()}`;
}
