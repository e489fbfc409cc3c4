// DISCARD and WRITE_ZEROES: each segment as head | aligned middle | tail over
// host blocks, the middle by punch, zero-range or written zeroes (best first).

import { BlkRequest } from './request';
import {
  BOUNCE_BUF_ID,
  FALLOC_PUNCH,
  FALLOC_ZERO,
  IOV_STRIDE,
  OP_BLKDISCARD,
  OP_FALLOCATE,
  OP_FLAG_DSYNC,
  OP_FSYNC,
  OP_READV,
  OP_WRITEV,
  ZERO_BUF_ID,
  ZERO_BYTES,
} from './shared-arrays';
import { statusForErrno } from './status';
import { SegmentList, parseSegments, segmentBytes } from './discard-zeroes';
import { noteWrite, type SegmentLimits } from './disk-view';
import { PHASE_IDLE, PHASE_MAIN, PHASE_RMW_READ, PHASE_SYNC, type HandlerPort } from './handler-port';
import { RwPlan } from '../align/rw-plan';
import { LockMode } from '../align/range-lock';
import { SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES } from '../virtio/constants';

const EOPNOTSUPP = 95;
/** Op indices of a segment: head block, tail block, middle, sync. */
const OP_HEAD = 0;
const OP_TAIL = 1;
const OP_MIDDLE = 2;
const OP_SYNC = 3;
/** How the aligned middle of a WRITE_ZEROES is done, best first. */
const MID_PUNCH = 0;
const MID_ZERO_RANGE = 1;
const MID_WRITE = 2;
const EMPTY_IOVS = new Float64Array(0);

export class ZeroDiscardRequests {
  /** The host file system answered EOPNOTSUPP to ZERO_RANGE once: write zeroes instead. */
  private zeroRangeWorks = true;

  constructor(
    private readonly h: HandlerPort,
    /** What the config space offered; undefined: none stated, every request fails. */
    private readonly limits: SegmentLimits | undefined,
  ) {}

  /** Reads and checks the segment list, then runs the segments one by one. */
  start(req: BlkRequest): void {
    const limits = this.limits;
    const plane = this.h.plane();
    if (limits === undefined || plane === undefined) {
      this.h.finish(req, VIRTIO_BLK_S_IOERR);
      return;
    }
    const list = req.segments ?? (req.segments = new SegmentList(Math.max(1, limits.maxSegments)));
    if (req.dataLen > list.raw.length) {
      this.h.finish(req, VIRTIO_BLK_S_IOERR);
      return;
    }
    let pos = 0;
    for (let i = 0; i < req.iovCount; i++) {
      const k = i * IOV_STRIDE;
      const len = req.iovs[k + 2] as number;
      plane.readGuest(req.iovs[k] as number, req.iovs[k + 1] as number, list.raw.subarray(pos, pos + len));
      pos += len;
    }
    const fail = parseSegments(req.type, req.dataLen, list, limits);
    if (fail >= 0) {
      this.h.finish(req, fail);
      return;
    }
    if (req.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      for (let i = 0; i < list.count; i++) noteWrite(this.h.disk, (list.sector[i] as number) + (list.sectors[i] as number));
    }
    req.error = 0;
    this.nextSegment(req);
  }

