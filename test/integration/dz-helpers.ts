// Helpers for the DISCARD / WRITE_ZEROES integration test
// (discard-zeroes.test.ts):
//
// - DiskModel: what every byte of the disk must hold, with the sectors a
//   DISCARD made undefined (VIRTIO 1.2 5.2.6.2: reads of discarded sectors
//   may return anything) marked unknown and skipped by comparisons;
// - host disks: a tmpfs mounted at a temporary directory, undone in teardown
//   (loop devices: test/helpers/loop-device.ts);
// - raw segment lists (any flags, any u64 sector) for the error cases.

import { execFileSync } from 'node:child_process';
import { SECTOR_SIZE } from '../../src/frontend/blk-driver';

// ------------------------------------------------------------ model

/** A fast position-dependent pattern (xorshift32 per 4 bytes), distinct per seed. */
export function fastPattern(len: number, seed: number): Buffer {
  const words = Math.ceil(len / 4);
  const u32 = new Uint32Array(words);
  let x = Math.imul(seed >>> 0, 2654435761) >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    u32[i] = x >>> 0;
  }
  // Never a whole zero sector by accident: zeroes are what the tests look for.
  const b = Buffer.from(u32.buffer, 0, len);
  for (let s = 0; s < len; s += SECTOR_SIZE) b[s] = (b[s] ?? 0) | 0x80;
  return b;
}

export class DiskModel {
  readonly bytes: Buffer;
  /** Per 512-byte sector: 1 when its contents are defined. */
  readonly known: Uint8Array;

  constructor(initial: Buffer) {
    if (initial.length % SECTOR_SIZE !== 0) throw new RangeError('model size must be whole sectors');
    this.bytes = Buffer.from(initial);
    this.known = new Uint8Array(initial.length / SECTOR_SIZE).fill(1);
  }

  get sectors(): number {
    return this.known.length;
  }

  write(sector: number, data: Uint8Array): void {
    if (data.length % SECTOR_SIZE !== 0) throw new RangeError('writes are whole sectors');
    this.bytes.set(data, sector * SECTOR_SIZE);
    this.known.fill(1, sector, sector + data.length / SECTOR_SIZE);
  }

  zero(sector: number, sectors: number): void {
    this.bytes.fill(0, sector * SECTOR_SIZE, (sector + sectors) * SECTOR_SIZE);
    this.known.fill(1, sector, sector + sectors);
  }

  /** After a DISCARD: the range's contents are undefined. */
  discard(sector: number, sectors: number): void {
    this.known.fill(0, sector, sector + sectors);
  }

  at(sector: number, sectors: number): Buffer {
    return this.bytes.subarray(sector * SECTOR_SIZE, (sector + sectors) * SECTOR_SIZE);
  }

  /**
   * Compares `actual`, the bytes of sectors [sector, sector + n), with the
   * model (unknown sectors skipped). Returns null, or where they differ.
   */
  diff(actual: Uint8Array, sector: number): string | null {
    const n = actual.length / SECTOR_SIZE;
    for (let i = 0; i < n; i++) {
      const s = sector + i;
      if (this.known[s] !== 1) continue;
      const a = actual.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
      const m = this.bytes.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE);
      if (!Buffer.from(a.buffer, a.byteOffset, a.length).equals(m)) {
        let b = 0;
        while (a[b] === m[b]) b++;
        const zero = a.every((x) => x === 0);
        const mzero = m.every((x) => x === 0);
        return `sector ${s} (byte ${s * SECTOR_SIZE + b}) differs: got ${zero ? 'zeroes' : `0x${a[b]!.toString(16)}...`}, want ${mzero ? 'zeroes' : `0x${m[b]!.toString(16)}...`}`;
      }
    }
    return null;
  }

  /** Sectors of [sector, sector + n) whose contents are undefined. */
  unknownIn(sector: number, n: number): number {
    let c = 0;
    for (let i = sector; i < sector + n; i++) if (this.known[i] !== 1) c++;
    return c;
  }
}

/** First sector where a and b (same length, whole sectors) differ, or -1. */
export function firstSectorDiff(a: Uint8Array, b: Uint8Array): number {
  for (let s = 0; s * SECTOR_SIZE < a.length; s++) {
    const x = Buffer.from(a.buffer, a.byteOffset + s * SECTOR_SIZE, SECTOR_SIZE);
    const y = Buffer.from(b.buffer, b.byteOffset + s * SECTOR_SIZE, SECTOR_SIZE);
    if (!x.equals(y)) return s;
  }
  return -1;
}

// ------------------------------------------------------------ segment lists

export interface RawSegment {
  sector: number | bigint;
  sectors: number;
  flags?: number;
}

/** struct virtio_blk_discard_write_zeroes[], any flags and any u64 sector. */
export function segmentList(segs: readonly RawSegment[]): Buffer {
  const b = Buffer.alloc(16 * segs.length);
  segs.forEach((s, i) => {
    b.writeBigUInt64LE(BigInt(s.sector), 16 * i);
    b.writeUInt32LE(s.sectors >>> 0, 16 * i + 8);
    b.writeUInt32LE((s.flags ?? 0) >>> 0, 16 * i + 12);
  });
  return b;
}

// ------------------------------------------------------------ host disks

export interface Tmpfs {
  dir: string;
  /** Unmounts (idempotent; retries while busy). */
  unmount(): void;
}

/** Mounts a tmpfs of `bytes` at dir (which must exist). */
export function mountTmpfs(dir: string, bytes: number): Tmpfs {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
  let mounted = true;
  return {
    dir,
    unmount() {
      if (!mounted) return;
      mounted = false;
      for (let i = 0; ; i++) {
        try {
          execFileSync('umount', [dir], { stdio: 'pipe' });
          return;
        } catch (err) {
          if (i >= 20) throw err;
          execFileSync('sleep', ['0.1']);
        }
      }
    },
  };
}

/** The file system type of path (stat -f). */
export function fsType(p: string): string {
  return execFileSync('stat', ['-f', '-c', '%T', p], { encoding: 'utf8' }).trim();
}
