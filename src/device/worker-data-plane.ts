// One connection's data plane spread over data-plane worker threads (--workers
// N): the main thread keeps the vhost-user control plane, the config space
// and the connection's guest memory; queue q is served by worker q % N.
//
// Ownership: the native.GuestMemory is this object's (mapped and unmapped
// here, only while every worker is quiesced; the workers' Sessions use it by
// token). An fd passed to a per-queue call belongs to the owning worker from
// then on; SET_INFLIGHT_FD's fd goes to worker 0 and every other worker gets
// its own reopened copy. The workers are the device's (worker-pool.ts): the
// connection opens its data plane in them at connect and closes it at
// destroy(); every call names the connection.

import fs from 'node:fs';
import { native, type GuestMemory } from '../native/binding';
import { QueueCounters } from '../blk/counters';
import { RequestStats } from '../blk/request-stats';
import type { DataPlaneEvents, VhostUserDataPlane } from '../vhost-user/backend';
import type { MemRegionWithFd } from '../vhost-user/message';
import type { HandlerCounters, RingCounters } from '../metrics/device-stats';
import { log } from '../log';
import type { BlkDevice } from './blk-device';
import type { PlaneSnapshot } from './blk-data-plane';
import type { PoolWorker, WorkerPool } from './worker-pool';
import type { WorkerEvent } from './worker-rpc';

/** How often a draining connection looks whether the daemon started exiting. */
const EXITING_POLL_MS = 50;
/** Bound of a connection's first call to each worker (which may be starting). */
const OPEN_TIMEOUT_MS = 30_000;

/** A pool worker as one connection uses it: every call names the connection. */
interface PlaneWorker {
  readonly index: number;
  call(method: string, ...args: unknown[]): unknown;
  callAsync(method: string, ...args: unknown[]): Promise<unknown>;
}

export class WorkerDataPlane implements VhostUserDataPlane, HandlerCounters, RingCounters {
  private readonly workers: PlaneWorker[] = [];
  private readonly pooled: PoolWorker[];
  private readonly memory: GuestMemory;
  private readonly unwatchCapacity: () => void;
  private acked = 0n;
  private destroyed = false;
  /** Snapshots of one metrics scrape (cleared after it), or the final ones after destroy(). */
  private snapshots: PlaneSnapshot[] | undefined;

  constructor(
    private readonly device: BlkDevice,
    private readonly conn: number,
    private readonly events: DataPlaneEvents,
    private readonly pool: WorkerPool,
  ) {
    const count = Math.max(1, Math.min(device.workers, device.queues));
    this.memory = new native.GuestMemory();
    this.pooled = pool.take(count);
    const opened: PoolWorker[] = [];
    try {
      for (const w of this.pooled) {
        w.listen(conn, { event: (e) => this.onEvent(w.index, e), lost: (reason) => this.lost(reason) });
        // A worker that cannot build the data plane (io_uring, arrays) refuses the connection, as in-thread.
        // A worker just started loads its modules first: a longer bound than other calls.
        w.rpc.callWithin(OPEN_TIMEOUT_MS, 'open', conn, this.memory.token);
        opened.push(w);
        this.workers.push({
          index: w.index,
          call: (method, ...args) => w.rpc.call(method, conn, ...args),
          callAsync: (method, ...args) => w.rpc.callAsync(method, conn, ...args),
        });
      }
    } catch (err) {
      this.release(opened);
      this.memory.destroy();
      throw err;
    }
    // The pool has told every worker the new size by now (its listener came first).
    this.unwatchCapacity = device.onCapacityChange(() => events.configChanged());
    log.info('data plane on worker threads', { conn, workers: count, pollMaxUs: device.pollMaxUs });
    device.stats.opened(this, this);
  }

  private onEvent(worker: number, e: WorkerEvent): void {
    if (e.event === 'violation' && typeof e.rule === 'string') this.events.violation(e.rule);
    else log.error('unknown event from a data-plane worker', { conn: this.conn, worker, event: e.event });
  }

  /** A worker died: its calls fail from now on; unexpected, it breaks the connection. */
  private lost(reason: string): void {
    if (!this.destroyed) this.events.violation(reason);
  }

