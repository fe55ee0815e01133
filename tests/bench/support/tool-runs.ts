// Running the tools a snapshot benchmark compares, each in a process of its own and each measured the same way:
// from spawn to exit of its process, wall time, and (through /usr/bin/time) the whole process's CPU, peak RSS
// and page faults. Dumont's engine in direct mode also reports its engine call alone, from inside. And a hash
// of a tree to check a restore byte for byte.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ENGINE = fileURLToPath(new URL("../../../../host-agent/dist/snapshot/index.js", import.meta.url));

export interface EngineRun {
  result: Record<string, unknown>;
  /**
   * The whole child process, from spawn to exit, as restic's runs are timed (`timed`): Node's start, the
   * engine's import, the call and the exit.
   */
  seconds: number;
  /** The whole process's user + system CPU seconds, peak RSS and minor page faults (/usr/bin/time). */
  cpuSeconds: number;
  peakRssMiB: number;
  minorFaults: number;
  /** The engine call alone, timed inside the process once Node has started and imported the engine. */
  engineSeconds: number;
  engineCpuSeconds: number;
  /** Minor page faults over the engine call: fresh memory touched (see primitives.ts for what one costs). */
  engineMinorFaults: number;
}

export interface TimedRun {
  seconds: number;
  peakRssMiB: number | null;
  /** The command's user + system CPU seconds and minor page faults (null without /usr/bin/time). */
  cpuSeconds: number | null;
  minorFaults: number | null;
  /** Of `seconds`, what flushing the restored files to disk took after the command (timedRestore). */
  flushSeconds?: number;
}

export interface ResticRepo {
  repo: string;
  env: Record<string, string>;
}

/**
 * One direct-mode engine call in a process of its own, measured as a whole (`seconds`, `cpuSeconds`, ...: spawn
 * to exit, as `timed` measures restic) and, from inside, the engine call alone (`engineSeconds`, ...). With
 * `cpus`, pinned to those CPUs (a taskset list).
 */
export async function engine(
  op: "create" | "restore",
  args: Record<string, unknown>,
  cpus?: string,
): Promise<EngineRun> {
  const script = `
    const engine = await import(${JSON.stringify(pathToFileURL(ENGINE).href)});
    const a = JSON.parse(process.env.DUMONT_BENCH_ARGS);
    const key = Buffer.from(a.key, "hex");
    const c0 = process.cpuUsage();
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    const result = ${JSON.stringify(op)} === "create"
      ? await engine.createDirectSnapshot({ ...a, key })
      : await engine.restoreDirectSnapshot({ ...a, key });
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const all = process.cpuUsage();
    const usage = process.resourceUsage();
    process.stdout.write(JSON.stringify({ result, seconds, cpuSeconds: (c.user + c.system) / 1e6,
      minorFaults: usage.minorPageFault - f0, processCpuSeconds: (all.user + all.system) / 1e6,
      processMinorFaults: usage.minorPageFault, peakRssMiB: Math.round(usage.maxRSS / 1024) }));`;
  const node = [process.execPath, "--input-type=module", "-e", script];
  const [command, ...rest] = cpus === undefined ? node : ["taskset", "-c", cpus, ...node];
  const run = await measured(command, rest, { DUMONT_BENCH_ARGS: JSON.stringify(args) });
  const inside = JSON.parse(run.stdout) as {
    result: Record<string, unknown>;
    seconds: number;
    cpuSeconds: number;
    minorFaults: number;
    processCpuSeconds: number;
    processMinorFaults: number;
    peakRssMiB: number;
  };
  return {
    result: inside.result,
    seconds: run.seconds,
    // Without /usr/bin/time, the process's own totals just before it exits.
    cpuSeconds: run.cpuSeconds ?? inside.processCpuSeconds,
    peakRssMiB: run.peakRssMiB ?? inside.peakRssMiB,
    minorFaults: run.minorFaults ?? inside.processMinorFaults,
    engineSeconds: inside.seconds,
    engineCpuSeconds: inside.cpuSeconds,
    engineMinorFaults: inside.minorFaults,
  };
}

/**
 * Differences between two trees, for a restore that does not hash as its source: up to `max` of them
 * ("missing PATH", "extra PATH", "content differs PATH", "kind differs PATH").
 */
export async function treeDiff(source: string, restored: string, max = 5): Promise<string[]> {
  const list = async (root: string) => {
    const entries = new Map<string, string>();
    for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
      const path = join(entry.parentPath, entry.name);
      const name = path.slice(root.length + 1);
      entries.set(
        name,
        entry.isDirectory()
          ? "d"
          : `f ${createHash("sha256")
              .update(await readFile(path))
              .digest("hex")}`,
      );
    }
    return entries;
  };
  const [a, b] = [await list(source), await list(restored)];
  const out: string[] = [];
  for (const [name, what] of a) {
    const other = b.get(name);
    if (other === undefined) out.push(`missing ${name}`);
    else if (other[0] !== what[0]) out.push(`kind differs ${name}`);
    else if (other !== what) out.push(`content differs ${name}`);
  }
  for (const name of b.keys()) if (!a.has(name)) out.push(`extra ${name}`);
  return out.length > max ? [...out.slice(0, max), `${out.length - max} more`] : out;
}

const DROP_CACHES = "/proc/sys/vm/drop_caches";

/**
 * Whether this process may drop the kernel's page cache (root, with /proc/sys writable): tried once, which drops
 * it.
 */
