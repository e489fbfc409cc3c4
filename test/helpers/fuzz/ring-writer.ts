// Writes into a virtqueue in guest memory the way a racing or malicious
// guest can: any descriptor, any head, any avail index. For rings the
// fuzzer placed itself (raw connections) and, through SplitRing's raw
// access, for rings the in-repo frontend set up.

import type { GuestMemory } from '../../../src/frontend/guest-memory';
import { DESC_SIZE, DescFlags, type RawDesc, type SplitRing } from '../../../src/frontend/split-ring';
import { BlkType } from '../../../src/frontend/blk-driver';
import { rawToken } from '../../integration/harness';
import type { Rng } from './rng';

/** The ring operations the fuzzer needs, whoever laid the ring out. */
export interface RingTarget {
  readonly size: number;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  writeDesc(i: number, d: RawDesc): void;
  writeDescAt(gpa: number, d: RawDesc): void;
  pushAvail(head: number): void;
  publish(): void;
  /** Stores any value as avail idx (a guest racing its own ring). */
  setAvailIdx(v: number): void;
}

/** Byte sizes of the three parts of a split ring of num entries (with EVENT_IDX fields). */
export function ringBytes(num: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * num, avail: 6 + 2 * num, used: 6 + 8 * num };
}

/** A ring at fixed guest addresses in `mem`, written only through raw stores. */
export class RawRing implements RingTarget {
  private shadow = 0;

  constructor(
    private readonly mem: GuestMemory,
    readonly size: number,
    readonly descGpa: number,
    readonly availGpa: number,
    readonly usedGpa: number,
  ) {}

  writeDesc(i: number, d: RawDesc): void {
    this.writeDescAt(this.descGpa + (i % this.size) * DESC_SIZE, d);
  }

  writeDescAt(gpa: number, d: RawDesc): void {
    const b = Buffer.alloc(DESC_SIZE);
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(d.addr)), 0);
    b.writeUInt32LE(d.len >>> 0, 8);
    b.writeUInt16LE(d.flags & 0xffff, 12);
    b.writeUInt16LE(d.next & 0xffff, 14);
    this.mem.write(gpa, b);
  }

  pushAvail(head: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(head & 0xffff, 0);
    this.mem.write(this.availGpa + 4 + 2 * (this.shadow % this.size), b);
    this.shadow = (this.shadow + 1) & 0xffff;
  }

  publish(): void {
    this.setAvailIdx(this.shadow);
  }

  setAvailIdx(v: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v & 0xffff, 0);
    this.mem.write(this.availGpa + 2, b);
  }
}

/** A SplitRing of the in-repo frontend, driven raw (its own chains stay consistent). */
export function splitRingTarget(ring: SplitRing<unknown>, mem: GuestMemory): RingTarget {
  return {
    size: ring.size,
    descGpa: ring.descGpa,
    availGpa: ring.availGpa,
    usedGpa: ring.usedGpa,
    writeDesc: (i, d) => ring.writeDesc(i % ring.size, d),
    writeDescAt: (gpa, d) => ring.writeDescAt(gpa, d),
    pushAvail: (head) => ring.pushAvail(head, rawToken()),
    publish: () => void ring.publish(),
    setAvailIdx: (v) => {
      const b = Buffer.alloc(2);
      b.writeUInt16LE(v & 0xffff, 0);
      mem.write(ring.availGpa + 2, b);
    },
  };
}

/**
 * The first CANARY_BYTES of region 0 are nobody's: no ring, descriptor or
 * ring address the fuzzer writes points there, so the daemon has no reason
 * to write there (a raw connection checks that it did not).
 */
export const CANARY_BYTES = 4096;

/** A gpa in guest memory outside the canary (len bytes fit, if they can), or a wild value now and then. */
export function someGpa(mem: GuestMemory, rng: Rng, len: number): number | bigint {
  if (rng.chance(0.1)) {
    const wild = rng.u64();
    // Wild values favour 0, 1 and small page multiples, which can land in
    // the canary at region 0's start: such a one is drawn again in memory.
    const canary = BigInt(mem.regions[0]?.gpa ?? 0);
    if (!(wild + BigInt(Math.max(len, 1)) > canary && wild < canary + BigInt(CANARY_BYTES))) return wild;
  }
  const r = rng.pick(mem.regions);
  const lo = r.index === 0 ? r.gpa + CANARY_BYTES : r.gpa;
  return lo + rng.int(0, Math.max(0, r.gpa + r.size - len - lo));
}

