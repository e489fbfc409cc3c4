// One connection's data plane spread over data-plane worker threads (--workers
// N): the main thread keeps the vhost-user control plane, the config space
// and the connection's guest memory; queue q is served by worker q % N.
//
// Ownership: the native.GuestMemory is this object's (mapped and unmapped
// here, only while every worker is quiesced; the workers' Sessions use it by
// token). An fd passed to a per-queue call belongs to the owning worker from
// then on; SET_INFLIGHT_FD's fd goes to worker 0 and every other worker gets
// its own reopened copy. Workers start at connect and end at destroy().

import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native, type GuestMemory } from '../native/binding';
import { QueueCounters } from '../blk/counters';
import { RequestStats } from '../blk/request-stats';
import type { DataPlaneEvents, VhostUserDataPlane } from '../vhost-user/backend';
import type { MemRegionWithFd } from '../vhost-user/message';
import type { HandlerCounters, RingCounters } from '../metrics/device-stats';
import { getLogFormat, getLogLevel, log } from '../log';
import type { BlkDevice } from './blk-device';
import type { PlaneSnapshot } from './blk-data-plane';
import type { WorkerInit } from './data-plane-worker';
import { deviceSpec } from './plane-device';
import { RpcClient, type WorkerEvent } from './worker-rpc';

/** How often a draining connection looks whether the daemon started exiting. */
const EXITING_POLL_MS = 50;

interface PlaneWorker {
  readonly index: number;
  readonly thread: Worker;
  readonly rpc: RpcClient;
}

export class WorkerDataPlane implements VhostUserDataPlane, HandlerCounters, RingCounters {
  private readonly workers: PlaneWorker[] = [];
  private readonly memory: GuestMemory;
  private readonly exiting = new Int32Array(new SharedArrayBuffer(4));
  private readonly unwatchCapacity: () => void;
  private acked = 0n;
  private destroyed = false;
  /** Snapshots of one metrics scrape (cleared after it), or the final ones after destroy(). */
  private snapshots: PlaneSnapshot[] | undefined;

  constructor(
    private readonly device: BlkDevice,
    private readonly conn: number,
    private readonly events: DataPlaneEvents,
  ) {
    const count = Math.max(1, Math.min(device.workers, device.queues));
    this.memory = new native.GuestMemory();
    try {
      for (let i = 0; i < count; i++) this.workers.push(this.startWorker(i));
      // A worker that could not build its data plane (io_uring, arrays) refuses the connection, as in-thread.
      for (const w of this.workers) w.rpc.call('vringStarted', 0);
    } catch (err) {
      this.endWorkers();
      this.memory.destroy();
      throw err;
    }
    this.unwatchCapacity = device.onCapacityChange((bytes) => {
      this.each((w) => w.rpc.call('resized', bytes));
      events.configChanged();
    });
    log.info('data plane on worker threads', { conn, workers: count, pollMaxUs: device.pollMaxUs });
    device.stats.opened(this, this);
  }

  private startWorker(index: number): PlaneWorker {
    const rpc = new RpcClient(`data-plane worker ${index} of connection ${this.conn}`);
    const init: WorkerInit = {
      spec: deviceSpec(this.device),
      worker: index,
      conn: this.conn,
      rpc: rpc.end,
      memoryToken: this.memory.token,
      pollMaxNs: this.device.pollMaxUs * 1000,
      exiting: this.exiting.buffer,
      logLevel: getLogLevel(),
      logFormat: getLogFormat(),
    };
    const thread = new Worker(path.join(__dirname, 'data-plane-worker.js'), { workerData: init, transferList: [rpc.end.port] });
    const w: PlaneWorker = { index, thread, rpc };
    rpc.attach(thread, (e) => this.onEvent(w, e));
    thread.on('error', (err) => this.lost(w, `internal error: data-plane worker ${index}: ${err.message}`));
    thread.on('exit', (code) => this.lost(w, `internal error: data-plane worker ${index} exited (code ${code})`));
    return w;
  }

  private onEvent(w: PlaneWorker, e: WorkerEvent): void {
    if (e.event === 'violation' && typeof e.rule === 'string') this.events.violation(e.rule);
    else log.error('unknown event from a data-plane worker', { conn: this.conn, worker: w.index, event: e.event });
  }

