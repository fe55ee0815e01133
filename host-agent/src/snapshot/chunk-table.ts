// The chunks of the files one snapshot reads, in the order the snapshot accepts them: raw ids and plain lengths
// in two growing columns, each file's chunks one run of rows (first, count), and a set of the distinct ids.
//
// Kept instead of a hex string per chunk, two small arrays per file and a Set of hex ids: for a workspace of
// 300,000 small files those were ~350 bytes a file for the whole snapshot; these are 36 bytes a chunk and a few
// bytes a slot of the set. Hex ids are made when asked for (the manifest), and dropped.

const ID = 32;

export class ChunkTable {
  private ids = Buffer.allocUnsafe(ID * 1024);
  private lens = new Uint32Array(1024);
  /** Rows so far. */
  private rows = 0;
  /** Open addressing over the distinct ids: row + 1 of the first row holding each (0 is free). */
  private slots = new Int32Array(2048);
  private distinct = 0;

  get count(): number {
    return this.rows;
  }

  /** Whether some row holds this id (32 bytes at `at` of `id`). */
  has(id: Uint8Array, at = 0): boolean {
    return this.slots[this.probe(id, at)] !== 0;
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
    this.rows++;
    const slot = this.probe(id, 0);
    if (this.slots[slot] !== 0) return false;
    this.slots[slot] = this.rows;
    if (++this.distinct * 2 > this.slots.length) this.rehash();
    return true;
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

  /** The slot holding this id, or the free slot where it would go. */
  private probe(id: Uint8Array, at: number): number {
    const mask = this.slots.length - 1;
    // Ids are SHA-256 digests: their first bytes are as good as any hash of them.
    const start = (id[at] | (id[at + 1] << 8) | (id[at + 2] << 16) | (id[at + 3] << 24)) & mask;
    for (let slot = start; ; slot = (slot + 1) & mask) {
      const row = this.slots[slot] - 1;
      if (row < 0 || this.sameId(row, id, at)) return slot;
    }
  }

  private sameId(row: number, id: Uint8Array, at: number): boolean {
    const base = ID * row;
    for (let i = 0; i < ID; i++) if (this.ids[base + i] !== id[at + i]) return false;
    return true;
  }

  private rehash(): void {
    const old = this.slots;
    this.slots = new Int32Array(2 * old.length);
    for (const entry of old) {
      if (entry === 0) continue;
      const row = entry - 1;
      this.slots[this.probe(this.ids, ID * row)] = entry;
    }
  }
}
