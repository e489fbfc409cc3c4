// The batch of disk ops and memory copies being built for one submission:
// it writes them into the shared arrays (layouts in shared-arrays.ts),
// hands them to the data plane in one crossing each, and remembers the ops
// the ring did not take so the handler can fail them later (never from
// inside queueing, where failing could start other work mid-op).
//
// Order is the contract: copies queued before an op are performed before it
// is submitted (a write's data is in its bounce buffer first), and copies
// and ops go out in the order they were queued.

import { COPY_STRIDE, IOV_STRIDE, OP_STRIDE, type DataPlane, type SessionArrays } from './shared-arrays';

export class OpBatch {
  private nOps = 0;
  /** Iovecs queued so far; the next op's iovecs start here. */
  nIovs = 0;
  private nCopies = 0;
  /** userData of ops the ring did not take, oldest first. */
  readonly refused: number[] = [];

  constructor(
    private readonly arrays: SessionArrays,
    private readonly plane: () => DataPlane | undefined,
    /** The ring refused a submission outright: the data plane cannot go on. */
    private readonly onFatal: (message: string) => void,
  ) {}

  /** Makes room for one op of `iovs` iovecs, submitting what is queued if needed. */
  reserve(iovs: number): void {
    const { sqOps, sqIovs } = this.arrays;
    if ((this.nOps + 1) * OP_STRIDE > sqOps.length || (this.nIovs + iovs) * IOV_STRIDE > sqIovs.length) {
      this.flushCopies();
      this.submit();
    }
  }

  /** Writes iovec i (counted from nIovs) of the op about to be pushed. */
  iov(i: number, bufId: number, offset: number, len: number): void {
    const k = (this.nIovs + i) * IOV_STRIDE;
    const a = this.arrays.sqIovs;
    a[k] = bufId;
    a[k + 1] = offset;
    a[k + 2] = len;
  }

  /**
   * Appends an op whose `iovs` iovecs were just written with iov() (call
   * reserve() first). For FALLOCATE/BLKDISCARD pass iovs 0 and the op's own
   * length and mode as arg3/arg4 (they take the iovec fields' places).
   */
  push(opcode: number, userData: number, offset: number, iovs: number, flags: number, arg3?: number, arg4?: number): void {
    const a = this.arrays.sqOps;
    const o = this.nOps * OP_STRIDE;
    a[o] = opcode;
    a[o + 1] = userData;
    a[o + 2] = offset;
    a[o + 3] = arg3 ?? this.nIovs;
    a[o + 4] = arg4 ?? iovs;
    a[o + 5] = flags;
    this.nIovs += iovs;
    this.nOps++;
  }

  copy(srcBuf: number, srcOff: number, dstBuf: number, dstOff: number, len: number): void {
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

  flushCopies(): void {
    if (this.nCopies === 0) return;
    const n = this.nCopies;
    this.nCopies = 0;
    this.plane()?.copy(n);
  }

  /** Submits the queued ops; what the ring does not take goes to `refused`. */
  submit(): void {
    if (this.nOps === 0) return;
    const n = this.nOps;
    this.nOps = 0;
    this.nIovs = 0;
    let taken = 0;
    try {
      const plane = this.plane();
      taken = plane === undefined ? 0 : plane.submit(n);
    } catch (err) {
      // A bad op (nothing taken), or the kernel refused the ring itself: then
      // the first `taken` ops reached it and complete later as usual, and the
      // rest never will. Either way this data plane cannot go on: the
      // connection is closed, and only the ops not taken are failed here.
      const t = (err as { taken?: unknown }).taken;
      taken = typeof t === 'number' && Number.isInteger(t) && t >= 0 && t <= n ? t : 0;
      this.onFatal(`io_uring submission failed: ${(err as Error).message}`);
    }
    for (let k = taken; k < n; k++) this.refused.push(this.arrays.sqOps[k * OP_STRIDE + 1] as number);
  }

  /** Forgets everything queued (the data plane is gone). */
  clear(): void {
    this.nOps = 0;
    this.nIovs = 0;
    this.nCopies = 0;
    this.refused.length = 0;
  }
}
