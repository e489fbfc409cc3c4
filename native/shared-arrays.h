// The shared-array contract on the native side: strides, opcodes, buffer ids
// and limits of the arrays a Session shares with JS (src/blk/shared-arrays.ts).
//
// src/blk/shared-arrays.ts keeps the same numbers and describes the layouts;
// the addon exports these (InitSession: `constants`) and
// src/native/layout-check.ts compares every pair once at start-up. Change one
// side only and the daemon refuses to start instead of corrupting batches.
#pragma once

#include <cstdint>

namespace vublk {

// chains[i*kChainStride + ...]: head, firstSeg, segCount, headerLen.
constexpr unsigned kChainStride = 4;
// headers: the first readable bytes of each chain.
constexpr unsigned kHeaderBytes = 16;
// segs[j*kSegStride + ...]: bufId, offset, len, flags (kSegWrite).
constexpr unsigned kSegStride = 4;
constexpr unsigned kSegWrite = 1;
// sqOps[k*kOpStride + ...]: opcode, userData, fileOffset, iovStart, iovCount, flags.
constexpr unsigned kOpStride = 6;
// sqIovs[m*kIovStride + ...]: bufId, offset, len.
constexpr unsigned kIovStride = 3;
// cqes[n*kCqeStride + ...]: userData, res.
constexpr unsigned kCqeStride = 2;
// used[u*kUsedStride + ...]: head, len, statusBufId, statusOffset, status.
constexpr unsigned kUsedStride = 5;
// copies[c*kCopyStride + ...]: srcBufId, srcOffset, dstBufId, dstOffset, len.
constexpr unsigned kCopyStride = 5;

constexpr unsigned kOpReadv = 0;
constexpr unsigned kOpWritev = 1;
constexpr unsigned kOpFsync = 2;
// fallocate: fileOffset = op[2], length = op[3], mode = op[4].
constexpr unsigned kOpFallocate = 3;
// BLKDISCARD on a block device: fileOffset = op[2], length = op[3]. io_uring
// has no discard op, so it runs on libuv's thread pool and its result comes
// back through the ring's completion path.
constexpr unsigned kOpBlkDiscard = 4;
constexpr int kFallocPunch = 0x01 | 0x02;  // FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
constexpr int kFallocZero = 0x01 | 0x10;   // FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE
constexpr unsigned kOpFlagFixed = 1;
constexpr unsigned kOpFlagDsync = 2;

// bufId naming the session's bounce arena (guest regions are 0..508).
constexpr uint32_t kBounceBufId = 1024;
// bufId of a read-only buffer of zeroes: the source for writes and copies of
// zeroes (WRITE_ZEROES fallback, zero-patched RMW blocks).
constexpr uint32_t kZeroBufId = 1025;
constexpr uint64_t kZeroBytes = 1 << 20;

// Largest fixed buffer io_uring takes (1 GiB): regions are registered in
// chunks of this, and a FIXED op's iovec must lie inside one chunk.
constexpr uint64_t kFixedChunk = 1ull << 30;
// The registered chunk of a region that holds byte `offset`.
constexpr uint64_t fixedChunkOf(uint64_t offset) { return offset / kFixedChunk; }

// Longest chain we walk (QEMU's VIRTQUEUE_MAX_SIZE); also bounds an indirect table.
constexpr unsigned kMaxChainDescs = 1024;
// A chain whose descriptors translate to more memory spans than this is refused.
constexpr unsigned kMaxChainSegs = 2048;
// Most iovecs one op may carry (Linux's IOV_MAX).
constexpr unsigned kIovMax = 1024;
// Most queues a session serves.
constexpr unsigned kMaxQueues = 64;

}  // namespace vublk
