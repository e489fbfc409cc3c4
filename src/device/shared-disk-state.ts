// The disk facts every thread's request path reads and the main thread
// changes (capacity on an online resize, the write cache mode), and the end of
// the highest write each thread accepted: one SharedArrayBuffer for them all.

import type { DiskView } from '../blk/disk-view';

const CAPACITY = 0;
const WRITEBACK = 1;
const FIRST_WRITTEN = 2;
/** Most data-plane workers (--workers). */
export const MAX_WORKERS = 64;
/** Slot 0 is the main thread's (in-thread data plane); worker w writes slot 1 + w. */
const WRITER_SLOTS = 1 + MAX_WORKERS;

/**
 * The shared state. Fields are plain Float64 stores, not atomics: each slot
 * has a single writer, an aligned 8-byte store is not torn on the machines
 * Node runs on, and a reader that sees a new value one batch late is what
 * the single-threaded daemon allowed too (a resize lands between batches).
 */
export class SharedDiskState {
  private readonly f: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer((FIRST_WRITTEN + WRITER_SLOTS) * 8)) {
    this.f = new Float64Array(buffer);
  }

  get capacitySectors(): number {
    return this.f[CAPACITY] as number;
  }

  set capacitySectors(n: number) {
    this.f[CAPACITY] = n;
  }

  get writeback(): boolean {
    return this.f[WRITEBACK] !== 0;
  }

  set writeback(on: boolean) {
    this.f[WRITEBACK] = on ? 1 : 0;
  }

  /** The sector after the highest write any thread accepted. */
  get writtenEndSector(): number {
    let end = 0;
    for (let i = FIRST_WRITTEN; i < this.f.length; i++) end = Math.max(end, this.f[i] as number);
    return end;
  }

  /**
   * `base` with its capacity read through this state, and its written end
   * kept in `slot` (its thread's: noteWrite compares with that thread's own
   * writes; the device reads writtenEndSector above). The rest of base is
   * copied: it never changes after start-up.
   */
  view(base: DiskView, slot: number): DiskView {
    if (!Number.isInteger(slot) || slot < 0 || slot >= WRITER_SLOTS) throw new RangeError(`writer slot ${slot} out of range`);
    const f = this.f;
    const rest: DiskView = { ...base };
    delete rest.writtenEndSector;
    return {
      ...rest,
      get capacitySectors() {
        return f[CAPACITY] as number;
      },
      set capacitySectors(n: number) {
        f[CAPACITY] = n;
      },
      get writtenEndSector() {
        return f[FIRST_WRITTEN + slot] as number;
      },
      set writtenEndSector(n: number) {
        f[FIRST_WRITTEN + slot] = n;
      },
    };
  }
}
