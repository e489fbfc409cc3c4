// The virtio-blk request handler of one connection's data plane.
//
// It knows nothing of sockets or the addon: it reads batches of popped
// chains from shared arrays, turns each into a request in a preallocated slot
// (one per queue and chain head), queues disk operations, and turns
// completions into status bytes and used entries. Its only outputs are calls
// on a DataPlane, which the addon's Session implements and tests can fake.
//
//   onChains(q, n)      split + check each chain -> disk ops | immediate status
//   onCompletions(n)    op results -> status -> used entries, per queue
//
// A request completes exactly once, through finish(): the one completion
// funnel. Errors of a request are status bytes; only a chain that cannot be
// a request (no header, no status byte) is a protocol violation.

import { BlkRequest, DataDirection, checkRequest, encodeSerial } from './request';
import {
  BOUNCE_BUF_ID,
  CHAIN_STRIDE,
  CQE_STRIDE,
  FALLOC_PUNCH,
  FALLOC_ZERO,
  IOV_STRIDE,
  MAX_REQUEST_IOVS,
  OP_BLKDISCARD,
  OP_FALLOCATE,
  OP_FLAG_DSYNC,
  OP_FLAG_FIXED,
  OP_FSYNC,
  OP_READV,
  OP_WRITEV,
  ZERO_BUF_ID,
  ZERO_BYTES,
  fitsFixedChunk,
  type DataPlane,
  type SessionArrays,
} from './shared-arrays';
import { splitChain } from './split-chain';
import { statusForErrno } from './status';
import { BouncePool } from './bounce-pool';
import { QueueCounters } from './counters';
import { RequestStats, requestBytes } from './request-stats';
import { OpBatch } from './op-batch';
import { UsedBatch } from './used-batch';
import { CompletionIds, OPS_PER_SLOT } from './completion-id';
import { ELEM, RwPlan, buildVector, cutPieces, planBounceLayout, planRw, splitPoints, type HostRules } from '../align/rw-plan';
import { LockMode, RangeLock } from '../align/range-lock';
import { SegmentList, parseSegments, segmentBytes } from './discard-zeroes';
import { segmentLimits, type DiskView, type SegmentLimits } from './disk-view';
import {
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../virtio/constants';

export interface BlkHandlerOptions {
  queues: number;
  maxQueueSize: number;
  /** The guest's view of the disk (the device's, shared): capacity and the highest write live here. */
  disk: DiskView;
  serial: string;
  /** True while the guest has the write cache on (CONFIG_WCE writeback). */
  writeback: () => boolean;
  /** A chain broke a rule: the connection must be closed. */
  onViolation: (q: number, rule: string) => void;
  /** Bytes in the bounce arena (see shared-arrays.ts and the Session). */
  bounceBytes: number;
  /** The host disk's O_DIRECT rules (src/disk/probe.ts). */
  rules: HostRules;
  /** The data plane failed for good: the connection must be closed. */
  onFatal?: (message: string) => void;
  /** A host I/O error (negative errno) became a guest error status. */
  onHostError?: (res: number, opcode: number, offset: number) => void;
  /** Milliseconds for request latencies, read once per batch (default performance.now). */
  clock?: () => number;
}

const EIO = 5;
const EOPNOTSUPP = 95;
/** Op indices of a DISCARD/WRITE_ZEROES segment: head block, tail block, middle, sync. */
const OP_HEAD = 0;
const OP_TAIL = 1;
const OP_MIDDLE = 2;
const OP_SYNC = 3;
const PHASE_SYNC = 4;
/** How the aligned middle of a WRITE_ZEROES is done, best first. */
const MID_PUNCH = 0;
const MID_ZERO_RANGE = 1;
const MID_WRITE = 2;
const EMPTY_IOVS = new Float64Array(0);
/** Most ops one request may be split into (IOV_MAX elements each). */
const MAX_OPS = OPS_PER_SLOT;
const PHASE_IDLE = 0;
const PHASE_RMW_READ = 1;
const PHASE_MAIN = 2;
const PHASE_DONE = 3;

/**
 * Iovecs a request slot starts with: what typical requests need (Linux
 * sends one segment per page or per contiguous run). A longer chain grows its
 * head's slot once, up to MAX_REQUEST_IOVS (what native can deliver for one
 * chain), so memory stays proportional to what the guest really sends.
 */
const SLOT_IOVS = 64;

/** Per-queue state: request slots by chain head, and used entries not yet pushed. */
class QueueState {
  readonly slots: BlkRequest[];
  readonly busy: Uint8Array;
  readonly generation: Float64Array; // per head: outlives a slot replaced by a bigger one
  readonly pendingUsed: UsedBatch;
  inflight = 0;
  idleWaiters: Array<() => void> = [];
  readonly counters = new QueueCounters();
  readonly stats = new RequestStats();

  constructor(maxQueueSize: number) {
    // Slots are made on a head's first use: a guest rarely uses every head.
    this.slots = new Array<BlkRequest>(maxQueueSize);
    this.busy = new Uint8Array(maxQueueSize);
    this.generation = new Float64Array(maxQueueSize);
    this.pendingUsed = new UsedBatch(maxQueueSize);
  }
}

export class BlkHandler {
  private readonly queues: QueueState[] = [];
  private readonly serialBytes: Uint8Array;
  private readonly maxQueueSize: number;
  /** The disk as this connection's driver negotiated it. */
  private readonly disk: DiskView;
  /** DISCARD / WRITE_ZEROES limits (what the config space offered); undefined: none stated. */
  private readonly zeroDiscard: SegmentLimits | undefined;
  private plane: DataPlane | undefined;
  /** Queues with used entries waiting for flushUsed(). */
  private readonly dirty: number[] = [];
  private readonly bounce: BouncePool;
  /** Requests waiting for bounce space, oldest first, by slot id. */
  private readonly waiting: number[] = [];
  /** Host address of each region's first byte, modulo 4096 (its mmap phase). */
  private readonly regionPhase = new Float64Array(BOUNCE_BUF_ID);
  /** Serialises writes that share host blocks with a read-modify-write. */
  private readonly lock: RangeLock;
  /** Guest memory is registered with io_uring (fixed buffers may be used). */
  private registered = false;
  /** Scratch: the vector of the op being built, and where to split it. */
  private readonly vec = new Float64Array((MAX_REQUEST_IOVS + 2) * ELEM);
  private readonly cuts: number[] = [];
  /** The ops and copies being batched for the next submission. */
  private readonly ops: OpBatch;
  /** The host file system answered EOPNOTSUPP to ZERO_RANGE once: write zeroes instead. */
  private zeroRangeWorks = true;
  private readonly phaseOf = (bufId: number): number => this.regionPhase[bufId] ?? 0;
  private readonly ids: CompletionIds;
  private readonly clock: () => number;
  /** The clock when the current pop or completion batch began: every latency ends there. */
  private now = 0;

  constructor(
    private readonly arrays: SessionArrays,
    private readonly opts: BlkHandlerOptions,
  ) {
    this.maxQueueSize = opts.maxQueueSize;
    this.ids = new CompletionIds(opts.queues * opts.maxQueueSize);
    this.clock = opts.clock ?? (() => performance.now());
    // Until SET_FEATURES says otherwise, nothing beyond reads/writes is negotiated.
    const disk = opts.disk;
    this.disk = {
      get capacitySectors() {
        return disk.capacitySectors;
      },
      readOnly: disk.readOnly,
      logicalBlockSize: disk.logicalBlockSize,
      blockDevice: disk.blockDevice,
      discard: false,
      writeZeroes: false,
    };
    this.zeroDiscard = segmentLimits(disk);
    for (let q = 0; q < opts.queues; q++) this.queues.push(new QueueState(opts.maxQueueSize));
    this.serialBytes = encodeSerial(opts.serial);
    this.bounce = new BouncePool(opts.bounceBytes);
    this.lock = new RangeLock((slotId) => this.issue(this.slot(slotId)));
    this.ops = new OpBatch(arrays, () => this.plane, (message) => this.opts.onFatal?.(message));
  }

  /**
   * DISCARD / WRITE_ZEROES run only when offered AND acked by the driver:
   * they destroy data, and a driver that did not negotiate them never read
   * their limits. Called on SET_FEATURES.
   */
  setNegotiated(discard: boolean, writeZeroes: boolean): void {
    this.disk.discard = discard && this.opts.disk.discard === true;
    this.disk.writeZeroes = writeZeroes && this.opts.disk.writeZeroes === true;
  }

  /** Whether guest memory is registered as io_uring fixed buffers now. */
  setRegistered(on: boolean): void {
    this.registered = on;
  }

  /** Per-queue counters (live objects). */
  counters(): readonly QueueCounters[] {
    return this.queues.map((s) => s.counters);
  }

  /** Per-queue request statistics (live objects). */
  requestStats(): readonly RequestStats[] {
    return this.queues.map((s) => s.stats);
  }

  private slot(slotId: number): BlkRequest {
    const q = Math.floor(slotId / this.maxQueueSize);
    return (this.queues[q] as QueueState).slots[slotId - q * this.maxQueueSize] as BlkRequest;
  }

  /** Records where a guest region starts relative to a page (mmap_offset mod 4096). */
  setRegionPhase(bufId: number, phase: number): void {
    this.regionPhase[bufId] = phase % 4096;
  }

  /** Bytes of the bounce arena in use (tests). */
  get bounceInUse(): number {
    return this.bounce.inUse;
  }

  attach(plane: DataPlane): void {
    this.plane = plane;
  }

  /** Requests popped but not completed, on one queue or on all. */
  inflight(q?: number): number {
    if (q !== undefined) return this.queue(q).inflight;
    let n = 0;
    for (const s of this.queues) n += s.inflight;
    return n;
  }

  /** Resolves once queue q (or every queue) has nothing in flight. */
  whenIdle(q?: number): Promise<void> {
    const targets = q === undefined ? this.queues : [this.queue(q)];
    return Promise.all(
      targets.map(
        (s) =>
          new Promise<void>((resolve) => {
            if (s.inflight === 0) resolve();
            else s.idleWaiters.push(resolve);
          }),
      ),
    ).then(() => undefined);
  }

  private queue(q: number): QueueState {
    const s = this.queues[q];
    if (s === undefined) throw new RangeError(`queue ${q} out of range`);
    return s;
  }

  /** A batch of chains popped from queue q (called by the data plane). */
  onChains(q: number, nChains: number): void {
    const { chains, segs, headers } = this.arrays;
    const state = this.queue(q);
    this.now = this.clock();
    for (let i = 0; i < nChains; i++) {
      const c = i * CHAIN_STRIDE;
      const head = chains[c] as number;
      const firstSeg = chains[c + 1] as number;
      const segCount = chains[c + 2] as number;
      const headerLen = chains[c + 3] as number;
      if (state.busy[head] === 1) {
        this.opts.onViolation(q, `Guest made chain head ${head} available while it is in flight`);
        break;
      }
      let req = state.slots[head] ?? (state.slots[head] = new BlkRequest(SLOT_IOVS));
      let broken = splitChain(segs, firstSeg, segCount, headers, i * 16, headerLen, req);
      if (broken !== null && req.iovNeeded > req.capacity && req.iovNeeded <= MAX_REQUEST_IOVS) {
        // A long chain: this head gets a slot that can carry it, once.
        req = state.slots[head] = new BlkRequest(MAX_REQUEST_IOVS);
        broken = splitChain(segs, firstSeg, segCount, headers, i * 16, headerLen, req);
      }
      if (broken !== null) {
        this.opts.onViolation(q, broken);
        break;
      }
      req.head = head;
      req.queue = q;
      req.slotId = q * this.maxQueueSize + head;
      req.generation = state.generation[head] = this.ids.next(state.generation[head] as number);
      req.registered = this.registered;
      req.poppedAt = this.now;
      state.busy[head] = 1;
      state.inflight++;
      this.start(q, req);
    }
    this.settle();
  }

  /** Decides what one request needs: a disk op, or an immediate status. */
  private start(q: number, req: BlkRequest): void {
    const fail = checkRequest(req, this.disk);
    if (fail >= 0) {
      this.finish(q, req, fail);
      return;
    }
    if (req.type === VIRTIO_BLK_T_OUT) this.noteWrite(req.sector + req.dataLen / SECTOR_SIZE);
    switch (req.type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT:
        if (req.dataLen === 0) {
          this.finish(q, req, VIRTIO_BLK_S_OK);
        } else {
          this.startRw(req);
        }
        return;
      case VIRTIO_BLK_T_FLUSH:
        req.pendingOps = 1;
        req.opExpect[0] = 0;
        this.queueOp(req, 0, OP_FSYNC, 0, 0, 0, 0);
        return;
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.startZeroDiscard(req);
        return;
      case VIRTIO_BLK_T_GET_ID:
        this.finish(q, req, this.writeSerial(req));
        return;
      default:
        this.finish(q, req, VIRTIO_BLK_S_IOERR);
    }
  }

  // ------------------------------------------------------------ reads and writes

  /** Plans the host I/O, then takes the range lock (writes) and issues it. */
  private startRw(req: BlkRequest): void {
    const write = req.type === VIRTIO_BLK_T_OUT;
    const plan = req.plan ?? (req.plan = new RwPlan(req.capacity));
    planRw(plan, req.sector * SECTOR_SIZE, req.dataLen, write, req.iovs, req.iovCount, this.opts.rules, this.phaseOf);
    if (plan.split) {
      // Split only where every op can start host-aligned; else bounce the
      // whole middle. Decided now, before any bounce space is reserved.
      const A = this.opts.rules.offsetAlign;
      const n = buildVector(plan, BOUNCE_BUF_ID, 0, A, this.vec);
      const ops = splitPoints(this.vec, n, plan.aStart, A, this.cuts);
      if (ops === 0 || ops > MAX_OPS) {
        plan.split = false;
        plan.midBounce = true;
        plan.collapse = 0;
        planBounceLayout(plan, A);
      }
    }
    // A bounce buffer replaces guest iovecs: the hint no longer holds.
    if (plan.bounced) req.registered = false;
    req.error = 0;
    req.phase = PHASE_IDLE;
    req.lockHeld = false;
    if (!write) {
      this.issueRw(req);
      return;
    }
    req.lockHeld = true;
    const mode = plan.rmw ? LockMode.RMW : LockMode.WRITE;
    if (!this.lock.acquire(req.slotId, plan.aStart, plan.aEnd, mode)) {
      (this.queues[req.queue] as QueueState).counters.overlapWaits++;
      return; // issued by the lock's grant callback
    }
    this.issueRw(req);
  }

  /** Reserves bounce space, then starts the read-modify-write reads or the main I/O. */
  private issueRw(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (plan.bounceLen > 0) {
      if (plan.bounceLen > this.bounce.size) {
        this.endRw(req, -EIO);
        return;
      }
      const off = this.bounce.alloc(plan.bounceLen);
      if (off < 0) {
        this.waiting.push(req.slotId); // retried when a completion frees space
        return;
      }
      req.bounceOffset = off;
    }
    const c = (this.queues[req.queue] as QueueState).counters;
    if (plan.collapse > 0) c.iovCollapses++;
    if (!plan.rmw) {
      this.mainPhase(req);
      return;
    }
    // Read-modify-write, step 1: read the partial head and tail blocks.
    c.rmwCycles++;
    req.phase = PHASE_RMW_READ;
    const A = this.opts.rules.offsetAlign;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0);
    let op = 0;
    if (plan.head) this.queueBounceOp(req, op++, OP_READV, plan.aStart, req.bounceOffset + plan.headOff, A);
    if (plan.tail) this.queueBounceOp(req, op, OP_READV, plan.aEnd - A, req.bounceOffset + plan.tailOff, A);
  }

  /** The read or write of [aStart, aEnd), after any RMW reads. */
  private mainPhase(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    const A = this.opts.rules.offsetAlign;
    const base = req.bounceOffset;
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
    const n = buildVector(plan, BOUNCE_BUF_ID, base, A, this.vec);
    const opcode = plan.write ? OP_WRITEV : OP_READV;
    const flags = plan.write && !this.opts.writeback() ? OP_FLAG_DSYNC : 0;
    if (flags !== 0) (this.queues[req.queue] as QueueState).counters.durableWrites++;
    if (plan.split) {
      // Feasible by construction (startRw checked the same cuts).
      const ops = splitPoints(this.vec, n, plan.aStart, A, this.cuts);
      (this.queues[req.queue] as QueueState).counters.ioSplits++;
      req.pendingOps = ops;
      let off = plan.aStart;
      for (let o = 0; o < ops; o++) {
        const from = this.cuts[o] as number;
        const to = o + 1 < ops ? (this.cuts[o + 1] as number) : n;
        let bytes = 0;
        for (let i = from; i < to; i++) bytes += this.vec[i * ELEM + 2] as number;
        // queueVecOp copies this.vec at once; nothing it calls rebuilds it.
        this.queueVecOp(req, o, opcode, off, from, to - from, bytes, flags);
        off += bytes;
      }
      return;
    }
    let fixed = 0;
    if (n === 1 && req.registered && fitsFixedChunk(this.vec[1] as number, this.vec[2] as number)) {
      fixed = OP_FLAG_FIXED;
    }
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
        if (toBounce) this.ops.copy(plan.pieces[k] as number, plan.pieces[k + 1] as number, BOUNCE_BUF_ID, pos, len);
        else this.ops.copy(BOUNCE_BUF_ID, pos, plan.pieces[k] as number, plan.pieces[k + 1] as number, len);
        pos += len;
      }
      (this.queues[req.queue] as QueueState).counters.bytesBounced += plan.collapseLen;
    }
  }

  /** Copies guest bytes [from, to) of the request to/from the bounce arena at `at`. */
  private copyGuest(req: BlkRequest, from: number, to: number, at: number, toBounce: boolean): void {
    if (to <= from) return;
    const n = cutPieces(req.iovs, req.iovCount, from, to, this.vec, 0);
    let pos = at;
    for (let i = 0; i < n; i++) {
      const k = i * ELEM;
      const len = this.vec[k + 2] as number;
      if (toBounce) this.ops.copy(this.vec[k] as number, this.vec[k + 1] as number, BOUNCE_BUF_ID, pos, len);
      else this.ops.copy(BOUNCE_BUF_ID, pos, this.vec[k] as number, this.vec[k + 1] as number, len);
      pos += len;
    }
    (this.queues[req.queue] as QueueState).counters.bytesBounced += to - from;
  }

  /** All ops of the current phase are done: next phase, or the end. */
  /**
   * Remembers the end of a write once it is accepted (not when it completes:
   * a shrink must not cut under a write still in flight either).
   */
  private noteWrite(endSector: number): void {
    const disk = this.opts.disk;
    if (endSector > (disk.writtenEndSector ?? 0)) disk.writtenEndSector = endSector;
  }

  /** Starts a request whose range lock was just granted, or whose bounce space came free. */
  private issue(req: BlkRequest): void {
    if (req.type === VIRTIO_BLK_T_IN || req.type === VIRTIO_BLK_T_OUT) this.issueRw(req);
    else this.issueZero(req);
  }

  private opsDone(req: BlkRequest): void {
    if (req.type === VIRTIO_BLK_T_DISCARD || req.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      this.zeroOpsDone(req);
      return;
    }
    if (req.type === VIRTIO_BLK_T_FLUSH) {
      this.finish(req.queue, req, req.error < 0 ? statusForErrno(req.error) : VIRTIO_BLK_S_OK);
      return;
    }
    if (req.phase === PHASE_RMW_READ && req.error === 0) {
      this.mainPhase(req);
      return;
    }
    const plan = req.plan as RwPlan;
    if (req.error === 0 && !plan.write) {
      // Copy out what the bounce buffers hold for the guest.
      const base = req.bounceOffset;
      const A = this.opts.rules.offsetAlign;
      if (plan.head) this.copyGuest(req, 0, plan.headGuestEnd, base + plan.headOff + (plan.pos - plan.aStart), false);
      if (plan.tail) {
        const from = base + plan.tailOff + (plan.pos + plan.tailGuestStart - (plan.aEnd - A));
        this.copyGuest(req, plan.tailGuestStart, plan.len, from, false);
      }
      this.copyMiddle(req, false);
    }
    this.endRw(req, req.error);
  }

  /** Releases bounce space and the range lock, then completes the request. */
  private endRw(req: BlkRequest, res: number): void {
    const plan = req.plan as RwPlan;
    req.phase = PHASE_DONE;
    if (req.bounceOffset >= 0) {
      // Safe to reuse at once: queued copies and ops run in order.
      this.bounce.release(req.bounceOffset, plan.bounceLen);
      req.bounceOffset = -1;
    }
    const held = req.lockHeld;
    req.lockHeld = false;
    this.finish(req.queue, req, res < 0 ? statusForErrno(res) : VIRTIO_BLK_S_OK);
    // After finish: a grant may start another request at once.
    if (held) this.lock.release(req.slotId);
  }

  /** Starts requests that wait for bounce space, oldest first, while there is room. */
  private startWaiting(): void {
    while (this.waiting.length > 0) {
      const req = this.slot(this.waiting[0] as number);
      const plan = req.plan as RwPlan;
      if (plan.bounceLen <= this.bounce.size && this.bounce.size - this.bounce.inUse < plan.bounceLen) return;
      this.waiting.shift();
      const before = this.waiting.length;
      this.issue(req);
      if (this.waiting.length > before) {
        // Fragmentation: it went back to the end; put it first again and stop.
        this.waiting.unshift(this.waiting.pop() as number);
        return;
      }
    }
  }

  // ------------------------------------------------------------ DISCARD and WRITE_ZEROES

  /** Reads and checks the segment list, then runs the segments one by one. */
  private startZeroDiscard(req: BlkRequest): void {
    const limits = this.zeroDiscard;
    const plane = this.plane;
    if (limits === undefined || plane === undefined) {
      this.finish(req.queue, req, VIRTIO_BLK_S_IOERR);
      return;
    }
    const list = req.segments ?? (req.segments = new SegmentList(Math.max(1, limits.maxSegments)));
    if (req.dataLen > list.raw.length) {
      this.finish(req.queue, req, VIRTIO_BLK_S_IOERR);
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
      this.finish(req.queue, req, fail);
      return;
    }
    if (req.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      for (let i = 0; i < list.count; i++) this.noteWrite((list.sector[i] as number) + (list.sectors[i] as number));
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
      planRw(plan, pos, len, true, EMPTY_IOVS, 0, this.opts.rules, this.phaseOf);
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
      if (!this.lock.acquire(req.slotId, start, end, rmw ? LockMode.RMW : LockMode.WRITE)) {
        (this.queues[req.queue] as QueueState).counters.overlapWaits++;
        return; // issued by the grant callback
      }
      this.issueZero(req);
      return;
    }
    this.finish(req.queue, req, VIRTIO_BLK_S_OK);
  }

  private issueZero(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (req.type === VIRTIO_BLK_T_DISCARD) {
      req.phase = PHASE_MAIN;
      req.pendingOps = 1;
      // A file gets a hole; a block device a real discard (on a block device
      // fallocate(PUNCH_HOLE) means "zero it", which discard does not promise).
      const op = this.opts.disk.blockDevice === true ? OP_BLKDISCARD : OP_FALLOCATE;
      this.queueFallocate(req, op, FALLOC_PUNCH, plan.midStart, plan.midEnd - plan.midStart);
      return;
    }
    if (plan.bounceLen > 0) {
      const off = this.bounce.alloc(plan.bounceLen);
      if (off < 0) {
        this.waiting.push(req.slotId);
        return;
      }
      req.bounceOffset = off;
    }
    if (!(plan.head || plan.tail)) {
      this.zeroPhase(req);
      return;
    }
    const A = this.opts.rules.offsetAlign;
    (this.queues[req.queue] as QueueState).counters.rmwCycles++;
    req.phase = PHASE_RMW_READ;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0);
    if (plan.head) this.queueBounceOp(req, OP_HEAD, OP_READV, plan.aStart, req.bounceOffset + plan.headOff, A);
    if (plan.tail) this.queueBounceOp(req, OP_TAIL, OP_READV, plan.aEnd - A, req.bounceOffset + plan.tailOff, A);
  }

  /** Writes the zero-patched head/tail blocks and zeroes the aligned middle. */
  private zeroPhase(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    const A = this.opts.rules.offsetAlign;
    const base = req.bounceOffset;
    const dsync = this.opts.writeback() ? 0 : OP_FLAG_DSYNC;
    if (dsync !== 0) (this.queues[req.queue] as QueueState).counters.durableWrites++;
    req.phase = PHASE_MAIN;
    req.pendingOps = (plan.head ? 1 : 0) + (plan.tail ? 1 : 0) + (plan.midEnd > plan.midStart ? 1 : 0);
    if (plan.head) {
      this.ops.copy(ZERO_BUF_ID, 0, BOUNCE_BUF_ID, base + plan.headOff + (plan.pos - plan.aStart), plan.headGuestEnd);
      this.queueBounceOp(req, OP_HEAD, OP_WRITEV, plan.aStart, base + plan.headOff, A, dsync);
    }
    if (plan.tail) {
      const at = base + plan.tailOff + (plan.pos + plan.tailGuestStart - (plan.aEnd - A));
      this.ops.copy(ZERO_BUF_ID, 0, BOUNCE_BUF_ID, at, plan.len - plan.tailGuestStart);
      this.queueBounceOp(req, OP_TAIL, OP_WRITEV, plan.aEnd - A, base + plan.tailOff, A, dsync);
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
      this.ops.reserve(n);
      for (let i = 0; i < n; i++) this.ops.iov(i, ZERO_BUF_ID, 0, Math.min(ZERO_BYTES, len - i * ZERO_BYTES));
      const dsync = this.opts.writeback() ? 0 : OP_FLAG_DSYNC;
      this.queueOp(req, OP_MIDDLE, OP_WRITEV, plan.midStart, n, len, dsync);
    }
  }

  /** A fallocate (or BLKDISCARD) of [offset, offset+len), inside the disk by construction. */
  private queueFallocate(req: BlkRequest, opcode: number, mode: number, offset: number, len: number): void {
    if (offset + len > this.opts.disk.capacitySectors * SECTOR_SIZE) {
      // Segments were checked against capacity: reaching here is a bug, and
      // a KEEP_SIZE fallocate past the end would allocate space silently.
      throw new RangeError(`fallocate [${offset}, +${len}) is beyond the disk`);
    }
    this.ops.reserve(0);
    this.ops.push(opcode, this.ids.encode(req.slotId, req.generation, OP_MIDDLE), offset, 0, 0, len, mode);
    req.opExpect[OP_MIDDLE] = 0;
    (this.queues[req.queue] as QueueState).counters.plainOps++;
  }

  private zeroOpsDone(req: BlkRequest): void {
    const plan = req.plan as RwPlan;
    if (req.error !== 0) {
      this.endSegment(req);
      this.finish(req.queue, req, statusForErrno(req.error));
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
    if (req.phase === PHASE_MAIN && !this.opts.writeback() && req.type === VIRTIO_BLK_T_WRITE_ZEROES && req.midMode !== MID_WRITE && plan.midEnd > plan.midStart) {
      // Write-through: fallocate is not durable until the file is synced.
      req.phase = PHASE_SYNC;
      req.pendingOps = 1;
      this.queueOp(req, OP_SYNC, OP_FSYNC, 0, 0, 0, 0);
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
      this.bounce.release(req.bounceOffset, plan.bounceLen);
      req.bounceOffset = -1;
    }
    if (req.lockHeld) {
      req.lockHeld = false;
      this.lock.release(req.slotId);
    }
  }

  private writeSerial(req: BlkRequest): number {
    const plane = this.plane;
    if (plane === undefined) return VIRTIO_BLK_S_IOERR;
    let done = 0;
    for (let i = 0; i < req.iovCount && done < VIRTIO_BLK_ID_BYTES; i++) {
      const k = i * IOV_STRIDE;
      const len = Math.min(req.iovs[k + 2] as number, VIRTIO_BLK_ID_BYTES - done);
      plane.writeGuest(req.iovs[k] as number, req.iovs[k + 1] as number, this.serialBytes.subarray(done, done + len));
      done += len;
    }
    // used.len counts what the device wrote: the id bytes and the status.
    req.writableLen = done + 1;
    return VIRTIO_BLK_S_OK;
  }

  /** Queues one op whose iovecs are elements [from, from+count) of this.vec. */
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
    this.ops.reserve(count);
    const v = this.vec;
    for (let i = 0; i < count; i++) {
      const k = (from + i) * ELEM;
      this.ops.iov(i, v[k] as number, v[k + 1] as number, v[k + 2] as number);
    }
    this.queueOp(req, opIdx, opcode, offset, count, bytes, flags);
  }

  /** Queues one op on a single bounce-arena range. */
  private queueBounceOp(req: BlkRequest, opIdx: number, opcode: number, offset: number, at: number, len: number, flags = 0): void {
    this.ops.reserve(1);
    this.ops.iov(0, BOUNCE_BUF_ID, at, len);
    this.queueOp(req, opIdx, opcode, offset, 1, len, flags);
  }

  /** Appends op opIdx of req (its iovecs already written) and what it must return. */
  private queueOp(req: BlkRequest, opIdx: number, opcode: number, offset: number, iovs: number, bytes: number, flags: number): void {
    if (opcode === OP_FSYNC) this.ops.reserve(0);
    this.ops.push(opcode, this.ids.encode(req.slotId, req.generation, opIdx), offset, iovs, flags);
    req.opExpect[opIdx] = opcode === OP_FSYNC ? 0 : bytes;
    const c = (this.queues[req.queue] as QueueState).counters;
    if ((flags & OP_FLAG_FIXED) !== 0) c.fixedOps++;
    else c.plainOps++;
  }

  /**
   * Ends every callback: starts what waits for bounce space, runs copies,
   * submits, fails refused ops (which may start more work), and publishes
   * used entries once nothing else is pending.
   */
  private settle(): void {
    for (;;) {
      this.startWaiting();
      // Copy-ins before the writes that read them; copy-outs of bounced
      // reads before their used entries and before their space is reused.
      this.ops.flushCopies();
      this.ops.submit();
      // Ops the ring did not take fail here, not while they were queued:
      // failing them there could start other work in the middle of an op.
      if (this.ops.refused.length === 0) break;
      const refused = this.ops.refused.splice(0, this.ops.refused.length);
      for (const userData of refused) this.complete(userData, -EIO);
    }
    this.flushUsed();
  }

  /** A batch of disk op completions (called by the data plane). */
  onCompletions(n: number): void {
    const { cqes } = this.arrays;
    this.now = this.clock();
    for (let i = 0; i < n; i++) {
      this.complete(cqes[i * CQE_STRIDE] as number, cqes[i * CQE_STRIDE + 1] as number);
    }
    this.settle();
  }

  private complete(userData: number, res: number): void {
    this.ids.decode(userData);
    const { slotId, generation, opIdx } = this.ids;
    const q = Math.floor(slotId / this.maxQueueSize);
    const head = slotId - q * this.maxQueueSize;
    const state = this.queues[q];
    if (state === undefined || state.busy[head] !== 1) return; // not ours: ignore
    const req = state.slots[head] as BlkRequest;
    if (req.generation !== generation || req.pendingOps <= 0) return; // a late op of the slot's previous request
    // A short transfer is an error: the guest asked for every byte.
    if (
      opIdx === OP_MIDDLE &&
      res === -EOPNOTSUPP &&
      (req.type === VIRTIO_BLK_T_DISCARD || (req.type === VIRTIO_BLK_T_WRITE_ZEROES && req.midMode !== MID_WRITE))
    ) {
      req.midUnsupported = true; // retried another way in zeroOpsDone
    } else if (req.error === 0 && res !== req.opExpect[opIdx]) {
      req.error = res < 0 ? res : -EIO;
      this.opts.onHostError?.(req.error, req.type, req.sector * SECTOR_SIZE);
    }
    if (--req.pendingOps === 0) this.opsDone(req);
  }

  /** The one completion funnel: status byte + used entry, slot released. */
  private finish(q: number, req: BlkRequest, status: number): void {
    const state = this.queues[q] as QueueState;
    state.counters.requests++;
    if (status !== VIRTIO_BLK_S_OK) state.counters.errors++;
    state.stats.record(req.type, status, status === VIRTIO_BLK_S_OK ? requestBytes(req) : 0, (this.now - req.poppedAt) / 1000);
    const used = state.pendingUsed;
    if (used.full) {
      // More finished in this batch than the queue has heads (a racing
      // guest): publish what is there, bounced reads' copy-outs first.
      this.ops.flushCopies();
      this.publish(q);
    }
    const len = req.type === VIRTIO_BLK_T_GET_ID ? req.writableLen : req.direction === DataDirection.Writable ? req.dataLen + 1 : 1;
    if (used.count === 0) this.dirty.push(q);
    used.add(req.head, len, req.statusBufId, req.statusOffset, status);
    state.busy[req.head] = 0;
    state.inflight--;
  }

  /** Publishes pending used entries, one pushUsed per queue touched. */
  private flushUsed(): void {
    for (const q of this.dirty) this.publish(q);
    this.dirty.length = 0;
  }

  /** One pushUsed with queue q's pending entries (if any); wakes whoever waits for it to idle. */
  private publish(q: number): void {
    const state = this.queues[q] as QueueState;
    if (state.pendingUsed.count > 0) this.plane?.pushUsed(q, state.pendingUsed.take(this.arrays.used));
    if (state.inflight === 0 && state.idleWaiters.length > 0) {
      const waiters = state.idleWaiters;
      state.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Fails and forgets everything in flight (the data plane is gone). */
  abandonAll(): void {
    this.waiting.length = 0;
    this.ops.clear();
    this.lock.clear();
    for (const state of this.queues) {
      state.busy.fill(0);
      state.inflight = 0;
      state.pendingUsed.clear();
      const waiters = state.idleWaiters;
      state.idleWaiters = [];
      for (const w of waiters) w();
    }
    this.dirty.length = 0;
  }
}
