// Where every chunk of a repository lives: built from the index objects (one per pack), kept up to date by
// writers as they add packs, and refreshed from the store by Repository.loadIndex.
import type { PackIndex } from "./pack.js";

export interface ChunkLocation {
  packId: string;
  offset: number;
  length: number;
  plainLength: number;
}

/** Every chunk the repository holds, from the index objects (one per pack). */
export class RepositoryIndex {
  readonly packs = new Map<string, PackIndex>();
  private readonly chunks = new Map<string, ChunkLocation>();

  add(pack: PackIndex): void {
    this.packs.set(pack.packId, pack);
    for (const e of pack.entries) {
      this.chunks.set(e.id.toString("hex"), {
        packId: pack.packId,
        offset: e.offset,
        length: e.length,
        plainLength: e.plainLength,
      });
    }
  }

  /** Forgets packs (after prune deleted them); a chunk also held by another pack stays findable there. */
  removePacks(packIds: Iterable<string>): void {
    let orphaned = false;
    for (const packId of packIds) {
      const pack = this.packs.get(packId);
      if (!pack) continue;
      this.packs.delete(packId);
      for (const e of pack.entries) {
        const hex = e.id.toString("hex");
        if (this.chunks.get(hex)?.packId === packId) {
          this.chunks.delete(hex);
          orphaned = true;
        }
      }
    }
    if (!orphaned) return;
    for (const other of this.packs.values()) {
      for (const e of other.entries) {
        const hex = e.id.toString("hex");
        if (!this.chunks.has(hex)) {
          this.chunks.set(hex, {
            packId: other.packId,
            offset: e.offset,
            length: e.length,
            plainLength: e.plainLength,
          });
        }
      }
    }
  }

  get(id: Buffer | string): ChunkLocation | undefined {
    return this.chunks.get(typeof id === "string" ? id : id.toString("hex"));
  }

  has(id: Buffer | string): boolean {
    return this.chunks.has(typeof id === "string" ? id : id.toString("hex"));
  }

  get chunkCount(): number {
    return this.chunks.size;
  }
}
