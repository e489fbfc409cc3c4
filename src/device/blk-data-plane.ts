// One connection's virtio-blk data plane: the native Session (rings, guest
// memory, io_uring), the BlkHandler and their shared arrays, fixed-buffer
// registration, quiesce/resume, draining and counters.
//
// The vhost-user connection drives it through VhostUserDataPlane and knows
// nothing of what is below: BlkBackend.connect() builds one on the main
// thread (--workers 0), or each data-plane worker builds one for the queues
// it serves (data-plane-worker.ts). It lives until destroy().

import { native, type Session } from '../native/binding';
import { BlkHandler } from '../blk/blk-handler';
import { DEFAULT_BOUNCE_BYTES, FIXED_BOUNCE_BYTES, allocateArrays, type SessionArrays } from '../blk/shared-arrays';
import type { DataPlaneEvents, VhostUserDataPlane } from '../vhost-user/backend';
import type { MemRegionWithFd } from '../vhost-user/message';
import {
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  hasFeature,
} from '../virtio/constants';
import { log } from '../log';
import type { QueueCounters } from '../blk/counters';
import type { RequestStats } from '../blk/request-stats';
import type { PlaneDevice } from './plane-device';
import { PollLoop } from './poll-loop';
import { FixedBufferPolicy } from './fixed-buffers';
import { HostErrorLog } from './host-error-log';
import { settlesWithin, waitForNativeWork } from './drain';
import { wantedUringEntries, withUringEntries } from './uring-entries';

/** The config space, where the data plane serves it (the main thread). */
export interface ConfigSpace {
  readConfig(offset: number, size: number): Uint8Array | null;
  setWriteCache(acked: bigint, offset: number, data: Uint8Array, conn: number): boolean;
}

export interface PlaneOptions {
  /** Served here when given (in-thread); a worker's data plane has none. */
  config?: ConfigSpace | undefined;
  /** A native.GuestMemory token: the session uses that memory (a worker's); absent: its own. */
  memoryToken?: number | undefined;
  /** Bound of a busy-poll pass after a batch, in ns; 0 or absent: no polling. */
  pollMaxNs?: number | undefined;
}

/** A data plane's counters at one moment (posted from a worker: plain data). */
export interface PlaneSnapshot {
  counters: QueueCounters[];
  stats: RequestStats[];
  /** Requests in flight, per queue. */
  inflight: number[];
  /** [kicks, calls] of queue q at 2q, 2q + 1. */
  rings: Float64Array;
}

export class BlkDataPlane implements VhostUserDataPlane {
  private readonly arrays: SessionArrays;
  private readonly handler: BlkHandler;
  private readonly session: Session;
  private readonly fixedBuffers: FixedBufferPolicy;
  private readonly hostErrors: HostErrorLog;
  private readonly unwatchCapacity: () => void;
  private readonly poller: PollLoop | undefined;
  private acked = 0n;

  constructor(
    private readonly device: PlaneDevice,
    private readonly conn: number,
    private readonly events: DataPlaneEvents,
    private readonly opts: PlaneOptions = {},
  ) {
    this.hostErrors = new HostErrorLog(conn, () => events.broken());
    this.fixedBuffers = new FixedBufferPolicy({ enabled: device.fixedBuffers, maxPinnedBytes: device.maxPinnedBytes, conn });
    this.arrays = allocateArrays(device.maxQueueSize);
    this.handler = new BlkHandler(this.arrays, {
      queues: device.queues,
      maxQueueSize: device.maxQueueSize,
      disk: device.blkDisk,
      serial: device.serial,
      writeback: () => device.writeback(),
      onViolation: (q, rule) => events.violation(`queue ${q}: ${rule}`),
      bounceBytes: DEFAULT_BOUNCE_BYTES,
      rules: device.rules,
      onFatal: (message) => events.violation(message),
      onHostError: (res, type, offset) => this.hostErrors.report(res, type, offset),
    });
    // Native calls these from the event loop: nothing may escape them, or a
    // bug on one connection would take the daemon down.
    // A batch delivered by an event handler (not by a poll pass) starts polling.
    const callbacks = {
      onChains: (q: number, n: number) => {
        this.guard(() => this.handler.onChains(q, n));
        this.poller?.woken();
      },
      onCompletions: (n: number) => {
        this.guard(() => this.handler.onCompletions(n));
        this.poller?.woken();
      },
      onViolation: (q: number, rule: string) => events.violation(q < 0 ? rule : `queue ${q}: ${rule}`),
    };
    this.session = withUringEntries(
      wantedUringEntries(device.queues, device.maxQueueSize),
      conn,
      (entries) =>
        new native.Session(
          device.queues,
          device.maxQueueSize,
          device.disk.fd,
          entries,
          DEFAULT_BOUNCE_BYTES,
          this.arrays,
          callbacks,
          device.disk.sizeBytes,
          device.disk.kind === 'block',
          opts.memoryToken,
          device.disk.rbdToken,
        ),
    );
    const session = this.session;
    const pollMaxNs = opts.pollMaxNs ?? 0;
    this.poller = pollMaxNs > 0 ? new PollLoop((ns) => session.poll(ns), pollMaxNs) : undefined;
    this.handler.attach({
      submit: (n) => {
        try {
          return session.submit(n);
        } catch (err) {
          log.error('io_uring submission failed', { conn, error: err as Error });
          throw err;
        }
      },
      pushUsed: (q, n) => {
        // A ring stopped under in-flight requests cannot take used entries:
        // that is the frontend's doing (it reset the ring), not a crash.
        try {
          session.pushUsed(q, n);
        } catch (err) {
          events.violation(`queue ${q}: cannot complete requests: ${(err as Error).message}`);
        }
      },
      writeGuest: (bufId, off, data) => session.writeGuest(bufId, off, data),
      copy: (n) => session.copy(n),
      readGuest: (bufId, off, dst) => session.readGuest(bufId, off, dst),
    });
    // Online resize: ops may reach the new end; the frontend re-reads the config.
    this.unwatchCapacity = device.onCapacityChange((bytes) => {
      session.growDisk(bytes);
      events.configChanged();
    });
    device.stats?.opened(this.handler, this.session);
  }

