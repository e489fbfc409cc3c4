// What the host disk can do for DISCARD and WRITE_ZEROES, and the limits the
// config space reports for them (in bytes here; 512-byte units in config).
//
// Files: punching a hole is probed past the end of the file (KEEP_SIZE, so
// nothing changes). ZERO_RANGE cannot be probed without writing; it is tried
// at first use, and a file system that refuses it (tmpfs) gets zeroes
// written instead. Block devices: the queue's discard limits from sysfs;
// zeroing always works (the kernel writes zeroes if the device cannot).

import fs from 'node:fs';
import { native } from '../native/binding';

export interface DiscardCaps {
  /** DISCARD can be offered (holes can be punched / the device discards). */
  discard: boolean;
  /** WRITE_ZEROES can be offered (always: there is a fallback). */
  writeZeroes: boolean;
  /** WRITE_ZEROES with UNMAP may deallocate (punch) instead of writing zeroes. */
  mayUnmap: boolean;
  maxDiscardBytes: number;
  maxWriteZeroesBytes: number;
  /** Discard granularity the guest should align to (bytes). */
  discardAlign: number;
}

/** Largest single discard / zeroing segment vublk takes (bytes). */
export const MAX_ZERO_SEGMENT_BYTES = 1 << 30;

/** Reads a number from /sys/dev/block/MAJ:MIN/<rel>; undefined if absent. */
function sysfsNumber(rdev: number, rel: string): number | undefined {
  // Linux dev_t: major in bits 8..19 (and 32..43), minor in 0..7 and 20..31.
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff);
  try {
    const n = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/${rel}`, 'utf8').trim());
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function roundDown(n: number, unit: number): number {
  return Math.floor(n / unit) * unit;
}

export function probeDiscard(fd: number, st: fs.Stats, offsetAlign: number, readOnly: boolean): DiscardCaps {
  const none: DiscardCaps = {
    discard: false,
    writeZeroes: false,
    mayUnmap: false,
    maxDiscardBytes: 0,
    maxWriteZeroesBytes: 0,
    discardAlign: offsetAlign,
  };
  if (readOnly) return none;
  const maxSeg = roundDown(MAX_ZERO_SEGMENT_BYTES, offsetAlign);
  if (st.isBlockDevice()) {
    const maxDiscard = sysfsNumber(st.rdev, 'queue/discard_max_bytes') ?? 0;
    const granularity = sysfsNumber(st.rdev, 'queue/discard_granularity') ?? 0;
    const discardAlign = Math.max(granularity, offsetAlign);
    const discard = maxDiscard >= discardAlign;
    return {
      discard,
      writeZeroes: true,
      mayUnmap: discard,
      maxDiscardBytes: discard ? roundDown(Math.min(maxDiscard, maxSeg), discardAlign) : 0,
      maxWriteZeroesBytes: maxSeg,
      discardAlign,
    };
  }
  // Past the end of the file, so nothing is touched; KEEP_SIZE keeps the size.
  const probeAt = Math.ceil((st.size + (1 << 20)) / (1 << 20)) * (1 << 20);
  const punch = native.fallocate(fd, native.constants.FALLOC_PUNCH, probeAt, offsetAlign) === 0;
  const discardAlign = Math.min(Math.max(st.blksize, offsetAlign), 1 << 20);
  return {
    discard: punch,
    writeZeroes: true,
    mayUnmap: punch,
    maxDiscardBytes: punch ? roundDown(maxSeg, discardAlign) : 0,
    maxWriteZeroesBytes: maxSeg,
    discardAlign,
  };
}
