// The chunks of the files one snapshot reads, in the order the snapshot accepts them: raw ids and plain lengths
// in two growing columns, each file's chunks one run of rows (first, count), and a set of the distinct ids
// (the repository's IdTable).
//
// Kept instead of a hex string per chunk, two small arrays per file and a Set of hex ids: for a workspace of
// 300,000 small files those were ~350 bytes a file for the whole snapshot; these are 36 bytes a chunk and a few
// bytes a slot of the set. Hex ids are made when asked for (the manifest), and dropped.
import { IdTable } from "@dumont/repository";

const ID = 32;

export class ChunkTable {
  private ids = Buffer.allocUnsafe(ID * 1024);
  private lens = new Uint32Array(1024);
  /** Rows so far. */
  private rows = 0;
  /** The distinct ids: each under the first row holding it. */
  private readonly distinct = new IdTable(() => this.ids);

  get count(): number {
    return this.rows;
  }

  /** Whether some row holds this id (32 bytes at `at` of `id`). */
  has(id: Uint8Array, at = 0): boolean {
    return this.distinct.find(id, at) >= 0;
  }

  /** Appends a row; whether its id is new to the table. */
  push(id: Uint8Array, length: number): boolean {
    if (id.length !== ID) throw new Error(`a chunk id is ${ID} bytes, not ${id.length}`);
    if (this.rows === this.lens.length) {
      const ids = Buffer.allocUnsafe(2 * this.ids.length);
      this.ids.copy(ids);
      this.ids = ids;
      const lens = new Uint32Array(2 * this.lens.length);
      lens.set(this.lens);
      this.lens = lens;
    }
    this.ids.set(id, ID * this.rows);
    this.lens[this.rows] = length;
    return this.distinct.add(this.rows++);
  }

  /** Hex ids of rows first .. first + count - 1 (a new array each time). */
  hexIds(first: number, count: number): string[] {
    const out = new Array<string>(count);
    for (let k = 0; k < count; k++) out[k] = this.ids.toString("hex", ID * (first + k), ID * (first + k + 1));
    return out;
  }

  /** Lengths of rows first .. first + count - 1 (a new array each time). */
  lengthList(first: number, count: number): number[] {
    const out = new Array<number>(count);
    for (let k = 0; k < count; k++) out[k] = this.lens[first + k];
    return out;
  }

  /** The raw ids of rows first .. first + count - 1, back to back: a view, valid until the next push. */
  idsOf(first: number, count: number): Buffer {
    return this.ids.subarray(ID * first, ID * (first + count));
  }

  /** The lengths of rows first .. first + count - 1: a view, valid until the next push. */
  lengthsOf(first: number, count: number): Uint32Array {
    return this.lens.subarray(first, first + count);
  }
}