  /**
   * Closes this connection's data plane in each of `workers` (they stay the
   * pool's) and returns their final snapshots; a worker that fails to close
   * is ended.
   */
  private release(workers: readonly PoolWorker[]): (PlaneSnapshot | undefined)[] {
    for (const w of this.pooled) w.unlisten(this.conn);
    return workers.map((w) => {
      try {
        return w.alive ? (w.rpc.call('destroy', this.conn) as PlaneSnapshot | undefined) : undefined;
      } catch (err) {
        log.error('a data-plane worker failed to close', { conn: this.conn, worker: w.index, error: err as Error });
        w.terminate(`data-plane worker ${w.index} failed to close connection ${this.conn}`);
        return undefined;
      }
    });
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
    this.each((w) => w.call('setFeatures', acked));
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
    this.each((w) => w.call('adoptRegions', regions, bytes));
  }

  async quiesce(): Promise<number[]> {
    const paused = await Promise.all(this.each((w) => w.callAsync('quiesce') as Promise<number[]>));
    return paused.flat().sort((a, b) => a - b);
  }

  resume(running: number[], what: string): void {
    for (const w of this.workers) {
      const mine = running.filter((q) => this.owner(q) === w);
      if (mine.length > 0) w.call('resume', mine, what);
    }
  }

  // ------------------------------------------------------------ rings: the owning worker's

  vringStarted(q: number): boolean {
    return this.owner(q).call('vringStarted', q) as boolean;
  }

  setVringNum(q: number, num: number): void {
    this.owner(q).call('setVringNum', q, num);
  }

  setVringAddr(q: number, desc: number, used: number, avail: number): void {
    this.owner(q).call('setVringAddr', q, desc, used, avail);
  }

  setVringBase(q: number, base: number): void {
    this.owner(q).call('setVringBase', q, base);
  }

  setVringKick(q: number, fd: number): void {
    this.owner(q).call('setVringKick', q, fd);
  }

  setVringCall(q: number, fd: number): void {
    this.owner(q).call('setVringCall', q, fd);
  }

  setVringErr(q: number, fd: number): void {
    this.owner(q).call('setVringErr', q, fd);
  }

  setVringEnabled(q: number, enabled: boolean): void {
    this.owner(q).call('setVringEnabled', q, enabled);
  }

  startVring(q: number): void {
    this.owner(q).call('startVring', q);
  }

  async drainVring(q: number, timeoutMs: number): Promise<boolean> {
    return (await this.owner(q).callAsync('drainVring', q, timeoutMs)) as boolean;
  }

  /** Requests in flight on ring q, or on all; after destroy() from the final counters. */
  inflight(q?: number): number {
    if (this.destroyed) return 0;
    if (q !== undefined) return this.owner(q).call('inflight', q) as number;
    return this.each((w) => w.call('inflight') as number).reduce((a, b) => a + b, 0);
  }

  stopVring(q: number): number {
    return this.owner(q).call('stopVring', q) as number;
  }

  stopAllRings(): void {
    this.each((w) => w.call('stopAllRings'));
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
        w.call('setInflight', fds[i], mmapSize, mmapOffset, numQueues, queueSize);
      } catch (err) {
        failure = err as Error;
      }
    });
    if (failure !== undefined) throw failure;
  }

  clearInflight(): void {
    this.each((w) => w.call('clearInflight'));
  }

  // ------------------------------------------------------------ counters (metrics, logs)

  /** One snapshot per worker for this scrape (taken once, dropped after it), or the final ones. */
  private collect(): PlaneSnapshot[] {
    if (this.snapshots === undefined) {
      this.snapshots = this.each((w) => w.call('snapshot') as PlaneSnapshot);
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
      if (exiting()) Atomics.store(this.pool.exiting, 0, 1);
    }, EXITING_POLL_MS);
    try {
      if (exiting()) Atomics.store(this.pool.exiting, 0, 1);
      await Promise.all(this.each((w) => w.callAsync('drain', timeoutMs)));
    } catch (err) {
      log.error('a data-plane worker failed to drain', { conn: this.conn, error: err as Error });
    } finally {
      clearInterval(watch);
    }
  }

  destroy(): void {
    this.destroyed = true;
    const finals = this.release(this.pooled);
    this.snapshots = finals.map((s) => s ?? { counters: [], stats: [], inflight: [], rings: new Float64Array(0) });
    this.memory.destroy();
    this.logCounters('closed');
    this.device.stats.closing(this, this);
  }
}
