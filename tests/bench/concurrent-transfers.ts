// `npm run bench -- concurrent-transfers [--rounds 12] [--stall-seconds 20] [--size-mib 64]`: a soak of the
// agent's two connections. Each round starts a fresh control plane and agent (fresh connections: the kernel's
// socket buffers start small) and runs at once, on that one agent, a snapshot of --size-mib of new data (an
// upload), an unchanged snapshot and a restore of a workspace that size (a download). An operation not done
// within --stall-seconds is a stall.
//
// Why: Node's HTTP/2 stops reading a connection while one of its writes is in progress, so with an upload and
// a download on one connection each side could wait on the other for good (proto/src/protocol.ts,
// FLOW_CONTROL_WINDOW_BYTES). With 8 MiB windows on one connection this stalled about once in 10-30 rounds;
// restores now go on the Downloads connection. Expected: "stalls": 0.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FLOW_CONTROL_WINDOW_BYTES } from "@dumont/proto";
import { describeTree, makeWorkspace } from "../support/workspace.js";
import { StreamBench } from "./snapshot-stream.js";
import type { BenchOptions } from "./support/bench-options.js";

export const CONCURRENT_TRANSFERS_DEFAULTS = { rounds: 12, stallSeconds: 20, sizeMiB: 64 };

export interface ConcurrentTransfersOptions extends BenchOptions {
  rounds: number;
  stallSeconds: number;
  /** Of the new data uploaded and of the workspace restored, each round. */
  sizeMiB: number;
}

export async function runConcurrentTransfersBench(options: ConcurrentTransfersOptions): Promise<unknown> {
  const roundSeconds: number[] = [];
  const stalls: { round: number; error: string }[] = [];
  for (let round = 1; round <= options.rounds; round++) {
    const work = await mkdtemp(join(tmpdir(), "dumont-bench-transfers-"));
    let bench: StreamBench | undefined;
    try {
      bench = await StreamBench.start(join(work, "stream"));
      const workspace = join(work, "workspace");
      const other = join(work, "other");
      // Incompressible, so every byte crosses the stream; new each round (a fresh control plane holds nothing).
      await makeWorkspace(workspace, options.sizeMiB * 1024 * 1024);
      await makeWorkspace(other, options.sizeMiB * 1024 * 1024);
      const base = await bench.snapshot(workspace);
      const target = join(work, "restored");
      const started = performance.now();
      const all = Promise.all([
        bench.snapshot(other),
        bench.snapshot(workspace),
        bench.restore(String(base.result.id), target),
      ]);
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`not done after ${options.stallSeconds} s`)),
          options.stallSeconds * 1000,
        );
      });
      try {
        await Promise.race([all, stalled]);
      } finally {
        clearTimeout(timer);
        all.catch(() => undefined);
      }
      roundSeconds.push((performance.now() - started) / 1000);
      if (JSON.stringify(await describeTree(target)) !== JSON.stringify(await describeTree(workspace))) {
        throw new Error("the restored tree differs from the workspace");
      }
      options.progress(
        `concurrent-transfers: round ${round} of ${options.rounds}: ${roundSeconds.at(-1)?.toFixed(2)} s`,
      );
    } catch (err) {
      stalls.push({ round, error: (err as Error).message });
      options.progress(`concurrent-transfers: round ${round} of ${options.rounds} FAILED: ${(err as Error).message}`);
    } finally {
      await bench?.stop();
      await rm(work, { recursive: true, force: true });
    }
  }
  const sorted = [...roundSeconds].sort((a, b) => a - b);
  return {
    rounds: options.rounds,
    sizeMiB: options.sizeMiB,
    stalls: stalls.length,
    failures: stalls,
    flowControlWindowBytes: FLOW_CONTROL_WINDOW_BYTES,
    roundSeconds: {
      median: sorted.length ? Math.round(sorted[Math.floor(sorted.length / 2)] * 100) / 100 : null,
      max: sorted.length ? Math.round(sorted[sorted.length - 1] * 100) / 100 : null,
    },
    note:
      "each round: a fresh control plane and agent; a snapshot of sizeMiB of new data, an unchanged snapshot and a restore of as much " +
      "on that agent at once; a round not done within stallSeconds counts as a stall (expected: 0)",
  };
}
