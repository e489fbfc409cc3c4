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

/** The arrays a handler shares with its data plane. */
export interface HandlerArrays {
  chains: Float64Array;
  headers: Uint8Array;
  segs: Float64Array;
  sqOps: Float64Array;
  sqIovs: Float64Array;
  cqes: Float64Array;
  used: Float64Array;
}

/** What the handler asks of the transport. */
export interface DataPlane {
  /** Queues n ops from arrays.sqOps/sqIovs; returns how many were taken. */
  submit(n: number): number;
  /** Publishes n used entries from arrays.used on queue q and notifies. */
  pushUsed(q: number, n: number): void;
  writeGuest(bufId: number, offset: number, data: Uint8Array): void;
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
}

/** Sizes of the shared arrays: one batch of chains, ops, completions. */
export const BATCH_CHAINS = 256;
export const BATCH_SEGS = 8192;
export const BATCH_CQES = 256;

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
  };
}

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
  /**
   * Data iovecs one request can carry. Linux keeps to seg_max (queue size - 2)
   * segments; the slack covers descriptors split at memory-region boundaries.
   */
  private readonly slotCapacity: number;
  private plane: DataPlane | undefined;
  private nOps = 0;
  private nIovs = 0;
  /** Queues with used entries waiting for flushUsed(). */
  private readonly dirty: number[] = [];

  constructor(
    private readonly arrays: HandlerArrays,
    private readonly opts: BlkHandlerOptions,
  ) {
    this.maxQueueSize = opts.maxQueueSize;
    this.slotCapacity = Math.min(2048, 2 * opts.maxQueueSize + 64);
    for (let q = 0; q < opts.queues; q++) this.queues.push(new QueueState(opts.maxQueueSize));
    this.serialBytes = encodeSerial(opts.serial);
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
      const req = state.slots[head] ?? (state.slots[head] = new BlkRequest(this.slotCapacity));
      const broken = splitChain(segs, firstSeg, segCount, headers, i * 16, headerLen, req);
      if (broken !== null) {
        this.opts.onViolation(q, broken);
        break;
      }
      req.head = head;
      state.busy[head] = 1;
      state.inflight++;
      this.start(q, req);
    }
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
        } else if (req.iovCount > IOV_MAX) {
          // TODO(alignment issue): split the I/O instead of failing it.
          this.finish(q, req, VIRTIO_BLK_S_IOERR);
        } else {
          const write = req.type === VIRTIO_BLK_T_OUT;
          const flags = write && !this.opts.writeback() ? OP_FLAG_DSYNC : 0;
          this.queueOp(q, req, write ? OP_WRITEV : OP_READV, req.sector * SECTOR_SIZE, flags);
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
    const o = this.nOps * OP_STRIDE;
    sqOps[o] = opcode;
    sqOps[o + 1] = q * this.maxQueueSize + req.head;
    sqOps[o + 2] = offset;
    sqOps[o + 3] = this.nIovs;
    sqOps[o + 4] = opcode === OP_FSYNC ? 0 : req.iovCount;
    sqOps[o + 5] = flags;
    if (opcode !== OP_FSYNC) {
      sqIovs.set(req.iovs.subarray(0, req.iovCount * IOV_STRIDE), this.nIovs * SQ_IOV_STRIDE);
      this.nIovs += req.iovCount;
    }
    this.nOps++;
    // The op arrays hold one batch of chains: each chain adds at most one op,
    // and its iovecs are at most its segments, so neither can overflow.
  }

  private submitQueued(): void {
    if (this.nOps === 0) return;
    const plane = this.plane;
    const n = this.nOps;
    this.nOps = 0;
    this.nIovs = 0;
    const taken = plane === undefined ? 0 : plane.submit(n);
    // The ring has room for every request in flight; anything not taken is
    // failed rather than left hanging.
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
