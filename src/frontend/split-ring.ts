// Driver side of a VIRTIO 1.x split virtqueue, laid out in GuestMemory.
//
//   descriptor table (16-byte aligned), 16 bytes per entry:
//     +0 addr u64 | +8 len u32 | +12 flags u16 (NEXT 1, WRITE 2, INDIRECT 4) | +14 next u16
//   available ring (2-byte aligned), written by the driver:
//     +0 flags u16 | +2 idx u16 | +4 ring[num] u16 | +4+2*num used_event u16
//   used ring (4-byte aligned), written by the device:
//     +0 flags u16 | +2 idx u16 | +4 ring[num] {id u32, len u32} | +4+8*num avail_event u16
//
// Ordering: descriptors and avail ring entries are written first, then the
// avail idx with an Atomics store (a full barrier, as virtio_wmb + the
// EVENT_IDX virtio_mb need); used idx and avail_event are read with Atomics
// loads before the entries they publish.

import type { GuestMemory, GuestRegion } from './guest-memory';

export const DescFlags = Object.freeze({ NEXT: 1, WRITE: 2, INDIRECT: 4 });
export const DESC_SIZE = 16;
/** used->flags: the device asks the driver not to kick (it is polling). */
const VRING_USED_F_NO_NOTIFY = 1;

/** One buffer of a chain: guest-physical range and direction (write = device writes). */
export interface RingSeg {
  gpa: number;
  len: number;
  write: boolean;
}

/** A raw descriptor, for tests that craft malformed chains. */
export interface RawDesc {
  addr: number | bigint;
  len: number;
  flags: number;
  next: number;
}

export interface UsedElem<T> {
  head: number;
  len: number;
  token: T;
}

export interface SplitRingOptions {
  /** Queue size: a power of two, 1..32768. */
  size: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** Region to place the rings in (default 0). */
  region?: number;
}

/** vring_need_event from the VIRTIO spec: did idx cross event while moving old -> new? */
export function vringNeedEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

interface Chain<T> {
  descs: number[];
  indirect: number | undefined;
  token: T;
}

export class SplitRing<T = unknown> {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;

  private readonly mem: GuestMemory;
  private readonly avail: { region: GuestRegion; offset: number };
  private readonly used: { region: GuestRegion; offset: number };
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly freeList: number[] = [];
  private readonly chains = new Map<number, Chain<T>>();
  private shadowAvail = 0;
  private publishedAvail = 0;
  private lastUsed = 0;
  private interrupts = true;

  constructor(mem: GuestMemory, options: SplitRingOptions) {
    const n = options.size;
    if (!Number.isInteger(n) || n < 1 || n > 32768 || (n & (n - 1)) !== 0) {
      throw new RangeError(`Expected a power-of-two queue size between 1 and 32768 but received ${n}`);
    }
    this.mem = mem;
    this.size = n;
    this.eventIdx = options.eventIdx;
    const region = options.region ?? 0;
    this.descGpa = mem.alloc(DESC_SIZE * n, 16, { region });
    this.availGpa = mem.alloc(6 + 2 * n, 2, { region });
    this.usedGpa = mem.alloc(6 + 8 * n, 4, { region });
    mem.locateWithin(this.descGpa, DESC_SIZE * n); // the table must lie in one region
    this.avail = mem.locateWithin(this.availGpa, 6 + 2 * n);
    this.used = mem.locateWithin(this.usedGpa, 6 + 8 * n);
    this.avail16 = new Uint16Array(this.avail.region.buffer);
    this.used16 = new Uint16Array(this.used.region.buffer);
    mem.fill(this.descGpa, DESC_SIZE * n, 0);
    mem.fill(this.availGpa, 6 + 2 * n, 0);
    mem.fill(this.usedGpa, 6 + 8 * n, 0);
    for (let i = n - 1; i >= 0; i--) this.freeList.push(i);
  }

  get freeDescs(): number {
    return this.freeList.length;
  }

  /** Chains handed to the device and not yet returned in the used ring. */
  get inFlight(): number {
    return this.chains.size;
  }

