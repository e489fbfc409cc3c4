// Image locking as QEMU 7.2 does it (block/file-posix.c, raw_apply_lock_bytes
// and raw_check_lock_bytes), so that vublk, QEMU, qemu-img, qemu-io and
// qemu-storage-daemon see each other's use of an image:
//
//   byte 100 + bit   read lock while the permission is held
//   byte 200 + bit   read lock while the permission is NOT shared with others
//
// Bits (include/block/block-common.h): CONSISTENT_READ 0, WRITE 1,
// WRITE_UNCHANGED 2, RESIZE 3. A user checks for conflicts by testing a write
// lock: on 200+bit for each permission it holds (someone refuses to share it)
// and on 100+bit for each permission it does not share (someone holds it).
// Locks are OFD locks: they belong to the disk's open file and go when it
// closes (also when the process is killed). Locks first, check second, as
// QEMU: two users starting at once both fail rather than both succeed.

import { native } from '../native/binding';
import { ImageLockError } from '../errors';

export const BLK_PERM_CONSISTENT_READ = 0x01;
export const BLK_PERM_WRITE = 0x02;
export const BLK_PERM_WRITE_UNCHANGED = 0x04;
export const BLK_PERM_RESIZE = 0x08;
const PERM_BITS = 4;
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const;

export const LOCK_PERM_BASE = 100;
export const LOCK_SHARED_BASE = 200;

const LOCK_READ = 1;
const LOCK_WRITE = 2;

export interface ImagePerms {
  /** What this user does to the image. */
  perm: number;
  /** What it lets others do at the same time. */
  shared: number;
}

/**
 * The permissions of a QEMU virtio-blk device on this image
 * (blkconf_apply_backend_options: resizable, share-rw off): it reads and
 * (unless read-only) writes; others may read, write unchanged data and resize.
 */
export function vublkPerms(readOnly: boolean): ImagePerms {
  return {
    perm: BLK_PERM_CONSISTENT_READ | (readOnly ? 0 : BLK_PERM_WRITE),
    shared: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_RESIZE,
  };
}

/** What the holder of the lock on `byte` does (or refuses others), in words for the error. */
function conflictText(p: number, heldByOther: boolean): string {
  const name = PERM_NAMES[p] ?? `permission bit ${p}`;
  return heldByOther ? `holds the "${name}" permission, which vublk does not share` : `does not share the "${name}" permission vublk needs`;
}

/**
 * Takes the image locks for `perms` on the open image `fd` and checks that
 * nobody else's conflict; throws an ImageLockError naming the image and the
 * permission. The locks stay until fd is closed.
 */
export function lockImage(fd: number, file: string, perms: ImagePerms): void {
  for (let p = 0; p < PERM_BITS; p++) {
    const bit = 1 << p;
    if (perms.perm & bit) take(fd, file, LOCK_PERM_BASE + p);
    if (!(perms.shared & bit)) take(fd, file, LOCK_SHARED_BASE + p);
  }
  for (let p = 0; p < PERM_BITS; p++) {
    const bit = 1 << p;
    if (perms.perm & bit && conflicts(fd, file, LOCK_SHARED_BASE + p)) refuse(file, conflictText(p, false));
    if (!(perms.shared & bit) && conflicts(fd, file, LOCK_PERM_BASE + p)) refuse(file, conflictText(p, true));
  }
}

function refuse(file: string, what: string): never {
  throw new ImageLockError(
    `image ${file} is locked by another process (QEMU, qemu-img, qemu-storage-daemon or vublk) that ${what}; ` +
      'stop it, or pass --no-image-lock if the sharing is safe',
    { path: file },
  );
}

function take(fd: number, file: string, byte: number): void {
  try {
    native.ofdLock(fd, byte, 1, LOCK_READ);
  } catch (err) {
    throw lockFailed(file, `cannot lock byte ${byte}`, err);
  }
}

function conflicts(fd: number, file: string, byte: number): boolean {
  try {
    return native.ofdConflicts(fd, byte, 1, LOCK_WRITE);
  } catch (err) {
    throw lockFailed(file, `cannot test the lock on byte ${byte}`, err);
  }
}

function lockFailed(file: string, what: string, err: unknown): ImageLockError {
  const e = err as { code?: string; errno?: number; syscall?: string };
  // A read lock only fails this way when a write lock is there: qemu-img
  // and friends never take one, but a user's flock-like tool might.
  const why = e.code === 'EAGAIN' || e.code === 'EACCES' ? 'another process holds a write lock on it' : (e.code ?? String(err));
  return new ImageLockError(`image ${file}: ${what}: ${why}`, {
    path: file,
    syscall: e.syscall,
    errno: typeof e.errno === 'number' ? -e.errno : undefined,
    cause: err,
  });
}