  // ------------------------------------------------------------ features and config

  setFeatures(acked: bigint): void {
    this.acked = acked;
    this.session.setEventIdx(hasFeature(acked, VIRTIO_RING_F_EVENT_IDX));
    this.session.setIndirect(hasFeature(acked, VIRTIO_RING_F_INDIRECT_DESC));
    this.handler.setNegotiated(hasFeature(acked, VIRTIO_BLK_F_DISCARD), hasFeature(acked, VIRTIO_BLK_F_WRITE_ZEROES));
  }

  readConfig(offset: number, size: number): Uint8Array | null {
    return this.configSpace().readConfig(offset, size);
  }

  writeConfig(offset: number, data: Uint8Array): boolean {
    return this.configSpace().setWriteCache(this.acked, offset, data, this.conn);
  }

  private configSpace(): ConfigSpace {
    if (this.opts.config === undefined) throw new Error('internal error: the config space is served by the main thread');
    return this.opts.config;
  }

  // ------------------------------------------------------------ guest memory

  addRegion(r: MemRegionWithFd): void {
    const bufId = this.session.addRegion(r.fd, r.gpa, r.size, r.uva, r.mmapOffset);
    // Our mapping starts page aligned at file offset 0: the region's first
    // byte sits mmap_offset into a page.
    this.handler.setRegionPhase(bufId, r.mmapOffset);
  }

  clearRegions(): void {
    this.session.clearRegions();
  }

  removeRegion(gpa: number, size: number): boolean {
    this.handler.setRegistered(false);
    return this.session.removeRegion(gpa, size);
  }

  /** Registers guest memory as io_uring fixed buffers if the policy allows (see fixed-buffers.ts). Called with I/O drained. */
  memoryChanged(): void {
    this.registerMemory(this.session.regionBytes());
  }

  /**
   * Shared guest memory (a worker's session): the main thread changed the
   * regions (while every session using them was quiesced); `regions` is
   * what native.GuestMemory.regions() lists now, `bytes` its regionBytes().
   */
  adoptRegions(regions: readonly { bufId: number; mmapOffset: number }[], bytes: number): void {
    for (const r of regions) this.handler.setRegionPhase(r.bufId, r.mmapOffset);
    this.registerMemory(bytes);
  }

  private registerMemory(bytes: number): void {
    this.handler.setRegistered(false);
    this.handler.setRegistered(
      this.fixedBuffers.apply(bytes + FIXED_BOUNCE_BYTES, () => this.session.registerBuffers(FIXED_BOUNCE_BYTES)),
      FIXED_BOUNCE_BYTES,
    );
  }

  async quiesce(): Promise<number[]> {
    const running: number[] = [];
    for (let q = 0; q < this.device.queues; q++) {
      if (this.session.vringStarted(q)) {
        this.session.pauseVring(q, true);
        running.push(q);
      }
    }
    await this.handler.whenIdle();
    return running;
  }

  /** Re-translates and restarts rings after a memory table change. */
  resume(running: number[], what: string): void {
    for (const q of running) {
      this.session.pauseVring(q, false);
      this.startVring(q, what);
    }
  }