  /** Whether a chain of nsegs buffers fits now. */
  canAdd(nsegs: number, indirect: boolean): boolean {
    return this.freeList.length >= (indirect ? 1 : nsegs);
  }

  /**
   * Writes a chain of buffers (directly, or through an indirect table) and
   * queues its head in the avail ring; publish() makes it visible.
   */
  add(segs: readonly RingSeg[], token: T, opts: { indirect?: boolean } = {}): number {
    if (segs.length === 0) throw new RangeError('a chain needs at least one buffer');
    if (opts.indirect) {
      if (this.freeList.length < 1) throw new RangeError('virtqueue full');
      const table = this.mem.alloc(DESC_SIZE * segs.length, 16);
      segs.forEach((s, k) => {
        const last = k === segs.length - 1;
        this.writeDescAt(table + k * DESC_SIZE, {
          addr: s.gpa,
          len: s.len,
          flags: (s.write ? DescFlags.WRITE : 0) | (last ? 0 : DescFlags.NEXT),
          next: last ? 0 : k + 1,
        });
      });
      const head = this.freeList.pop()!; // length checked above
      this.writeDesc(head, { addr: table, len: DESC_SIZE * segs.length, flags: DescFlags.INDIRECT, next: 0 });
      this.pushAvail(head, token, [head], table);
      return head;
    }
    if (this.freeList.length < segs.length)
      throw new RangeError(`virtqueue full: ${segs.length} descriptors wanted, ${this.freeList.length} free`);
    const idx = segs.map(() => this.freeList.pop()!); // length checked above
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      this.writeDesc(idx[k]!, {
        addr: s.gpa,
        len: s.len,
        flags: (s.write ? DescFlags.WRITE : 0) | (last ? 0 : DescFlags.NEXT),
        next: last ? 0 : idx[k + 1]!,
      });
    });
    const head = idx[0]!;
    this.pushAvail(head, token, idx, undefined);
    return head;
  }

  // ---- raw access, for tests that hand the device malformed chains ----

  /** Takes a free descriptor index (the caller writes it with writeDesc). */
  takeDesc(): number {
    const i = this.freeList.pop();
    if (i === undefined) throw new RangeError('virtqueue full');
    return i;
  }

  /** Writes descriptor i of the ring's table verbatim. */
  writeDesc(i: number, d: RawDesc): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) throw new RangeError(`descriptor index ${i} out of range`);
    this.writeDescAt(this.descGpa + i * DESC_SIZE, d);
  }

  /** Writes a descriptor at any gpa (indirect tables). */
  writeDescAt(gpa: number, d: RawDesc): void {
    const { region, offset } = this.mem.locateWithin(gpa, DESC_SIZE);
    region.view.setBigUint64(offset, BigInt(d.addr), true);
    region.view.setUint32(offset + 8, d.len >>> 0, true);
    region.view.setUint16(offset + 12, d.flags & 0xffff, true);
    region.view.setUint16(offset + 14, d.next & 0xffff, true);
  }

  /**
   * Queues `head` in the avail ring (not yet published). `descs` are the
   * descriptor indices to free when the device returns head; `indirect` a
   * table to release then. Any head value may be pushed (malformed tests).
   */
  pushAvail(head: number, token: T, descs: number[] = [head], indirect?: number): void {
    const slot = this.shadowAvail % this.size;
    this.avail.region.view.setUint16(this.avail.offset + 4 + 2 * slot, head & 0xffff, true);
    this.shadowAvail = (this.shadowAvail + 1) & 0xffff;
    if (head >= 0 && head < this.size) this.chains.set(head, { descs, indirect, token });
  }

  /** Entries queued but not yet published. */
  get pending(): number {
    return (this.shadowAvail - this.publishedAvail) & 0xffff;
  }

  /**
   * Publishes queued heads by storing avail idx, and says whether the device
   * must be kicked: with EVENT_IDX when avail_event was crossed, without it
   * whenever something was published.
   */
  publish(): boolean {
    const old = this.publishedAvail;
    const now = this.shadowAvail;
    if (old === now) return false;
    // SAFETY: avail is 2-byte aligned, so (offset + 2) / 2 is an exact index.
    Atomics.store(this.avail16, (this.avail.offset + 2) / 2, now);
    this.publishedAvail = now;
    // A device polling the ring suppresses kicks. Atomics are sequentially
    // consistent: the avail idx store above is ordered before the loads
    // below, as the device's re-check after re-enabling kicks needs.
    if (!this.eventIdx) return (Atomics.load(this.used16, this.used.offset / 2) & VRING_USED_F_NO_NOTIFY) === 0;
    const availEvent = Atomics.load(this.used16, (this.used.offset + 4 + 8 * this.size) / 2);
    return vringNeedEvent(availEvent, now, old);
  }

  /** The device's used idx as last written. */
  usedIdx(): number {
    return Atomics.load(this.used16, (this.used.offset + 2) / 2);
  }

  /**
   * Takes every used entry the device has published, frees the chains and
   * calls onUsed for each. With EVENT_IDX, then asks to be notified on the
   * next entry (used_event = last seen) and re-checks for a race.
   * Throws if the device returns a head that is not in flight.
   */
  drainUsed(onUsed: (e: UsedElem<T>) => void): number {
    let count = 0;
    for (;;) {
      const usedIdx = this.usedIdx();
      if (((usedIdx - this.lastUsed) & 0xffff) > this.size) {
        throw new Error(`device used idx ${usedIdx} is more than ${this.size} ahead of ${this.lastUsed}`);
      }
      while (this.lastUsed !== usedIdx) {
        const slot = this.lastUsed % this.size;
        const at = this.used.offset + 4 + 8 * slot;
        const id = this.used.region.view.getUint32(at, true);
        const len = this.used.region.view.getUint32(at + 4, true);
        const chain = this.chains.get(id);
        if (!chain) throw new Error(`device returned head ${id}, which is not in flight`);
        this.chains.delete(id);
        for (const d of chain.descs) this.freeList.push(d);
        if (chain.indirect !== undefined) this.mem.release(chain.indirect);
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        count++;
        onUsed({ head: id, len, token: chain.token });
      }
      if (!this.eventIdx) return count;
      if (!this.interrupts) {
        // used_event one behind what we consumed: vring_need_event stays
        // false for every batch the device publishes after it. (Unchanged,
        // and not rewritten, when a busy-poll found nothing.)
        if (count > 0) Atomics.store(this.avail16, (this.avail.offset + 4 + 2 * this.size) / 2, (this.lastUsed - 1) & 0xffff);
        return count;
      }
      Atomics.store(this.avail16, (this.avail.offset + 4 + 2 * this.size) / 2, this.lastUsed);
      if (this.usedIdx() === this.lastUsed) return count;
    }
  }

  /**
   * A driver that busy-polls the used ring asks for no notifications:
   * VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX, a used_event the device
   * never crosses with it (refreshed by every drainUsed).
   */
  setInterrupts(on: boolean): void {
    this.interrupts = on;
    if (this.eventIdx) {
      Atomics.store(this.avail16, (this.avail.offset + 4 + 2 * this.size) / 2, on ? this.lastUsed : (this.lastUsed - 1) & 0xffff);
    } else {
      this.setAvailFlags(on ? 0 : 1);
    }
  }

  /** Sets avail flags (VRING_AVAIL_F_NO_INTERRUPT = 1) for tests. */
  setAvailFlags(flags: number): void {
    Atomics.store(this.avail16, this.avail.offset / 2, flags);
  }

  /** Forgets every chain in flight (the device will never return them) and returns their tokens. */
  abandonAll(): T[] {
    const tokens: T[] = [];
    for (const c of this.chains.values()) {
      if (c.indirect !== undefined) this.mem.release(c.indirect);
      tokens.push(c.token);
    }
    this.chains.clear();
    return tokens;
  }

  /** Releases the ring memory and any indirect tables still in flight. */
  dispose(): void {
    for (const c of this.chains.values()) if (c.indirect !== undefined) this.mem.release(c.indirect);
    this.chains.clear();
    this.mem.release(this.descGpa);
    this.mem.release(this.availGpa);
    this.mem.release(this.usedGpa);
  }
}
