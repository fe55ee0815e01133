// Snapshot benchmark, direct mode (file://): a deterministic ~1 GiB workspace (60% incompressible like model
// weights, 30% text/CSV, 2,000 small source files), then full snapshot, incremental after a 5% change, and
// restore; the same through the control plane, and with `restic` (on a copy of the workspace) when it is on
// PATH. Full backups and restores run 3 times (--runs), Dumont's and restic's taking turns, and report the
// median. Every backup runs before any restore, and nothing is deleted before the last restore.
// Each engine run is its own process, timed from spawn to exit as restic's are (and its engine call apart, in
// engineSeconds), so peak RSS is the engine's own. Every restore is checked byte for byte: one that differs from
// its source fails the run (non-zero exit, naming it). Prints JSON. Run:
// `npm run bench -- snapshot` (or `node tests/dist/bench/snapshot.js --size-mib 256`); DUMONT_BENCH_SIZE_MIB
// shrinks the corpus too.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  appendFile,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  stat,
  statfs,
  utimes,
  writeFile,
} from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { canPin, pinProcess, StreamBench, type StreamRun } from "./snapshot-stream.js";
import type { BenchOptions } from "./support/bench-options.js";
import { csvText, logText, noise, prng, sourceText } from "./support/corpus-text.js";
import { measureDiskWriteCost } from "./support/disk-write-cost.js";
import { measurePrimitives, type Primitives } from "./support/primitives.js";
import {
  canDropPageCache,
  dropPageCache,
  type EngineRun,
  engine,
  type ResticRepo,
  ratio,
  resticInit,
  resticVersion,
  round,
  type TimedRun,
  timed,
  timedRestore,
  treeDiff,
  treeHash,
} from "./support/tool-runs.js";
import { measureTransport, type TransportCost } from "./support/transport.js";

/**
 * Options of its own, or the dispatcher's BenchOptions (`npm run bench -- snapshot --size-mib 256 --keep
 * --skip-restic`): its flags and progress are read too.
 */
export interface SnapshotBenchOptions extends Partial<BenchOptions> {
  /** Corpus size (default 1024, or DUMONT_BENCH_SIZE_MIB). */
  sizeMiB?: number;
  /** Where to put the corpus, repositories and restores (default: a fresh temp dir, removed after). */
  workDir?: string;
  keep?: boolean;
  /** Skip the through-the-control-plane runs. */
  skipStream?: boolean;
  /**
   * Put a proxy holding every byte back this many ms each way between the agent and the control plane
   * (`--stream-delay-ms`; a round trip of twice that). Without it the agent connects directly.
   */
  streamDelayMs?: number;
  /** Skip restic even when it is installed. */
  skipRestic?: boolean;
  /**
   * How many times each tool's full backup and restore run (default 3, `--runs`), taking turns with each
   * other; the median is reported, with every run's seconds beside it.
   */
  runs?: number;
  log?: (line: string) => void;
}

const MB = 1e6;
const MiB = 1024 * 1024;

interface Corpus {
  root: string;
  /** The size asked for (regenerating with it gives the same bytes). */
  total: number;
  bytes: number;
  files: number;
  incompressible: number;
  compressible: number;
  small: number;
}

