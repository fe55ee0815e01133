// `dumont master-key rotate`: a new master key for the tenant keys, run where `dumont serve` runs, with it
// stopped (see snapshots/master-key-rotation.ts). It opens the database itself: the master key never goes
// through the API.
import { counted } from "@dumont/repository/counted";
import type { Command } from "commander";
import type { ControlPlaneOptions } from "../config.js";
import { print } from "./output.js";
import { addStateOptions, givenOptions } from "./serve-command.js";

export function registerMasterKeyCommand(program: Command): void {
  const masterKey = program
    .command("master-key")
    .description("the master key that wraps the tenant keys (run on the control plane's machine, with it stopped)");
  addStateOptions(
    masterKey
      .command("rotate")
      .description(
        "wrap every tenant key with a new master key: snapshots stay readable, nothing in the blob store changes",
      ),
  )
    .option(
      "--new-key-file <file>",
      "the new key, 64 hex characters in a file only you can read (required when DUMONT_MASTER_KEY is set; " +
        "otherwise a random key replaces <data-dir>/master.key)",
    )
    .option("--json", "print JSON")
    .action(async (given: ControlPlaneOptions & { newKeyFile?: string; json?: boolean }, cmd: Command) => {
      // As serve and dev: an empty --data-dir (a variable that expanded to nothing) is refused, not the default's.
      const opts = givenOptions(cmd, given);
      // Loaded here, as `serve` does: the database and its driver are heavy for every other command.
      const [{ loadConfig }, { controlPlaneConnections, openDatabase }, { rotateMasterKey }] = await Promise.all([
        import("../config.js"),
        import("../db/database.js"),
        import("../snapshots/master-key-rotation.js"),
      ]);
      const config = loadConfig({ dataDir: opts.dataDir, databaseUrl: opts.databaseUrl });
      delete process.env.DUMONT_MASTER_KEY; // read once, as serve does
      const db = await openDatabase({
        dataDir: config.dataDir,
        databaseUrl: config.databaseUrl,
        applicationName: "dumont master-key",
        existing: true, // a mistyped --data-dir must not leave a new database behind
      });
      try {
        // A control plane left running keeps the old key: it would be refused every new tenant's key afterwards
        // (TenantKeys.get). The embedded database's lock keeps one out; on Postgres, look for their connections.
        const others = await controlPlaneConnections(db, !config.databaseUrl);
        if (others > 0) {
          throw new Error(
            `a control plane is still connected to this database (${counted(others, "connection")} named ` +
              '"dumont control plane"): stop every control plane that uses it, then rotate',
          );
        }
        const result = await rotateMasterKey({
          db,
          dataDir: config.dataDir,
          fromEnv: config.masterKey,
          newKeyFile: opts.newKeyFile,
        });
        if (opts.json) return print(result);
        const already = result.alreadyNew > 0 ? ` (${counted(result.alreadyNew, "was", "were")} already)` : "";
        process.stdout.write(
          `Wrapped ${counted(result.rewrapped, "tenant key")} with the new master key${already}.\n` +
            (result.fromEnvironment
              ? `Set DUMONT_MASTER_KEY to the key in ${result.newKeyAt} wherever the control planes read it, then ` +
                "start them: the old key opens none of the tenant keys now.\n"
              : `It is in ${result.newKeyAt}, which the control plane reads at its next start; keep a copy apart ` +
                "from the database, as before.\n") +
            "Database backups made before this still hold the tenant keys wrapped by the old key: the old key " +
            "and those backups open snapshots together, so destroy or guard them as one.\n",
        );
      } finally {
        await db.destroy();
      }
    });
}
