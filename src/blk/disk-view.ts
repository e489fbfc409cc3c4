// The guest's view of the disk: what the device offered in its config space and
// features, which the request path checks every request against.

/**
 * One disk as a driver sees it. The device builds it from the config space
 * (diskViewOf in config-space.ts); fields a device did not offer may be absent.
 */
export interface DiskView {
  /** Disk size in 512-byte sectors; changed by the device on an online resize, read at every check. */
  capacitySectors: number;
  readOnly: boolean;
  /** Logical block size the guest was told (blk_size); IN/OUT must be multiples. Default 512. */
  logicalBlockSize?: number;
  /** The host disk is a block device (DISCARD is BLKDISCARD, not a punched hole). */
  blockDevice?: boolean;
  /** The sector after the highest one a write was accepted for; kept up by the handler. */
  writtenEndSector?: number;
  /** DISCARD / WRITE_ZEROES offered (by the device) or negotiated (in a handler's copy). */
  discard?: boolean;
  writeZeroes?: boolean;
  /** Per DISCARD / WRITE_ZEROES segment, in 512-byte sectors; absent or 0: not offered. */
  maxDiscardSectors?: number;
  maxWriteZeroesSectors?: number;
  /** Segments per DISCARD / WRITE_ZEROES request. */
  maxSegments?: number;
  /** WRITE_ZEROES with UNMAP may deallocate. */
  mayUnmap?: boolean;
}

/** What the DISCARD / WRITE_ZEROES segment checks read (parseSegments). */
export type SegmentLimits = Required<
  Pick<DiskView, 'capacitySectors' | 'maxDiscardSectors' | 'maxWriteZeroesSectors' | 'maxSegments' | 'mayUnmap'>
>;

/**
 * The segment limits of `disk` (capacity read through, so a resize shows), or
 * undefined when it states none: then no DISCARD / WRITE_ZEROES request can run.
 */
export function segmentLimits(disk: DiskView): SegmentLimits | undefined {
  const maxSegments = disk.maxSegments;
  if (maxSegments === undefined) return undefined;
  return {
    get capacitySectors() {
      return disk.capacitySectors;
    },
    maxDiscardSectors: disk.maxDiscardSectors ?? 0,
    maxWriteZeroesSectors: disk.maxWriteZeroesSectors ?? 0,
    maxSegments,
    mayUnmap: disk.mayUnmap === true,
  };
}

/**
 * A connection's copy of `disk` before SET_FEATURES: nothing beyond reads and
 * writes negotiated yet. The capacity is read through, so a resize shows.
 */
export function unnegotiatedView(disk: DiskView): DiskView {
  return {
    get capacitySectors() {
      return disk.capacitySectors;
    },
    readOnly: disk.readOnly,
    logicalBlockSize: disk.logicalBlockSize,
    blockDevice: disk.blockDevice,
    discard: false,
    writeZeroes: false,
  };
}

/**
 * Remembers the end of a write once it is accepted (not when it completes:
 * a shrink must not cut under a write still in flight either).
 */
export function noteWrite(disk: DiskView, endSector: number): void {
  if (endSector > (disk.writtenEndSector ?? 0)) disk.writtenEndSector = endSector;
}
