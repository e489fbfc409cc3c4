// Request slots and request validation for virtio-blk (VIRTIO 1.2 5.2.6).
//
// A BlkRequest is made per (queue, chain head) on that head's first use and
// refilled in place by splitChain() for every later request, so the hot path
// creates no objects. Nothing here does I/O or knows the transport.

import {
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../virtio/constants';
import type { RwPlan } from '../align/rw-plan';
import { IOV_STRIDE } from './shared-arrays';
import type { SegmentList } from './discard-zeroes';
import type { DiskView } from './disk-view';

/** Largest iovec capacity a slot may be built with (indirect tables cap chains anyway). */
export const MAX_REQUEST_CAPACITY = 65536;

/** Where a request type's data lives in the chain. */
export const DataDirection = {
  /** No data part (FLUSH, unknown types). */
  None: 0,
  /** Device-readable bytes after the header (OUT, DISCARD, WRITE_ZEROES, SECURE_ERASE). */
  Readable: 1,
  /** Device-writable bytes before the status byte (IN, GET_ID, GET_LIFETIME). */
  Writable: 2,
} as const;
export type DataDirection = (typeof DataDirection)[keyof typeof DataDirection];

/** Which part of the chain is the request's data, by request type. */
export function dataDirection(type: number): DataDirection {
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_GET_ID:
    case VIRTIO_BLK_T_GET_LIFETIME:
      return DataDirection.Writable;
    case VIRTIO_BLK_T_OUT:
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
    case VIRTIO_BLK_T_SECURE_ERASE:
      return DataDirection.Readable;
    default:
      return DataDirection.None;
  }
}

/**
 * One request slot. Fields are valid after splitChain() returned null for it.
 *
 *   chain:  [ header 16 B | data (OUT) ]  readable
 *           [ data (IN, GET_ID) | status 1 B ]  writable
 *   iovs:   the data part only, merged where host-contiguous
 */
export class BlkRequest {
  /** Most iovecs `iovs` holds. */
  readonly capacity: number;
  /** Chain head descriptor index (the used-ring id). Set by the caller. */
  head = 0;
  /** Request type, u32 from the header. */
  type = 0;
  /** Start sector (512 B). Infinity when the u64 is >= 2^53 (so any range check fails). */
  sector = 0;
  /** True when `sector` holds the header's u64 exactly (it is < 2^53). */
  sectorExact = true;
  /** ioprio, u32 from the header. */
  ioprio = 0;
  /** (bufId, offset, len) triples of the data part; `iovCount` are valid. */
  readonly iovs: Float64Array;
  iovCount = 0;
  /** Bytes in the data part (sum of the iovec lengths). */
  dataLen = 0;
  /** Data direction that splitChain used for this request's type. */
  direction: DataDirection = DataDirection.None;
  /** Location of the status byte (the chain's last writable byte). */
  statusBufId = 0;
  statusOffset = 0;
  /** used.len to report: bytes the device may write, status included (IN: dataLen + 1). */
  writableLen = 0;
  /** Offset of this request's bounce buffer in the bounce arena, or -1. */
  bounceOffset = -1;
  /** When splitChain refused the chain for want of capacity: the iovecs it needed. */
  iovNeeded = 0;