export async function runSnapshotBench(options: SnapshotBenchOptions = {}): Promise<object> {
  const flags = options.flags ?? {};
  const sizeFlag = flags["size-mib"];
  const sizeMiB = options.sizeMiB ?? Number(sizeFlag ?? (process.env.DUMONT_BENCH_SIZE_MIB || 1024));
  if (!(sizeMiB > 0)) throw new Error(`--size-mib must be a positive number of MiB, got ${String(flags["size-mib"])}`);
  options = {
    ...options,
    keep: options.keep ?? flags.keep === true,
    skipRestic: options.skipRestic ?? flags["skip-restic"] === true,
    skipStream: options.skipStream ?? flags["skip-stream"] === true,
    streamDelayMs: options.streamDelayMs ?? optionalNumber(flags["stream-delay-ms"]),
    runs: options.runs ?? optionalNumber(flags.runs) ?? 3,
  };
  const runs = options.runs ?? 3;
  if (!(Number.isInteger(runs) && runs >= 1 && runs <= 9)) {
    throw new Error(`--runs must be a whole number from 1 to 9, got ${String(flags.runs ?? options.runs)}`);
  }
  if (options.streamDelayMs !== undefined && !(options.streamDelayMs >= 0)) {
    throw new Error(`--stream-delay-ms must be a number of milliseconds >= 0, got ${String(flags["stream-delay-ms"])}`);
  }
  const log = options.log ?? options.progress ?? ((line: string) => process.stderr.write(`${line}\n`));
  const work = options.workDir ?? (await mkdtemp(join(tmpdir(), "dumont-bench-snapshot-")));
  try {
    // A restore in real use runs on another machine than the backup, its repository not in memory: before every
    // timed restore, of every tool, the page cache is dropped where this process may (root), so each reads its
    // repository from the disk (Dumont reads packs with O_DIRECT, which a warm cache would not serve anyway).
    // Where it may not, every tool's restore reads its repository from a warm cache instead (settle).
    const coldRestores = await canDropPageCache();
    const beforeRestore = (dir: string) => (coldRestores ? dropPageCache() : settle(dir));
    log(`generating a ${sizeMiB} MiB workspace in ${work}`);
    const corpus = await generateCorpus(join(work, "workspace"), sizeMiB * MiB);
    // restic gets a copy of its own, made now: nothing in this run deletes files before the restores (see
    // the comment there). Deterministic generation gives the same bytes; checked.
    const resticCorpus = options.skipRestic || !resticVersion() ? undefined : await copyOfCorpus(corpus, work, log);
    log("measuring this machine's primitives (SHA-256, AES-256-GCM, LZ4, memory, page cache)");
    const primitives = await measurePrimitives(join(corpus.root, "models", "model-00002.safetensors"));
    let transport: TransportCost | { error: string } | undefined;
    if (!options.skipStream) {
      log("measuring what moving bytes costs on loopback (bare TLS, and gRPC over TLS as the agent's stream)");
      spawnSync("sync"); // the corpus's writeback would take CPU from the measurement
      // A figure for the report, not a step of the benchmark: a failure is reported, and the run goes on.
      transport = await measureTransport().catch((err: unknown) => ({ error: String(err) }));
    }
    log("measuring what disk writes cost the machine's other work (O_DIRECT writes beside SHA-256)");
    spawnSync("sync");
    const diskWrite = await measureDiskWriteCost(work).catch((err: unknown) => ({ error: String(err) }));

    const key = randomBytes(32).toString("hex");
    // Full run i of `runs` writes a repository of its own (nothing is deleted before the restores); the last
    // one, "dumont-repo", goes on to the incremental snapshot and the restores.
    const suffix = (i: number) => (i === runs ? "" : `-${i}`);
    const repoDir = join(work, "dumont-repo");
    // With --keep the repositories stay readable afterwards: DUMONT_REPO_KEY=$(cat dumont-repo.key).
    if (options.keep) await writeFile(join(work, "dumont-repo.key"), `${key}\n`, { mode: 0o600 });
    const engineArgs = (i: number) => ({
      repo: pathToFileURL(join(work, `dumont-repo${suffix(i)}`)).href,
      key,
      source: corpus.root,
      stateDir: join(work, `dumont-state${suffix(i)}`),
    });
    const base = engineArgs(runs);

    const stream = options.skipStream
      ? undefined
      : await StreamBench.start(join(work, "stream"), { delayMs: options.streamDelayMs });
    // A running agent has its engine loaded: so must this one before its first timed call.
    if (stream) log("dumont through the control plane: an untimed snapshot and restore to load the agent's engine");
    await stream?.warmUp(join(work, "stream-warm-up"));
    const viaStream: {
      full?: StreamRun;
      storedFull?: number;
      incremental?: StreamRun;
      storedAfter?: number;
      restore?: StreamRun;
      restores: StreamRun[];
      restoredOk?: boolean;
      agentPeakRssMiB?: number;
    } = { restores: [] };
    const fulls: EngineRun[] = [];
    const restores: EngineRun[] = [];
    let storedFull: number;
    let changed: CorpusChange;
    let incremental: EngineRun;
    /** Every incremental snapshot, one into each full run's repository, with the bytes it added there. */
    const incrementals: { run: EngineRun; bytesAdded: number }[] = [];
    let restoredOk = true;
    let separate: SeparateCoresRuns | undefined;
    let separateSkipped = "needs 2 or more CPUs and taskset (util-linux)";
    let restic: ResticRepo | undefined;
    const resticFulls: TimedRun[] = [];
    let resticStoredFull = 0;
    const resticRepos: ResticRepo[] = [];
    const resticIncrementals: { run: TimedRun; bytesAdded: number }[] = [];
    let inMemory: Awaited<ReturnType<typeof fullInMemory>>;
    const resticRestores: TimedRun[] = [];
    let resticRestoredOk = true;
    try {
      // First, while memory is free: later, with the page cache full of this run's repositories, tmpfs pages
      // come from reclaim, charged to the process writing them (measured: +1.6 CPU-s, slower than the disk).
      inMemory = await fullInMemory(corpus, key, log);
      // The two tools take turns, so a slow minute of this machine weighs on both alike.
      for (let i = 1; i <= runs; i++) {
        log(`dumont: full snapshot (${i} of ${runs})`);
        await settle(corpus.root);
        fulls.push(await engine("create", engineArgs(i)));
        if (resticCorpus) {
          log(`restic: full backup (${i} of ${runs})`);
          restic = await resticInit(join(work, `restic-repo${suffix(i)}`), work);
          resticRepos.push(restic);
          await settle(resticCorpus.root);
          resticFulls.push(await timed("restic", ["backup", "--quiet", resticCorpus.root], restic.env));
        }
      }
      // What each full run's repository holds, so each incremental's additions can be told; the last run's
      // ("dumont-repo", restic's last) is the full backup's figure.
      const fullSizes: number[] = [];
      for (let i = 1; i <= runs; i++) fullSizes.push(await dirSize(fileURLToPath(engineArgs(i).repo)));
      const resticFullSizes: number[] = [];
      for (const repo of resticRepos) resticFullSizes.push(await dirSize(repo.repo));
      storedFull = fullSizes[runs - 1];
      resticStoredFull = resticFullSizes.at(-1) ?? 0;
      if (stream) {
        log("dumont through the control plane: full snapshot");
        await settle(corpus.root);
        viaStream.full = await stream.snapshot(corpus.root);
        viaStream.storedFull = await stream.storedBytes();
      }
      log("changing 5% of the workspace (new content)");
      changed = await changeCorpus(corpus);
      if (resticCorpus) await changeCorpus(resticCorpus);
      // An incremental into each full run's repository, the tools taking turns: restic draws a random chunker
      // polynomial for every repository, so where its chunk boundaries fall around the change, and the bytes it
      // adds, vary from one repository to the next (31-36 MB seen here); the median of several is its figure.
      for (let i = 1; i <= runs; i++) {
        log(`dumont: incremental snapshot (${i} of ${runs})`);
        await settle(corpus.root);
        const args = engineArgs(i);
        const run = await engine("create", args);
        incrementals.push({ run, bytesAdded: (await dirSize(fileURLToPath(args.repo))) - fullSizes[i - 1] });
        const repo = resticRepos[i - 1];
        if (repo && resticCorpus) {
          log(`restic: incremental backup (${i} of ${runs})`);
          await settle(resticCorpus.root);
          const resticRun = await timed("restic", ["backup", "--quiet", resticCorpus.root], repo.env);
          resticIncrementals.push({ run: resticRun, bytesAdded: (await dirSize(repo.repo)) - resticFullSizes[i - 1] });
        }
      }
      incremental = incrementals[runs - 1].run; // into "dumont-repo": the snapshot the restores restore
      if (stream) {
        log("dumont through the control plane: incremental snapshot");
        await settle(corpus.root);
        viaStream.incremental = await stream.snapshot(corpus.root);
        viaStream.storedAfter = await stream.storedBytes();
      }

      // The restores come last and every restore target stays until the end of the run. ext4 skips inodes
      // freed in the last minute (six minutes while their inode-table block is dirty) when it allocates new
      // ones, at a cost on every file created: a restore timed right after a 2,000-file tree was deleted
      // measured up to 2x slower, whichever tool came next.
      const restored = (tool: string, i: number) => join(work, `${tool}-restore-${i}`);
      for (let i = 1; i <= runs; i++) {
        log(`dumont: restore (${i} of ${runs})`);
        await beforeRestore(repoDir);
        const target = restored("dumont", i);
        restores.push(await engine("restore", { repo: base.repo, key, snapshotId: incremental.result.id, target }));
        if (restic) {
          log(`restic: restore (${i} of ${runs})`);
          await beforeRestore(restic.repo);
          const target = restored("restic", i);
          resticRestores.push(
            await timedRestore("restic", ["restore", "latest", "--target", target], restic.env, target),
          );
        }
        if (stream && viaStream.incremental) {
          log(`dumont through the control plane: restore (${i} of ${runs})`);
          await beforeRestore(stream.blobsDir);
          viaStream.restores.push(await stream.restore(String(viaStream.incremental.result.id), restored("stream", i)));
        }
      }
      if (stream && viaStream.restores.length > 0) {
        viaStream.restore = medianRun(viaStream.restores);
        viaStream.agentPeakRssMiB = await stream.agentRssMiB();
      }
      const pinRefused = stream && cpus().length >= 2 && canPin() ? pinningRefused() : undefined;
      if (pinRefused !== undefined) separateSkipped = `pinning refused here: ${pinRefused}`;
      else if (stream && cpus().length >= 2 && canPin()) {
        log("dumont through the control plane, on separate cores: full snapshot and restore, and direct runs");
        // Where pinning is refused (some containers) the section is skipped, said so above; any other failure
        // fails the benchmark.
        separate = await separateCoresRuns(work, corpus, key, runs, beforeRestore);
      }
      log("checking the restores byte for byte");
      // Every restore is checked; one that differs from its source is named on stderr with what differs, and
      // the benchmark then fails: figures of a restore that came back wrong are not reported.
      const differing: string[] = [];
      const check = async (what: string, target: string, source: string, sourceHash: string) => {
        if ((await treeHash(target)) === sourceHash) return true;
        const differences = await treeDiff(source, target);
        log(`${what}: ${target} differs from ${source}: ${differences.join("; ") || "(in order or names only)"}`);
        differing.push(`${what} (${target})`);
        return false;
      };
      const changedHash = await treeHash(corpus.root);
      if (separate) {
        separate.restoredOk = true;
        for (const [i, target] of separate.directTargets.entries())
          separate.restoredOk =
            (await check(`separate cores: dumont restore ${i + 1}`, target, corpus.root, changedHash)) &&
            separate.restoredOk;
        for (const [i, target] of separate.streamTargets.entries())
          separate.restoredOk =
            (await check(`separate cores: stream restore ${i + 1}`, target, corpus.root, changedHash)) &&
            separate.restoredOk;
      }
      const resticHash = resticCorpus && restic ? await treeHash(resticCorpus.root) : undefined;
      for (let i = 1; i <= runs; i++) {
        restoredOk =
          (await check(`dumont restore ${i}`, restored("dumont", i), corpus.root, changedHash)) && restoredOk;
        // restic restores the absolute source path under the target.
        if (resticCorpus && resticHash) {
          const target = join(restored("restic", i), resticCorpus.root);
          resticRestoredOk =
            (await check(`restic restore ${i}`, target, resticCorpus.root, resticHash)) && resticRestoredOk;
        }
      }
      viaStream.restoredOk = true;
      for (let i = 1; i <= viaStream.restores.length; i++) {
        // Every restore checked and named, not only up to the first that differs.
        viaStream.restoredOk =
          (await check(`stream restore ${i}`, restored("stream", i), corpus.root, changedHash)) && viaStream.restoredOk;
      }
      if (differing.length > 0) {
        throw new Error(
          `${differing.length} restore(s) differ from their source (what differs is above; --keep keeps them): ${differing.join(", ")}`,
        );
      }
    } finally {
      await stream?.stop();
    }

    // The median engine calls, each its own median: the run of median whole-process time need not be it.
    const full = medianEngineRun(fulls);
    const restore = medianEngineRun(restores);
    const medianIncremental = medianRun(incrementals.map((r) => r.run));
    const incrementalEngine = medianEngineRun(incrementals.map((r) => r.run));
    const dumont = {
      full: {
        ...engineReport(corpus, fulls),
        bytesStored: storedFull,
        // The same backup into a repository in memory: what the disk's writes take of the engine call above
        // (onDiskVsInMemory: of the engine calls, the process's start being the same in both).
        repositoryInMemory:
          "skipped" in inMemory
            ? inMemory
            : {
                seconds: round(inMemory.seconds),
                engineSeconds: round(inMemory.engineSeconds),
                cpuSeconds: round(inMemory.cpuSeconds),
                onDiskVsInMemory: round(full.engineSeconds / inMemory.engineSeconds),
              },
      },
      incremental: {
        ...incrementalReport(incrementals),
        // The bytes the change wrote (overwritten, appended, inserted), about 5% of the corpus.
        changedBytes: changed.newBytes,
        changedShareOfCorpus: ratio(changed.newBytes, corpus.bytes),
        // The small files edited, whole: each is read again in full, though only a line of it is new.
        editedFiles: { count: changed.editedFiles, bytes: changed.editedFilesBytes },
        bytesRead: incremental.result.bytesRead,
        bytesNew: incremental.result.bytesNew,
        cpuSeconds: round(medianIncremental.cpuSeconds),
        engineSeconds: round(incrementalEngine.engineSeconds),
        engineCpuSeconds: round(incrementalEngine.engineCpuSeconds),
      },
      restore: {
        ...engineReport(corpus, restores),
        // Of `seconds`, the flush to disk the restore ends with (restic's: restic.restore.flushSeconds).
        flushSeconds: round(Number(restore.result.flushSeconds)),
        byteForByte: restoredOk,
      },
    };

    const throughStream =
      viaStream.full && viaStream.incremental && viaStream.restore
        ? {
            full: {
              seconds: round(viaStream.full.seconds),
              throughputMBps: round(corpus.bytes / MB / viaStream.full.seconds),
              bytesStored: viaStream.storedFull,
              vsDirect: ratio(full.engineSeconds, viaStream.full.seconds),
              cpuSeconds: viaStream.full.cpuSeconds,
              agentCpuVsDirect: round(full.engineCpuSeconds / viaStream.full.cpuSeconds.agent),
            },
            incremental: {
              seconds: round(viaStream.incremental.seconds),
              vsDirect: ratio(incrementalEngine.engineSeconds, viaStream.incremental.seconds),
              cpuSeconds: viaStream.incremental.cpuSeconds,
              bytesRead: viaStream.incremental.result.bytesRead,
              bytesNew: viaStream.incremental.result.bytesNew,
              bytesAdded: (viaStream.storedAfter ?? 0) - (viaStream.storedFull ?? 0),
            },
            restore: {
              seconds: round(viaStream.restore.seconds),
              runs: viaStream.restores.map((r) => round(r.seconds)),
              throughputMBps: round(corpus.bytes / MB / viaStream.restore.seconds),
              vsDirect: ratio(restore.engineSeconds, viaStream.restore.seconds),
              cpuSeconds: viaStream.restore.cpuSeconds,
              agentCpuVsDirect: round(restore.engineCpuSeconds / viaStream.restore.cpuSeconds.agent),
              byteForByte: viaStream.restoredOk,
            },
            agentPeakRssMiB: viaStream.agentPeakRssMiB,
            separateCores: separate
              ? {
                  cpus: "the agent and the direct runs on CPU 0, the control plane and the bench process (its API client) on CPU 1",
                  full: {
                    ...versusDirect(separate.directFulls, medianRun(separate.streamFulls)),
                    ...everyRun(separate.directFulls, separate.streamFulls),
                  },
                  restore: {
                    ...versusDirect(separate.directRestores, medianRun(separate.streamRestores)),
                    ...everyRun(separate.directRestores, separate.streamRestores),
                    byteForByte: separate.restoredOk,
                  },
                }
              : { skipped: separateSkipped },
            ...(options.streamDelayMs !== undefined ? { proxyDelayMsEachWay: options.streamDelayMs } : {}),
            note:
              "wall clock of the control plane's CreateSnapshotStream / RestoreSnapshotStream call (what `dumont snapshot create|restore` call), made from the bench process to an agent that has its engine loaded (an untimed snapshot and restore first, as a long-running agent has): agent → mTLS gRPC stream → control plane → file:// blob store; " +
              "vsDirect = the direct run's engine call (engineSeconds: its process's start and the engine's import left out, as the stream leaves out a CLI's start and the agent's) / stream seconds (1.0 = as fast); both processes share this machine's cores, " +
              "cpuSeconds says what each side spent; agentCpuVsDirect = the direct engine call's CPU / the agent's CPU here (what " +
              "the agent's own share of the work allows when the control plane runs on other cores; separateCores measures that)",
          }
        : { skipped: "skipped by option (--skip-stream)" };
    // Set only when restic ran (it is skipped by option or absent otherwise).
    const resticRan =
      resticIncrementals.length > 0
        ? {
            version: resticVersion() ?? "unknown",
            repositoryVersion: 2,
            full: { ...timedReport(corpus, resticFulls), bytesStored: resticStoredFull },
            incremental: {
              ...incrementalReport(resticIncrementals),
              cpuSeconds: nullableRound(medianRun(resticIncrementals.map((r) => r.run)).cpuSeconds),
            },
            restore: {
              ...timedReport(corpus, resticRestores),
              flushSeconds: round(medianRun(resticRestores).flushSeconds ?? 0),
              byteForByte: resticRestoredOk,
            },
          }
        : undefined;
    const resticReport =
      resticRan ??
      (options.skipRestic
        ? { skipped: "skipped by option" }
        : { skipped: "restic is not on PATH (the benchmark installs nothing)" });
    // Of the unrounded median seconds, whole process against whole process (the same corpus: a throughput
    // ratio is the inverse of the seconds').
    const ratios =
      resticRan !== undefined
        ? {
            fullThroughput: ratio(medianRun(resticFulls).seconds, full.seconds),
            incrementalBytesAdded: ratio(dumont.incremental.bytesAdded, resticRan.incremental.bytesAdded),
            incrementalTime: ratio(medianIncremental.seconds, medianRun(resticIncrementals.map((r) => r.run)).seconds),
            restoreThroughput: ratio(medianRun(resticRestores).seconds, restore.seconds),
            bytesStoredFull: ratio(dumont.full.bytesStored, resticRan.full.bytesStored),
          }
        : null;
    return {
      benchmark: "snapshot",
      mode:
        "direct (file://); every tool's run timed as its whole process, spawn to exit (Dumont's engine call alone: " +
        "engineSeconds); dirty pages flushed before each step and the page cache warm for the backups (every tool alike); " +
        (coldRestores
          ? "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every restore, of every tool, so each reads its repository from the disk; "
          : "page cache warm for the restores too, every tool's repository read into it first (dropping it needs root: /proc/sys/vm/drop_caches was not writable); ") +
        `full backups, incrementals (one into each full run's repository) and restores ${runs} times each, ` +
        "the tools taking turns, median reported; " +
        "restores after every backup, with no file deleted earlier in the run; a restore is timed until its " +
        "files are on disk (Dumont's ends with a syncfs, restic's is followed by `sync --file-system`: " +
        "restic.restore.flushSeconds)",
      machine: {
        cpus: cpus().length,
        model: cpus()[0]?.model,
        loadavg1m: round(loadavg()[0]),
        primitives,
        ...(transport ? { transport } : {}),
        diskWrite,
      },
      fullBackupPerGiB: costPerGiB(corpus, primitives, full, resticRan?.full),
      corpus: {
        bytes: corpus.bytes,
        files: corpus.files,
        incompressibleBytes: corpus.incompressible,
        compressibleBytes: corpus.compressible,
        smallFiles: corpus.small,
      },
      dumont,
      throughStream,
      restic: resticReport,
      ratios,
      targets: issueTargets(ratios, vsDirectOf(throughStream), [
        restoredOk,
        viaStream.restoredOk,
        separate?.restoredOk ?? true,
        resticRan?.restore.byteForByte ?? true,
      ]),
    };
  } finally {
    if (!options.keep && !options.workDir) await rm(work, { recursive: true, force: true });
  }
}