export async function canDropPageCache(): Promise<boolean> {
  spawnSync("sync");
  return writeFile(DROP_CACHES, "3").then(
    () => true,
    () => false,
  );
}

/**
 * Flushes dirty pages and drops the page cache (clean pages, dentries and inodes): what a step reads next comes
 * from the disk, as on a machine that has not read it before.
 */
export async function dropPageCache(): Promise<void> {
  const synced = spawnSync("sync");
  if (synced.status !== 0) throw new Error(`sync failed: ${synced.stderr}`);
  await writeFile(DROP_CACHES, "3");
}

export async function treeHash(root: string): Promise<string> {
  const hash = createHash("sha256");
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const path = join(dir, entry.name);
      const name = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        hash.update(`d ${name}\n`);
        await walk(path, name);
      } else {
        hash.update(`f ${name}\n`);
        hash.update(await readFile(path));
      }
    }
  };
  await walk(root, "");
  return hash.digest("hex");
}

export function resticVersion(): string | undefined {
  const which = spawnSync("restic", ["version"], { encoding: "utf8" });
  return which.error || which.status !== 0 ? undefined : which.stdout.trim();
}

/**
 * A fresh restic repository (the cache is shared, as one user's would be), in format version 2 (compressed), named
 * explicitly: 0.14's default is version 2 too, but the comparison must not depend on it.
 */
export async function resticInit(repo: string, work: string): Promise<ResticRepo> {
  const env = {
    RESTIC_PASSWORD: "dumont-bench",
    RESTIC_REPOSITORY: repo,
    RESTIC_CACHE_DIR: join(work, "restic-cache"),
  };
  await timed("restic", ["init", "--repository-version", "2"], env);
  return { repo, env };
}

/** Runs a command, measuring wall time and (through /usr/bin/time when present) peak RSS, CPU and page faults. */
export async function timed(command: string, args: string[], env: Record<string, string>): Promise<TimedRun> {
  const { seconds, peakRssMiB, cpuSeconds, minorFaults } = await measured(command, args, env);
  return { seconds, peakRssMiB, cpuSeconds, minorFaults };
}

let haveTime: boolean | undefined;

/**
 * Runs a command, timed from its spawn to its exit, with (through /usr/bin/time when present) the whole process's
 * peak RSS, CPU and page faults; what it wrote on stdout. The one measurement of every tool's run.
 */
async function measured(
  command: string,
  args: string[],
  env: Record<string, string>,
): Promise<TimedRun & { stdout: string }> {
  haveTime ??= spawnSync("/usr/bin/time", ["-f", "%M", "true"]).status === 0;
  const started = performance.now();
  const { stdout, stderr } = await runProcess(
    haveTime ? "/usr/bin/time" : command,
    haveTime ? ["-f", "dumont-bench-time maxrss=%M cpu=%U+%S minflt=%R", command, ...args] : args,
    env,
  );
  const seconds = (performance.now() - started) / 1000;
  const match = /dumont-bench-time maxrss=(\d+) cpu=([\d.]+)\+([\d.]+) minflt=(\d+)/.exec(stderr);
  if (!match) return { stdout, seconds, peakRssMiB: null, cpuSeconds: null, minorFaults: null };
  return {
    stdout,
    seconds,
    peakRssMiB: Math.round(Number(match[1]) / 1024),
    cpuSeconds: Number(match[2]) + Number(match[3]),
    minorFaults: Number(match[4]),
  };
}

/**
 * A restore by another tool (`command args`), timed until what it wrote into `target` is on disk: the command,
 * then a syncfs of the target's filesystem (`sync --file-system`). Dumont's restore ends with one (its marker
 * goes only once the files are durable), so both are timed to the same point; restic's own restore returns with
 * its files still in the page cache (and this VM's disk acknowledges writes before they are on it: `sync` after a
 * 1 GiB restore waits ~0.6 s). `flushSeconds` says what the flush took of `seconds`.
 */
export async function timedRestore(
  command: string,
  args: string[],
  env: Record<string, string>,
  target: string,
): Promise<TimedRun> {
  const run = await timed(command, args, env);
  const started = performance.now();
  const flushed = spawnSync("sync", ["--file-system", "--", target]);
  if (flushed.status !== 0) throw new Error(`sync --file-system ${target} failed: ${flushed.stderr}`);
  const flushSeconds = (performance.now() - started) / 1000;
  return { ...run, seconds: run.seconds + flushSeconds, flushSeconds };
}

/** Runs a command to its exit; its stdout and stderr, or an error with the end of its stderr. */
export function runProcess(
  command: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.on("error", reject);
    // 'close', not 'exit': after 'exit' the pipes may still hold the end of stderr (the reason it failed).
    child.on("close", (code) => {
      if (code === 0) resolve({ stdout: out, stderr: err });
      else reject(new Error(`${command} ${args.slice(0, 3).join(" ")} failed (${code}): ${err.slice(-2000)}`));
    });
  });
}

export function round(n: number): number {
  return Math.round(n * 100) / 100;
}

/**
 * a / b to three places, for the figures the snapshot issue's targets are judged on: at two, 34.15 MB against
 * restic's 30.92 (1.104) read 1.10 and passed a line at 1.1.
 */
export function ratio(a: number, b: number): number {
  return Math.round((a / b) * 1000) / 1000;
}
