// Many-files benchmark: a workspace of many small files (by default 300,000 one-line sources in 3,000
// directories, as a conda environment or an extracted dataset), the case that costs per file rather than per
// byte. Dumont's first snapshot, a snapshot with nothing changed (the local index finds every file), and a
// restore, in direct mode (each its own process); the same through a real control plane and agent; and restic
// on the same tree when it is on PATH. Reports seconds, CPU and peak RSS of each (both processes' for the
// stream), and checks every restore byte for byte. One run of each: a step of 300,000 files takes seconds, and
// the README's many-files table is this benchmark's output. Nothing is deleted until the end (see README.md:
// ext4 slows down creating files right after deleting many).
//
// `npm run bench -- many-files --files 300000 --skip-stream --skip-restic --keep`
import { mkdirSync, utimesSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { StreamBench, type StreamRun } from "./snapshot-stream.js";
import type { BenchOptions } from "./support/bench-options.js";
import {
  type EngineRun,
  engine,
  type ResticRepo,
  resticInit,
  resticVersion,
  round,
  type TimedRun,
  timed,
  timedRestore,
  treeHash,
} from "./support/tool-runs.js";

export interface ManyFilesBenchOptions extends Partial<BenchOptions> {
  /** Files in the workspace (default 300,000; `--files`). */
  files?: number;
  workDir?: string;
  keep?: boolean;
  skipStream?: boolean;
  skipRestic?: boolean;
}

/** Files per directory: 100 in each `sub_*`, 10 of those in each `pkg_*`. */
const PER_DIR = 100;
const SUBS_PER_PKG = 10;

export async function runManyFilesBench(options: ManyFilesBenchOptions = {}): Promise<object> {
  const flags = options.flags ?? {};
  const files = options.files ?? Number(flags.files ?? 300_000);
  if (!(Number.isInteger(files) && files >= 1 && files <= 5_000_000)) {
    throw new Error(`--files must be a whole number from 1 to 5,000,000, got ${String(flags.files ?? options.files)}`);
  }
  const keep = options.keep ?? flags.keep === true;
  const skipStream = options.skipStream ?? flags["skip-stream"] === true;
  const restic = options.skipRestic || flags["skip-restic"] === true ? undefined : resticVersion();
  const log = options.progress ?? ((line: string) => process.stderr.write(`${line}\n`));
  const work = options.workDir ?? (await mkdtemp(join(tmpdir(), "dumont-bench-many-")));
  try {
    log(`writing ${files} files in ${work}`);
    const source = join(work, "workspace");
    const bytes = writeWorkspace(source, files);
    const sourceHash = await treeHash(source);
    const key = Buffer.alloc(32, 7).toString("hex");
    const repo = pathToFileURL(join(work, "dumont-repo")).href;
    const direct = { repo, key, source, stateDir: join(work, "dumont-state") };

    const dumont: Record<string, EngineRun> = {};
    const resticRuns: Record<string, TimedRun> = {};
    let resticRepo: ResticRepo | undefined;
    if (restic) resticRepo = await resticInit(join(work, "restic-repo"), work);
    // Dumont and restic take turns: first snapshot, nothing changed, restore.
    log("dumont: first snapshot");
    dumont.first = await engine("create", direct);
    if (resticRepo) {
      log("restic: first backup");
      resticRuns.first = await timed("restic", ["backup", "-q", source], resticRepo.env);
    }
    log("dumont: nothing changed");
    dumont.unchanged = await engine("create", direct);
    if (resticRepo) {
      log("restic: nothing changed");
      resticRuns.unchanged = await timed("restic", ["backup", "-q", source], resticRepo.env);
    }
    const restored = { dumont: join(work, "dumont-restored"), restic: join(work, "restic-restored") };
    log("dumont: restore");
    dumont.restore = await engine("restore", {
      repo,
      key,
      snapshotId: dumont.unchanged.result.id,
      target: restored.dumont,
    });
    if (resticRepo) {
      log("restic: restore");
      resticRuns.restore = await timedRestore(
        "restic",
        ["restore", "-q", "latest", "--target", restored.restic],
        resticRepo.env,
        restored.restic,
      );
    }

    let stream: object = { skipped: "skipped by option (--skip-stream)" };
    let streamRestored: string | undefined;
    if (!skipStream) {
      log("through the control plane: first snapshot, nothing changed, restore");
      const bench = await StreamBench.start(join(work, "stream"));
      try {
        const peaks = async () => ({
          agentPeakRssMiB: await bench.agentRssMiB(),
          controlPlanePeakRssMiB: await bench.controlPlaneRssMiB(),
        });
        const started = await peaks();
        const first = await bench.snapshot(source);
        const afterFirst = await peaks();
        const unchanged = await bench.snapshot(source);
        const afterUnchanged = await peaks();
        streamRestored = join(work, "stream-restored");
        const restore = await bench.restore(String(unchanged.result.id), streamRestored);
        stream = {
          // The control plane's peak is mostly its start (PGlite's WebAssembly heap and migrations).
          afterStart: started,
          first: { ...streamReport(first), ...afterFirst },
          unchanged: { ...streamReport(unchanged), ...afterUnchanged },
          restore: { ...streamReport(restore), ...(await peaks()) },
          note: "peaks are each process's highest resident memory so far (VmHWM), so they only grow step to step",
        };
      } finally {
        await bench.stop();
      }
    }

    log("checking the restores byte for byte");
    const restores: Record<string, boolean> = { dumont: (await treeHash(restored.dumont)) === sourceHash };
    if (resticRepo) {
      // restic restores the absolute path under the target.
      restores.restic = (await treeHash(join(restored.restic, source))) === sourceHash;
    }
    if (streamRestored) restores.throughStream = (await treeHash(streamRestored)) === sourceHash;

    const vsRestic = (step: string) =>
      resticRuns[step] ? round(resticRuns[step].seconds / dumont[step].seconds) : undefined;
    return {
      benchmark: "many-files",
      machine: { cpus: cpus().length, model: cpus()[0]?.model },
      workspace: { files, dirs: Math.ceil(files / PER_DIR) + Math.ceil(files / (PER_DIR * SUBS_PER_PKG)), bytes },
      dumont: {
        first: engineReport(dumont.first),
        unchanged: engineReport(dumont.unchanged),
        restore: engineReport(dumont.restore),
      },
      restic: resticRepo
        ? {
            version: restic,
            first: timedReport(resticRuns.first),
            unchanged: timedReport(resticRuns.unchanged),
            restore: timedReport(resticRuns.restore),
          }
        : { skipped: restic === undefined ? "restic is not on PATH, or --skip-restic" : "skipped" },
      throughStream: stream,
      ratios: resticRepo
        ? {
            note: "restic's seconds / Dumont's (direct): above 1, Dumont is faster",
            first: vsRestic("first"),
            unchanged: vsRestic("unchanged"),
            restore: vsRestic("restore"),
          }
        : undefined,
      restoredByteForByte: restores,
    };
  } finally {
    if (!keep && !options.workDir) await rm(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
}

/** `files` files of one line each (about 40 bytes: a counter and a hash of it), 100 to a directory; the bytes. */
const AN_HOUR_AGO = Date.now() / 1000 - 3600;

function writeWorkspace(root: string, files: number): number {
  let bytes = 0;
  for (let i = 0; i < files; i++) {
    const sub = Math.floor(i / PER_DIR);
    const dir = join(
      root,
      `pkg_${String(Math.floor(sub / SUBS_PER_PKG)).padStart(4, "0")}`,
      `sub_${sub % SUBS_PER_PKG}`,
    );
    if (i % PER_DIR === 0) mkdirSync(dir, { recursive: true });
    const text = `# module ${i}\nVALUE = ${Math.imul(i + 1, 2654435761) >>> 0}\n`;
    const path = join(dir, `m_${i}.py`);
    writeFileSync(path, text);
    // Dated an hour back: a file whose mtime is within a minute of a snapshot is read again by the next one (the
    // local index's racy window, create-snapshot.ts), and the "nothing changed" step must find every file in it.
    utimesSync(path, AN_HOUR_AGO, AN_HOUR_AGO);
    bytes += text.length;
  }
  return bytes;
}

/** A direct run: its whole process (spawn to exit, as restic's), and its engine call alone beside it. */
function engineReport(run: EngineRun) {
  return {
    seconds: round(run.seconds),
    cpuSeconds: round(run.cpuSeconds),
    engineSeconds: round(run.engineSeconds),
    engineCpuSeconds: round(run.engineCpuSeconds),
    peakRssMiB: run.peakRssMiB,
    result: run.result,
  };
}

function timedReport(run: TimedRun) {
  return {
    seconds: round(run.seconds),
    ...(run.flushSeconds !== undefined ? { flushSeconds: round(run.flushSeconds) } : {}),
    peakRssMiB: run.peakRssMiB,
  };
}

function streamReport(run: StreamRun) {
  return { seconds: round(run.seconds), cpuSeconds: run.cpuSeconds, result: run.result };
}