// --- corpus -------------------------------------------------------------------------------------------

async function generateCorpus(root: string, total: number): Promise<Corpus> {
  await mkdir(join(root, "models"), { recursive: true });
  await mkdir(join(root, "checkpoints"), { recursive: true });
  await mkdir(join(root, "data"), { recursive: true });
  await mkdir(join(root, "logs"), { recursive: true });
  // [path, share of the total, incompressible?, generator of piece n]
  const big: [string, number, boolean, (size: number, piece: number) => Buffer][] = [
    ["models/model-00001.safetensors", 0.35, true, (n, i) => noise(`model-1:${i}`, n)],
    ["models/model-00002.safetensors", 0.15, true, (n, i) => noise(`model-2:${i}`, n)],
    ["checkpoints/optimizer.pt", 0.1, true, (n, i) => noise(`optimizer:${i}`, n)],
    ["data/train.csv", 0.18, false, (n, i) => csvText(n, 1100 + i)],
    ["data/eval.csv", 0.04, false, (n, i) => csvText(n, 1200 + i)],
    ["logs/train.log", 0.08, false, (n, i) => logText(n, 1300 + i)],
  ];
  let incompressible = 0;
  let compressible = 0;
  for (const [path, share, random, make] of big) {
    const size = Math.floor(total * share);
    await writeInPieces(join(root, path), size, make);
    if (random) incompressible += size;
    else compressible += size;
  }
  // 2,000 small source-like files, 10% of the bytes, sizes spread 1..~2x the mean.
  const count = 2000;
  const mean = Math.max(64, Math.floor((total * 0.1) / count));
  const next = prng(2026);
  let small = 0;
  for (let i = 0; i < count; i++) {
    const dir = join(root, "src", `pkg_${i % 40}`);
    if (i < 40) await mkdir(dir, { recursive: true });
    const size = Math.max(32, Math.floor(mean * (0.1 + ((next() % 1000) / 1000) * 1.8)));
    await writeFile(join(dir, `module_${i}.py`), sourceText(size, i + 1));
    small += size;
  }
  // A workspace is older than the snapshot taking it: files modified within the last seconds are re-read
  // next time on purpose (their mtime may not yet tell a later change apart).
  const past = Date.now() / 1000 - 3600;
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) await utimes(join(entry.parentPath, entry.name), past, past);
  }
  return {
    root,
    total,
    bytes: incompressible + compressible + small,
    files: big.length + count,
    incompressible,
    compressible,
    small,
  };
}

