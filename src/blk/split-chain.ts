// Descriptor chain -> header | data iovecs | status byte.
//
// Input (from native, per chain, in shared typed arrays):
//
//   segs[j*4 + 0..3] = bufId, offset, len, flags     j in [firstSeg, firstSeg+segCount)
//                                                    flags bit 0 = device-writable
//   headers[headerOffset .. +headerLen]              first <= 16 readable bytes
//
// Native has already walked the ring (indirect tables, loops, bounds) and
// split descriptors at memory-region boundaries, so each segment is one
// range of one buffer. Here the virtio-blk layout is applied. VIRTIO 1.2
// 2.7.4 (message framing): the device must not assume any particular
// descriptor layout, so a 16-byte header may be spread over several segments
// or share one with the data, and the status byte may share a segment with
// the end of the data:
//
//   readable:  |  hdr 16 B  |  OUT data ...          |
//              [seg][ seg        ][seg]     (any cuts, zero-length allowed)
//   writable:  |  IN data ...             | status 1 B |
//              [ seg ][ seg                           ]
//
// Data pieces become iovecs; pieces that continue the previous one in the
// same buffer (same bufId, offset == previous end) are merged, so the
// resulting vector has no contiguous neighbours. Zero-length pieces produce
// no iovec.
//
// Leniency (as QEMU's virtio-blk): readable bytes after the header of an
// IN/GET_ID request and writable bytes before the status byte of an OUT or
// FLUSH request are ignored, never touched, and not counted in used.len.

import { VIRTIO_BLK_OUTHDR_BYTES } from '../virtio/constants';
import { BlkRequest, DataDirection, dataDirection } from './request';
import { IOV_STRIDE, SEG_FLAG_WRITE, SEG_STRIDE } from './shared-arrays';

/** Descriptor lengths are u32; a segment is a piece of one descriptor. */
export const MAX_SEGMENT_LEN = 0xffffffff;

const TWO_POW_32 = 4294967296;
/** A u64 whose high word is at least this is >= 2^53 and not exact in a double. */
const SECTOR_HI_LIMIT = 0x200000;

// Merge state of the vector being built. splitChain is not re-entrant (JS is
// single-threaded and it calls nothing that could call back), so module
// scratch variables keep the hot path free of closures and objects.
let needed = 0;
let lastBufId = -1;
let lastEnd = -1;

/** Append one data piece to req.iovs, merging with the previous piece when contiguous. */
function pushPiece(req: BlkRequest, bufId: number, offset: number, len: number): void {
  if (len === 0) return;
  req.dataLen += len;
  if (needed > 0 && bufId === lastBufId && offset === lastEnd) {
    lastEnd = offset + len;
    if (needed <= req.capacity) {
      const k = (needed - 1) * IOV_STRIDE + 2;
      // SAFETY: needed - 1 < capacity, so k is inside iovs.
      req.iovs[k] = (req.iovs[k] as number) + len;
    }
    return;
  }
  needed++;
  lastBufId = bufId;
  lastEnd = offset + len;
  if (needed <= req.capacity) {
    const k = (needed - 1) * IOV_STRIDE;
    req.iovs[k] = bufId;
    req.iovs[k + 1] = offset;
    req.iovs[k + 2] = len;
    req.iovCount = needed;
  }
}

function u32le(b: Uint8Array, i: number): number {
  // SAFETY: callers checked i + 4 <= b.length.
  return ((b[i] as number) | ((b[i + 1] as number) << 8) | ((b[i + 2] as number) << 16) | ((b[i + 3] as number) << 24)) >>> 0;
}

/**
 * Fill `req` from one chain and return null, or return the rule the chain
 * breaks (a protocol violation: the caller disconnects the frontend). Never
 * throws. `req.head` is left to the caller.
 */
