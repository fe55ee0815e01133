// What a user is told to do when a workspace's manifest is too large for one snapshot: said by the repository
// (a manifest over its 64 MiB object cap) and by the agent (a sealed manifest over its stream's 16 MiB message
// cap). Constants only, so the agent's session code can import it without loading the repository.
export const SMALLER_SNAPSHOT_ADVICE =
  "snapshot a smaller directory, or leave caches, datasets and installed dependencies out of it (list them in " +
  "its .dumontignore, or pass --exclude)";