async function writeInPieces(path: string, size: number, make: (size: number, piece: number) => Buffer): Promise<void> {
  const handle = await open(path, "w");
  try {
    const piece = 64 * MiB;
    for (let at = 0, n = 0; at < size; at += piece, n++) {
      const len = Math.min(piece, size - at);
      await handle.write(make(len, n), 0, len, at);
    }
  } finally {
    await handle.close();
  }
}

interface CorpusChange {
  /** Bytes the change wrote: overwritten, appended and inserted (about 5% of the corpus). */
  newBytes: number;
  /** The small files edited, and their sizes after the edit (whole: each is read again in full). */
  editedFiles: number;
  editedFilesBytes: number;
}

/**
 * The 5% change, of new content: overwrite 3.5% of the corpus in the middle of the biggest model, append 1.5%
 * to the log, insert a line into 100 small files (26 bytes each).
 */
async function changeCorpus(corpus: Corpus): Promise<CorpusChange> {
  const model = join(corpus.root, "models", "model-00001.safetensors");
  const overwrite = Math.floor(corpus.bytes * 0.035);
  const { size } = await stat(model);
  const handle = await open(model, "r+");
  await handle.write(noise("patch", overwrite), 0, overwrite, Math.floor(size / 2));
  await handle.close();
  const append = Math.floor(corpus.bytes * 0.015);
  await appendFile(join(corpus.root, "logs", "train.log"), logText(append, 99));
  const line = "\n# edited by the benchmark\n";
  let editedFiles = 0;
  let editedFilesBytes = 0;
  for (let i = 0; i < 2000; i += 20) {
    const path = join(corpus.root, "src", `pkg_${i % 40}`, `module_${i}.py`);
    const text = await readFile(path, "utf8");
    const mid = Math.floor(text.length / 2);
    const updated = `${text.slice(0, mid)}${line}${text.slice(mid)}`;
    await writeFile(path, updated);
    editedFiles++;
    editedFilesBytes += Buffer.byteLength(updated);
  }
  return { newBytes: overwrite + append + editedFiles * Buffer.byteLength(line), editedFiles, editedFilesBytes };
}

