// `vublk bench`'s run: connects to a vhost-user-blk socket as QEMU would,
// keeps iodepth requests in flight on each queue for the runtime (busy-polling
// the used rings, or sleeping on the call eventfds), and returns the result.

import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { background } from '../background';
import { Frontend } from '../frontend/frontend';
import { parseBlkConfig, SECTOR_SIZE } from '../frontend/blk-driver';
import { VirtioFeature } from '../frontend/features';
import { LatencyHistogram } from './latency-histogram';
import { processCpuSeconds } from './process-cpu';
import { cpuUse, summarize, type BenchResult } from './report';
import { descsPerRequest, queueMemoryBytes, QueueLoad, type RwMode } from './queue-load';
import type { Bucket } from './svg';

export type WaitMode = 'poll' | 'irq';

export interface BenchOptions {
  socket: string;
  rw: RwMode;
  bs: number;
  iodepth: number;
  queues: number;
  /** Seconds of I/O. */
  runtime: number;
  segments: number;
  wait: WaitMode;
  rwmixread: number;
  /** Bytes of the device to range over, from 0 (default: all of it). */
  size?: number;
  backendPid?: number;
  /** A queue with requests in flight and no completion for this long fails the run (default 10 s). */
  stallMs?: number;
}

export interface BenchRun {
  result: BenchResult;
  buckets: Bucket[];
  /** What the writes stamped after each sector's LBA. */
  tag: number;
}

/** The largest split ring a vhost-user-blk backend takes (QEMU's VIRTQUEUE_MAX_SIZE). */
export const MAX_RING = 1024;
const MIN_RING = 128;
/** While busy-polling, the event loop gets a turn this often (timers, the control socket). */
const YIELD_MS = 2;
const DEFAULT_STALL_MS = 10_000;

/** The ring size a workload needs: room for iodepth chains, at least 128. */
export function ringSizeFor(iodepth: number, segments: number): number {
  const descs = iodepth * descsPerRequest(segments);
  return Math.max(MIN_RING, 2 ** Math.ceil(Math.log2(descs)));
}

export async function runBench(o: BenchOptions): Promise<BenchRun> {
  checkSocketPath(o.socket);
  const backendCpu0 = o.backendPid === undefined ? 0 : backendCpuSeconds(o.backendPid);
  let fe: Frontend;
  try {
    fe = await Frontend.connect(o.socket, { connectTimeoutMs: 0 });
  } catch (err) {
    throw new Error(`cannot connect to ${o.socket}: ${(err as Error).message}`);
  }
  try {
    const perQueue = queueMemoryBytes(o);
    const ram = Math.ceil((o.queues * perQueue + (4 << 20)) / (1 << 20)) * (1 << 20);
    try {
      await fe.setup({ queues: o.queues, queueSize: ringSizeFor(o.iodepth, o.segments), memory: { regions: [ram] } });
    } catch (err) {
      throw new Error(`${o.socket}: vhost-user-blk set-up failed (is it a vhost-user-blk backend?): ${(err as Error).message}`);
    }
    const blocks = checkDevice(fe, o);
    const tag = (Math.random() * 0x1_0000_0000) >>> 0;
    const timeline: number[] = [];
    const start = performance.now();
    const cpu0 = process.cpuUsage();
    const loads: QueueLoad[] = [];
    for (let q = 0; q < o.queues; q++) {
      const w = { rw: o.rw, bs: o.bs, iodepth: o.iodepth, segments: o.segments, rwmixread: o.rwmixread, blocks, tag };
      loads.push(new QueueLoad(fe, q, w, timeline, start, Math.floor((q * blocks) / o.queues)));
    }
    const stallMs = o.stallMs ?? DEFAULT_STALL_MS;
    if (o.wait === 'poll') await runPolling(fe, loads, start + o.runtime * 1000, stallMs);
    else await runIrq(fe, loads, o.runtime * 1000, stallMs);
    const seconds = (performance.now() - start) / 1000;
    // While polling, nobody read the call eventfds: what they hold is what the backend sent.
    for (const l of loads) fe.takeCalls(l.q);
    const cpu = process.cpuUsage(cpu0);
    const backendCpu1 = o.backendPid === undefined ? 0 : backendCpuSeconds(o.backendPid);

    const hist = new LatencyHistogram();
    for (const l of loads) hist.merge(l.hist);
    const ios = loads.reduce((a, l) => a + l.ios, 0);
    const result: BenchResult = {
      socket: o.socket,
      rw: o.rw,
      bs: o.bs,
      iodepth: o.iodepth,
      queues: o.queues,
      segments: o.segments,
      wait: o.wait,
      seconds: Math.round(seconds * 1000) / 1000,
      ios,
      errors: loads.reduce((a, l) => a + l.errors, 0),
      iops: Math.round(ios / seconds),
      mibps: Math.round(((ios * o.bs) / seconds / (1 << 20)) * 10) / 10,
      latencyUs: summarize(hist),
      timeline,
      kicks: fe.queues.reduce((a, q) => a + q.kicks, 0),
      calls: fe.queues.reduce((a, q) => a + q.calls, 0),
      benchCpu: cpuUse((cpu.user + cpu.system) / 1e6, ios),
    };
    if (o.backendPid !== undefined) result.backendCpu = { pid: o.backendPid, ...cpuUse(backendCpu1 - backendCpu0, ios) };
    return { result, buckets: hist.buckets(), tag };
  } finally {
    fe.close();
  }
}

