// The contract between the request handler and the addon's Session: the
// layout of the arrays they share, the opcodes and buffer ids in them, and
// the batch sizes. native/ keeps the same numbers (checked once at start-up,
// src/native/layout-check.ts); nothing here loads the addon.
//
// Every array is allocated by JS once per session and handed to the Session;
// native reads and writes them in place, so no objects are created per
// request. Layouts (all Float64, so every value up to 2^53 is exact):
//
//   chains[i*CHAIN_STRIDE + ...]  : head, firstSeg, segCount, headerLen
//   headers[i*16 .. i*16+16]      : first readable bytes of chain i (Uint8)
//   segs[j*SEG_STRIDE + ...]      : bufId, offset, len, flags(SEG_FLAG_WRITE)
//   sqOps[k*OP_STRIDE + ...]      : opcode, userData, fileOffset, iovStart, iovCount, flags
//   sqIovs[m*IOV_STRIDE + ...]    : bufId, offset, len
//   cqes[n*CQE_STRIDE + ...]      : userData, res (negative errno on failure)
//   used[u*USED_STRIDE + ...]     : head, len, statusBufId, statusOffset, status
//   copies[c*COPY_STRIDE + ...]   : srcBufId, srcOffset, dstBufId, dstOffset, len
//
// bufId BOUNCE_BUF_ID names the session's bounce arena (page aligned);
// smaller bufIds name guest memory regions. An op with OP_FLAG_FIXED has one
// iovec inside one registered FIXED_CHUNK of a region and uses READ_FIXED /
// WRITE_FIXED.

export interface SessionArrays {
  chains: Float64Array;
  headers: Uint8Array;
  segs: Float64Array;
  sqOps: Float64Array;
  sqIovs: Float64Array;
  cqes: Float64Array;
  used: Float64Array;
  copies: Float64Array;
}

/** What the handler asks of the transport. */
export interface DataPlane {
  /** Queues n ops; returns how many were taken. A failed ring throws with `taken` (binding.ts). */
  submit(n: number): number;
  /** Publishes n used entries from arrays.used on queue q and notifies. */
  pushUsed(q: number, n: number): void;
  writeGuest(bufId: number, offset: number, data: Uint8Array): void;
  /** Performs n copies from arrays.copies, in order. */
  copy(n: number): void;
  /** Copies guest memory at (bufId, offset) into dst (DISCARD/WRITE_ZEROES segment lists). */
  readGuest(bufId: number, offset: number, dst: Uint8Array): void;
}

export const CHAIN_STRIDE = 4;
/** Bytes of each chain's header copied into `headers`. */
export const HEADER_BYTES = 16;
export const SEG_STRIDE = 4;
/** segs flag: the device writes this segment (the guest reads it). */
export const SEG_FLAG_WRITE = 1;
export const OP_STRIDE = 6;
/** One iovec: bufId, offset, len (sqIovs, and a request's own iovecs). */
export const IOV_STRIDE = 3;
export const CQE_STRIDE = 2;
export const USED_STRIDE = 5;
export const COPY_STRIDE = 5;

export const OP_READV = 0;
export const OP_WRITEV = 1;
export const OP_FSYNC = 2;
/** fallocate: fileOffset, length in op[3], mode (FALLOC_PUNCH or FALLOC_ZERO) in op[4]. */
export const OP_FALLOCATE = 3;
/** BLKDISCARD (block devices, on the thread pool): fileOffset, length in op[3]. */
export const OP_BLKDISCARD = 4;
/** fallocate modes (KEEP_SIZE | PUNCH_HOLE, KEEP_SIZE | ZERO_RANGE), as native checks them. */
export const FALLOC_PUNCH = 0x03;
export const FALLOC_ZERO = 0x11;
export const OP_FLAG_FIXED = 1;
/** Write with RWF_DSYNC (the guest turned its write cache off). */
export const OP_FLAG_DSYNC = 2;

/** bufId of the session's bounce arena (guest regions are below it). */
export const BOUNCE_BUF_ID = 1024;
/** bufId of native's read-only buffer of zeroes, and its size. */
export const ZERO_BUF_ID = 1025;
export const ZERO_BYTES = 1 << 20;

/** io_uring's largest fixed buffer: regions are registered in chunks of this. */
export const FIXED_CHUNK = 2 ** 30;

/** Does guest memory [offset, offset+len) of a region lie in one registered chunk? */
export function fitsFixedChunk(offset: number, len: number): boolean {
  return Math.floor(offset / FIXED_CHUNK) === Math.floor((offset + len - 1) / FIXED_CHUNK);
}

/** Most memory segments native delivers for one chain (its kMaxChainSegs). */
export const MAX_REQUEST_IOVS = 2048;

/** Sizes of the shared arrays: one batch of chains, ops, completions. */
export const BATCH_CHAINS = 256;
export const BATCH_SEGS = 8192;
export const BATCH_CQES = 256;
export const BATCH_COPIES = 4096;
/** Default bounce arena: reserved address space, touched only as used. */
export const DEFAULT_BOUNCE_BYTES = 64 * 1024 * 1024;
/**
 * The arena's first bytes, registered as an io_uring fixed buffer with guest
 * memory (pinned, so resident; the first-fit BouncePool hands them out first).
 */
export const FIXED_BOUNCE_BYTES = 8 * 1024 * 1024;

export function allocateArrays(maxQueueSize: number): SessionArrays {
  const usedEntries = Math.max(maxQueueSize, BATCH_CHAINS, BATCH_CQES);
  return {
    chains: new Float64Array(BATCH_CHAINS * CHAIN_STRIDE),
    headers: new Uint8Array(BATCH_CHAINS * HEADER_BYTES),
    segs: new Float64Array(BATCH_SEGS * SEG_STRIDE),
    sqOps: new Float64Array(BATCH_CHAINS * OP_STRIDE),
    sqIovs: new Float64Array(BATCH_SEGS * IOV_STRIDE),
    cqes: new Float64Array(BATCH_CQES * CQE_STRIDE),
    used: new Float64Array(usedEntries * USED_STRIDE),
    copies: new Float64Array(BATCH_COPIES * COPY_STRIDE),
  };
}
