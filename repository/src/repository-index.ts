// Where every chunk of a repository lives: built from the index objects (one per pack), kept up to date by
// writers as they add packs, and refreshed from the store by Repository.loadIndex.
//
// The control plane keeps one per tenant for as long as it runs, so its size is the control plane's memory:
// a chunk is one small file as often as a MiB of a large one. It is held in columns, not objects: the 32-byte
// ids back to back, each entry's pack, offset and lengths in typed arrays, and an IdTable (open addressing)
// over them. ~60 bytes a chunk, against
// ~300 for a Map from hex ids to location objects beside every pack's decoded entries (300,000 chunks:
// ~17 MB against ~90 MB), and nothing for the garbage collector to walk.
import { IdTable } from "./id-table.js";
import type { PackEntry, PackEntryList, PackIndex } from "./pack.js";

export interface ChunkLocation {
  packId: string;
  offset: number;
  length: number;
  plainLength: number;
}

const ID = 32;
const EMPTY = -1;
const U32 = 0xffff_ffff;

/** Every chunk the repository holds, from the index objects (one per pack). */
export class RepositoryIndex {
  /** Each pack's id, size and entries (read from the columns when asked: prune and check walk them). */
  readonly packs = new Map<string, PackIndex>();
  /** Entry columns; a pack's entries are contiguous, in the order added. */
  private ids = Buffer.alloc(0);
  private pack = new Uint32Array(0);
  private offset = new Uint32Array(0);
  private length = new Uint32Array(0);
  private plainLength = new Uint32Array(0);
  /**
   * A chunk's other copies: the entry of the same id each entry took the place of in `table`, or EMPTY (most: a
   * chunk is in two packs when two racing snapshots both stored it, or a repack was cut short). Read only when a
   * copy turns out damaged (`locations`). A column, not a Map: a cut-short repack of millions of chunks would
   * pass a Map's ~16.7 million entries.
   */
  private older = new Int32Array(0);
  private entries = 0;
  /** Entries of each pack: [first, end) by pack number; packIds[n] is its id. */
  private packIds: string[] = [];
  private packRanges: [number, number][] = [];
  private readonly packNumbers = new Map<string, number>();
  /** Entries by id. A chunk held by several packs finds the one added last. */
  private table = new IdTable(() => this.ids);
  private readonly scratch = Buffer.alloc(ID);

  add(pack: PackIndex): void {
    const { entries } = pack;
    // Checked first: a pack is added whole or not at all.
    for (const e of entries) {
      if (e.id.length !== ID) throw new Error(`pack ${pack.packId} has an entry whose id is not ${ID} bytes`);
      for (const n of [e.offset, e.length, e.plainLength]) {
        if (!Number.isInteger(n) || n < 0 || n > U32) throw new Error(`pack ${pack.packId} has an entry out of range`);
      }
    }
    if (this.holds(pack.packId, pack.packSize, entries.length)) return;
    this.register(pack.packId, pack.packSize, entries.length, (i, k) => {
      const e = entries[k];
      e.id.copy(this.ids, ID * i);
      this.offset[i] = e.offset;
      this.length[i] = e.length;
      this.plainLength[i] = e.plainLength;
    });
  }

  /** Adds a pack a writer has just written, from the list it filled (no object per entry). */
  addList(packId: string, packSize: number, list: PackEntryList): void {
    if (this.holds(packId, packSize, list.count)) return;
    this.register(packId, packSize, list.count, (i, k) => {
      list.copyId(k, this.ids, ID * i);
      this.offset[i] = list.offset(k);
      this.length[i] = list.blobLength(k);
      this.plainLength[i] = list.plainLength(k);
    });
  }

  /**
   * Whether the pack is held already, as given: then adding it again changes nothing. An index object never
   * changes (every pack written gets a new id), and two loads into one cached index (loadIndex `into`), or a
   * writer's pack a load has just read, add the same pack twice: each rebuilt the whole index (~2 s a million
   * chunks, on the control plane's event loop). Held otherwise (repair-index rebuilt it from the pack), it is
   * replaced.
   */
  private holds(packId: string, packSize: number, count: number): boolean {
    const number = this.packNumbers.get(packId);
    if (number === undefined) return false;
    const [a, b] = this.packRanges[number];
    if (this.packs.get(packId)?.packSize === packSize && b - a === count) return true;
    this.removePacks([packId]);
    return false;
  }

