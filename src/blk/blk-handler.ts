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

import { BlkRequest, DataDirection, IOV_STRIDE, checkRequest, encodeSerial } from './request';
import { splitChain, SEG_STRIDE } from './split-chain';
import { statusForErrno } from './status';
import { BouncePool } from './bounce-pool';
import {
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  IOV_MAX,
} from '../virtio/constants';

/** Layout constants shared with the addon (see src/native/binding.ts). */
export const CHAIN_STRIDE = 4;
export const OP_STRIDE = 6;
export const SQ_IOV_STRIDE = 3;
export const CQE_STRIDE = 2;
export const USED_STRIDE = 5;
export const OP_READV = 0;
export const OP_WRITEV = 1;
export const OP_FSYNC = 2;
export const OP_FLAG_DSYNC = 2;
export const COPY_STRIDE = 5;
/** bufId of the session's bounce arena (guest regions are below it). */
export const BOUNCE_BUF_ID = 1024;

/** The arrays a handler shares with its data plane. */
export interface HandlerArrays {
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
  /** Queues n ops from arrays.sqOps/sqIovs; returns how many were taken. */
  submit(n: number): number;
  /** Publishes n used entries from arrays.used on queue q and notifies. */
  pushUsed(q: number, n: number): void;
  writeGuest(bufId: number, offset: number, data: Uint8Array): void;
  /** Performs n copies from arrays.copies, in order. */
  copy(n: number): void;
}

export interface BlkDisk {
  capacitySectors: number;
  readOnly: boolean;
  logicalBlockSize: number;
}

export interface BlkHandlerOptions {
  queues: number;
  maxQueueSize: number;
  disk: BlkDisk;
  serial: string;
  /** True while the guest has the write cache on (CONFIG_WCE writeback). */
  writeback: () => boolean;
  /** A chain broke a rule: the connection must be closed. */
  onViolation: (q: number, rule: string) => void;
  /** Bytes in the bounce arena (see allocateArrays/Session). */
  bounceBytes: number;
  /**
   * O_DIRECT memory alignment of the host disk: a request whose iovecs are
   * not all aligned to it (address and length) goes through a bounce buffer.
   */
  memAlign: number;
}

/** Sizes of the shared arrays: one batch of chains, ops, completions. */
export const BATCH_CHAINS = 256;
export const BATCH_SEGS = 8192;
export const BATCH_CQES = 256;
export const BATCH_COPIES = 4096;
/** Default bounce arena: reserved address space, touched only as used. */
export const DEFAULT_BOUNCE_BYTES = 64 * 1024 * 1024;

export function allocateArrays(maxQueueSize: number): HandlerArrays {
  const usedEntries = Math.max(maxQueueSize, BATCH_CHAINS, BATCH_CQES);
  return {
    chains: new Float64Array(BATCH_CHAINS * CHAIN_STRIDE),
    headers: new Uint8Array(BATCH_CHAINS * 16),
    segs: new Float64Array(BATCH_SEGS * SEG_STRIDE),
    sqOps: new Float64Array(BATCH_CHAINS * OP_STRIDE),
    sqIovs: new Float64Array(BATCH_SEGS * SQ_IOV_STRIDE),
    cqes: new Float64Array(BATCH_CQES * CQE_STRIDE),
    used: new Float64Array(usedEntries * USED_STRIDE),
    copies: new Float64Array(BATCH_COPIES * COPY_STRIDE),
  };
}

/**
 * Iovecs a request slot starts with: what typical requests need (Linux
 * sends one segment per page or per contiguous run). A longer chain grows its
 * head's slot once, up to MAX_REQUEST_IOVS (what native can deliver for one
 * chain), so memory stays proportional to what the guest really sends.
 */
const SLOT_IOVS = 64;
const MAX_REQUEST_IOVS = 2048;

/** Per-queue state: request slots by chain head, and used entries not yet pushed. */
class QueueState {
  readonly slots: BlkRequest[];
  readonly busy: Uint8Array;
  readonly pendingUsed: Float64Array;
  pendingCount = 0;
  inflight = 0;
  idleWaiters: Array<() => void> = [];

