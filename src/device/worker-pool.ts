// The device's data-plane worker threads (--workers N), started on the
// first connection that needs them and kept for the daemon's life: a
// connection opens its data plane in them instead of starting threads of
// its own, so a reconnect costs a few calls, not a thread start and a
// module load per worker. A worker that dies is replaced on the next
// connection; the connections it served break.

import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { background } from '../background';
import { getLogFormat, getLogLevel, log } from '../log';
import type { BlkDevice } from './blk-device';
import type { WorkerInit } from './data-plane-worker';
import { deviceSpec } from './plane-device';
import { RpcClient, type WorkerEvent } from './worker-rpc';

/** What a connection hears from a pool worker: its events, or the worker's end. */
export interface WorkerListener {
  event(e: WorkerEvent): void;
  lost(reason: string): void;
}

export class PoolWorker {
  readonly rpc: RpcClient;
  private readonly thread: Worker;
  private readonly listeners = new Map<number, WorkerListener>();
  private deadReason: string | undefined;

  constructor(
    readonly index: number,
    init: Omit<WorkerInit, 'rpc' | 'worker'>,
  ) {
    this.rpc = new RpcClient(`data-plane worker ${index}`);
    const data: WorkerInit = { ...init, worker: index, rpc: this.rpc.end };
    this.thread = new Worker(path.join(__dirname, 'data-plane-worker.js'), { workerData: data, transferList: [this.rpc.end.port] });
    // The daemon exits through process.exit; an idle worker must not hold it.
    this.thread.unref();
    this.rpc.attach(this.thread, (e) => this.onEvent(e));
    this.thread.on('error', (err) => this.die(`internal error: data-plane worker ${index}: ${err.message}`));
    this.thread.on('exit', (code) => this.die(`internal error: data-plane worker ${index} exited (code ${code})`));
  }

  /** False once the thread ended or stopped answering (the pool then replaces it). */
  get alive(): boolean {
    return this.deadReason === undefined && !this.rpc.isDead;
  }

  /** Routes the events about connection conn to listener until unlisten(conn). */
  listen(conn: number, listener: WorkerListener): void {
    this.listeners.set(conn, listener);
  }

  unlisten(conn: number): void {
    this.listeners.delete(conn);
  }

  /** Ends the thread (it is dead from now on). */
  terminate(reason: string): void {
    this.die(reason);
    background(this.thread.terminate(), 'ending a data-plane worker', { worker: this.index });
  }

  private onEvent(e: WorkerEvent): void {
    const l = typeof e.conn === 'number' ? this.listeners.get(e.conn) : undefined;
    if (l !== undefined) l.event(e);
    else log.error('unexpected event from a data-plane worker', { worker: this.index, event: e.event });
  }

  private die(reason: string): void {
    if (this.deadReason !== undefined) return;
    this.deadReason = reason;
    this.rpc.dead(reason);
    const listeners = [...this.listeners.values()];
    this.listeners.clear();
    for (const l of listeners) l.lost(reason);
  }
}

export class WorkerPool {
  private readonly workers: (PoolWorker | undefined)[] = [];
  /** One Int32: 1 once the daemon is exiting (a drain stops waiting for native work). */
  readonly exiting = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly device: BlkDevice) {
    // Before any connection's listener: every worker has the new size
    // before a connection tells its frontend.
    device.onCapacityChange((bytes) => {
      for (const w of this.workers) if (w?.alive) w.rpc.call('resized', bytes);
    });
  }

  /** Workers 0..count-1, started (or restarted after a death) as needed. */
  take(count: number): PoolWorker[] {
    const out: PoolWorker[] = [];
    for (let i = 0; i < count; i++) {
      let w = this.workers[i];
      if (w !== undefined && !w.alive) w.terminate('data-plane worker replaced');
      if (w === undefined || !w.alive) {
        w = new PoolWorker(i, {
          spec: deviceSpec(this.device),
          pollMaxNs: this.device.pollMaxUs * 1000,
          exiting: this.exiting.buffer,
          logLevel: getLogLevel(),
          logFormat: getLogFormat(),
        });
        this.workers[i] = w;
        log.debug('data-plane worker started', { worker: i, pollMaxUs: this.device.pollMaxUs });
      }
      out.push(w);
    }
    return out;
  }
}