  /** Forgets packs (after prune deleted them); a chunk also held by another pack stays findable there. */
  removePacks(packIds: Iterable<string>): void {
    const gone = new Set<number>();
    for (const packId of packIds) {
      const number = this.packNumbers.get(packId);
      if (number !== undefined) gone.add(number);
    }
    if (gone.size === 0) return;
    // A caller may still hold a removed pack (prune repacks what it removed): it keeps its entries, read from
    // the columns as they are now, which live on only while it does. Copied out instead, removing most of an
    // index (a prune, the refresh after it) made an object per chunk removed (~165 bytes each).
    const columns = this.columns();
    for (const number of gone) {
      const view = this.packs.get(this.packIds[number]);
      const [a, b] = this.packRanges[number];
      if (view) Object.defineProperty(view, "entries", { get: () => entriesIn(columns, a, b) });
    }
    // Rare (a prune, a refresh after one): the columns are rebuilt without those packs' entries.
    const old = {
      ids: this.ids,
      pack: this.pack,
      offset: this.offset,
      length: this.length,
      plainLength: this.plainLength,
      packIds: this.packIds,
      packRanges: this.packRanges,
    };
    const sizes = new Map([...this.packs.values()].map((p) => [p.packId, p.packSize]));
    this.packs.clear();
    this.packNumbers.clear();
    this.packIds = [];
    this.packRanges = [];
    this.entries = 0;
    this.table = new IdTable(() => this.ids);
    const kept = old.packRanges.reduce((n, [a, b], number) => n + (gone.has(number) ? 0 : b - a), 0);
    this.ids = Buffer.alloc(0);
    this.pack = new Uint32Array(0);
    this.offset = new Uint32Array(0);
    this.length = new Uint32Array(0);
    this.plainLength = new Uint32Array(0);
    this.older = new Int32Array(0);
    this.reserve(kept);
    for (let number = 0; number < old.packIds.length; number++) {
      if (gone.has(number)) continue;
      const packId = old.packIds[number];
      const [a, b] = old.packRanges[number];
      this.register(packId, sizes.get(packId) ?? 0, b - a, (i, k) => {
        const j = a + k;
        old.ids.copy(this.ids, ID * i, ID * j, ID * (j + 1));
        this.offset[i] = old.offset[j];
        this.length[i] = old.length[j];
        this.plainLength[i] = old.plainLength[j];
      });
    }
  }

  /** Numbers a pack of `count` entries and files them: `fill(i, k)` writes its k-th entry into columns at `i`. */
  private register(packId: string, packSize: number, count: number, fill: (i: number, k: number) => void): void {
    const number = this.packIds.length;
    this.packIds.push(packId);
    this.packNumbers.set(packId, number);
    const first = this.entries;
    this.reserve(this.entries + count);
    for (let k = 0; k < count; k++) {
      const i = this.entries++;
      this.pack[i] = number;
      fill(i, k);
      this.older[i] = this.table.replace(i);
    }
    this.packRanges.push([first, this.entries]);
    this.packs.set(packId, this.packView(packId, packSize));
  }

  get(id: Buffer | string): ChunkLocation | undefined {
    const i = this.find(id);
    return i === EMPTY ? undefined : this.location(i);
  }

  /**
   * Every copy of chunk `id` the index holds, the one `get` finds first, then the others from the newest: where a
   * restore looks when the first turns out damaged.
   */
  locations(id: Buffer | string): ChunkLocation[] {
    const out: ChunkLocation[] = [];
    for (let i = this.find(id); i !== EMPTY; i = this.older[i]) out.push(this.location(i));
    return out;
  }

  /** How many copies of chunk `id` the index holds (`locations`' length, without making them). */
  copyCount(id: Buffer | string): number {
    let n = 0;
    for (let i = this.find(id); i !== EMPTY; i = this.older[i]) n++;
    return n;
  }