  constructor(maxQueueSize: number) {
    // Slots are made on a head's first use: a guest rarely uses every head.
    this.slots = new Array<BlkRequest>(maxQueueSize);
    this.busy = new Uint8Array(maxQueueSize);
    this.pendingUsed = new Float64Array(maxQueueSize * USED_STRIDE);
  }
}

export class BlkHandler {
  private readonly queues: QueueState[] = [];
  private readonly serialBytes: Uint8Array;
  private readonly maxQueueSize: number;
  private plane: DataPlane | undefined;
  private nOps = 0;
  private nIovs = 0;
  /** Queues with used entries waiting for flushUsed(). */
  private readonly dirty: number[] = [];
  private readonly bounce: BouncePool;
  /** Requests waiting for bounce space, oldest first, as (queue, head). */
  private readonly waiting: number[] = [];
  private nCopies = 0;
  /** Host address of each region's first byte, modulo 4096 (its mmap phase). */
  private readonly regionPhase = new Float64Array(BOUNCE_BUF_ID);

  constructor(
    private readonly arrays: HandlerArrays,
    private readonly opts: BlkHandlerOptions,
  ) {
    this.maxQueueSize = opts.maxQueueSize;
    for (let q = 0; q < opts.queues; q++) this.queues.push(new QueueState(opts.maxQueueSize));
    this.serialBytes = encodeSerial(opts.serial);
    this.bounce = new BouncePool(opts.bounceBytes);
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
    this.nOps = 0;
    this.nIovs = 0;
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
      state.busy[head] = 1;
      state.inflight++;
      this.start(q, req);
    }
    this.flushCopies();
    this.submitQueued();
    this.flushUsed();
  }

  /** Decides what one request needs: a disk op, or an immediate status. */
  private start(q: number, req: BlkRequest): void {
    const fail = checkRequest(req, this.opts.disk);
    if (fail >= 0) {
      this.finish(q, req, fail);
      return;
    }
    switch (req.type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT:
        if (req.dataLen === 0) {
          this.finish(q, req, VIRTIO_BLK_S_OK);
        } else if (this.needsBounce(req)) {
          this.startBounced(q, req);
        } else if (req.iovCount > IOV_MAX) {
          // TODO(alignment issue): split the I/O instead of failing it.
          this.finish(q, req, VIRTIO_BLK_S_IOERR);
        } else {
          this.queueRw(q, req);
        }
        return;
      case VIRTIO_BLK_T_FLUSH:
        this.queueOp(q, req, OP_FSYNC, 0, 0);
        return;
      case VIRTIO_BLK_T_GET_ID:
        this.finish(q, req, this.writeSerial(req));
        return;
      default:
        this.finish(q, req, VIRTIO_BLK_S_IOERR);
    }
  }

  private queueRw(q: number, req: BlkRequest): void {
    const write = req.type === VIRTIO_BLK_T_OUT;
    const flags = write && !this.opts.writeback() ? OP_FLAG_DSYNC : 0;
    this.queueOp(q, req, write ? OP_WRITEV : OP_READV, req.sector * SECTOR_SIZE, flags);
  }

  /** True when O_DIRECT would refuse an iovec's address or length. */
  private needsBounce(req: BlkRequest): boolean {
    const align = this.opts.memAlign;
    const iovs = req.iovs;
    for (let i = 0; i < req.iovCount; i++) {
      const k = i * IOV_STRIDE;
      const bufId = iovs[k] as number;
      if (((this.regionPhase[bufId] as number) + (iovs[k + 1] as number)) % align !== 0) return true;
      if ((iovs[k + 2] as number) % align !== 0) return true;
    }
    return false;
  }

  /**
   * The whole request goes through one page-aligned bounce buffer: writes
   * copy the guest's data in first, reads copy it out on completion. Without
   * room in the arena now, the request waits for a completion to free some.
   */
  private startBounced(q: number, req: BlkRequest): void {
    if (req.dataLen > this.bounce.size) {
      this.finish(q, req, VIRTIO_BLK_S_IOERR);
      return;
    }
    const off = this.bounce.alloc(req.dataLen);
    if (off < 0) {
      this.waiting.push(q, req.head);
      return;
    }
    req.bounceOffset = off;
    if (req.type === VIRTIO_BLK_T_OUT) this.copyIovs(req, true);
    this.queueRw(q, req);
  }

  /** Queues copies between the request's iovecs and its bounce buffer. */
  private copyIovs(req: BlkRequest, toBounce: boolean): void {
    let pos = req.bounceOffset;
    for (let i = 0; i < req.iovCount; i++) {
      const k = i * IOV_STRIDE;
      const bufId = req.iovs[k] as number;
      const off = req.iovs[k + 1] as number;
      const len = req.iovs[k + 2] as number;
      if (toBounce) this.addCopy(bufId, off, BOUNCE_BUF_ID, pos, len);
      else this.addCopy(BOUNCE_BUF_ID, pos, bufId, off, len);
      pos += len;
    }
  }

  private addCopy(srcBuf: number, srcOff: number, dstBuf: number, dstOff: number, len: number): void {
    if (this.nCopies * COPY_STRIDE >= this.arrays.copies.length) this.flushCopies();
    const c = this.nCopies * COPY_STRIDE;
    const a = this.arrays.copies;
    a[c] = srcBuf;
    a[c + 1] = srcOff;
    a[c + 2] = dstBuf;
    a[c + 3] = dstOff;
    a[c + 4] = len;
    this.nCopies++;
  }

  private flushCopies(): void {
    if (this.nCopies === 0) return;
    const n = this.nCopies;
    this.nCopies = 0;
    this.plane?.copy(n);
  }

  /** Starts waiting bounced requests, oldest first, while the arena has room. */
  private startWaiting(): void {
    while (this.waiting.length > 0) {
      const q = this.waiting[0] as number;
      const head = this.waiting[1] as number;
      const req = (this.queues[q] as QueueState).slots[head] as BlkRequest;
      const off = this.bounce.alloc(req.dataLen);
      if (off < 0) return;
      this.waiting.splice(0, 2);
      req.bounceOffset = off;
      if (req.type === VIRTIO_BLK_T_OUT) this.copyIovs(req, true);
      this.queueRw(q, req);
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

  private queueOp(q: number, req: BlkRequest, opcode: number, offset: number, flags: number): void {
    const { sqOps, sqIovs } = this.arrays;
    const iovCount = opcode === OP_FSYNC ? 0 : req.bounceOffset >= 0 ? 1 : req.iovCount;
    // Ops started from completions (waiting requests) can add to a batch:
    // submit what is queued first if either array would overflow.
    if ((this.nOps + 1) * OP_STRIDE > sqOps.length || (this.nIovs + iovCount) * SQ_IOV_STRIDE > sqIovs.length) {
      this.flushCopies();
      this.submitQueued();
    }
    const o = this.nOps * OP_STRIDE;
    sqOps[o] = opcode;
    sqOps[o + 1] = q * this.maxQueueSize + req.head;
    sqOps[o + 2] = offset;
    sqOps[o + 3] = this.nIovs;
    sqOps[o + 4] = iovCount;
    sqOps[o + 5] = flags;
    if (opcode === OP_FSYNC) {
      // no data
    } else if (req.bounceOffset >= 0) {
      const k = this.nIovs * SQ_IOV_STRIDE;
      sqIovs[k] = BOUNCE_BUF_ID;
      sqIovs[k + 1] = req.bounceOffset;
      sqIovs[k + 2] = req.dataLen;
    } else {
      const src = req.iovs;
      const n = req.iovCount * IOV_STRIDE;
      const base = this.nIovs * SQ_IOV_STRIDE;
      for (let k = 0; k < n; k++) sqIovs[base + k] = src[k] as number;
    }
    this.nIovs += iovCount;
    this.nOps++;
  }

  private submitQueued(): void {
    if (this.nOps === 0) return;
    const plane = this.plane;
    const n = this.nOps;
    this.nOps = 0;
    this.nIovs = 0;
    let taken = 0;
    try {
      taken = plane === undefined ? 0 : plane.submit(n);
    } catch {
      // The ring refused the batch (the data plane logs why): fail the ops
      // below rather than leave their requests in flight forever.
      taken = 0;
    }
    // Ops not taken complete with EIO, never hang.
    for (let k = taken; k < n; k++) {
      const userData = this.arrays.sqOps[k * OP_STRIDE + 1] as number;
      this.complete(userData, -5 /* EIO */);
    }
  }

  /** A batch of disk op completions (called by the data plane). */
  onCompletions(n: number): void {
    const { cqes } = this.arrays;
    for (let i = 0; i < n; i++) {
      this.complete(cqes[i * CQE_STRIDE] as number, cqes[i * CQE_STRIDE + 1] as number);
    }
    this.startWaiting();
    // Copy-outs of bounced reads (queued by complete) run before their
    // used entries are published, and before any op reuses their space.
    this.flushCopies();
    this.submitQueued();
    this.flushUsed();
  }

  private complete(userData: number, res: number): void {
    const q = Math.floor(userData / this.maxQueueSize);
    const head = userData - q * this.maxQueueSize;
    const state = this.queues[q];
    if (state === undefined || state.busy[head] !== 1) return; // not ours: ignore
    const req = state.slots[head] as BlkRequest;
    let status = statusForErrno(res);
    // A short transfer is an error: the guest asked for every byte.
    if (status === VIRTIO_BLK_S_OK && req.type !== VIRTIO_BLK_T_FLUSH && res !== req.dataLen) {
      status = VIRTIO_BLK_S_IOERR;
    }
    if (req.bounceOffset >= 0) {
      if (status === VIRTIO_BLK_S_OK && req.type === VIRTIO_BLK_T_IN) this.copyIovs(req, false);
      // Safe to reuse at once: queued copies and ops run in order.
      this.bounce.release(req.bounceOffset, req.dataLen);
      req.bounceOffset = -1;
    }
    this.finish(q, req, status);
  }

  /** The one completion funnel: status byte + used entry, slot released. */
  private finish(q: number, req: BlkRequest, status: number): void {
    const state = this.queues[q] as QueueState;
    const u = state.pendingCount * USED_STRIDE;
    const p = state.pendingUsed;
    p[u] = req.head;
    p[u + 1] = req.type === VIRTIO_BLK_T_GET_ID ? req.writableLen : req.direction === DataDirection.Writable ? req.dataLen + 1 : 1;
    p[u + 2] = req.statusBufId;
    p[u + 3] = req.statusOffset;
    p[u + 4] = status;
    if (state.pendingCount === 0) this.dirty.push(q);
    state.pendingCount++;
    state.busy[req.head] = 0;
    state.inflight--;
  }

  /** Publishes pending used entries, one pushUsed per queue touched. */
  private flushUsed(): void {
    const plane = this.plane;
    for (const q of this.dirty) {
      const state = this.queues[q] as QueueState;
      const n = state.pendingCount;
      state.pendingCount = 0;
      this.arrays.used.set(state.pendingUsed.subarray(0, n * USED_STRIDE));
      plane?.pushUsed(q, n);
      if (state.inflight === 0 && state.idleWaiters.length > 0) {
        const waiters = state.idleWaiters;
        state.idleWaiters = [];
        for (const w of waiters) w();
      }
    }
    this.dirty.length = 0;
  }

  /** Fails and forgets everything in flight (the data plane is gone). */
  abandonAll(): void {
    this.waiting.length = 0;
    this.nCopies = 0;
    for (const state of this.queues) {
      state.busy.fill(0);
      state.inflight = 0;
      state.pendingCount = 0;
      const waiters = state.idleWaiters;
      state.idleWaiters = [];
      for (const w of waiters) w();
    }
    this.dirty.length = 0;
  }
}