  // Set by the handler while the request is in flight:
  /** When it was popped (the handler's clock, ms): its pop batch's timestamp. */
  poppedAt = 0;
  /** Queue index and slot id (queue * maxQueueSize + head). */
  queue = 0;
  slotId = 0;
  /** The slot's generation for this request (src/blk/completion-id.ts). */
  generation = 0;
  /** How a read/write maps onto host I/O (made on first use, reused). */
  plan: RwPlan | undefined;
  /** Disk ops of the current phase not yet completed, and what each must return. */
  pendingOps = 0;
  readonly opExpect = new Float64Array(16);
  /** First failure (negative errno) of any op, or 0. */
  error = 0;
  /** Handler phase (idle, RMW read, main I/O, done). */
  phase = 0;
  /** Holds a range in the handler's range lock. */
  lockHeld = false;
  /**
   * REGISTERED_BUF hint: true only while every iovec of the I/O lies in
   * registered guest memory. Set when the chain is split (merging keeps it),
   * cleared by any step that substitutes a bounce buffer.
   */
  registered = false;
  /** DISCARD / WRITE_ZEROES: the segment list (made on first use). */
  segments: SegmentList | undefined;
  /** How the current segment's aligned middle is zeroed, and whether that was refused. */
  midMode = 0;
  midUnsupported = false;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_REQUEST_CAPACITY) {
      throw new RangeError(`request capacity must be an integer between 1 and ${MAX_REQUEST_CAPACITY}, got ${capacity}`);
    }
    this.capacity = capacity;
    this.iovs = new Float64Array(capacity * IOV_STRIDE);
  }

  /** Forget the previous request (the iovs array is reused, not cleared). */
  reset(): void {
    this.type = 0;
    this.sector = 0;
    this.sectorExact = true;
    this.ioprio = 0;
    this.iovCount = 0;
    this.dataLen = 0;
    this.direction = DataDirection.None;
    this.statusBufId = 0;
    this.statusOffset = 0;
    this.writableLen = 0;
    this.bounceOffset = -1;
    this.iovNeeded = 0;
  }
}

/**
 * The status to fail `req` with, or -1 when it may proceed.
 * Called after splitChain() succeeded for it.
 */
export function checkRequest(req: Pick<BlkRequest, 'type' | 'sector' | 'dataLen'>, disk: DiskView): number {
  switch (req.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const lbs = disk.logicalBlockSize ?? SECTOR_SIZE;
      if (req.dataLen % lbs !== 0) return VIRTIO_BLK_S_IOERR;
      // A 4K-logical disk takes only requests that start on a 4K boundary.
      // (Infinity % n is NaN, which is !== 0: an oversized sector fails here too.)
      if (req.sector % (lbs / SECTOR_SIZE) !== 0) return VIRTIO_BLK_S_IOERR;
      const nsectors = req.dataLen / SECTOR_SIZE;
      const cap = disk.capacitySectors;
      // Overflow-safe form; Infinity (a u64 sector >= 2^53) fails the first test.
      if (!(req.sector <= cap) || nsectors > cap - req.sector) return VIRTIO_BLK_S_IOERR;
      if (req.type === VIRTIO_BLK_T_OUT && disk.readOnly) return VIRTIO_BLK_S_IOERR;
      return -1;
    }
    case VIRTIO_BLK_T_FLUSH:
      // The sector field of a FLUSH is reserved; the spec says ignore it.
      return -1;
    case VIRTIO_BLK_T_GET_ID:
      return req.dataLen > 0 ? -1 : VIRTIO_BLK_S_IOERR;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
      // A read-only disk refuses them like writes, offered or not.
      if (disk.readOnly) return VIRTIO_BLK_S_IOERR;
      return (req.type === VIRTIO_BLK_T_DISCARD ? disk.discard : disk.writeZeroes) === true ? -1 : VIRTIO_BLK_S_UNSUPP;
    default:
      // GET_LIFETIME and SECURE_ERASE are not offered; anything else is
      // unknown. Both are UNSUPP, never a protocol error.
      return VIRTIO_BLK_S_UNSUPP;
  }
}

/**
 * The 20-byte GET_ID answer: the serial's characters, zero padded. A
 * 20-character serial has no terminating NUL (the spec allows it). Validation
 * happens in options; here characters past 20 are cut and any character that
 * is not printable ASCII becomes "?".
 */
export function encodeSerial(serial: string): Uint8Array {
  const out = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  const n = Math.min(serial.length, VIRTIO_BLK_ID_BYTES);
  for (let i = 0; i < n; i++) {
    const c = serial.charCodeAt(i);
    out[i] = c >= 0x20 && c <= 0x7e ? c : 0x3f;
  }
  return out;
}
