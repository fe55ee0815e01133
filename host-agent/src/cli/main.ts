// `dumont-agent`: enroll this machine, run the session, and operate snapshots directly.
import { Command } from "commander";
import { AGENT_VERSION } from "../version.js";

export async function main(argv: string[]): Promise<void> {
  const program = new Command("dumont-agent")
    .description("Dumont host agent: puts this machine's GPUs on the Dumont cloud")
    .version(AGENT_VERSION)
    .showHelpAfterError();
  await program.parseAsync(argv);
}
