// The Prometheus metrics, on a Registry of their own (not prom-client's
// global one). Every vublk metric reads one snapshot of DeviceStats taken
// when the scrape begins (collect() callbacks), so a scrape is consistent
// and the data path never calls prom-client. Process metrics come from
// prom-client's default collectors, with the same vublk_ prefix.
//
// Request series of a (queue, type) appear once that queue has completed a
// request of that type: 64 queues x 9 types of zeroes would bury the rest.

import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric, type MetricValueWithName } from 'prom-client';
import { LATENCY_BOUNDS, LATENCY_BUCKETS, REQUEST_STATUSES, REQUEST_TYPES } from '../blk/request-stats';
import type { QueueCounters } from '../blk/counters';
import type { DeviceStats, QueueTotals } from './device-stats';

export const PREFIX = 'vublk_';

/** What the metrics read: the device's statistics and its capacity. */
export interface MetricsSource {
  readonly stats: DeviceStats;
  readonly capacitySectors: number;
}

type Snapshot = () => QueueTotals[];

/** Per-queue counters kept in QueueCounters: metric name (after the prefix), help, field. */
/** The numeric fields of QueueCounters (not its methods). */
type CounterField = { [K in keyof QueueCounters]: QueueCounters[K] extends number ? K : never }[keyof QueueCounters];

const QUEUE_COUNTERS: ReadonlyArray<[string, string, CounterField]> = [
  ['bounced_bytes_total', 'Bytes copied between guest memory and bounce buffers.', 'bytesBounced'],
  ['rmw_cycles_total', 'Read-modify-write cycles of partial host blocks (writes and WRITE_ZEROES segments).', 'rmwCycles'],
  ['overlap_waits_total', 'Requests that waited for an overlapping request on the same host blocks.', 'overlapWaits'],
  ['iov_collapses_total', 'Requests whose vector was collapsed into a bounce buffer to stay within IOV_MAX.', 'iovCollapses'],
  ['io_splits_total', 'Requests split into several disk operations (more segments than IOV_MAX).', 'ioSplits'],
  ['durable_writes_total', 'Writes issued with RWF_DSYNC because the guest turned its write cache off.', 'durableWrites'],
  ['resubmitted_requests_total', 'Requests an earlier backend left in flight, resubmitted from the inflight region.', 'resubmitted'],
];

type LatencyLabels = 'queue' | 'type' | 'le';

/**
 * The latency histogram. Its buckets are counted on the data path
 * (RequestStats), so it is a metric object of our own that only formats
 * them: prom-client's Histogram can only observe(). A Registry reads a metric
 * through name, help, type and get() alone (lib/registry.js), which is what
 * makes the cast below safe.
 */
function latencyHistogram(snapshot: Snapshot): Metric {
  const name = `${PREFIX}request_duration_seconds`;
  const metric = {
    name,
    help: 'Request latency from the pop batch to the completion batch, by queue and request type.',
    // prom-client's typings call this an enum; at run time it is the text that is printed.
    type: 'histogram',
    aggregator: 'sum',
    get: () => {
      const values: Array<MetricValueWithName<LatencyLabels>> = [];
      snapshot().forEach((t, q) => {
        REQUEST_TYPES.forEach((type, ti) => {
          const count = t.stats.buckets.subarray(ti * LATENCY_BUCKETS, (ti + 1) * LATENCY_BUCKETS).reduce((a, b) => a + b, 0);
          if (count === 0) return;
          const queue = String(q);
          let cum = 0;
          for (let b = 0; b < LATENCY_BUCKETS; b++) {
            cum += t.stats.buckets[ti * LATENCY_BUCKETS + b] as number;
            const le = b < LATENCY_BOUNDS.length ? (LATENCY_BOUNDS[b] as number) : '+Inf';
            values.push({ metricName: `${name}_bucket`, labels: { queue, type, le }, value: cum });
          }
          values.push({ metricName: `${name}_sum`, labels: { queue, type }, value: t.stats.seconds[ti] as number });
          values.push({ metricName: `${name}_count`, labels: { queue, type }, value: count });
        });
      });
      return Promise.resolve({ ...metric, values });
    },
  };
  return metric as unknown as Metric;
}

