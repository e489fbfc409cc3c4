// Entry of a data-plane worker thread: one BlkDataPlane (its own Session,
// io_uring, request handler and shared arrays) for the queues the main thread
// routes to this worker, driven through worker-rpc.ts, with adaptive polling.
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

/** What the main thread gives a worker at start (workerData). */
export interface WorkerInit {
  spec: DeviceSpec;
  /** This worker's index among the connection's workers. */
  worker: number;
  conn: number;
  rpc: RpcEnd;
  memoryToken: number | undefined;
  pollMaxNs: number;
  /** One Int32: 1 once the daemon is exiting (drain stops waiting for native work). */
  exiting: SharedArrayBuffer;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

function main(init: WorkerInit): void {
  const parent = parentPort;
  if (parent === null) return;
  setLogFormat(init.logFormat);
  setLogLevel(init.logLevel);
  const device = new WorkerDevice(init.spec, init.worker);
  const exiting = new Int32Array(init.exiting);
  let broken = false;
  const events: DataPlaneEvents = {
    violation(rule) {
      broken = true;
      parent.postMessage({ event: 'violation', rule });
    },
    broken: () => broken,
    // The main thread tells the frontend once every worker has the new size.
    configChanged() {},
  };
  const plane = new BlkDataPlane(device, init.conn, events, { memoryToken: init.memoryToken, pollMaxNs: init.pollMaxNs });
  serveRpc(init.rpc, {
    setFeatures: (acked: bigint) => plane.setFeatures(acked),
    addRegion: (r: Parameters<BlkDataPlane['addRegion']>[0]) => plane.addRegion(r),
    clearRegions: () => plane.clearRegions(),
    removeRegion: (gpa: number, size: number) => plane.removeRegion(gpa, size),
    memoryChanged: () => plane.memoryChanged(),
    adoptRegions: (regions: { bufId: number; mmapOffset: number }[], bytes: number) => plane.adoptRegions(regions, bytes),
    quiesce: () => plane.quiesce(),
    resume: (running: number[], what: string) => plane.resume(running, what),
    vringStarted: (q: number) => plane.vringStarted(q),
    setVringNum: (q: number, num: number) => plane.setVringNum(q, num),
    setVringAddr: (q: number, desc: number, used: number, avail: number) => plane.setVringAddr(q, desc, used, avail),
    setVringBase: (q: number, base: number) => plane.setVringBase(q, base),
    setVringKick: (q: number, fd: number) => plane.setVringKick(q, fd),
    setVringCall: (q: number, fd: number) => plane.setVringCall(q, fd),
    setVringErr: (q: number, fd: number) => plane.setVringErr(q, fd),
    setVringEnabled: (q: number, enabled: boolean) => plane.setVringEnabled(q, enabled),
    startVring: (q: number) => plane.startVring(q),
    drainVring: (q: number, timeoutMs: number) => plane.drainVring(q, timeoutMs),
    inflight: (q?: number) => plane.inflight(q),
    stopVring: (q: number) => plane.stopVring(q),
    stopAllRings: () => plane.stopAllRings(),
    setInflight: (fd: number, size: number, offset: number, numQueues: number, queueSize: number) =>
      plane.setInflight(fd, size, offset, numQueues, queueSize),
    clearInflight: () => plane.clearInflight(),
    resized: (hostBytes: number) => device.resized(hostBytes),
    snapshot: () => plane.snapshot(),
    drain: (timeoutMs: number) => {
      broken = true; // closing: leftover failures are expected
      return plane.drain(timeoutMs, () => Atomics.load(exiting, 0) === 1);
    },
    destroy: () => {
      plane.destroy();
      return plane.snapshot();
    },
  });
}

main(workerData as WorkerInit);
