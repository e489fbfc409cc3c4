// Used entries of one queue, collected while a batch of chains or
// completions is handled and published together (one pushUsed per queue).
//
// A batch can finish more requests than the queue has heads: a racing guest
// makes a head available again as soon as its request completes, and the
// addon keeps popping while the avail index moves. The owner therefore
// publishes whenever the batch is full (see BlkHandler.finish), so no entry
// is ever dropped and none is taken from a previous batch.

import { USED_STRIDE } from './shared-arrays';

export class UsedBatch {
  private readonly entries: Float64Array;
  private n = 0;

  /** capacity: entries held before the owner must publish (its queue's heads). */
  constructor(readonly capacity: number) {
    this.entries = new Float64Array(capacity * USED_STRIDE);
  }

  get count(): number {
    return this.n;
  }

  get full(): boolean {
    return this.n >= this.capacity;
  }

  /** Adds one entry; the caller publishes first when full. */
  add(head: number, len: number, statusBufId: number, statusOffset: number, status: number): void {
    if (this.full) throw new RangeError(`used batch full (${this.capacity} entries): publish first`);
    const u = this.n * USED_STRIDE;
    const p = this.entries;
    p[u] = head;
    p[u + 1] = len;
    p[u + 2] = statusBufId;
    p[u + 3] = statusOffset;
    p[u + 4] = status;
    this.n++;
  }

  /** Copies the entries to the start of `used` (which holds at least capacity), empties the batch, returns how many. */
  take(used: Float64Array): number {
    const n = this.n;
    used.set(this.entries.subarray(0, n * USED_STRIDE));
    this.n = 0;
    return n;
  }

  clear(): void {
    this.n = 0;
  }
}
