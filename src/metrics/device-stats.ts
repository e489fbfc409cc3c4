// The device's statistics over the daemon's life. Connections come and go,
// each with its own data plane and counters; the metrics endpoint wants
// totals. So a closing connection's counters are folded into per-queue
// totals here, and a scrape adds the live connection's on top. Nothing here
// runs on the data path: the data plane only bumps its own counters.

import { QueueCounters } from '../blk/counters';
import { RequestStats } from '../blk/request-stats';

/** A connection's request handler, as the metrics see it (BlkHandler fits). */
export interface HandlerCounters {
  counters(): readonly QueueCounters[];
  requestStats(): readonly RequestStats[];
  inflight(q: number): number;
}

/** A connection's rings, as the metrics see them (the native Session fits). */
export interface RingCounters {
  /** [kicks, calls] per queue into out[2q], out[2q + 1]. */
  ringCounters(out: Float64Array): void;
}

/** One queue's totals at a scrape. */
export interface QueueTotals {
  readonly counters: QueueCounters;
  readonly stats: RequestStats;
  kicks: number;
  calls: number;
  /** Requests in flight now (0 without a connection). */
  inflight: number;
}

interface Live {
  handler: HandlerCounters;
  rings: RingCounters;
}

export class DeviceStats {
  /** Frontend connections set up, over the daemon's life. */
  connections = 0;
  /** Connections closed for a protocol violation. */
  violations = 0;
  private readonly closed: QueueTotals[];
  private live: Live | undefined;
  private readonly ringScratch: Float64Array;

  constructor(readonly queues: number) {
    this.closed = emptyTotals(queues);
    this.ringScratch = new Float64Array(2 * queues);
  }

  /** A frontend connection was set up: it is the live one. */
  opened(handler: HandlerCounters, rings: RingCounters): void {
    this.connections++;
    this.live = { handler, rings };
  }

  /** The connection is closing: its counters join the totals (call once, before it is forgotten). */
  closing(handler: HandlerCounters, rings: RingCounters): void {
    if (this.live?.handler === handler) this.live = undefined;
    this.addConnection(this.closed, { handler, rings }, false);
  }

  get connected(): boolean {
    return this.live !== undefined;
  }

  /** Per-queue totals now: closed connections plus the live one (fresh objects). */
  snapshot(): QueueTotals[] {
    const out = emptyTotals(this.queues);
    for (let q = 0; q < this.queues; q++) addTotals(out[q]!, this.closed[q]!);
    if (this.live !== undefined) this.addConnection(out, this.live, true);
    return out;
  }

  private addConnection(into: QueueTotals[], conn: Live, withInflight: boolean): void {
    const counters = conn.handler.counters();
    const stats = conn.handler.requestStats();
    conn.rings.ringCounters(this.ringScratch);
    for (let q = 0; q < this.queues; q++) {
      const t = into[q]!;
      const c = counters[q];
      const s = stats[q];
      if (c !== undefined) t.counters.add(c);
      if (s !== undefined) t.stats.add(s);
      t.kicks += this.ringScratch[2 * q] as number;
      t.calls += this.ringScratch[2 * q + 1] as number;
      if (withInflight) t.inflight += conn.handler.inflight(q);
    }
  }
}

function emptyTotals(queues: number): QueueTotals[] {
  return Array.from({ length: queues }, () => ({
    counters: new QueueCounters(),
    stats: new RequestStats(),
    kicks: 0,
    calls: 0,
    inflight: 0,
  }));
}

function addTotals(into: QueueTotals, from: QueueTotals): void {
  into.counters.add(from.counters);
  into.stats.add(from.stats);
  into.kicks += from.kicks;
  into.calls += from.calls;
  into.inflight += from.inflight;
}
