// Entry of a data-plane worker thread (worker-pool.ts): for each connection
// the main thread opens here, one BlkDataPlane (its own Session, io_uring,
// request handler and shared arrays) for the queues routed to this worker,
// driven through worker-rpc.ts, with adaptive polling. Every call names
// its connection first; the worker lives across connections.
//
// Guest memory is the connection's native.GuestMemory (the main thread maps
// and unmaps it); fds passed in calls (kick, call, err, inflight) are plain
// numbers in one process and become this worker's to close, exactly as they
// would be the in-thread data plane's.

import { parentPort, workerData } from 'node:worker_threads';
import { setLogFormat, setLogLevel, type LogFormat, type LogLevel } from '../log';
import type { DataPlaneEvents } from '../vhost-user/backend';
import { BlkDataPlane } from './blk-data-plane';
import { WorkerDevice, type DeviceSpec } from './plane-device';
import { serveRpc, type RpcEnd } from './worker-rpc';

/** What the pool gives a worker at start (workerData). */
export interface WorkerInit {
  spec: DeviceSpec;
  /** This worker's index in the pool (queue q of a connection goes to worker q mod its count). */
  worker: number;
  rpc: RpcEnd;
  pollMaxNs: number;
  /** One Int32: 1 once the daemon is exiting (drain stops waiting for native work). */
  exiting: SharedArrayBuffer;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

interface Open {
  plane: BlkDataPlane;
  /** The connection is closing: leftover failures are expected from now on. */
  closing(): void;
}

function main(init: WorkerInit): void {
  const parent = parentPort;
  if (parent === null) return;
  setLogFormat(init.logFormat);
  setLogLevel(init.logLevel);
  const device = new WorkerDevice(init.spec, init.worker);
  const exiting = new Int32Array(init.exiting);
  const open = new Map<number, Open>();

  const plane = (conn: number): BlkDataPlane => {
    const o = open.get(conn);
    if (o === undefined) throw new Error(`internal error: connection ${conn} has no data plane in worker ${init.worker}`);
    return o.plane;
  };

  const connect = (conn: number, memoryToken: number): void => {
    if (open.has(conn)) throw new Error(`internal error: connection ${conn} is already open in worker ${init.worker}`);
    let broken = false;
    const events: DataPlaneEvents = {
      violation(rule) {
        broken = true;
        parent.postMessage({ event: 'violation', conn, rule });
      },
      broken: () => broken,
      // The main thread tells the frontend once every worker has the new size.
      configChanged() {},
    };
    const plane = new BlkDataPlane(device, conn, events, { memoryToken, pollMaxNs: init.pollMaxNs });
    open.set(conn, { plane, closing: () => (broken = true) });
  };

  // Per-connection calls: (conn, ...args) -> the connection's data plane.
  const on =
    <A extends unknown[], R>(fn: (p: BlkDataPlane, ...a: A) => R) =>
    (conn: number, ...a: A): R =>
      fn(plane(conn), ...a);

  serveRpc(init.rpc, {
    open: connect,
    setFeatures: on((p, acked: bigint) => p.setFeatures(acked)),
    adoptRegions: on((p, regions: { bufId: number; mmapOffset: number }[], bytes: number) => p.adoptRegions(regions, bytes)),
    quiesce: on((p) => p.quiesce()),
    resume: on((p, running: number[], what: string) => p.resume(running, what)),
    vringStarted: on((p, q: number) => p.vringStarted(q)),
    setVringNum: on((p, q: number, num: number) => p.setVringNum(q, num)),
    setVringAddr: on((p, q: number, desc: number, used: number, avail: number) => p.setVringAddr(q, desc, used, avail)),
    setVringBase: on((p, q: number, base: number) => p.setVringBase(q, base)),
    setVringKick: on((p, q: number, fd: number) => p.setVringKick(q, fd)),
    setVringCall: on((p, q: number, fd: number) => p.setVringCall(q, fd)),
    setVringErr: on((p, q: number, fd: number) => p.setVringErr(q, fd)),
    setVringEnabled: on((p, q: number, enabled: boolean) => p.setVringEnabled(q, enabled)),
    startVring: on((p, q: number) => p.startVring(q)),
    drainVring: on((p, q: number, timeoutMs: number) => p.drainVring(q, timeoutMs)),
    inflight: on((p, q?: number) => p.inflight(q)),
    stopVring: on((p, q: number) => p.stopVring(q)),
    stopAllRings: on((p) => p.stopAllRings()),
    setInflight: on((p, fd: number, size: number, offset: number, numQueues: number, queueSize: number) =>
      p.setInflight(fd, size, offset, numQueues, queueSize),
    ),
    clearInflight: on((p) => p.clearInflight()),
    snapshot: on((p) => p.snapshot()),
    drain: (conn: number, timeoutMs: number) => {
      const o = open.get(conn);
      if (o === undefined) return undefined;
      o.closing();
      return o.plane.drain(timeoutMs, () => Atomics.load(exiting, 0) === 1);
    },
    destroy: (conn: number) => {
      const o = open.get(conn);
      if (o === undefined) return undefined;
      open.delete(conn);
      o.plane.destroy();
      return o.plane.snapshot();
    },
    resized: (hostBytes: number) => device.resized(hostBytes),
  });
}

main(workerData as WorkerInit);