  /** A worker died (or ended at destroy): its calls fail from now on; unexpected, it breaks the connection. */
  private lost(w: PlaneWorker, reason: string): void {
    w.rpc.dead(reason);
    if (!this.destroyed) this.events.violation(reason);
  }

  /** The worker serving queue q (q < queues: the connection checked it). */
  private owner(q: number): PlaneWorker {
    return this.workers[q % this.workers.length] as PlaneWorker;
  }

  private each<T>(fn: (w: PlaneWorker) => T): T[] {
    return this.workers.map(fn);
  }

  // ------------------------------------------------------------ features and config

  setFeatures(acked: bigint): void {
    this.acked = acked;
    this.each((w) => w.rpc.call('setFeatures', acked));
  }

  readConfig(offset: number, size: number): Uint8Array | null {
    return this.device.readConfig(offset, size);
  }

  /** The write cache mode reaches the workers through the device's shared state. */
  writeConfig(offset: number, data: Uint8Array): boolean {
    return this.device.setWriteCache(this.acked, offset, data, this.conn);
  }

  // ------------------------------------------------------------ guest memory (called quiesced)

  addRegion(r: MemRegionWithFd): void {
    this.memory.addRegion(r.fd, r.gpa, r.size, r.uva, r.mmapOffset);
  }

  clearRegions(): void {
    this.memory.clearRegions();
  }

  removeRegion(gpa: number, size: number): boolean {
    return this.memory.removeRegion(gpa, size);
  }

  memoryChanged(): void {
    const regions = this.memory.regions();
    const bytes = this.memory.regionBytes();
    this.each((w) => w.rpc.call('adoptRegions', regions, bytes));
  }

  async quiesce(): Promise<number[]> {
    const paused = await Promise.all(this.each((w) => w.rpc.callAsync('quiesce') as Promise<number[]>));
    return paused.flat().sort((a, b) => a - b);
  }

  resume(running: number[], what: string): void {
    for (const w of this.workers) {
      const mine = running.filter((q) => this.owner(q) === w);
      if (mine.length > 0) w.rpc.call('resume', mine, what);
    }
  }

  // ------------------------------------------------------------ rings: the owning worker's

  vringStarted(q: number): boolean {
    return this.owner(q).rpc.call('vringStarted', q) as boolean;
  }

  setVringNum(q: number, num: number): void {
    this.owner(q).rpc.call('setVringNum', q, num);
  }

  setVringAddr(q: number, desc: number, used: number, avail: number): void {
    this.owner(q).rpc.call('setVringAddr', q, desc, used, avail);
  }

  setVringBase(q: number, base: number): void {
    this.owner(q).rpc.call('setVringBase', q, base);
  }

  setVringKick(q: number, fd: number): void {
    this.owner(q).rpc.call('setVringKick', q, fd);
  }

  setVringCall(q: number, fd: number): void {
    this.owner(q).rpc.call('setVringCall', q, fd);
  }

  setVringErr(q: number, fd: number): void {
    this.owner(q).rpc.call('setVringErr', q, fd);
  }

  setVringEnabled(q: number, enabled: boolean): void {
    this.owner(q).rpc.call('setVringEnabled', q, enabled);
  }

  startVring(q: number): void {
    this.owner(q).rpc.call('startVring', q);
  }

  async drainVring(q: number, timeoutMs: number): Promise<boolean> {
    return (await this.owner(q).rpc.callAsync('drainVring', q, timeoutMs)) as boolean;
  }

  /** Requests in flight on ring q, or on all; after destroy() from the final counters. */
  inflight(q?: number): number {
    if (this.destroyed) return 0;
    if (q !== undefined) return this.owner(q).rpc.call('inflight', q) as number;
    return this.each((w) => w.rpc.call('inflight') as number).reduce((a, b) => a + b, 0);
  }

  stopVring(q: number): number {
    return this.owner(q).rpc.call('stopVring', q) as number;
  }

  stopAllRings(): void {
    this.each((w) => w.rpc.call('stopAllRings'));
  }

