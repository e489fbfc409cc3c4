// The host disk's O_DIRECT rules, found separately for file offsets/lengths
// and for memory (seed: 512b-on-4k-emulation): statx(STATX_DIOALIGN) where
// the kernel gives it, the block device's logical sector size, and trial
// reads as the last resort.

import { native } from '../native/binding';
import { DiskError } from '../errors';
import type { HostRules } from '../align/rw-plan';

export interface DirectIoRules extends HostRules {
  /** Host physical block (bytes): what the guest is told to align to. */
  physicalBlock: number;
  /** Preferred I/O sizes the device reports (bytes), 0 if unknown. */
  ioMin: number;
  ioOpt: number;
  /** Where offsetAlign / memAlign came from ('fallback': a file without STATX_DIOALIGN). */
  source: 'statx' | 'ioctl' | 'trial' | 'fallback' | 'rbd';
  sizeBytes: number;
  blockDevice: boolean;
}

const CANDIDATES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** First candidate alignment at which a trial O_DIRECT read succeeds. */
function trialOffsetAlign(fd: number, path: string): number {
  for (const a of CANDIDATES) if (native.trialRead(fd, a, 0, 0) === 0) return a;
  throw new DiskError(`cannot find an O_DIRECT read size that disk ${path} accepts (tried 512..65536)`, { path });
}

function trialMemAlign(fd: number, offsetAlign: number): number {
  // memOffset m puts the buffer exactly m-aligned (not 2m-aligned).
  for (const m of CANDIDATES) if (m >= 4096 || native.trialRead(fd, offsetAlign, 0, m) === 0) return m;
  return 4096;
}

export function probeDirectIo(fd: number, path: string, fileBlockSize: number): DirectIoRules {
  const p = native.probeDisk(fd);
  let source: DirectIoRules['source'] = 'statx';
  let offsetAlign = p.dioOffsetAlign;
  let memAlign = p.dioMemAlign;
  if (offsetAlign === 0 && p.blockDevice && p.logicalBlock > 0) {
    offsetAlign = p.logicalBlock;
    source = 'ioctl';
  }
  if (offsetAlign === 0 && !p.blockDevice) {
    // A file on a kernel or file system without STATX_DIOALIGN. A trial read
    // proves nothing here (reading a hole succeeds at any alignment), so be
    // conservative: the file system block for offsets and for memory.
    offsetAlign = Math.min(Math.max(fileBlockSize, 512), 65536);
    memAlign = offsetAlign;
    source = 'fallback';
  }
  if (offsetAlign === 0) {
    offsetAlign = trialOffsetAlign(fd, path);
    source = 'trial';
  }
  if (memAlign === 0) memAlign = trialMemAlign(fd, offsetAlign);
  // Segment lengths: memAlign if the kernel takes a vector of memAlign-sized
  // segments adding up to one offsetAlign block, else offsetAlign.
  let lenAlign = offsetAlign;
  if (memAlign < offsetAlign && native.trialReadv(fd, memAlign, offsetAlign / memAlign) === 0) lenAlign = memAlign;
  if (!isPow2(offsetAlign) || !isPow2(memAlign) || offsetAlign > 65536) {
    throw new DiskError(`disk ${path} reports unusable O_DIRECT alignment (offset ${offsetAlign}, memory ${memAlign})`, { path });
  }
  // For a file, the file system block is the natural unit to align to.
  const physical = p.physicalBlock > 0 ? p.physicalBlock : Math.min(Math.max(fileBlockSize, offsetAlign), 65536);
  return {
    offsetAlign,
    memAlign,
    lenAlign,
    physicalBlock: Math.max(physical, offsetAlign),
    ioMin: p.ioMin,
    ioOpt: p.ioOpt,
    source,
    sizeBytes: p.sizeBytes,
    blockDevice: p.blockDevice,
  };
}