  /**
   * Starts the next segment (or finishes the request): head | aligned middle
   * | tail over host blocks. DISCARD touches only the aligned middle (it is
   * advisory: neighbouring data stays); WRITE_ZEROES zeroes the partial head
   * and tail blocks by read-modify-write, under the range lock like a write.
   */
  private nextSegment(req: BlkRequest): void {
    const list = req.segments as SegmentList;
    const discard = req.type === VIRTIO_BLK_T_DISCARD;
    while (list.next < list.count) {
      const { pos, len } = segmentBytes(list, list.next);
      const plan = req.plan ?? (req.plan = new RwPlan(req.capacity));
      this.h.planner.plan(plan, pos, len, true, EMPTY_IOVS, 0);
      const empty = discard ? plan.midEnd <= plan.midStart : len === 0;
      if (empty) {
        list.next++;
        continue;
      }
      req.phase = PHASE_IDLE;
      req.midUnsupported = false;
      req.midMode = discard || list.unmap[list.next] === 1 ? MID_PUNCH : this.zeroRangeWorks ? MID_ZERO_RANGE : MID_WRITE;
      req.lockHeld = true;
      const rmw = !discard && (plan.head || plan.tail);
      const start = discard ? plan.midStart : plan.aStart;
      const end = discard ? plan.midEnd : plan.aEnd;
      if (!this.h.lock.acquire(req.slotId, start, end, rmw ? LockMode.RMW : LockMode.WRITE)) {
        this.h.counters(req.queue).overlapWaits++;
        return; // issued by the grant callback
      }
      this.issue(req);
      return;
    }
    this.h.finish(req, VIRTIO_BLK_S_OK);
  }

