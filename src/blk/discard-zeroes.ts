// DISCARD and WRITE_ZEROES requests: the segment list and its checks
// (VIRTIO 1.2 5.2.6: struct virtio_blk_discard_write_zeroes, 16 bytes each:
// le64 sector, le32 num_sectors, le32 flags; flag bit 0 = UNMAP).
//
// The whole list is checked before any segment runs, so a bad segment fails
// the request with nothing done. Execution (head | aligned middle | tail per
// segment, seed: write-zeroes-unaligned) lives in zero-discard-requests.ts.

import { SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD } from '../virtio/constants';
import type { SegmentLimits } from './disk-view';

export const SEGMENT_BYTES = 16;
export const FLAG_UNMAP = 1;

/** A parsed segment list, reused per slot. */
export class SegmentList {
  readonly sector: Float64Array;
  readonly sectors: Float64Array;
  readonly unmap: Uint8Array;
  count = 0;
  /** Next segment to run. */
  next = 0;
  readonly raw: Uint8Array;

  constructor(readonly capacity: number) {
    this.sector = new Float64Array(capacity);
    this.sectors = new Float64Array(capacity);
    this.unmap = new Uint8Array(capacity);
    this.raw = new Uint8Array(capacity * SEGMENT_BYTES);
  }
}

/**
 * Parses `len` bytes of segments from list.raw and checks them. Returns the
 * status to fail the request with, or -1 when every segment may run.
 */
export function parseSegments(type: number, len: number, list: SegmentList, limits: SegmentLimits): number {
  list.count = 0;
  list.next = 0;
  if (len === 0 || len % SEGMENT_BYTES !== 0) return VIRTIO_BLK_S_IOERR;
  const n = len / SEGMENT_BYTES;
  if (n > limits.maxSegments || n > list.capacity) return VIRTIO_BLK_S_IOERR;
  const discard = type === VIRTIO_BLK_T_DISCARD;
  const maxSectors = discard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors;
  const view = new DataView(list.raw.buffer, list.raw.byteOffset, len);
  let status = -1;
  for (let i = 0; i < n; i++) {
    const o = i * SEGMENT_BYTES;
    const lo = view.getUint32(o, true);
    const hi = view.getUint32(o + 4, true);
    const sector = hi * 2 ** 32 + lo; // > 2^53 rounds, but then it is far past capacity anyway
    const sectors = view.getUint32(o + 8, true);
    const flags = view.getUint32(o + 12, true);
    // Unknown flags, or UNMAP on a DISCARD: unsupported (spec 5.2.6.2).
    if ((flags & ~FLAG_UNMAP) !== 0 || (discard && flags !== 0)) return VIRTIO_BLK_S_UNSUPP;
    const cap = limits.capacitySectors;
    if (sectors > maxSectors || sector > cap || sectors > cap - sector) status = VIRTIO_BLK_S_IOERR;
    list.sector[i] = sector;
    list.sectors[i] = sectors;
    list.unmap[i] = flags & FLAG_UNMAP && limits.mayUnmap ? 1 : 0;
  }
  if (status >= 0) return status;
  list.count = n;
  return -1;
}

/** Byte range of segment i. */
export function segmentBytes(list: SegmentList, i: number): { pos: number; len: number } {
  return { pos: (list.sector[i] as number) * SECTOR_SIZE, len: (list.sectors[i] as number) * SECTOR_SIZE };
}
