// Resource use of other processes, read from Linux /proc, so a benchmark measures each process on its
// own (the control plane, an agent, a load generator) rather than whatever shares its event loop.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Clock ticks per second for /proc/PID/stat times; 100 on every Linux we run, asked once anyway. */
const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface CpuTimes {
  /** Seconds of CPU the process itself used (user + system, all its threads). */
  self: number;
  /** Seconds used by its children that it has already waited for (cutime + cstime). */
  children: number;
  /** When they were read, in seconds (monotonic). */
  at: number;
}

export function cpuTimes(pid: number): CpuTimes {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state), so field n of proc(5) is fields[n - 3].
  const [utime, stime, cutime, cstime] = [14, 15, 16, 17].map((n) => Number(fields[n - 3]));
  return {
    self: ((utime ?? 0) + (stime ?? 0)) / CLOCK_TICKS,
    children: ((cutime ?? 0) + (cstime ?? 0)) / CLOCK_TICKS,
    at: performance.now() / 1000,
  };
}

/** CPU use between two readings as percent of one core (100 = one core busy the whole time). */
export function cpuPercent(before: CpuTimes, after: CpuTimes): { self: number; children: number } {
  const wall = after.at - before.at;
  return {
    self: round((100 * (after.self - before.self)) / wall, 2),
    children: round((100 * (after.children - before.children)) / wall, 2),
  };
}

/** Resident memory now and its peak (VmRSS, VmHWM), in MiB. */
export function memoryMiB(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rss: round(kib("VmRSS") / 1024, 1), peak: round(kib("VmHWM") / 1024, 1) };
}

/** Machine-wide busy and total jiffies from /proc/stat, to see how much of both cores everyone used. */
export function machineCpu(): { busy: number; total: number; at: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
  const total = values.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: (total - idle) / CLOCK_TICKS, total: total / CLOCK_TICKS, at: performance.now() / 1000 };
}

/** Machine CPU between two readings, as percent of one core (a 2-core machine tops out at 200). */
export function machineCpuPercent(before: ReturnType<typeof machineCpu>, after: ReturnType<typeof machineCpu>): number {
  return round((100 * (after.busy - before.busy)) / (after.at - before.at), 1);
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