/** The registry with every vublk metric and the process metrics. */
export function createRegistry(source: MetricsSource, snapshot: Snapshot): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: PREFIX });
  const registers = [registry];

  /** A metric whose series each queue's totals fill at scrape time: set(labels beside queue, value). */
  type Fill = (set: (labels: Record<string, string>, value: number) => void, t: QueueTotals) => void;
  const perQueue = (name: string, help: string, labelNames: string[], fill: Fill, gauge = false): void => {
    const collect = function (this: Counter | Gauge): void {
      this.reset();
      snapshot().forEach((t, q) => {
        const queue = String(q);
        fill((labels, v) => (this instanceof Gauge ? this.set({ ...labels, queue }, v) : this.inc({ ...labels, queue }, v)), t);
      });
    };
    const config = { name: PREFIX + name, help, labelNames: ['queue', ...labelNames], registers, collect };
    if (gauge) new Gauge(config);
    else new Counter(config);
  };
  const queueValue = (name: string, help: string, value: (t: QueueTotals) => number, gauge = false): void =>
    perQueue(name, help, [], (set, t) => set({}, value(t)), gauge);

  /** Each type the queue has completed requests of (see the top of this file). */
  const seenTypes = (t: QueueTotals, each: (type: string, ti: number) => void): void =>
    REQUEST_TYPES.forEach((type, ti) => {
      if (REQUEST_STATUSES.some((_, s) => t.stats.count(ti, s) > 0)) each(type, ti);
    });
  perQueue('requests_total', 'Requests completed, by queue, request type and status (ok, ioerr, unsupp).', ['type', 'status'], (set, t) =>
    seenTypes(t, (type, ti) => REQUEST_STATUSES.forEach((status, s) => set({ type, status }, t.stats.count(ti, s)))),
  );
  perQueue(
    'request_bytes_total',
    'Data bytes of requests completed OK: read, written, discarded or zeroed, or the id returned.',
    ['type'],
    (set, t) => seenTypes(t, (type, ti) => set({ type }, t.stats.bytes[ti] as number)),
  );
  registry.registerMetric(latencyHistogram(snapshot));

  queueValue('inflight_requests', 'Requests popped from the queue and not yet completed.', (t) => t.inflight, true);
  queueValue('kicks_total', 'Kick eventfd wake-ups: the driver notified the queue (coalesced kicks count once).', (t) => t.kicks);
  queueValue(
    'calls_total',
    'Guest notifications (call eventfd) signalled for published completions; at most one per completion batch.',
    (t) => t.calls,
  );
  for (const [name, help, field] of QUEUE_COUNTERS) queueValue(name, help, (t) => t.counters[field]);
  perQueue(
    'disk_ops_total',
    'Disk operations issued, fixed (READ_FIXED/WRITE_FIXED on registered guest memory) or plain.',
    ['kind'],
    (set, t) => {
      set({ kind: 'fixed' }, t.counters.fixedOps);
      set({ kind: 'plain' }, t.counters.plainOps);
    },
  );

  const scalar = (name: string, help: string, value: () => number, gauge = false): void => {
    const collect = function (this: Counter | Gauge): void {
      if (this instanceof Gauge) this.set(value());
      else {
        this.reset();
        this.inc(value());
      }
    };
    const config = { name: PREFIX + name, help, registers, collect };
    if (gauge) new Gauge(config);
    else new Counter(config);
  };
  const stats = source.stats;
  scalar('connections_total', 'Frontend connections set up.', () => stats.connections);
  scalar('connected', '1 while a frontend is connected, else 0.', () => (stats.connected ? 1 : 0), true);
  scalar('protocol_violations_total', 'Frontend connections closed because they broke a protocol rule.', () => stats.violations);
  scalar('disk_capacity_bytes', 'Capacity the guest sees, in bytes.', () => source.capacitySectors * 512, true);
  return registry;
}
