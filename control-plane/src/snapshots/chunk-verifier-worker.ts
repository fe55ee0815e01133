// A thread of the ChunkVerifier (chunk-verifier.ts): opens each chunk of a batch and checks its SHA-256
// against its id. The batch's blobs arrive staged in one transferred buffer, which goes back with the answer
// so the pool can reuse it, or in the shared memory they were received in, read where they are.
import { parentPort } from "node:worker_threads";
import { chunkCodec } from "@dumont/repository/sealing";
import type { VerifyReply, VerifyRequest } from "./chunk-verifier.js";

const port = parentPort;
if (!port) throw new Error("chunk-verifier-worker.js runs as a worker thread of ChunkVerifier");
port.on("message", (req: VerifyRequest) => {
  const key = Buffer.from(req.key);
  const data = Buffer.from(req.data);
  const problems: (string | null)[] = [];
  // verifyChunk says what is wrong with a chunk; one that throws failed to look (memory, a bug), which says nothing
  // of the chunk: the batch fails. Taken for damage, a pack repair would delete a good chunk for it.
  let error: string | undefined;
  try {
    for (let i = 0; i < req.lengths.length; i++) {
      const blob = data.subarray(req.offsets[i], req.offsets[i] + req.lengths[i]);
      const id = Buffer.from(req.ids.buffer, req.ids.byteOffset + 32 * i, 32);
      const plainLength = req.plainLengths[i];
      problems.push(plainLength < 0 ? "its id is not 32 bytes" : chunkCodec.verifyChunk(key, id, blob, plainLength));
    }
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
  }
  const reply: VerifyReply = { seq: req.seq, problems, ...(error === undefined ? {} : { error }) };
  if (req.data instanceof SharedArrayBuffer) port.postMessage(reply);
  else port.postMessage({ ...reply, data: req.data } satisfies VerifyReply, [req.data]);
});