function checkSocketPath(p: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (err) {
    throw new Error(`no socket at ${p} (${(err as NodeJS.ErrnoException).code ?? 'stat failed'})`);
  }
  if (!st.isSocket()) throw new Error(`${p} is not a Unix socket`);
}

function backendCpuSeconds(pid: number): number {
  try {
    return processCpuSeconds(pid);
  } catch (err) {
    throw new Error(`--backend-pid ${pid}: cannot read its CPU time (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** Checks the device can take the workload; returns how many bs blocks it ranges over. */
function checkDevice(fe: Frontend, o: BenchOptions): number {
  if (!fe.config) throw new Error(`${o.socket}: the backend did not negotiate CONFIG, so the capacity is unknown`);
  const cfg = parseBlkConfig(fe.config);
  const capacity = Number(cfg.capacity) * SECTOR_SIZE;
  const writes = o.rw === 'randwrite' || o.rw === 'write' || (o.rw === 'randrw' && o.rwmixread < 100);
  if (writes && fe.hasFeature(VirtioFeature.BLK_RO)) {
    throw new Error(`${o.socket}: the device is read-only (VIRTIO_BLK_F_RO): --rw ${o.rw} writes`);
  }
  if (fe.hasFeature(VirtioFeature.BLK_BLK_SIZE) && cfg.blkSize > 0 && o.bs % cfg.blkSize !== 0) {
    throw new Error(`--bs ${o.bs} is not a multiple of the device's logical block size ${cfg.blkSize}`);
  }
  const size = Math.min(o.size ?? capacity, capacity);
  const blocks = Math.floor(size / o.bs);
  if (blocks < 1) throw new Error(`the device (${size} bytes used of ${capacity}) is smaller than one ${o.bs}-byte block`);
  return blocks;
}

function checkQueues(loads: readonly QueueLoad[], now: number, stallMs: number): void {
  for (const l of loads) {
    if (l.failure) throw l.failure;
    if (l.inFlight > 0 && now - l.lastProgress > stallMs) {
      throw new Error(`queue ${l.q}: no completion for ${stallMs / 1000} s with ${l.inFlight} requests in flight`);
    }
  }
}

/** Busy-polls every used ring until the runtime is over and the last request is back. */
async function runPolling(fe: Frontend, loads: readonly QueueLoad[], endMs: number, stallMs: number): Promise<void> {
  for (const l of loads) {
    fe.handleCalls(l.q, undefined);
    fe.queue(l.q).ring.setInterrupts(false);
    l.lastProgress = performance.now();
    l.fill();
  }
  let stopping = false;
  let yieldAt = performance.now() + YIELD_MS;
  for (;;) {
    let got = 0;
    for (const l of loads) got += l.pump();
    const now = performance.now();
    if (!stopping && now >= endMs) {
      stopping = true;
      for (const l of loads) l.stopping = true;
    }
    if (got === 0) {
      if (stopping && loads.every((l) => l.inFlight === 0)) break;
      checkQueues(loads, now, stallMs);
    }
    if (now >= yieldAt) {
      await new Promise((r) => setImmediate(r));
      if (!fe.isOpen) throw new Error('the backend closed the connection');
      yieldAt = performance.now() + YIELD_MS;
    }
  }
  checkQueues(loads, performance.now(), stallMs);
}

/** Sleeps on the call eventfds; each notification drains and refills its queue. */
function runIrq(fe: Frontend, loads: readonly QueueLoad[], runtimeMs: number, stallMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(endTimer);
      clearInterval(watchdog);
      for (const l of loads) fe.handleCalls(l.q, undefined);
      if (err) reject(err);
      else resolve();
    };
    const maybeDone = (): void => {
      if (loads.every((l) => l.stopping && l.inFlight === 0)) finish();
    };
    const endTimer = setTimeout(() => {
      for (const l of loads) l.stopping = true;
      maybeDone();
    }, runtimeMs);
    const watchdog = setInterval(() => {
      try {
        checkQueues(loads, performance.now(), stallMs);
      } catch (err) {
        finish(err as Error);
      }
    }, 100);
    background(
      fe.closed.then(() => finish(new Error('the backend closed the connection'))),
      'watching the bench connection',
    );
    for (const l of loads) {
      fe.handleCalls(l.q, () => {
        try {
          l.pump();
          if (l.failure) throw l.failure;
          if (l.stopping) maybeDone();
        } catch (err) {
          finish(err as Error);
        }
      });
      fe.queue(l.q).ring.setInterrupts(true);
      l.lastProgress = performance.now();
      l.fill();
    }
  });
}