/**
 * One more full backup, into a repository in tmpfs (/dev/shm), deleted at once: the disk's share of a full
 * backup's time. Pack writes then go through the page cache (tmpfs takes no O_DIRECT), which costs some CPU,
 * so the figure is a bound: the time without the disk, not without storing. Skipped without /dev/shm or
 * room there for twice the corpus.
 */
async function fullInMemory(
  corpus: Corpus,
  key: string,
  log: (line: string) => void,
): Promise<EngineRun | { skipped: string }> {
  const shm = "/dev/shm";
  const free = await statfs(shm).then(
    (s) => s.bavail * s.bsize,
    () => undefined,
  );
  if (free === undefined) return { skipped: `no ${shm}` };
  if (free < 2 * corpus.bytes)
    return { skipped: `${shm} has ${Math.floor(free / MiB)} MiB free, under twice the corpus` };
  log(`dumont: full snapshot into a repository in memory (${shm})`);
  const dir = await mkdtemp(join(shm, "dumont-bench-repo-"));
  try {
    await settle(corpus.root);
    return await engine("create", {
      repo: pathToFileURL(join(dir, "repo")).href,
      key,
      source: corpus.root,
      stateDir: join(dir, "state"),
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Before each timed backup (and each restore where the page cache cannot be dropped, every tool alike): flush
 * dirty pages (so writeback of the previous step does not land in this one) and read what the step will read.
 * Dumont reads its packs with O_DIRECT, which a warm cache does not serve: where restores run warm, restic's
 * read from memory and Dumont's from the disk (the mode string says which this run did).
 */
async function settle(dir: string): Promise<void> {
  spawnSync("sync");
  const buf = Buffer.allocUnsafe(8 * MiB);
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const handle = await open(join(entry.parentPath, entry.name), "r");
    try {
      while ((await handle.read(buf, 0, buf.length)).bytesRead > 0);
    } finally {
      await handle.close();
    }
  }
}

async function dirSize(root: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await stat(join(entry.parentPath, entry.name))).size;
  }
  return total;
}

// --- restic ---------------------------------------------------------------------------------------------

/** A second corpus with the same bytes as the first, for restic (generated, not copied: same cost, no reads). */
async function copyOfCorpus(corpus: Corpus, work: string, log: (line: string) => void): Promise<Corpus> {
  log("generating restic's copy of the workspace");
  const copy = await generateCorpus(join(work, "restic-workspace"), corpus.total);
  if ((await treeHash(copy.root)) !== (await treeHash(corpus.root))) {
    throw new Error("restic's copy of the workspace differs from the first one");
  }
  return copy;
}

interface SeparateCoresRuns {
  directFulls: EngineRun[];
  streamFulls: StreamRun[];
  directRestores: EngineRun[];
  streamRestores: StreamRun[];
  /** Where each restore above went, in the same order. */
  directTargets: string[];
  streamTargets: string[];
  restoredOk?: boolean;
}

/**
 * The stream as deployed, where the control plane runs on another machine: a fresh control plane pinned to
 * CPU 1 (with this process, so the API calls it makes land there too), the agent to CPU 0, against a direct
 * run pinned to CPU 0. `runs` full snapshots of the corpus as it is now, each into an empty repository (a
 * fresh direct repository and a fresh control plane and agent: a second snapshot into one would find every
 * chunk stored), and `runs` restores of the first run's snapshots; direct and stream take turns throughout.
 */
async function separateCoresRuns(
  work: string,
  corpus: Corpus,
  key: string,
  runs: number,
  beforeRestore: (dir: string) => Promise<void>,
): Promise<SeparateCoresRuns> {
  const everyCpu = `0-${cpus().length - 1}`;
  const result: SeparateCoresRuns = {
    directFulls: [],
    streamFulls: [],
    directRestores: [],
    streamRestores: [],
    directTargets: [],
    streamTargets: [],
  };
  const repo = (i: number) => pathToFileURL(join(work, `dumont-repo-separate-${i}`)).href;
  /** Full snapshot `i`, direct then through a fresh control plane and agent; returns those, still running. */
  const fullRun = async (i: number): Promise<StreamBench> => {
    pinProcess(process.pid, "1");
    await settle(corpus.root);
    result.directFulls.push(
      await engine(
        "create",
        { repo: repo(i), key, source: corpus.root, stateDir: join(work, `dumont-state-separate-${i}`) },
        "0",
      ),
    );
    // Started unpinned (its processes size their thread pools at start), then pinned before the timed call.
    pinProcess(process.pid, everyCpu);
    const stream = await StreamBench.start(join(work, `stream-separate-${i}`));
    try {
      // A fresh agent: its engine loaded before the timed call, as a running agent's is.
      await stream.warmUp(join(work, `stream-separate-${i}-warm-up`));
      stream.pin("0", "1");
      pinProcess(process.pid, "1");
      await settle(corpus.root);
      result.streamFulls.push(await stream.snapshot(corpus.root));
      return stream;
    } catch (err) {
      await stream.stop();
      throw err;
    }
  };
  try {
    // The restores right after the first full run, as when this section ran it once. Measured after all the
    // full runs (another ~5 GB written first), they were slower and noisier: 0.65-1.15 of direct mode over
    // four 1 GiB runs, against 0.78-0.94.
    const first = await fullRun(1);
    try {
      for (let i = 1; i <= runs; i++) {
        const directTarget = join(work, `dumont-restore-separate-${i}`);
        await beforeRestore(fileURLToPath(repo(1)));
        result.directRestores.push(
          await engine(
            "restore",
            { repo: repo(1), key, snapshotId: result.directFulls[0].result.id, target: directTarget },
            "0",
          ),
        );
        result.directTargets.push(directTarget);
        const streamTarget = join(work, `stream-restore-separate-${i}`);
        await beforeRestore(first.blobsDir);
        result.streamRestores.push(await first.restore(String(result.streamFulls[0].result.id), streamTarget));
        result.streamTargets.push(streamTarget);
      }
    } finally {
      await first.stop();
    }
    for (let i = 2; i <= runs; i++) await (await fullRun(i)).stop();
    return result;
  } finally {
    pinProcess(process.pid, everyCpu);
  }
}

/**
 * The snapshot issue's targets against this run's figures, each met or not (null: not measured in this run, e.g.
 * restic absent or the stream skipped). Peak memory is reported above rather than judged: "bounded" is shown by
 * the many-files bench and by the RSS not growing with the corpus, not by one number.
 */
function issueTargets(
  ratios: {
    fullThroughput: number;
    incrementalBytesAdded: number;
    incrementalTime: number;
    restoreThroughput: number;
  } | null,
  stream: ReturnType<typeof vsDirectOf>,
  byteForByte: boolean[],
) {
  const target = (name: string, value: number | undefined, bound: { atLeast: number } | { atMost: number }) => ({
    target: name,
    value: value ?? null,
    ...bound,
    met: value === undefined ? null : "atLeast" in bound ? value >= bound.atLeast : value <= bound.atMost,
  });
  return [
    target("full snapshot throughput / restic's (aim 5)", ratios?.fullThroughput, { atLeast: 3 }),
    target("incremental bytes added / restic's", ratios?.incrementalBytesAdded, { atMost: 1.1 }),
    target("incremental seconds / restic's", ratios?.incrementalTime, { atMost: 1 }),
    target("restore throughput / restic's", ratios?.restoreThroughput, { atLeast: 2 }),
    target("full snapshot through the stream / direct, shared cores", stream.sharedFull, { atLeast: 0.8 }),
    target("restore through the stream / direct, shared cores", stream.sharedRestore, { atLeast: 0.8 }),
    target("full snapshot through the stream / direct, separate cores", stream.separateFull, { atLeast: 0.8 }),
    target("restore through the stream / direct, separate cores", stream.separateRestore, { atLeast: 0.8 }),
    { target: "every restore byte for byte", value: byteForByte.every(Boolean), met: byteForByte.every(Boolean) },
  ];
}

/** The stream report's vsDirect figures, each undefined where that part was skipped. */
function vsDirectOf(
  report: { full: { vsDirect: number }; restore: { vsDirect: number }; separateCores: object } | object,
) {
  const stream = "full" in report ? report : undefined;
  const separate =
    stream && "full" in stream.separateCores
      ? (stream.separateCores as Record<"full" | "restore", { vsDirect: number }>)
      : undefined;
  return {
    sharedFull: stream?.full.vsDirect,
    sharedRestore: stream?.restore.vsDirect,
    separateFull: separate?.full.vsDirect,
    separateRestore: separate?.restore.vsDirect,
  };
}

/**
 * Direct runs against the same operation through the stream, side by side: the direct runs' median whole
 * process and, apart, their median engine call.
 */
function versusDirect(directRuns: EngineRun[], stream: StreamRun) {
  const direct = medianRun(directRuns);
  const engine = medianEngineRun(directRuns);
  return {
    directSeconds: round(direct.seconds),
    directEngineSeconds: round(engine.engineSeconds),
    streamSeconds: round(stream.seconds),
    // The engine call against the API call: neither counts a process's start (see throughStream.note).
    vsDirect: ratio(engine.engineSeconds, stream.seconds),
    directCpuSeconds: round(direct.cpuSeconds),
    directEngineCpuSeconds: round(engine.engineCpuSeconds),
    cpuSeconds: stream.cpuSeconds,
  };
}

/** Seconds and CPU seconds of every run, direct and through the stream (the agent's), in the order they ran. */
function everyRun(direct: EngineRun[], stream: StreamRun[]) {
  return {
    directRuns: direct.map((r) => round(r.seconds)),
    directEngineRuns: direct.map((r) => round(r.engineSeconds)),
    streamRuns: stream.map((r) => round(r.seconds)),
    directCpuRuns: direct.map((r) => round(r.cpuSeconds)),
    directEngineCpuRuns: direct.map((r) => round(r.engineCpuSeconds)),
    agentCpuRuns: stream.map((r) => r.cpuSeconds.agent),
  };
}

/** The run with the median wall time (the lower of the two middle ones for an even count). */
function medianRun<T extends { seconds: number }>(runs: T[]): T {
  if (runs.length === 0) throw new Error("no runs to take the median of");
  return [...runs].sort((x, y) => x.seconds - y.seconds)[Math.floor((runs.length - 1) / 2)];
}

/**
 * Incremental runs, one per repository: the median seconds and the median bytes added (each its own median:
 * the fastest run need not be the one that added least), every run's, and the highest peak RSS of them.
 */
function incrementalReport(runs: { run: { seconds: number; peakRssMiB: number | null }; bytesAdded: number }[]) {
  const bytes = runs.map((r) => r.bytesAdded).sort((x, y) => x - y);
  const median = medianRun(runs.map((r) => r.run));
  return {
    seconds: round(median.seconds),
    bytesAdded: bytes[Math.floor((bytes.length - 1) / 2)],
    runs: runs.map((r) => ({ seconds: round(r.run.seconds), bytesAdded: r.bytesAdded })),
    peakRssMiB: maxRss(runs.map((r) => r.run)),
  };
}

/**
 * Median seconds (a run's whole process), every run's seconds, throughput, the median run's CPU and page faults,
 * and the highest peak RSS of the runs.
 */
function timedReport(corpus: Corpus, runs: TimedRun[]) {
  const median = medianRun(runs);
  return {
    seconds: round(median.seconds),
    runs: runs.map((r) => round(r.seconds)),
    throughputMBps: round(corpus.bytes / MB / median.seconds),
    cpuSeconds: nullableRound(median.cpuSeconds),
    minorFaults: median.minorFaults,
    peakRssMiB: maxRss(runs),
  };
}

/**
 * Dumont's direct runs as timedReport reports restic's (whole processes), with the median run's engine call
 * beside them (engineSeconds, engineCpuSeconds, engineMinorFaults) and every run's (engineRuns).
 */
function engineReport(corpus: Corpus, runs: EngineRun[]) {
  const engine = medianEngineRun(runs);
  return {
    ...timedReport(corpus, runs),
    engineSeconds: round(engine.engineSeconds),
    engineRuns: runs.map((r) => round(r.engineSeconds)),
    engineCpuSeconds: round(engine.engineCpuSeconds),
    engineMinorFaults: engine.engineMinorFaults,
  };
}

/** The run whose engine call took the median time (not necessarily the run of median whole-process time). */
function medianEngineRun(runs: EngineRun[]): EngineRun {
  return medianRun(runs.map((run) => ({ ...run, seconds: run.engineSeconds, run }))).run;
}

/** The highest peak RSS of the runs (null where none was measured). */
function maxRss(runs: { peakRssMiB: number | null }[]): number | null {
  const known = runs.flatMap((r) => (r.peakRssMiB === null ? [] : [r.peakRssMiB]));
  return known.length > 0 ? Math.max(...known) : null;
}

function nullableRound(n: number | null): number | null {
  return n === null ? null : round(n);
}

/** Whether this process may be pinned to CPUs (some containers refuse): undefined if so, else why not. */
function pinningRefused(): string | undefined {
  try {
    pinProcess(process.pid, `0-${cpus().length - 1}`);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * The full backup's cost per GiB of workspace, Dumont's (the median direct run's whole process) and restic's
 * (likewise), with what
 * touching fresh memory took of it at this run's measured price (page faults x firstTouchMicrosPerPage).
 */
function costPerGiB(
  corpus: Corpus,
  primitives: Primitives,
  dumont: { cpuSeconds: number; minorFaults: number },
  restic: { cpuSeconds: number | null; minorFaults: number | null } | undefined,
) {
  const gib = corpus.bytes / (1024 * MiB);
  const of = (run: { cpuSeconds: number | null; minorFaults: number | null }) =>
    run.cpuSeconds === null || run.minorFaults === null
      ? null
      : {
          cpuSeconds: round(run.cpuSeconds / gib),
          minorFaults: Math.round(run.minorFaults / gib),
          faultCpuSeconds: round((run.minorFaults * primitives.firstTouchMicrosPerPage) / 1e6 / gib),
        };
  return { dumont: of(dumont), restic: restic ? of(restic) : null };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf("--size-mib");
  const sizeMiB = i > 0 ? Number(process.argv[i + 1]) : undefined;
  if (sizeMiB !== undefined && !(sizeMiB > 0)) {
    process.stderr.write("--size-mib must be a positive number of MiB\n");
    process.exit(2);
  }
  runSnapshotBench({ sizeMiB, keep: process.argv.includes("--keep") }).then(
    (report) => process.stdout.write(`${JSON.stringify(report, null, 2)}\n`),
    (err: unknown) => {
      process.stderr.write(`snapshot bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}

/** A numeric flag's value, or undefined when the flag is absent (NaN when it is not a number: callers check). */
function optionalNumber(flag: unknown): number | undefined {
  return flag === undefined ? undefined : Number(flag);
}
