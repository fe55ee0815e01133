// `dumont snapshot …` (admin): snapshot a directory on a host through its agent, list, restore.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { api } from "@dumont/proto";
import type { Command } from "commander";
import { type ApiOptions, apiClients } from "./api-client.js";

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program.command("snapshot").description("workspace snapshots stored by the control plane (admin)");
  const apiOpts = (cmd: Command): ApiOptions => cmd.optsWithGlobals() as ApiOptions;

  snapshot
    .command("create")
    .description("snapshot a directory on a host; the agent streams it to the control plane's blob store")
    .requiredOption("--host <hostId>", "the host holding the directory")
    .requiredOption("--path <dir>", "absolute path of the directory on that host")
    .option("--workspace <id>", "workspace id to file the snapshot under (default HOST:PATH)")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await withElapsed("snapshotting", !opts.json, () =>
        apiClients(apiOpts(cmd)).snapshots.createSnapshot({
          hostId: opts.host,
          path: opts.path,
          workspaceId: opts.workspace,
        }),
      );
      const s = snapshotJson(res.snapshot!);
      if (opts.json) return print(s);
      process.stdout.write(
        `snapshot ${s.id}: ${s.files} files, ${mib(s.bytesRead)} read, ${mib(s.bytesNew)} new, ${mib(s.bytesStored)} stored in ${s.seconds.toFixed(1)}s\n`,
      );
    });

  snapshot
    .command("list")
    .description("committed snapshots")
    .option("--host <hostId>", "only this host's")
    .option("--workspace <id>", "only this workspace's")
    .option("--json", "print JSON")
    .action(async (opts, cmd: Command) => {
      const res = await apiClients(apiOpts(cmd)).snapshots.listSnapshots({
        hostId: opts.host,
        workspaceId: opts.workspace,
      });
      const list = res.snapshots.map(snapshotJson);
      if (opts.json) return print(list);
      for (const s of list)
        process.stdout.write(
          `${s.id}  ${s.createdAt}  ${s.hostId}  ${s.path}  ${s.files} files  ${mib(s.bytesStored)}\n`,
        );
    });

  snapshot
    .command("restore <snapshotId>")
    .description("restore a snapshot into a new or empty directory on a host")
    .requiredOption("--host <hostId>", "the host to restore onto")
    .requiredOption("--target <dir>", "absolute path of a new or empty directory on that host")
    .option("--json", "print JSON")
    .action(async (snapshotId: string, opts, cmd: Command) => {
      const res = await withElapsed("restoring", !opts.json, () =>
        apiClients(apiOpts(cmd)).snapshots.restoreSnapshot({ snapshotId, hostId: opts.host, target: opts.target }),
      );
      const out = { files: Number(res.files), bytesWritten: Number(res.bytesWritten), seconds: res.seconds };
      if (opts.json) return print(out);
      process.stdout.write(`restored ${out.files} files, ${mib(out.bytesWritten)} in ${out.seconds.toFixed(1)}s\n`);
    });
}

function snapshotJson(s: api.Snapshot) {
  return {
    id: s.id,
    hostId: s.hostId,
    workspaceId: s.workspaceId,
    path: s.path,
    epoch: Number(s.epoch),
    createdAt: s.createdAt ? timestampDate(s.createdAt).toISOString() : null,
    files: Number(s.files),
    bytesRead: Number(s.bytesRead),
    bytesNew: Number(s.bytesNew),
    bytesStored: Number(s.bytesStored),
    chunksNew: Number(s.chunksNew),
    seconds: s.seconds,
  };
}

/** On a TTY, shows elapsed time while the control plane works (the API call is unary). */
async function withElapsed<T>(what: string, show: boolean, work: () => Promise<T>): Promise<T> {
  if (!show || !process.stderr.isTTY) return work();
  const started = Date.now();
  const timer = setInterval(
    () => process.stderr.write(`\r${what}… ${((Date.now() - started) / 1000).toFixed(0)}s`),
    500,
  );
  try {
    return await work();
  } finally {
    clearInterval(timer);
    process.stderr.write("\r\x1b[K");
  }
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
