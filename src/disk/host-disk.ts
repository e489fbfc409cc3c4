// The host disk: a raw image file or a block device, opened O_DIRECT, with
// the facts about it the device needs (size, block sizes).

import fs from 'node:fs';
import path from 'node:path';
import { DiskError } from '../errors';
import { SECTOR_SIZE } from '../virtio/constants';

export interface HostDisk {
  path: string;
  fd: number;
  sizeBytes: number;
  kind: 'file' | 'block';
  readOnly: boolean;
  /** Smallest I/O unit the host takes (bytes). */
  logicalBlockSize: number;
  /** Host physical block (bytes): what topology tells the guest to align to. */
  physicalBlockSize: number;
}

function errnoOf(err: unknown): { code: string; errno: number | undefined } {
  const e = err as NodeJS.ErrnoException;
  return { code: e.code ?? 'EUNKNOWN', errno: typeof e.errno === 'number' ? -e.errno : undefined };
}

/** Reads a number from /sys/dev/block/MAJ:MIN/<rel>; undefined if absent. */
function sysfsNumber(rdev: number, rel: string): number | undefined {
  // Linux dev_t: major in bits 8..19 (and 32..43), minor in 0..7 and 20..31.
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff);
  try {
    const text = fs.readFileSync(`/sys/dev/block/${major}:${minor}/${rel}`, 'utf8').trim();
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Creates a sparse image of `bytes` at `file` unless something is there already. */
export function ensureDefaultImage(file: string, bytes: number): boolean {
  try {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    try {
      fs.ftruncateSync(fd, bytes);
    } finally {
      fs.closeSync(fd);
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    const { code, errno } = errnoOf(err);
    throw new DiskError(`cannot create default disk image ${file}: ${code}`, { errno, syscall: 'open', path: file });
  }
}

export function openHostDisk(file: string, readOnly: boolean): HostDisk {
  const abs = path.resolve(file);
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch (err) {
    const { code, errno } = errnoOf(err);
    throw new DiskError(`cannot open disk ${file}: ${code === 'ENOENT' ? 'no such file' : code}`, {
      errno,
      syscall: 'stat',
      path: abs,
    });
  }
  const kind = st.isBlockDevice() ? 'block' : st.isFile() ? 'file' : undefined;
  if (kind === undefined) {
    throw new DiskError(`cannot use disk ${file}: not a regular file or block device`, { path: abs });
  }
  const flags = (readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | fs.constants.O_DIRECT;
  let fd: number;
  try {
    fd = fs.openSync(abs, flags);
  } catch (err) {
    const { code, errno } = errnoOf(err);
    const why = code === 'EINVAL' ? 'EINVAL (does the file system support O_DIRECT?)' : code;
    throw new DiskError(`cannot open disk ${file} with O_DIRECT: ${why}`, { errno, syscall: 'open', path: abs });
  }
  let sizeBytes: number;
  let logical = SECTOR_SIZE;
  let physical: number;
  if (kind === 'block') {
    const sectors = sysfsNumber(st.rdev, 'size');
    logical = sysfsNumber(st.rdev, 'queue/logical_block_size') ?? SECTOR_SIZE;
    physical = sysfsNumber(st.rdev, 'queue/physical_block_size') ?? logical;
    if (sectors === undefined) {
      fs.closeSync(fd);
      throw new DiskError(`cannot read the size of block device ${file} from sysfs`, { path: abs });
    }
    sizeBytes = sectors * SECTOR_SIZE;
  } else {
    sizeBytes = st.size;
    // The file system's block: aligning guest I/O to it avoids partial-block work.
    physical = Math.min(Math.max(st.blksize, SECTOR_SIZE), 65536);
  }
  if (sizeBytes < SECTOR_SIZE) {
    fs.closeSync(fd);
    throw new DiskError(`cannot use disk ${file}: it is ${sizeBytes} bytes, smaller than one sector`, { path: abs });
  }
  return { path: abs, fd, sizeBytes, kind, readOnly, logicalBlockSize: logical, physicalBlockSize: physical };
}

export function closeHostDisk(disk: HostDisk): void {
  if (disk.fd >= 0) fs.closeSync(disk.fd);
  disk.fd = -1;
}
