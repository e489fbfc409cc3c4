// Reads and writes: the alignment plan carried out, with read-modify-write of
// partial host blocks, bounce buffers, split ops and the fixed-buffer choice.

import { BlkRequest } from './request';
import { BOUNCE_BUF_ID, OP_FLAG_DSYNC, OP_READV, OP_WRITEV } from './shared-arrays';
import { statusForErrno } from './status';
import { EIO, PHASE_DONE, PHASE_IDLE, PHASE_MAIN, PHASE_RMW_READ, type HandlerPort } from './handler-port';
import { ELEM, RwPlan, buildVector, cutPieces, splitPoints } from '../align/rw-plan';
import { LockMode } from '../align/range-lock';
import { SECTOR_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT } from '../virtio/constants';

export class RwRequests {
  constructor(private readonly h: HandlerPort) {}

  /** Plans the host I/O, then takes the range lock (writes) and issues it. */
  start(req: BlkRequest): void {
    const write = req.type === VIRTIO_BLK_T_OUT;
    const plan = req.plan ?? (req.plan = new RwPlan(req.capacity));
    this.h.planner.plan(plan, req.sector * SECTOR_SIZE, req.dataLen, write, req.iovs, req.iovCount);
    // A bounce buffer replaces guest iovecs: the hint holds only while the
    // arena is registered too (fixedFlag checks each op's range in it).
    if (plan.bounced && this.h.ops.fixedBounceBytes === 0) req.registered = false;
    req.error = 0;
    req.phase = PHASE_IDLE;
    req.lockHeld = false;
    if (!write) {
      this.issue(req);
      return;
    }
    req.lockHeld = true;
    const mode = plan.rmw ? LockMode.RMW : LockMode.WRITE;
    if (!this.h.lock.acquire(req.slotId, plan.aStart, plan.aEnd, mode)) {
      this.h.counters(req.queue).overlapWaits++;
      return; // issued by the lock's grant callback
    }
    this.issue(req);
  }

