// An RBD image as the host disk: librbd takes any offset, length and memory
// address, so the alignment layer never bounces; the image's object size
// sets the DISCARD granularity; a writable disk holds the exclusive lock.

import { DiskError } from '../errors';
import { log } from '../log';
import { native } from '../native/binding';
import { rbdSpecText, type RbdSpec } from './rbd-spec';
import { MAX_ZERO_SEGMENT_BYTES } from './discard-probe';
import type { HostDisk } from './host-disk';

export interface RbdConnect {
  /** Ceph configuration file; undefined: Ceph's default search. */
  conf: string | undefined;
  /** Client name without "client."; undefined: admin. */
  id: string | undefined;
}

/** Positive errno of a native error (it carries -errno). */
function errnoOf(err: unknown): number | undefined {
  const e = (err as { errno?: unknown }).errno;
  return typeof e === 'number' ? Math.abs(e) : undefined;
}

const EPERM = 1;

// The guest's sectors: virtio-blk offsets and lengths come in 512-byte units.
const SECTOR = 512;

/**
 * Connects to the cluster, opens the image and, unless readOnly, takes its
 * exclusive lock. Throws DiskError naming the monitors, pool, image or the
 * lock holder problem.
 */
export function openRbdDisk(spec: RbdSpec, connect: RbdConnect, readOnly: boolean): HostDisk {
  const name = `rbd:${rbdSpecText(spec)}`;
  const open = (ro: boolean) =>
    new native.RbdImage(spec.pool, spec.namespace, spec.image, connect.conf ?? '', connect.id ?? '', ro, spec.snapshot);
  // A snapshot cannot be written: the disk is read-only, as the guest is told.
  if (spec.snapshot !== '' && !readOnly) {
    readOnly = true;
    log.info('serving an rbd snapshot: the disk is read-only', { disk: name });
  }
  let image;
  try {
    try {
      image = open(readOnly);
    } catch (err) {
      // A client whose caps are read-only (profile rbd-read-only) may not
      // open the image for writing: the disk follows its caps, as the guest
      // is told (VIRTIO_BLK_F_RO), rather than not being served at all.
      if (readOnly || errnoOf(err) !== EPERM) throw err;
      image = open(true);
      readOnly = true;
      log.warn('serving the rbd image read-only: this client may not write to it (read-only caps)', {
        disk: name,
        client: connect.id ?? 'admin',
      });
    }
  } catch (err) {
    throw new DiskError(`cannot open disk ${name}: ${(err as Error).message}`, { errno: errnoOf(err) });
  }
  try {
    // A lock left by a client that died is broken once its watch on the
    // image lapses (about 30 s): until then this waits.
    if (!readOnly) log.info('taking the exclusive lock of the rbd image', { disk: name });
    if (!readOnly && !image.acquireExclusiveLock()) {
      log.warn('rbd image has no exclusive-lock feature: nothing keeps a second writer out', { disk: name });
    }
    const sizeBytes = image.size();
    const objectSize = image.objectSize();
    if (sizeBytes < SECTOR) throw new DiskError(`cannot use disk ${name}: it is ${sizeBytes} bytes, smaller than one sector`);
    const maxZero = Math.max(objectSize, MAX_ZERO_SEGMENT_BYTES - (MAX_ZERO_SEGMENT_BYTES % objectSize));
    return {
      path: name,
      fd: -1,
      sizeBytes,
      kind: 'rbd',
      readOnly,
      rbd: image,
      rbdToken: image.token,
      rules: {
        offsetAlign: SECTOR,
        memAlign: 1,
        lenAlign: 1,
        physicalBlock: 4096,
        ioMin: 0,
        ioOpt: objectSize,
        source: 'rbd',
        sizeBytes,
        blockDevice: false,
      },
      // librbd skips the partial objects of a discard (rbd_skip_partial_discard),
      // so DISCARD promises no zeroes and WRITE_ZEROES always writes them
      // (rbd_aio_write_zeroes deallocates whole objects itself).
      discard: {
        discard: true,
        writeZeroes: true,
        mayUnmap: false,
        maxDiscardBytes: maxZero,
        maxWriteZeroesBytes: maxZero,
        discardAlign: objectSize,
      },
    };
  } catch (err) {
    image.destroy();
    if (err instanceof DiskError) throw err;
    throw new DiskError(`cannot use disk ${name}: ${(err as Error).message}`, { errno: errnoOf(err) });
  }
}
