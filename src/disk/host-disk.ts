// The host disk: a raw image file or a block device, opened O_DIRECT, with
// the facts about it the device needs (size, block sizes).

import fs from 'node:fs';
import path from 'node:path';
import { DiskError } from '../errors';
import { probeDirectIo, type DirectIoRules } from './probe';
import { native, type RbdImage } from '../native/binding';
import { probeDiscard, type DiscardCaps } from './discard-probe';
import { lockImage, vublkPerms } from './image-lock';

export interface HostDisk {
  /** The path, or rbd:POOL[/NAMESPACE]/IMAGE. */
  path: string;
  /** -1 for an RBD image (and once closed). */
  fd: number;
  sizeBytes: number;
  kind: 'file' | 'block' | 'rbd';
  /** The RBD image (kind 'rbd'), and its token, by which Sessions on any thread find it. */
  rbd?: RbdImage;
  rbdToken?: number;
  readOnly: boolean;
  /** O_DIRECT rules and block sizes, probed at open. */
  rules: DirectIoRules;
  /** DISCARD / WRITE_ZEROES support and limits, probed at open. */
  discard: DiscardCaps;
}

function errnoOf(err: unknown): { code: string; errno: number | undefined } {
  const e = err as NodeJS.ErrnoException;
  return { code: e.code ?? 'EUNKNOWN', errno: typeof e.errno === 'number' ? -e.errno : undefined };
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

/** lock: take QEMU's image locks (image-lock.ts) before anything touches the disk. */
export function openHostDisk(file: string, readOnly: boolean, lock = false): HostDisk {
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
  let rules: DirectIoRules;
  try {
    if (lock) lockImage(fd, abs, vublkPerms(readOnly));
    rules = probeDirectIo(fd, file, st.blksize);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  const sizeBytes = kind === 'block' ? rules.sizeBytes : st.size;
  if (sizeBytes < rules.offsetAlign) {
    fs.closeSync(fd);
    throw new DiskError(`cannot use disk ${file}: it is ${sizeBytes} bytes, smaller than one ${rules.offsetAlign}-byte block`, {
      path: abs,
    });
  }
  const discard = probeDiscard(fd, st, rules.offsetAlign, readOnly);
  return { path: abs, fd, sizeBytes, kind, readOnly, rules, discard };
}

export function closeHostDisk(disk: HostDisk): void {
  if (disk.fd >= 0) fs.closeSync(disk.fd);
  disk.fd = -1;
  disk.rbd?.destroy();
}

/** The disk's size now: fstat for a file, BLKGETSIZE64 for a block device, rbd_get_size. Throws on failure. */
export function currentSizeBytes(disk: HostDisk): number {
  if (disk.rbd !== undefined) return disk.rbd.size();
  return disk.kind === 'block' ? native.probeDisk(disk.fd).sizeBytes : fs.fstatSync(disk.fd).size;
}