export function splitChain(
  segs: Float64Array,
  firstSeg: number,
  segCount: number,
  headers: Uint8Array,
  headerOffset: number,
  headerLen: number,
  req: BlkRequest,
): string | null {
  const tableSegs = Math.floor(segs.length / SEG_STRIDE);
  if (!Number.isInteger(firstSeg) || !Number.isInteger(segCount) || firstSeg < 0 || segCount < 0 || segCount > tableSegs - firstSeg) {
    return `chain segments [${firstSeg}, ${firstSeg} + ${segCount}) lie outside the segment table of ${tableSegs}`;
  }
  if (
    !Number.isInteger(headerOffset) ||
    !Number.isInteger(headerLen) ||
    headerOffset < 0 ||
    headerLen < 0 ||
    headerLen > VIRTIO_BLK_OUTHDR_BYTES ||
    headerLen > headers.length - headerOffset
  ) {
    return `request header copy [${headerOffset}, ${headerOffset} + ${headerLen}) lies outside the header table of ${headers.length} bytes`;
  }

  req.reset();
  const end = firstSeg + segCount;

  // Pass 1: check every segment, total each direction, find the status byte.
  let readable = 0;
  let writable = 0;
  let firstWritable = end;
  let statusSeg = -1;
  for (let j = firstSeg; j < end; j++) {
    const s = j * SEG_STRIDE;
    // SAFETY: j < end <= tableSegs, so s + 3 < segs.length.
    const bufId = segs[s] as number;
    const offset = segs[s + 1] as number;
    const len = segs[s + 2] as number;
    const flags = segs[s + 3] as number;
    if (!Number.isSafeInteger(bufId) || bufId < 0) {
      return `chain segment ${j - firstSeg} has an invalid buffer id ${bufId}`;
    }
    if (!Number.isSafeInteger(offset) || offset < 0) {
      return `chain segment ${j - firstSeg} has an invalid offset ${offset}`;
    }
    if (!Number.isInteger(len) || len < 0 || len > MAX_SEGMENT_LEN) {
      return `chain segment ${j - firstSeg} has an invalid length ${len}`;
    }
    if (!Number.isSafeInteger(offset + len)) {
      return `chain segment ${j - firstSeg} ends past 2^53 (offset ${offset}, length ${len})`;
    }
    if ((flags & SEG_FLAG_WRITE) !== 0) {
      if (firstWritable === end) firstWritable = j;
      writable += len;
      if (len > 0) statusSeg = j;
    } else {
      // VIRTIO 1.2 2.7.4.2: the driver MUST place any device-writable
      // descriptor elements after any device-readable descriptor elements.
      if (firstWritable !== end) {
        return `chain segment ${j - firstSeg} is device-readable but follows a device-writable one`;
      }
      readable += len;
    }
  }

  if (readable < VIRTIO_BLK_OUTHDR_BYTES) {
    return `request header is ${readable} bytes, needs ${VIRTIO_BLK_OUTHDR_BYTES}`;
  }
  if (headerLen < VIRTIO_BLK_OUTHDR_BYTES) {
    return `request header copy holds ${headerLen} bytes, needs ${VIRTIO_BLK_OUTHDR_BYTES}`;
  }
  if (statusSeg < 0) return 'chain has no writable status byte';

  // struct virtio_blk_outhdr, little endian.
  req.type = u32le(headers, headerOffset);
  req.ioprio = u32le(headers, headerOffset + 4);
  const lo = u32le(headers, headerOffset + 8);
  const hi = u32le(headers, headerOffset + 12);
  if (hi < SECTOR_HI_LIMIT) {
    req.sector = hi * TWO_POW_32 + lo;
    req.sectorExact = true;
  } else {
    // >= 2^53 sectors is past any disk; Infinity makes every range check fail.
    req.sector = Infinity;
    req.sectorExact = false;
  }

  const ss = statusSeg * SEG_STRIDE;
  req.statusBufId = segs[ss] as number;
  req.statusOffset = (segs[ss + 1] as number) + (segs[ss + 2] as number) - 1;

  // Pass 2: the data part.
  needed = 0;
  lastBufId = -1;
  lastEnd = -1;
  const direction = dataDirection(req.type);
  req.direction = direction;
  if (direction === DataDirection.Readable) {
    let skip = VIRTIO_BLK_OUTHDR_BYTES; // header bytes not yet passed
    for (let j = firstSeg; j < firstWritable; j++) {
      const s = j * SEG_STRIDE;
      const len = segs[s + 2] as number;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      pushPiece(req, segs[s] as number, (segs[s + 1] as number) + skip, len - skip);
      skip = 0;
    }
  } else if (direction === DataDirection.Writable) {
    let remaining = writable - 1; // every writable byte before the status byte
    for (let j = firstWritable; j < end && remaining > 0; j++) {
      const s = j * SEG_STRIDE;
      const len = segs[s + 2] as number;
      const take = len < remaining ? len : remaining;
      pushPiece(req, segs[s] as number, segs[s + 1] as number, take);
      remaining -= take;
    }
  }

  if (needed > req.capacity) {
    const n = needed;
    req.iovCount = 0;
    req.iovNeeded = n;
    return `chain has ${n} data segments, more than the ${req.capacity} this request can carry`;
  }
  req.writableLen = direction === DataDirection.Writable ? req.dataLen + 1 : 1;
  return null;
}
