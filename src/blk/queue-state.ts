// Per-queue state of a handler: request slots by chain head, which heads are
// in flight, used entries not yet pushed, and the queue's counters.

import type { BlkRequest } from './request';
import { QueueCounters } from './counters';
import { RequestStats } from './request-stats';
import { UsedBatch } from './used-batch';

/** Per-queue state: request slots by chain head, and used entries not yet pushed. */
export class QueueState {
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
