// Random choices for the fuzzer, on top of the seeded mulberry32 in prng.ts.

import { mulberry32 } from '../prng';

export class Rng {
  private readonly next: () => number;

  constructor(seed: number) {
    this.next = mulberry32(seed);
  }

  u32(): number {
    return this.next();
  }

  /** An integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor((this.next() / 4294967296) * (hi - lo + 1));
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() / 4294967296 < p;
  }

  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new RangeError('pick from an empty list');
    return xs[this.int(0, xs.length - 1)]!; // index in range
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(table: readonly (readonly [number, T])[]): T {
    const total = table.reduce((s, [w]) => s + w, 0);
    let r = (this.next() / 4294967296) * total;
    for (const [w, v] of table) {
      if (r < w) return v;
      r -= w;
    }
    return table[table.length - 1]![1]; // rounding: the last entry
  }

  /** A u64 from "interesting" values (0, 1, page sizes, boundaries, all-ones) or random bits. */
  u64(): bigint {
    return this.weighted<() => bigint>([
      [3, () => 0n],
      [2, () => 1n],
      [2, () => BigInt(this.int(0, 64) * 4096)],
      [2, () => 1n << BigInt(this.int(0, 63))],
      [2, () => (1n << 64n) - 1n - BigInt(this.int(0, 4096))],
      [1, () => 0x7fff_ffffn],
      [1, () => 0xffff_ffffn],
      [3, () => (BigInt(this.u32()) << 32n) | BigInt(this.u32())],
    ])();
  }

  /** A u32 from interesting values or random bits. */
  u32ish(): number {
    return this.weighted<() => number>([
      [3, () => 0],
      [2, () => 1],
      [2, () => (1 << this.int(0, 31)) >>> 0],
      [2, () => 0xffff_ffff - this.int(0, 16)],
      [1, () => 0xffff],
      [1, () => 0x1_0000],
      [3, () => this.u32()],
    ])();
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

/** A per-iteration seed from the run's seed, so one iteration replays on its own. */
export function iterationSeed(seed: number, iteration: number): number {
  let h = (seed ^ Math.imul(iteration + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
