// `dumont`: the control plane and its CLI (one program).
import { flagParsers, oneLineErrors } from "@dumont/repository/cli-flags";
import { flushStdout, watchStdout } from "@dumont/repository/cli-output";
import { Command, InvalidArgumentError } from "commander";
import { registerDevCommand } from "./dev-command.js";
import { registerHostCommands } from "./host-command.js";
import { registerKeyCommands } from "./key-command.js";
import { registerMasterKeyCommand } from "./master-key-command.js";
import { registerServeCommand } from "./serve-command.js";
import { registerSnapshotCommands } from "./snapshot-command.js";

export async function main(argv: string[]): Promise<void> {
  watchStdout();
  const program = new Command("dumont")
    .description("Dumont: a GPU cloud built from other people's machines")
    .version("0.1.0")
    .option(
      "--api-url <url>",
      "control plane API (env DUMONT_API_URL, default http://localhost:8000)",
      once("--api-url", (url) => url),
    )
    .option(
      "--api-key <key>",
      "API key (env DUMONT_API_KEY, default: the admin-api-key a local `dumont dev` wrote in $DUMONT_DATA_DIR or .dumont)",
      onceUnquoted("--api-key", (key) => key),
    )
    .configureOutput(oneLineErrors("dumont"));
  registerServeCommand(program);
  registerDevCommand(program);
  registerHostCommands(program);
  registerSnapshotCommands(program);
  registerKeyCommands(program);
  registerMasterKeyCommand(program);
  await program.parseAsync(argv);
  // A command's output that did not reach stdout (a full disk) fails it, rather than exiting 0 with it lost.
  await flushStdout();
}

// Given twice, a global flag is refused like every other (the last one silently won). The key's refusal is a
// plain Error, which the bin prints as its message alone: commander's InvalidArgumentError quotes the value.
const { once } = flagParsers(InvalidArgumentError);
const { once: onceUnquoted } = flagParsers(Error);