  /** Runs the current segment: its range lock is held. */
  issue(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (req.type === VIRTIO_BLK_T_DISCARD) {
      req.phase = PHASE_MAIN;
      req.pendingOps = 1;
      // A file gets a hole; a block device a real discard (on a block device
      // fallocate(PUNCH_HOLE) means "zero it", which discard does not promise).
      const op = this.h.disk.blockDevice === true ? OP_BLKDISCARD : OP_FALLOCATE;
      this.queueFallocate(req, op, FALLOC_PUNCH, plan.midStart, plan.midEnd - plan.midStart);
      return;
    }
    if (plan.bounceLen > 0) {
      const off = this.h.bounce.alloc(plan.bounceLen);
      if (off < 0) {
        this.h.waitForBounce(req);
        return;
      }
      req.bounceOffset = off;
    }
    if (!(plan.head || plan.tail)) {
      this.zeroPhase(req);
      return;
    }
    const A = this.h.planner.rules.offsetAlign;
    this.h.counters(req.queue).rmwCycles++;
    req.phase = PHASE_RMW_READ;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0);
    if (plan.head) this.h.ops.queueBounce(req, OP_HEAD, OP_READV, plan.aStart, req.bounceOffset + plan.headOff, A);
    if (plan.tail) this.h.ops.queueBounce(req, OP_TAIL, OP_READV, plan.aEnd - A, req.bounceOffset + plan.tailOff, A);
  }

  /** Writes the zero-patched head/tail blocks and zeroes the aligned middle. */
  private zeroPhase(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    const A = this.h.planner.rules.offsetAlign;
    const base = req.bounceOffset;
    const dsync = this.h.writeback() ? 0 : OP_FLAG_DSYNC;
    if (dsync !== 0) this.h.counters(req.queue).durableWrites++;
    req.phase = PHASE_MAIN;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0) + (plan.midEnd > plan.midStart ? 1 : 0);
    if (plan.head) {
      this.h.ops.copy(ZERO_BUF_ID, 0, BOUNCE_BUF_ID, base + plan.headOff + (plan.pos - plan.aStart), plan.headGuestEnd);
      this.h.ops.queueBounce(req, OP_HEAD, OP_WRITEV, plan.aStart, base + plan.headOff, A, dsync);
    }
    if (plan.tail) {
      const at = base + plan.tailOff + (plan.pos + plan.tailGuestStart - (plan.aEnd - A));
      this.h.ops.copy(ZERO_BUF_ID, 0, BOUNCE_BUF_ID, at, plan.len - plan.tailGuestStart);
      this.h.ops.queueBounce(req, OP_TAIL, OP_WRITEV, plan.aEnd - A, base + plan.tailOff, A, dsync);
    }
    if (plan.midEnd > plan.midStart) this.queueMiddleZero(req);
  }

  /** The aligned middle of a WRITE_ZEROES, by the best mode still possible. */
  private queueMiddleZero(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    const len = plan.midEnd - plan.midStart;
    if (req.midMode === MID_PUNCH) {
      this.queueFallocate(req, OP_FALLOCATE, FALLOC_PUNCH, plan.midStart, len);
    } else if (req.midMode === MID_ZERO_RANGE) {
      this.queueFallocate(req, OP_FALLOCATE, FALLOC_ZERO, plan.midStart, len);
    } else {
      // Writes of zeroes from native's zero buffer, repeated (segments <= 1 GiB).
      const n = Math.ceil(len / ZERO_BYTES);
      this.h.ops.reserve(n);
      for (let i = 0; i < n; i++) this.h.ops.iov(i, ZERO_BUF_ID, 0, Math.min(ZERO_BYTES, len - i * ZERO_BYTES));
      const dsync = this.h.writeback() ? 0 : OP_FLAG_DSYNC;
      this.h.ops.queue(req, OP_MIDDLE, OP_WRITEV, plan.midStart, n, len, dsync);
    }
  }

  /** A fallocate (or BLKDISCARD) of [offset, offset+len), inside the disk by construction. */
  private queueFallocate(req: BlkRequest, opcode: number, mode: number, offset: number, len: number): void {
    if (offset + len > this.h.disk.capacitySectors * SECTOR_SIZE) {
      // Segments were checked against capacity: reaching here is a bug, and
      // a KEEP_SIZE fallocate past the end would allocate space silently.
      throw new RangeError(`fallocate [${offset}, +${len}) is beyond the disk`);
    }
    this.h.ops.queueRange(req, OP_MIDDLE, opcode, offset, len, mode);
  }

  /**
   * Whether a completion is the host refusing the middle as unsupported, which
   * opsDone retries another way rather than failing (then it is no error).
   */
  unsupported(req: BlkRequest, opIdx: number, res: number): boolean {
    if (
      opIdx === OP_MIDDLE &&
      res === -EOPNOTSUPP &&
      (req.type === VIRTIO_BLK_T_DISCARD || (req.type === VIRTIO_BLK_T_WRITE_ZEROES && req.midMode !== MID_WRITE))
    ) {
      req.midUnsupported = true;
      return true;
    }
    return false;
  }

  /** All ops of the segment's current phase are done: next phase, fallback, sync, or next segment. */
  opsDone(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (req.error !== 0) {
      this.endSegment(req);
      this.h.finish(req, statusForErrno(req.error));
      return;
    }
    if (req.phase === PHASE_RMW_READ) {
      this.zeroPhase(req);
      return;
    }
    if (req.midUnsupported) {
      req.midUnsupported = false;
      if (req.type === VIRTIO_BLK_T_WRITE_ZEROES && req.midMode !== MID_WRITE) {
        // The file system cannot: fall back (tmpfs has no ZERO_RANGE; a
        // device may refuse unmap). The contract is zeroes, so write them.
        if (req.midMode === MID_ZERO_RANGE) this.zeroRangeWorks = false;
        req.midMode = req.midMode === MID_PUNCH && this.zeroRangeWorks ? MID_ZERO_RANGE : MID_WRITE;
        req.pendingOps = 1;
        this.queueMiddleZero(req);
        return;
      }
      // DISCARD is advisory: a host that cannot punch holes did its part.
    }
    if (
      req.phase === PHASE_MAIN &&
      !this.h.writeback() &&
      req.type === VIRTIO_BLK_T_WRITE_ZEROES &&
      req.midMode !== MID_WRITE &&
      plan.midEnd > plan.midStart
    ) {
      // Write-through: fallocate is not durable until the file is synced.
      req.phase = PHASE_SYNC;
      req.pendingOps = 1;
      this.h.ops.queue(req, OP_SYNC, OP_FSYNC, 0, 0, 0, 0);
      return;
    }
    this.endSegment(req);
    (req.segments as SegmentList).next++;
    this.nextSegment(req);
  }

  /** Releases the segment's bounce space and range. */
  private endSegment(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (req.bounceOffset >= 0) {
      this.h.bounce.release(req.bounceOffset, plan.bounceLen);
      req.bounceOffset = -1;
    }
    if (req.lockHeld) {
      req.lockHeld = false;
      this.h.lock.release(req.slotId);
    }
  }
}
