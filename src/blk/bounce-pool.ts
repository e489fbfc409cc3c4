// Allocator for a session's bounce arena: first fit over a sorted list of
// free extents, every allocation rounded up to GRANULE bytes so each one is
// page aligned (any O_DIRECT memory alignment holds for it).
//
// The arena itself lives in native memory; this only hands out offsets.

export const BOUNCE_GRANULE = 4096;

export class BouncePool {
  /** Free extents as [offset, length] pairs, sorted by offset, never adjacent. */
  private readonly free: number[] = [];
  private used = 0;

  constructor(readonly size: number) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % BOUNCE_GRANULE !== 0) {
      throw new RangeError(`bounce arena size must be a positive multiple of ${BOUNCE_GRANULE}, got ${size}`);
    }
    this.free.push(0, size);
  }

  /** Bytes handed out now. */
  get inUse(): number {
    return this.used;
  }

  /** Rounds a request up to what alloc() reserves for it. */
  static reserved(len: number): number {
    return Math.ceil(len / BOUNCE_GRANULE) * BOUNCE_GRANULE;
  }

  /** Offset of `len` free bytes, or -1 when no extent is large enough now. */
  alloc(len: number): number {
    const need = BouncePool.reserved(Math.max(len, 1));
    for (let i = 0; i < this.free.length; i += 2) {
      const off = this.free[i] as number;
      const avail = this.free[i + 1] as number;
      if (avail < need) continue;
      if (avail === need) this.free.splice(i, 2);
      else {
        this.free[i] = off + need;
        this.free[i + 1] = avail - need;
      }
      this.used += need;
      return off;
    }
    return -1;
  }

  /** Returns an allocation; `len` is what was passed to alloc(). */
  release(offset: number, len: number): void {
    const size = BouncePool.reserved(Math.max(len, 1));
    let i = 0;
    while (i < this.free.length && (this.free[i] as number) < offset) i += 2;
    const prevEnd = i > 0 ? (this.free[i - 2] as number) + (this.free[i - 1] as number) : -1;
    const next = i < this.free.length ? (this.free[i] as number) : -1;
    if (prevEnd > offset || (next >= 0 && offset + size > next) || offset + size > this.size) {
      throw new RangeError(`bounce release of [${offset}, +${size}) overlaps free space: double free`);
    }
    this.used -= size;
    const joinPrev = prevEnd === offset;
    const joinNext = next === offset + size;
    if (joinPrev && joinNext) {
      this.free[i - 1] = (this.free[i - 1] as number) + size + (this.free[i + 1] as number);
      this.free.splice(i, 2);
    } else if (joinPrev) {
      this.free[i - 1] = (this.free[i - 1] as number) + size;
    } else if (joinNext) {
      this.free[i] = offset;
      this.free[i + 1] = (this.free[i + 1] as number) + size;
    } else {
      this.free.splice(i, 0, offset, size);
    }
  }
}
