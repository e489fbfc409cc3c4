// Queues one request's disk ops and memory copies into the op batch: each op
// gets its completion id, the result it must return, and its counter.

import { BOUNCE_BUF_ID, OP_FLAG_FIXED, OP_FSYNC, fitsFixedChunk } from './shared-arrays';
import type { BlkRequest } from './request';
import type { OpBatch } from './op-batch';
import type { CompletionIds } from './completion-id';
import type { QueueCounters } from './counters';

export class RequestOps {
  /** Bytes at the start of the bounce arena registered as a fixed buffer now (0: none). */
  fixedBounceBytes = 0;

  constructor(
    private readonly batch: OpBatch,
    private readonly ids: CompletionIds,
    private readonly counters: (q: number) => QueueCounters,
  ) {}

  /** Makes room for one op of `iovs` iovecs. */
  reserve(iovs: number): void {
    this.batch.reserve(iovs);
  }

  /** Writes iovec i of the op about to be queued. */
  iov(i: number, bufId: number, offset: number, len: number): void {
    this.batch.iov(i, bufId, offset, len);
  }

  /** A memory copy, performed before any op queued after it. */
  copy(srcBuf: number, srcOff: number, dstBuf: number, dstOff: number, len: number): void {
    this.batch.copy(srcBuf, srcOff, dstBuf, dstOff, len);
  }

  /** Appends op opIdx of req (its iovecs already written) and what it must return. */
  queue(req: BlkRequest, opIdx: number, opcode: number, offset: number, iovs: number, bytes: number, flags: number): void {
    if (opcode === OP_FSYNC) this.batch.reserve(0);
    this.batch.push(opcode, this.ids.encode(req.slotId, req.generation, opIdx), offset, iovs, flags);
    req.opExpect[opIdx] = opcode === OP_FSYNC ? 0 : bytes;
    const c = this.counters(req.queue);
    if ((flags & OP_FLAG_FIXED) !== 0) c.fixedOps++;
    else c.plainOps++;
  }

  /**
   * OP_FLAG_FIXED if one iovec on (bufId, offset, len) lies in registered
   * memory: the registered part of the arena, or guest memory while the
   * request's hint (`registered`) says guest memory is registered.
   */
  fixedFlag(registered: boolean, bufId: number, offset: number, len: number): number {
    if (bufId === BOUNCE_BUF_ID) return offset + len <= this.fixedBounceBytes ? OP_FLAG_FIXED : 0;
    return registered && bufId < BOUNCE_BUF_ID && fitsFixedChunk(offset, len) ? OP_FLAG_FIXED : 0;
  }

  /** Queues one op on a single bounce-arena range (fixed when that range is registered). */
  queueBounce(req: BlkRequest, opIdx: number, opcode: number, offset: number, at: number, len: number, flags = 0): void {
    this.batch.reserve(1);
    this.batch.iov(0, BOUNCE_BUF_ID, at, len);
    this.queue(req, opIdx, opcode, offset, 1, len, flags | this.fixedFlag(false, BOUNCE_BUF_ID, at, len));
  }

  /** Queues an op on the file range [offset, offset+len) with no iovecs (fallocate, BLKDISCARD); it returns 0. */
  queueRange(req: BlkRequest, opIdx: number, opcode: number, offset: number, len: number, mode: number): void {
    this.batch.reserve(0);
    this.batch.push(opcode, this.ids.encode(req.slotId, req.generation, opIdx), offset, 0, 0, len, mode);
    req.opExpect[opIdx] = 0;
    this.counters(req.queue).plainOps++;
  }
}