/**
 * Writes a request chain at random descriptor slots: a header (a request
 * type and sector, mostly plausible), 0-3 data buffers, a status byte; each
 * piece bent now and then (wrong flags, lengths, next indices, an indirect
 * table). Returns the head.
 */
export function writeRandomChain(ring: RingTarget, mem: GuestMemory, rng: Rng, capacitySectors: number): number {
  const n = ring.size;
  const type = rng.weighted<number>([
    [4, BlkType.IN],
    [4, BlkType.OUT],
    [1, BlkType.FLUSH],
    [1, BlkType.GET_ID],
    [1, BlkType.DISCARD],
    [1, BlkType.WRITE_ZEROES],
    [1, rng.u32ish()],
  ]);
  const sector = rng.weighted<number | bigint>([
    [6, rng.int(0, Math.max(0, capacitySectors - 256))],
    [1, capacitySectors - rng.int(0, 8)],
    [1, rng.u64()],
  ]);
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(type >>> 0, 0);
  hdr.writeBigUInt64LE(BigInt.asUintN(64, BigInt(sector)), 8);
  let hdrGpa: number | bigint;
  try {
    const g = mem.alloc(16, 16);
    mem.write(g, hdr);
    hdrGpa = g;
  } catch {
    hdrGpa = someGpa(mem, rng, 16); // allocator full: anywhere
  }
  const writeData = type === BlkType.IN || type === BlkType.GET_ID;
  const segs: RawDesc[] = [{ addr: hdrGpa, len: rng.chance(0.9) ? 16 : rng.int(0, 32), flags: 0, next: 0 }];
  const nData = rng.int(0, 3);
  for (let k = 0; k < nData; k++) {
    const len = rng.weighted<number>([
      [6, 512 * rng.int(1, 16)],
      [1, rng.int(0, 4096)],
      [1, rng.u32ish()],
    ]);
    segs.push({ addr: someGpa(mem, rng, len), len, flags: writeData || rng.chance(0.05) ? DescFlags.WRITE : 0, next: 0 });
  }
  segs.push({
    addr: someGpa(mem, rng, 1),
    len: rng.chance(0.95) ? 1 : rng.int(0, 8),
    flags: rng.chance(0.95) ? DescFlags.WRITE : 0,
    next: 0,
  });
  // Link them: mostly through consecutive random slots, sometimes through an indirect table.
  if (rng.chance(0.15)) {
    let table: number;
    try {
      table = mem.alloc(DESC_SIZE * segs.length, 16);
    } catch {
      table = Number(someGpa(mem, rng, DESC_SIZE * segs.length));
    }
    segs.forEach((d, k) => {
      const last = k === segs.length - 1;
      d.flags |= last ? 0 : DescFlags.NEXT;
      d.next = last ? 0 : rng.chance(0.97) ? k + 1 : rng.int(0, 0xffff);
      if (rng.chance(0.03)) d.flags |= DescFlags.INDIRECT;
      try {
        ring.writeDescAt(table + k * DESC_SIZE, d);
      } catch {
        // the table fell outside guest memory: the guest meant it
      }
    });
    const head = rng.int(0, n - 1);
    const len = rng.chance(0.9) ? DESC_SIZE * segs.length : rng.u32ish();
    ring.writeDesc(head, {
      addr: table,
      len,
      flags: DescFlags.INDIRECT | (rng.chance(0.05) ? DescFlags.NEXT : 0),
      next: rng.int(0, n - 1),
    });
    return head;
  }
  const slots = segs.map(() => rng.int(0, n - 1));
  segs.forEach((d, k) => {
    const last = k === segs.length - 1;
    d.flags |= last ? 0 : DescFlags.NEXT;
    d.next = last ? 0 : rng.chance(0.97) ? slots[k + 1]! : rng.int(0, 0xffff);
    if (rng.chance(0.02)) d.flags |= DescFlags.INDIRECT;
    ring.writeDesc(slots[k]!, d);
  });
  return slots[0]!;
}
