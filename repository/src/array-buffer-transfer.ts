// ArrayBuffer.prototype.transfer (ES2024): `buffer.transfer(0)` detaches an ArrayBuffer and frees its memory at
// once, instead of when the garbage collector gets to it. The chunk codec frees Node's cipher outputs that way
// (chunk-codec.ts says why). V8 ships the method from 11.4 (Node 22); Node 20's V8 (11.3) has it, complete,
// behind --harmony-rab-gsab-transfer. A V8 flag set while the process runs reaches the isolates made after it:
// set before a worker thread starts, it gives that worker the method, while the main thread's context (made
// at start) keeps what it had, and its codec then leaves outputs to the collector as before.
import { setFlagsFromString } from "node:v8";

let done = false;

/** Makes ArrayBuffer.prototype.transfer available to the worker threads started after this call. */
export function enableArrayBufferTransferInWorkers(): void {
  if (done) return;
  done = true;
  if (typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === "function") return; // shipped
  // Only the V8 that has the flag: an unknown flag is reported on stderr by V8.
  if (process.versions.v8.startsWith("11.3.")) setFlagsFromString("--harmony-rab-gsab-transfer");
}
