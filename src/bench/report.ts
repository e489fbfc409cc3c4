// What `vublk bench` reports: the result record (also its --json output) and
// the text a person reads.
import type { LatencyHistogram } from './latency-histogram';

export interface LatencySummary {
  min: number;
  mean: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

export interface CpuUse {
  /** CPU seconds used during the measured run. */
  seconds: number;
  /** Microseconds of CPU per completed I/O. */
  usPerIo: number;
}

export interface BenchResult {
  socket: string;
  rw: string;
  bs: number;
  iodepth: number;
  queues: number;
  segments: number;
  wait: string;
  /** Measured seconds (after the ramp, if any). */
  seconds: number;
  ios: number;
  errors: number;
  iops: number;
  mibps: number;
  /** Completion latency in microseconds. */
  latencyUs: LatencySummary;
  /** I/Os completed in each second of the run. */
  timeline: number[];
  /** Kicks the bench sent, and call notifications the backend sent it (all queues). */
  kicks: number;
  calls: number;
  /** The load generator's own CPU. */
  benchCpu: CpuUse;
  /** The backend's CPU, when --backend-pid named it. */
  backendCpu?: CpuUse & { pid: number };
}

export function summarize(h: LatencyHistogram): LatencySummary {
  const us = (ns: number): number => Math.round(ns / 10) / 100;
  return {
    min: us(h.count ? h.min : 0),
    mean: us(h.mean()),
    p50: us(h.percentile(50)),
    p99: us(h.percentile(99)),
    p999: us(h.percentile(99.9)),
    max: us(h.max),
  };
}

export function cpuUse(seconds: number, ios: number): CpuUse {
  return { seconds: round(seconds, 3), usPerIo: ios > 0 ? round((seconds * 1e6) / ios, 2) : 0 };
}

export function formatReport(r: BenchResult): string {
  const l = r.latencyUs;
  const lines = [
    `vublk bench: ${r.rw} bs=${r.bs} iodepth=${r.iodepth} queues=${r.queues} segments=${r.segments} wait=${r.wait}, ${r.seconds} s on ${r.socket}`,
    `  IOPS ${Math.round(r.iops).toLocaleString('en-US')}  MiB/s ${r.mibps}  I/Os ${r.ios}  errors ${r.errors}`,
    `  latency (us): min ${l.min}  mean ${l.mean}  p50 ${l.p50}  p99 ${l.p99}  p99.9 ${l.p999}  max ${l.max}`,
    `  kicks ${r.kicks}  calls ${r.calls}`,
    `  bench CPU: ${r.benchCpu.seconds} s, ${r.benchCpu.usPerIo} us per I/O`,
  ];
  if (r.backendCpu) {
    lines.push(`  backend CPU (pid ${r.backendCpu.pid}): ${r.backendCpu.seconds} s, ${r.backendCpu.usPerIo} us per I/O`);
  }
  return lines.join('\n') + '\n';
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}
