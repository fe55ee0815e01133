// An open-addressing hash table over 32-byte ids kept elsewhere, one row after another in a buffer (row r's id at
// base + stride * r): the chunk index's columns (repository-index.ts), a pack's entries while a writer fills it
// (PackEntryList), the chunks an agent's snapshot has read (its ChunkTable). SHA-256 ids are uniform, so their
// first four bytes are the hash. Each slot holds a row + 1 (0 is free); the table stays at most half full.

const ID = 32;

export class IdTable {
  private slots = new Int32Array(16);
  private used = 0;

  /** `rows()`: the buffer holding the rows now (a caller that grows it hands over the new one). */
  constructor(
    private readonly rows: () => Buffer,
    private readonly base = 0,
    private readonly stride = ID,
  ) {}

  /** Distinct ids filed. */
  get size(): number {
    return this.used;
  }

  /** The row filed under this id (the 32 bytes of `id` at `at`), or -1. */
  find(id: Uint8Array, at = 0): number {
    return this.slots[this.probe(id, at)] - 1;
  }

  /**
   * Files row `row` under its id (read from the rows), unless a row is filed under that id already: that one
   * stays. Whether the id was new.
   */
  add(row: number): boolean {
    const slot = this.probe(this.rows(), this.base + this.stride * row);
    if (this.slots[slot] !== 0) return false;
    this.slots[slot] = row + 1;
    if (2 * ++this.used > this.slots.length) this.grow();
    return true;
  }

  /** Files row `row` under its id in place of any row filed there: the row it replaced, or -1. */
  replace(row: number): number {
    const slot = this.probe(this.rows(), this.base + this.stride * row);
    const before = this.slots[slot] - 1;
    this.slots[slot] = row + 1;
    if (before < 0 && 2 * ++this.used > this.slots.length) this.grow();
    return before;
  }

  /** The slot holding this id, or the free slot where it would go. */
  private probe(id: Uint8Array, at: number): number {
    const rows = this.rows();
    const mask = this.slots.length - 1;
    const hash = id[at] | (id[at + 1] << 8) | (id[at + 2] << 16) | (id[at + 3] << 24);
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const row = this.slots[slot] - 1;
      if (row < 0) return slot;
      const start = this.base + this.stride * row;
      if (rows.compare(id, at, at + ID, start, start + ID) === 0) return slot;
    }
  }

  private grow(): void {
    const old = this.slots;
    this.slots = new Int32Array(2 * old.length);
    const rows = this.rows();
    const mask = this.slots.length - 1;
    for (const entry of old) {
      if (entry === 0) continue;
      const start = this.base + this.stride * (entry - 1);
      let slot = rows.readUInt32LE(start) & mask;
      while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
      this.slots[slot] = entry;
    }
  }
}