  /** Reserves bounce space, then starts the read-modify-write reads or the main I/O. */
  issue(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (plan.bounceLen > 0) {
      if (plan.bounceLen > this.h.bounce.size) {
        this.end(req, -EIO);
        return;
      }
      const off = this.h.bounce.alloc(plan.bounceLen);
      if (off < 0) {
        this.h.waitForBounce(req); // retried when a completion frees space
        return;
      }
      req.bounceOffset = off;
    }
    const c = this.h.counters(req.queue);
    if (plan.collapse > 0) c.iovCollapses++;
    if (!plan.rmw) {
      this.mainPhase(req);
      return;
    }
    // Read-modify-write, step 1: read the partial head and tail blocks.
    c.rmwCycles++;
    req.phase = PHASE_RMW_READ;
    const A = this.h.planner.rules.offsetAlign;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0);
    let op = 0;
    if (plan.head) this.h.ops.queueBounce(req, op++, OP_READV, plan.aStart, req.bounceOffset + plan.headOff, A);
    if (plan.tail) this.h.ops.queueBounce(req, op, OP_READV, plan.aEnd - A, req.bounceOffset + plan.tailOff, A);
  }

  /** The read or write of [aStart, aEnd), after any RMW reads. */
  private mainPhase(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    const A = this.h.planner.rules.offsetAlign;
    const base = req.bounceOffset;
    const { vec, cuts } = this.h.planner;
    req.phase = PHASE_MAIN;
    if (plan.write) {
      // Patch the guest's bytes into the bounce buffers before the write.
      if (plan.head) this.copyGuest(req, 0, plan.headGuestEnd, base + plan.headOff + (plan.pos - plan.aStart), true);
      if (plan.tail) {
        const into = base + plan.tailOff + (plan.pos + plan.tailGuestStart - (plan.aEnd - A));
        this.copyGuest(req, plan.tailGuestStart, plan.len, into, true);
      }
      this.copyMiddle(req, true);
    }
    const n = buildVector(plan, BOUNCE_BUF_ID, base, A, vec);
    const opcode = plan.write ? OP_WRITEV : OP_READV;
    const flags = plan.write && !this.h.writeback() ? OP_FLAG_DSYNC : 0;
    if (flags !== 0) this.h.counters(req.queue).durableWrites++;
    if (plan.split) {
      // Feasible by construction (the planner checked the same cuts).
      const ops = splitPoints(vec, n, plan.aStart, A, cuts);
      this.h.counters(req.queue).ioSplits++;
      req.pendingOps = ops;
      let off = plan.aStart;
      for (let o = 0; o < ops; o++) {
        const from = cuts[o] as number;
        const to = o + 1 < ops ? (cuts[o + 1] as number) : n;
        let bytes = 0;
        for (let i = from; i < to; i++) bytes += vec[i * ELEM + 2] as number;
        // queueVecOp copies vec at once; nothing it calls rebuilds it.
        this.queueVecOp(req, o, opcode, off, from, to - from, bytes, flags);
        off += bytes;
      }
      return;
    }
    const fixed = n === 1 ? this.h.ops.fixedFlag(req.registered, vec[0] as number, vec[1] as number, vec[2] as number) : 0;
    req.pendingOps = 1;
    this.queueVecOp(req, 0, opcode, plan.aStart, 0, n, plan.aEnd - plan.aStart, flags | fixed);
  }

  /** Copies the middle bounce or collapse buffer from/to guest memory. */
  private copyMiddle(req: BlkRequest, toBounce: boolean): void {
    const plan = req.plan as RwPlan;
    const at = req.bounceOffset + plan.midOff;
    if (plan.midBounce) {
      if (plan.midEnd > plan.midStart) this.copyGuest(req, plan.midStart - plan.pos, plan.midEnd - plan.pos, at, toBounce);
    } else if (plan.collapse > 0) {
      let pos = at;
      for (let i = 0; i < plan.collapse; i++) {
        const k = i * ELEM;
        const len = plan.pieces[k + 2] as number;
        if (toBounce) this.h.ops.copy(plan.pieces[k] as number, plan.pieces[k + 1] as number, BOUNCE_BUF_ID, pos, len);
        else this.h.ops.copy(BOUNCE_BUF_ID, pos, plan.pieces[k] as number, plan.pieces[k + 1] as number, len);
        pos += len;
      }
      this.h.counters(req.queue).bytesBounced += plan.collapseLen;
    }
  }

  /** Copies guest bytes [from, to) of the request to/from the bounce arena at `at`. */
  private copyGuest(req: BlkRequest, from: number, to: number, at: number, toBounce: boolean): void {
    if (to <= from) return;
    const vec = this.h.planner.vec;
    const n = cutPieces(req.iovs, req.iovCount, from, to, vec, 0);
    let pos = at;
    for (let i = 0; i < n; i++) {
      const k = i * ELEM;
      const len = vec[k + 2] as number;
      if (toBounce) this.h.ops.copy(vec[k] as number, vec[k + 1] as number, BOUNCE_BUF_ID, pos, len);
      else this.h.ops.copy(BOUNCE_BUF_ID, pos, vec[k] as number, vec[k + 1] as number, len);
      pos += len;
    }
    this.h.counters(req.queue).bytesBounced += to - from;
  }

  /** All ops of the current phase are done: the main I/O after RMW reads, or the end. */
  opsDone(req: BlkRequest): void {
    if (req.phase === PHASE_RMW_READ && req.error === 0) {
      this.mainPhase(req);
      return;
    }
    const plan = req.plan as RwPlan;
    if (req.error === 0 && !plan.write) {
      // Copy out what the bounce buffers hold for the guest.
      const base = req.bounceOffset;
      const A = this.h.planner.rules.offsetAlign;
      if (plan.head) this.copyGuest(req, 0, plan.headGuestEnd, base + plan.headOff + (plan.pos - plan.aStart), false);
      if (plan.tail) {
        const from = base + plan.tailOff + (plan.pos + plan.tailGuestStart - (plan.aEnd - A));
        this.copyGuest(req, plan.tailGuestStart, plan.len, from, false);
      }
      this.copyMiddle(req, false);
    }
    this.end(req, req.error);
  }

  /** Releases bounce space and the range lock, then completes the request. */
  private end(req: BlkRequest, res: number): void {
    const plan = req.plan as RwPlan;
    req.phase = PHASE_DONE;
    if (req.bounceOffset >= 0) {
      // Safe to reuse at once: queued copies and ops run in order.
      this.h.bounce.release(req.bounceOffset, plan.bounceLen);
      req.bounceOffset = -1;
    }
    const held = req.lockHeld;
    req.lockHeld = false;
    this.h.finish(req, res < 0 ? statusForErrno(res) : VIRTIO_BLK_S_OK);
    // After finish: a grant may start another request at once.
    if (held) this.h.lock.release(req.slotId);
  }

  /** Queues one op whose iovecs are elements [from, from+count) of the planner's vector. */
  private queueVecOp(
    req: BlkRequest,
    opIdx: number,
    opcode: number,
    offset: number,
    from: number,
    count: number,
    bytes: number,
    flags: number,
  ): void {
    this.h.ops.reserve(count);
    const v = this.h.planner.vec;
    for (let i = 0; i < count; i++) {
      const k = (from + i) * ELEM;
      this.h.ops.iov(i, v[k] as number, v[k + 1] as number, v[k + 2] as number);
    }
    this.h.ops.queue(req, opIdx, opcode, offset, count, bytes, flags);
  }
}