  // ------------------------------------------------------------ inflight region

  setInflight(fd: number, mmapSize: number, mmapOffset: number, numQueues: number, queueSize: number): void {
    // Each worker maps the whole region (a queue's part is touched only by
    // its owner): worker 0 takes fd, the others a reopened copy each.
    const fds = [fd];
    try {
      for (let i = 1; i < this.workers.length; i++) fds.push(fs.openSync(`/proc/self/fd/${fd}`, 'r+'));
    } catch (err) {
      for (const f of fds) native.closeFd(f);
      throw new Error(`SET_INFLIGHT_FD: cannot share the region with the data-plane workers: ${(err as Error).message}`);
    }
    let failure: Error | undefined;
    this.workers.forEach((w, i) => {
      if (failure !== undefined) return native.closeFd(fds[i] as number);
      try {
        w.rpc.call('setInflight', fds[i], mmapSize, mmapOffset, numQueues, queueSize);
      } catch (err) {
        failure = err as Error;
      }
    });
    if (failure !== undefined) throw failure;
  }

  clearInflight(): void {
    this.each((w) => w.rpc.call('clearInflight'));
  }

  // ------------------------------------------------------------ counters (metrics, logs)

  /** One snapshot per worker for this scrape (taken once, dropped after it), or the final ones. */
  private collect(): PlaneSnapshot[] {
    if (this.snapshots === undefined) {
      this.snapshots = this.each((w) => w.rpc.call('snapshot') as PlaneSnapshot);
      queueMicrotask(() => {
        if (!this.destroyed) this.snapshots = undefined;
      });
    }
    return this.snapshots;
  }

  counters(): readonly QueueCounters[] {
    const s = this.collect();
    return Array.from({ length: this.device.queues }, (_, q) => {
      const c = new QueueCounters();
      const from = s[q % s.length]?.counters[q];
      if (from !== undefined) c.add(from);
      return c;
    });
  }

  requestStats(): readonly RequestStats[] {
    const s = this.collect();
    return Array.from({ length: this.device.queues }, (_, q) => {
      const r = new RequestStats();
      const from = s[q % s.length]?.stats[q];
      if (from !== undefined) r.add(from);
      return r;
    });
  }

  ringCounters(out: Float64Array): void {
    const s = this.collect();
    for (let q = 0; q < this.device.queues; q++) {
      const rings = s[q % s.length]?.rings;
      out[2 * q] = rings?.[2 * q] ?? 0;
      out[2 * q + 1] = rings?.[2 * q + 1] ?? 0;
    }
  }

  logCounters(reason: string): void {
    this.counters().forEach((c, q) => {
      log.info('counters', { conn: this.conn, queue: q, reason, ...c });
    });
  }

  // ------------------------------------------------------------ teardown

  async drain(timeoutMs: number, exiting: () => boolean): Promise<void> {
    this.unwatchCapacity();
    const watch = setInterval(() => {
      if (exiting()) Atomics.store(this.exiting, 0, 1);
    }, EXITING_POLL_MS);
    try {
      if (exiting()) Atomics.store(this.exiting, 0, 1);
      await Promise.all(this.each((w) => w.rpc.callAsync('drain', timeoutMs)));
    } catch (err) {
      log.error('a data-plane worker failed to drain', { conn: this.conn, error: err as Error });
    } finally {
      clearInterval(watch);
    }
  }

  destroy(): void {
    const finals = this.each((w) => {
      try {
        return w.rpc.call('destroy') as PlaneSnapshot;
      } catch (err) {
        log.error('a data-plane worker failed to close', { conn: this.conn, worker: w.index, error: err as Error });
        return undefined;
      }
    });
    this.snapshots = finals.map((s) => s ?? { counters: [], stats: [], inflight: [], rings: new Float64Array(0) });
    this.destroyed = true;
    this.endWorkers();
    this.memory.destroy();
    this.logCounters('closed');
    this.device.stats.closing(this, this);
  }

  private endWorkers(): void {
    this.destroyed = true;
    for (const w of this.workers) {
      w.rpc.dead('data-plane worker ended');
      void w.thread.terminate();
    }
  }
}
