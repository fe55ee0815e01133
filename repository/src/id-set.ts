// A set of 32-byte ids (SHA-256 chunk ids), given raw or as 64 hex digits, held in one buffer under an IdTable:
// ~40 bytes an id where a Set of hex strings took ~100 (a prune of 6 million chunks: ~250 MB against ~650).

import { IdTable } from "./id-table.js";

const ID = 32;

export class IdSet {
  private ids = Buffer.alloc(ID * 1024);
  private count = 0;
  private readonly table = new IdTable(() => this.ids);
  private readonly scratch = Buffer.alloc(ID);

  /** Distinct ids held. */
  get size(): number {
    return this.count;
  }

  /** Adds `id` (32 bytes, or 64 hex digits); anything else is refused. */
  add(id: Buffer | string): void {
    if (ID * (this.count + 1) > this.ids.length) {
      const grown = Buffer.alloc(2 * this.ids.length);
      this.ids.copy(grown);
      this.ids = grown;
    }
    if (!this.write(id, this.ids, ID * this.count)) throw new Error(`not a 32-byte id: ${String(id).slice(0, 80)}`);
    if (this.table.add(this.count)) this.count++;
  }

  has(id: Buffer | string): boolean {
    if (typeof id !== "string") return id.length === ID && this.table.find(id) >= 0;
    return this.write(id, this.scratch, 0) && this.table.find(this.scratch) >= 0;
  }

  /** The ids held, in the order added: views of 32 bytes, valid until the next add. */
  *raw(): Generator<Buffer> {
    for (let i = 0; i < this.count; i++) yield this.ids.subarray(ID * i, ID * (i + 1));
  }

  /** Writes `id`'s 32 bytes at `at` in `into`; false when it is not an id. */
  private write(id: Buffer | string, into: Buffer, at: number): boolean {
    if (typeof id === "string") return id.length === 2 * ID && into.write(id, at, ID, "hex") === ID;
    if (id.length !== ID) return false;
    id.copy(into, at);
    return true;
  }
}