  private location(i: number): ChunkLocation {
    return {
      packId: this.packIds[this.pack[i]],
      offset: this.offset[i],
      length: this.length[i],
      plainLength: this.plainLength[i],
    };
  }

  has(id: Buffer | string): boolean {
    return this.find(id) !== EMPTY;
  }

  /** The id of the pack holding chunk `id`, or undefined. */
  packIdOf(id: Buffer | string): string | undefined {
    const i = this.find(id);
    return i === EMPTY ? undefined : this.packIds[this.pack[i]];
  }

  /** The plain length of chunk `id`, or -1 when the index does not hold it (get, without a location object). */
  plainLengthOf(id: Buffer | string): number {
    const i = this.find(id);
    return i === EMPTY ? -1 : this.plainLength[i];
  }

  get chunkCount(): number {
    return this.table.size;
  }

  /** The bytes of the packs the index holds, as the store holds them (one pass over the packs, not the chunks). */
  get packBytes(): number {
    let bytes = 0;
    for (const pack of this.packs.values()) bytes += pack.packSize;
    return bytes;
  }

  /**
   * What the index holds: its packs and their bytes in the store, and its distinct chunks (a chunk two packs hold
   * counts once) and their plain bytes.
   */
  totals(): { packs: number; packBytes: number; chunks: number; plainBytes: number } {
    const packBytes = this.packBytes;
    let plainBytes = 0;
    for (let i = 0; i < this.entries; i++) {
      if (this.table.find(this.ids.subarray(ID * i, ID * (i + 1))) === i) plainBytes += this.plainLength[i];
    }
    return { packs: this.packs.size, packBytes, chunks: this.table.size, plainBytes };
  }

  /** The entry holding `id` (a raw id or 64 hex digits), or EMPTY. */
  private find(id: Buffer | string): number {
    if (typeof id === "string") {
      if (id.length !== 2 * ID || this.scratch.write(id, "hex") !== ID) return EMPTY;
      return this.table.find(this.scratch);
    }
    return id.length === ID ? this.table.find(id) : EMPTY;
  }

  /** Room for `count` entries in the columns (doubling, so adding pack after pack stays linear). */
  private reserve(count: number): void {
    if (count <= this.pack.length) return;
    const capacity = Math.max(count, 2 * this.pack.length, 1024);
    const ids = Buffer.alloc(ID * capacity);
    this.ids.copy(ids, 0, 0, ID * this.entries);
    this.ids = ids;
    const grow = (a: Uint32Array) => {
      const b = new Uint32Array(capacity);
      b.set(a.subarray(0, this.entries));
      return b;
    };
    this.pack = grow(this.pack);
    this.offset = grow(this.offset);
    this.length = grow(this.length);
    this.plainLength = grow(this.plainLength);
    const older = new Int32Array(capacity);
    older.set(this.older.subarray(0, this.entries));
    this.older = older;
  }

  /** A pack as PackIndex, its entries read from the columns (copies: later packs may move them). */
  private packView(packId: string, packSize: number): PackIndex {
    const index = this;
    return {
      packId,
      packSize,
      get entries(): PackEntry[] {
        const number = index.packNumbers.get(packId);
        if (number === undefined) return [];
        const [a, b] = index.packRanges[number];
        return entriesIn(index.columns(), a, b);
      },
    };
  }

  private columns(): Columns {
    return { ids: this.ids, offset: this.offset, length: this.length, plainLength: this.plainLength };
  }
}

interface Columns {
  ids: Buffer;
  offset: Uint32Array;
  length: Uint32Array;
  plainLength: Uint32Array;
}

/** Entries [a, b) of `columns`, as objects (copies). */
function entriesIn(columns: Columns, a: number, b: number): PackEntry[] {
  const out: PackEntry[] = [];
  for (let i = a; i < b; i++) {
    out.push({
      id: Buffer.from(columns.ids.subarray(ID * i, ID * (i + 1))),
      offset: columns.offset[i],
      length: columns.length[i],
      plainLength: columns.plainLength[i],
    });
  }
  return out;
}
