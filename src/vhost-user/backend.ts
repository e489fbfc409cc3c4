// What a vhost-user connection asks of the device it serves (in the spirit of
// libvhost-user's VuDevIface and rust-vmm's VhostUserBackend): no virtio-blk here.
//
// The connection parses and checks messages (sizes, fds, queue indexes, ring
// states, protocol features) and forwards them; every device decision (which
// features mean what, config space, guest memory registration, requests,
// counters) is the backend's.

import type { MemRegionWithFd } from './message';

/** The device, for the daemon's life: one data plane per connection. */
export interface VhostUserBackend {
  /** Virtio features offered (GET_FEATURES), VHOST_USER_F_PROTOCOL_FEATURES included. */
  readonly features: bigint;
  /** Protocol features offered (GET_PROTOCOL_FEATURES). */
  readonly protocolFeatures: bigint;
  /** Queues the device has (GET_QUEUE_NUM); ring indexes are below it. */
  readonly queues: number;
  /** Largest ring size a queue may have (SET_VRING_NUM). */
  readonly maxQueueSize: number;
  /** The device side of connection `conn`. Throws when it cannot be set up (the connection is refused). */
  connect(conn: number, events: DataPlaneEvents): VhostUserDataPlane;
  /** A connection broke a protocol rule and is being dropped (counted). */
  countViolation(): void;
}

/** What a data plane tells its connection. */
export interface DataPlaneEvents {
  /** A rule was broken (the guest's, or an internal error): disconnect. */
  violation(rule: string): void;
  /** The connection broke: leftover failures are expected, not news. */
  broken(): boolean;
  /** The device's config space changed: the frontend should re-read it. */
  configChanged(): void;
}

/**
 * One connection's device: rings, guest memory and request handling. Methods
 * named after a message do what it asks, after the connection checked it;
 * those that may fail on the frontend's values throw Error(message), which
 * the connection turns into a violation.
 */
export interface VhostUserDataPlane {
  /** SET_FEATURES (0n: RESET_OWNER / RESET_DEVICE forget them). */
  setFeatures(acked: bigint): void;
  /** GET_CONFIG: a window of the config space, or null if out of range. */
  readConfig(offset: number, size: number): Uint8Array | null;
  /** SET_CONFIG: false when refused (logged here); the frontend is told, the connection stays. */
  writeConfig(offset: number, data: Uint8Array): boolean;

  /** Maps a region; its fd is closed by this call, mapped or not. Called quiesced. */
  addRegion(r: MemRegionWithFd): void;
  /** Unmaps every region (SET_MEM_TABLE). Called quiesced. */
  clearRegions(): void;
  /** Unmaps the region at gpa/size; false if there is none. Called quiesced. */
  removeRegion(gpa: number, size: number): boolean;
  /** The memory table changed: register it again (fixed buffers). Called quiesced. */
  memoryChanged(): void;
  /** Pauses every running ring and waits until nothing is in flight; returns the paused rings. */
  quiesce(): Promise<number[]>;
  /** Restarts the rings quiesce() paused; `what` names the cause in a violation. */
  resume(running: number[], what: string): void;

  vringStarted(q: number): boolean;
  setVringNum(q: number, num: number): void;
  setVringAddr(q: number, desc: number, used: number, avail: number): void;
  setVringBase(q: number, base: number): void;
  /** Takes fd (closed by the data plane from now on). */
  setVringKick(q: number, fd: number): void;
  /** Takes fd, or -1 for none. */
  setVringCall(q: number, fd: number): void;
  /** Takes fd, or -1 for none. */
  setVringErr(q: number, fd: number): void;
  /** Enables or disables a ring; an enabled running ring is polled at once. */
  setVringEnabled(q: number, enabled: boolean): void;
  /** Starts ring q (after its kick fd came); throws Error(message) if its addresses are bad. */
  startVring(q: number): void;
  /** GET_VRING_BASE, first half: pauses ring q and waits for its requests; false if they did not drain within timeoutMs. */
  drainVring(q: number, timeoutMs: number): Promise<boolean>;
  /** Requests in flight on ring q (all rings when q is undefined). */
  inflight(q?: number): number;
  /** GET_VRING_BASE, second half: stops the drained ring, returns its base. */
  stopVring(q: number): number;
  /** Stops every ring (RESET_OWNER, RESET_DEVICE). Called quiesced. */
  stopAllRings(): void;

  /** SET_INFLIGHT_FD: maps the region (fd closed by this call); rings are stopped. */
  setInflight(fd: number, mmapSize: number, mmapOffset: number, numQueues: number, queueSize: number): void;
  /** RESET_DEVICE: forgets the inflight region. */
  clearInflight(): void;

  /** Logs the per-queue counters. */
  logCounters(reason: string): void;
  /**
   * Closing, first half: stops every ring, waits for the requests in flight
   * (bounded), then for the native work no request waits on any more.
   * exiting() true ends that wait early (the daemon is exiting).
   */
  drain(timeoutMs: number, exiting: () => boolean): Promise<void>;
  /** Closing, second half: releases guest memory, rings and fds. */
  destroy(): void;
}
