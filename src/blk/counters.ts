// Per-queue counters of the alignment layer and the data path, kept as plain
// numbers (no allocation on the hot path). Tests read them through the
// daemon's counters log line; a metrics endpoint will read them too.

export class QueueCounters {
  /** Bytes copied between guest memory and bounce buffers. */
  bytesBounced = 0;
  /** Writes (and WRITE_ZEROES segments) that needed a read-modify-write of partial host blocks. */
  rmwCycles = 0;
  /** Requests that waited for an overlapping request on the same host blocks. */
  overlapWaits = 0;
  /** Requests whose vector was collapsed to stay within IOV_MAX. */
  iovCollapses = 0;
  /** Requests split into several ops (more segments than IOV_MAX). */
  ioSplits = 0;
  /** Disk ops issued as READ_FIXED / WRITE_FIXED (registered buffers). */
  fixedOps = 0;
  /** Disk ops issued as plain READV / WRITEV / FSYNC / FALLOCATE / BLKDISCARD. */
  plainOps = 0;
  /** Writes (and WRITE_ZEROES segments) issued with RWF_DSYNC: the guest had the write cache off. */
  durableWrites = 0;
  /** Requests completed, and those completed with an error status. */
  requests = 0;
  errors = 0;
  /** Requests an earlier backend left in flight, taken from the inflight region when the ring started. */
  resubmitted = 0;

  add(o: QueueCounters): void {
    this.bytesBounced += o.bytesBounced;
    this.rmwCycles += o.rmwCycles;
    this.overlapWaits += o.overlapWaits;
    this.iovCollapses += o.iovCollapses;
    this.ioSplits += o.ioSplits;
    this.fixedOps += o.fixedOps;
    this.plainOps += o.plainOps;
    this.durableWrites += o.durableWrites;
    this.requests += o.requests;
    this.errors += o.errors;
    this.resubmitted += o.resubmitted;
  }
}
