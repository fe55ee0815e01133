// What writing to the disk costs everything else the machine does, measured in the same run as the snapshot
// benchmark, in its work directory. A backup writes what it stores (~800 MB for the 1 GiB corpus) while its
// threads hash, compress and encrypt; on the 2-core dev VM a direct full backup into tmpfs took 1.9-2.2 s and the
// same into the disk 2.3-2.7 s, with no more CPU of its own waiting or working. Two processes hashing alongside
// `dd oflag=direct` showed why: the same hashing took 20-45% more CPU time while the device was busy (the
// hypervisor's I/O work lands on the same physical cores), where a memory copy as large as the writes did not slow
// them at all. So the disk's share of a backup is not only the device's speed; this puts a figure on it.
//
// Three steps, each on its own: O_DIRECT writes of 4 MiB pieces into a new file (as packs are written, see the
// repository's file-blob-store.ts) for the device's speed; two child processes each hashing the same bytes with
// SHA-256, alone; the same hashing while those writes run. Each step runs twice and the cheaper run is kept.
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { open, rm } from "node:fs/promises";
import { alignedBuffer, isPageAligned } from "@dumont/repository";
import { round } from "./tool-runs.js";

export interface DiskWriteCost {
  /** O_DIRECT writes of 4 MiB pieces into a new file in the work directory, then an fsync, nothing else running. */
  writeMBps: number;
  /** Two processes hashing HASH_MIB each with SHA-256: the slower one's seconds, alone and while those writes run. */
  hashSeconds: number;
  hashSecondsWhileWriting: number;
  /** The two processes' CPU seconds for that hashing, alone and while writing: the same work, costing more. */
  hashCpuSeconds: number;
  hashCpuSecondsWhileWriting: number;
  /** hashCpuSecondsWhileWriting / hashCpuSeconds. */
  cpuWhileWritingRatio: number;
}

const MiB = 1024 * 1024;
const PIECE = 4 * MiB;
const WRITE_MIB = 512;
const HASH_MIB = 768;
/** Written in turn while the hashing runs; a writer that outlasts it stops there. */
const MAX_WRITE_WHILE_HASHING_MIB = 4096;

/** A child that hashes `mib` MiB (a 64 MiB buffer over and over) and prints its seconds and CPU seconds. */
const HASHER = `
const { createHash } = require("node:crypto");
const buf = Buffer.alloc(64 * 1024 * 1024, 7);
const c0 = process.cpuUsage(); const t0 = performance.now();
for (let i = 0; i < ${HASH_MIB / 64}; i++) createHash("sha256").update(buf).digest();
const c = process.cpuUsage(c0);
process.stdout.write(JSON.stringify({ seconds: (performance.now() - t0) / 1000, cpuSeconds: (c.user + c.system) / 1e6 }));
`;

function hasher(): Promise<{ seconds: number; cpuSeconds: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["-e", HASHER], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code !== 0) reject(new Error(`a hashing process exited with code ${code}`));
      else resolve(JSON.parse(out) as { seconds: number; cpuSeconds: number });
    });
  });
}

async function hashPair(): Promise<{ seconds: number; cpuSeconds: number }> {
  const runs = await Promise.all([hasher(), hasher()]);
  return {
    seconds: Math.max(...runs.map((r) => r.seconds)),
    cpuSeconds: runs.reduce((sum, r) => sum + r.cpuSeconds, 0),
  };
}

/** Writes 4 MiB pieces with O_DIRECT into a new `file` until `mib` MiB are written or `stop()` says so. */
async function writeDirect(file: string, piece: Buffer, mib: number, stop: () => boolean): Promise<number> {
  const handle = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT);
  let written = 0;
  try {
    while (written < mib * MiB && !stop()) {
      const { bytesWritten } = await handle.write(piece, 0, piece.length, written);
      written += bytesWritten;
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  return written;
}

/** Measures (~10 s on the dev VM) in `dir`, which must take O_DIRECT writes (a disk, not tmpfs). */
export async function measureDiskWriteCost(dir: string): Promise<DiskWriteCost> {
  const file = `${dir}/disk-write-cost.tmp`;
  const piece = alignedBuffer(PIECE);
  if (!isPageAligned(piece)) throw new Error("no page-aligned memory for O_DIRECT writes");
  piece.fill(0x5a);
  try {
    let writeMBps = 0;
    let alone = { seconds: Infinity, cpuSeconds: Infinity };
    let writing = { seconds: Infinity, cpuSeconds: Infinity };
    for (let run = 0; run < 2; run++) {
      const t0 = performance.now();
      const bytes = await writeDirect(file, piece, WRITE_MIB, () => false);
      writeMBps = Math.max(writeMBps, bytes / 1e6 / ((performance.now() - t0) / 1000));
      await rm(file, { force: true });

      const a = await hashPair();
      if (a.cpuSeconds < alone.cpuSeconds) alone = a;

      let hashing = true;
      const writer = writeDirect(file, piece, MAX_WRITE_WHILE_HASHING_MIB, () => !hashing);
      const w = await hashPair().finally(() => {
        hashing = false;
      });
      await writer;
      await rm(file, { force: true });
      if (w.cpuSeconds < writing.cpuSeconds) writing = w;
    }
    return {
      writeMBps: Math.round(writeMBps),
      hashSeconds: round(alone.seconds),
      hashSecondsWhileWriting: round(writing.seconds),
      hashCpuSeconds: round(alone.cpuSeconds),
      hashCpuSecondsWhileWriting: round(writing.cpuSeconds),
      cpuWhileWritingRatio: round(writing.cpuSeconds / alone.cpuSeconds),
    };
  } finally {
    await rm(file, { force: true });
  }
}
