// `dumont`: the control plane and its CLI (one program).
import { Command } from "commander";
import { registerDevCommand } from "./dev-command.js";
import { registerHostCommands } from "./host-command.js";
import { registerServeCommand } from "./serve-command.js";
import { registerSnapshotCommands } from "./snapshot-command.js";

export async function main(argv: string[]): Promise<void> {
  const program = new Command("dumont")
    .description("Dumont: a GPU cloud built from other people's machines")
    .version("0.1.0")
    .option("--api-url <url>", "control plane API (env DUMONT_API_URL, default http://localhost:8000)")
    .option("--api-key <key>", "API key (env DUMONT_API_KEY, default .dumont/admin-api-key)")
    .showHelpAfterError();
  registerServeCommand(program);
  registerDevCommand(program);
  registerHostCommands(program);
  registerSnapshotCommands(program);
  await program.parseAsync(argv);
}