  // ------------------------------------------------------------ rings

  vringStarted(q: number): boolean {
    return this.session.vringStarted(q);
  }

  setVringNum(q: number, num: number): void {
    this.session.setVringNum(q, num);
  }

  setVringAddr(q: number, desc: number, used: number, avail: number): void {
    this.session.setVringAddr(q, desc, used, avail);
  }

  setVringBase(q: number, base: number): void {
    this.session.setVringBase(q, base);
  }

  setVringKick(q: number, fd: number): void {
    this.session.setVringKick(q, fd);
  }

  setVringCall(q: number, fd: number): void {
    this.session.setVringCall(q, fd);
  }

  setVringErr(q: number, fd: number): void {
    this.session.setVringErr(q, fd);
  }

  setVringEnabled(q: number, enabled: boolean): void {
    this.session.setVringEnabled(q, enabled);
    if (enabled && this.session.vringStarted(q)) this.session.pollVring(q);
  }

  /** Starts ring q, resubmitting what an earlier backend left in flight; `what` prefixes an error. */
  startVring(q: number, what = 'SET_VRING_KICK'): void {
    let resubmit: number;
    try {
      resubmit = this.session.startVring(q);
    } catch (err) {
      throw new Error(`${what}: queue ${q}: ${(err as Error).message}`);
    }
    if (resubmit < 0) {
      resubmit = -1 - resubmit;
      log.warn('inflight region was behind the ring: re-synchronised, not kept by vublk', { conn: this.conn, queue: q, count: resubmit });
    }
    if (resubmit > 0) {
      log.info('resubmitting requests left in flight by an earlier backend', { conn: this.conn, queue: q, count: resubmit });
      this.handler.counters()[q]!.resubmitted += resubmit; // q < device.queues: the connection checked it
    }
    this.session.pollVring(q);
  }

  drainVring(q: number, timeoutMs: number): Promise<boolean> {
    this.session.pauseVring(q, true);
    return settlesWithin(this.handler.whenIdle(q), timeoutMs);
  }

  inflight(q?: number): number {
    return this.handler.inflight(q);
  }

  stopVring(q: number): number {
    const base = this.session.stopVring(q);
    this.session.pauseVring(q, false);
    return base;
  }

  stopAllRings(): void {
    for (let q = 0; q < this.device.queues; q++) {
      this.session.stopVring(q);
      this.session.pauseVring(q, false);
    }
  }

  // ------------------------------------------------------------ inflight region

  setInflight(fd: number, mmapSize: number, mmapOffset: number, numQueues: number, queueSize: number): void {
    this.session.setInflight(fd, mmapSize, mmapOffset, numQueues, queueSize);
  }

  clearInflight(): void {
    this.session.clearInflight();
  }

  // ------------------------------------------------------------ counters and teardown

  /** Logs the per-queue counters, one line per queue. */
  logCounters(reason: string): void {
    this.handler.counters().forEach((c, q) => {
      log.info('counters', { conn: this.conn, queue: q, reason, ...c });
    });
  }

  /** Every counter as plain data, for the main thread's metrics (a worker's plane). */
  snapshot(): PlaneSnapshot {
    const rings = new Float64Array(2 * this.device.queues);
    this.session.ringCounters(rings);
    const inflight = this.handler.counters().map((_, q) => this.handler.inflight(q));
    return { counters: [...this.handler.counters()], stats: [...this.handler.requestStats()], inflight, rings };
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      log.error('internal error on the data path', { conn: this.conn, error: err as Error });
      this.events.violation(`internal error: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  async drain(timeoutMs: number, exiting: () => boolean): Promise<void> {
    this.unwatchCapacity();
    this.poller?.stop();
    for (let q = 0; q < this.device.queues; q++) this.session.pauseVring(q, true);
    const inflight = this.handler.inflight();
    if (inflight > 0) log.info('draining in-flight requests', { conn: this.conn, inflight });
    if (!(await settlesWithin(this.handler.whenIdle(), timeoutMs))) {
      // Requests still in flight are abandoned; their ops still with the
      // kernel are cancelled or waited for just below.
      log.error('in-flight requests did not drain; closing anyway', {
        conn: this.conn,
        inflight: this.handler.inflight(),
        timeoutMs,
      });
    }
    // No op of this connection may land once the next one is served.
    await waitForNativeWork(this.session, this.conn, () => this.handler.abandonAll(), exiting);
  }

  destroy(): void {
    this.poller?.stop();
    if (this.device.stats !== undefined) {
      this.logCounters('closed');
      this.device.stats.closing(this.handler, this.session);
    }
    this.session.destroy();
    this.handler.abandonAll();
  }
}
