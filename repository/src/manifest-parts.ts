// Gathers the parts of a manifest that travel ahead of the message carrying its last part (the agent's stream,
// both ways: SnapshotCommit and Restore), holding no more than a manifest may. It imports only the limits, so
// the agent's session code can use it without loading the repository.
import { MAX_MANIFEST_BYTES, MAX_MANIFEST_PARTS, MAX_SEALED_MANIFEST_BYTES } from "./limits.js";

/**
 * `Ref`: what stands for a part the receiver holds already instead of its bytes (the control plane's
 * `{ stored: id }`, ManifestPart.stored_id); a receiver of sealed parts only (the agent's restore) has none.
 */
export class ManifestPartsReceiver<Ref extends object = never> {
  private readonly parts: (Buffer | Ref)[] = [];
  private bytes = 0;
  /** Why a part was refused; once set, every later part and the completion are refused too. */
  refused: string | undefined;

  /** Parts taken so far (the last, carried by the completing message, not counted). */
  get received(): number {
    return this.parts.length;
  }

  /**
   * Takes part `index` (bytes are copied: the message's memory is not kept), or says why not, as the end of a sentence
   * whose subject is the sender: parts come in order, at most MAX_MANIFEST_PARTS with the last, and no more
   * bytes than MAX_MANIFEST_BYTES of manifest seal to (a few bytes more a part).
   */
  add(index: number, part: Uint8Array | Ref): string | undefined {
    if (this.refused) return this.refused;
    if (index !== this.parts.length || this.parts.length >= MAX_MANIFEST_PARTS - 1) {
      this.refused = `manifest part ${index} after ${this.parts.length} parts (at most ${MAX_MANIFEST_PARTS} in all, in order)`;
      return this.refused;
    }
    if (!(part instanceof Uint8Array)) {
      this.parts.push(part); // its size is the holder's to check when it reads the part
      return undefined;
    }
    this.bytes += part.length;
    if (this.bytes > MAX_SEALED_MANIFEST_BYTES) {
      this.refused = `more than ${MAX_MANIFEST_BYTES / 2 ** 20} MiB of manifest parts, more than a manifest holds`;
      return this.refused;
    }
    this.parts.push(Buffer.from(part));
    return undefined;
  }

  /**
   * Every part in order, `last` at the end, when `count` (0 meaning 1, as from a sender before parts) is how
   * many arrived; undefined when it is not, or a part was refused.
   */
  complete(last: Uint8Array | Ref, count: number): (Buffer | Ref)[] | undefined {
    if (this.refused || this.parts.length + 1 !== Math.max(1, count)) return undefined;
    return [...this.parts, last instanceof Uint8Array ? Buffer.from(last) : last];
  }
}
