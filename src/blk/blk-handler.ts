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
// Reads/writes (rw-requests.ts) and DISCARD/WRITE_ZEROES (zero-discard-
// requests.ts) run their ops through a HandlerPort (handler-port.ts).
// A request completes exactly once, through finish(): the one completion
// funnel. Errors of a request are status bytes; only a chain that cannot be
// a request (no header, no status byte) is a protocol violation.

import { BlkRequest, DataDirection, checkRequest, encodeSerial } from './request';
import {
  BOUNCE_BUF_ID,
  CHAIN_STRIDE,
  CQE_STRIDE,
  IOV_STRIDE,
  MAX_REQUEST_IOVS,
  OP_FSYNC,
  type DataPlane,
  type SessionArrays,
} from './shared-arrays';
import { splitChain } from './split-chain';
import { statusForErrno } from './status';
import { BouncePool } from './bounce-pool';
import { QueueCounters } from './counters';
import { type RequestStats, requestBytes } from './request-stats';
import { OpBatch } from './op-batch';
import { RequestOps } from './request-ops';
import { QueueState } from './queue-state';
import { CompletionIds, OPS_PER_SLOT } from './completion-id';
import { noteWrite, segmentLimits, unnegotiatedView, type DiskView } from './disk-view';
import { EIO, type HandlerPort } from './handler-port';
import { RwRequests } from './rw-requests';
import { ZeroDiscardRequests } from './zero-discard-requests';
import { RwPlan, RwPlanner, type HostRules } from '../align/rw-plan';
import { RangeLock } from '../align/range-lock';
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

/**
 * Iovecs a request slot starts with: what typical requests need (Linux
 * sends one segment per page or per contiguous run). A longer chain grows its
 * head's slot once, up to MAX_REQUEST_IOVS (what native can deliver for one
 * chain), so memory stays proportional to what the guest really sends.
 */
const SLOT_IOVS = 64;

export class BlkHandler {
  private readonly queues: QueueState[] = [];
  private readonly serialBytes: Uint8Array;
  private readonly maxQueueSize: number;
  /** The disk as this connection's driver negotiated it. */
  private readonly disk: DiskView;
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
  /** The ops and copies being batched for the next submission. */
  private readonly ops: OpBatch;
  private readonly requestOps: RequestOps;
  /** The request families: reads/writes, and DISCARD/WRITE_ZEROES. */
  private readonly rw: RwRequests;
  private readonly zeroDiscard: ZeroDiscardRequests;
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
    this.disk = unnegotiatedView(opts.disk);
    for (let q = 0; q < opts.queues; q++) this.queues.push(new QueueState(opts.maxQueueSize));
    this.serialBytes = encodeSerial(opts.serial);
    this.bounce = new BouncePool(opts.bounceBytes);
    this.lock = new RangeLock((slotId) => this.issue(this.slot(slotId)));
    this.ops = new OpBatch(
      arrays,
      () => this.plane,
      (message) => this.opts.onFatal?.(message),
    );
    const counters = (q: number): QueueCounters => (this.queues[q] as QueueState).counters;
    const port: HandlerPort = {
      disk: opts.disk,
      // A request splits into at most OPS_PER_SLOT ops (IOV_MAX elements each); vectors add head and tail blocks.
      planner: new RwPlanner(opts.rules, (bufId) => this.regionPhase[bufId] ?? 0, OPS_PER_SLOT, MAX_REQUEST_IOVS + 2),
      ops: (this.requestOps = new RequestOps(this.ops, this.ids, counters)),
      bounce: this.bounce,
      // Forwarded, not captured: the simulator test replaces the handler's lock with one that always grants.
      lock: { acquire: (...a) => this.lock.acquire(...a), release: (slotId) => this.lock.release(slotId) },
      counters,
      writeback: () => this.opts.writeback(),
      plane: () => this.plane,
      waitForBounce: (req) => this.waiting.push(req.slotId),
      finish: (req, status) => this.finish(req.queue, req, status),
    };
    this.rw = new RwRequests(port);
    this.zeroDiscard = new ZeroDiscardRequests(port, segmentLimits(opts.disk));
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

  /** Whether guest memory is registered as io_uring fixed buffers now, with the bounce arena's first bounceBytes. */
  setRegistered(on: boolean, bounceBytes = 0): void {
    this.registered = on;
    this.requestOps.fixedBounceBytes = on ? bounceBytes : 0;
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
    if (req.type === VIRTIO_BLK_T_OUT) noteWrite(this.opts.disk, req.sector + req.dataLen / SECTOR_SIZE);
    switch (req.type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT:
        if (req.dataLen === 0) {
          this.finish(q, req, VIRTIO_BLK_S_OK);
        } else {
          this.rw.start(req);
        }
        return;
      case VIRTIO_BLK_T_FLUSH:
        req.pendingOps = 1;
        req.opExpect[0] = 0;
        this.requestOps.queue(req, 0, OP_FSYNC, 0, 0, 0, 0);
        return;
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.zeroDiscard.start(req);
        return;
      case VIRTIO_BLK_T_GET_ID:
        this.finish(q, req, this.writeSerial(req));
        return;
      default:
        this.finish(q, req, VIRTIO_BLK_S_IOERR);
    }
  }

  /** Starts a request whose range lock was just granted, or whose bounce space came free. */
  private issue(req: BlkRequest): void {
    if (req.type === VIRTIO_BLK_T_IN || req.type === VIRTIO_BLK_T_OUT) this.rw.issue(req);
    else this.zeroDiscard.issue(req);
  }

  private opsDone(req: BlkRequest): void {
    if (req.type === VIRTIO_BLK_T_DISCARD || req.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      this.zeroDiscard.opsDone(req);
    } else if (req.type === VIRTIO_BLK_T_FLUSH) {
      this.finish(req.queue, req, req.error < 0 ? statusForErrno(req.error) : VIRTIO_BLK_S_OK);
    } else {
      this.rw.opsDone(req);
    }
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
    if (!this.zeroDiscard.unsupported(req, opIdx, res) && req.error === 0 && res !== req.opExpect[opIdx]) {
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
