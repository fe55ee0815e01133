// The agent CLI's snapshot commands load only what they use. Each heavy package kept out is time every
// invocation saves (the S3 SDK ~130 ms, zod + pino ~100 ms, on a 2-core machine): a one-file snapshot took
// 0.30 s of wall time with them and 0.16 s without.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it, onTestFinished } from "vitest";
import { agentBin, runNode, tempDir } from "../support/processes.js";

// Preloaded with --require: on exit, writes the CommonJS modules the process loaded (the S3 SDK, pino and
// grpc-js are CommonJS, so their absence shows here).
const REPORT_MODULES = `
const { writeFileSync } = require("node:fs");
process.on("exit", () => writeFileSync(process.env.MODULES_OUT, Object.keys(require.cache).join("\\n")));
`;

describe("dumont-agent snapshot commands", () => {
  it("snapshot a file:// repository without loading the S3 SDK, the logger or gRPC", async () => {
    const dir = await tempDir("cli-startup");
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const source = path.join(dir, "src");
    await writeFile(path.join(dir, "preload.cjs"), REPORT_MODULES);
    await writeFile(path.join(dir, "key"), "22".repeat(32), { mode: 0o600 });
    await mkdir(source);
    await writeFile(path.join(source, "a.txt"), "hello\n");
    const modulesOut = path.join(dir, "modules.txt");

    const result = await runNode(
      agentBin,
      [
        "snapshot",
        "create",
        "--source",
        source,
        "--repo",
        pathToFileURL(path.join(dir, "repo")).href,
        "--key-file",
        path.join(dir, "key"),
        "--state-dir",
        path.join(dir, "state"),
        "--json",
      ],
      { NODE_OPTIONS: `--require ${path.join(dir, "preload.cjs")}`, MODULES_OUT: modulesOut },
    );
    expect(result.stderr).toMatch(
      /^created a new repository at file:\/\/\S+ \(id [0-9a-f]{32}\); only its key opens it: keep a copy\n$/,
    );
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ files: 1, bytesRead: 6 });

    const loaded = (await readFile(modulesOut, "utf8")).split("\n");
    // The report works: commander (CommonJS) is always loaded.
    expect(loaded.some((m) => m.includes(`${path.sep}commander${path.sep}`))).toBe(true);
    for (const heavy of ["@aws-sdk", "@smithy", "pino", "@grpc"]) {
      expect(loaded.filter((m) => m.includes(`${path.sep}node_modules${path.sep}${heavy}`))).toEqual([]);
    }
  });
});
