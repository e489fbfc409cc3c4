// What a connection's data plane needs of the device, and how a data-plane
// worker thread gets it: BlkDevice serves the in-thread data plane; a worker
// rebuilds the same facts from a DeviceSpec (plain data, posted to it).

import type { DiskView } from '../blk/disk-view';
import type { HostRules } from '../align/rw-plan';
import type { HandlerCounters, RingCounters } from '../metrics/device-stats';
import { SharedDiskState } from './shared-disk-state';

/** The host disk as a Session needs it: an fd, or an RbdImage's token (kind 'rbd'). */
export interface PlaneDisk {
  readonly fd: number;
  readonly sizeBytes: number;
  readonly kind: 'file' | 'block' | 'rbd';
  readonly rbdToken?: number;
}

/** The device, as one data plane (in the main thread or in a worker) sees it. */
export interface PlaneDevice {
  readonly queues: number;
  readonly maxQueueSize: number;
  readonly serial: string;
  readonly fixedBuffers: boolean;
  readonly maxPinnedBytes: number;
  /** The guest's view of the disk (capacity read through: a resize shows). */
  readonly blkDisk: DiskView;
  readonly rules: HostRules;
  readonly disk: PlaneDisk;
  /** True while the guest has the volatile write cache on. */
  writeback(): boolean;
  /** Calls fn(hostBytes) after every capacity change; returns the way to stop. */
  onCapacityChange(fn: (hostBytes: number) => void): () => void;
  /** Where the connection's counters go; absent in a worker (the main thread collects them). */
  readonly stats?: {
    opened(handler: HandlerCounters, rings: RingCounters): void;
    closing(handler: HandlerCounters, rings: RingCounters): void;
  };
}

/**
 * A PlaneDevice as plain data, for a worker. The disk fd, or the RBD image
 * its token names, stays the main thread's (one process).
 */
export interface DeviceSpec {
  queues: number;
  maxQueueSize: number;
  serial: string;
  fixedBuffers: boolean;
  maxPinnedBytes: number;
  blkDisk: DiskView;
  rules: HostRules;
  disk: { fd: number; sizeBytes: number; kind: 'file' | 'block' | 'rbd'; rbdToken?: number };
  shared: SharedArrayBuffer;
}

/** The spec of `device` now (its disk view copied, its shared state by reference). */
export function deviceSpec(device: PlaneDevice & { readonly shared: SharedDiskState }): DeviceSpec {
  const { fd, sizeBytes, kind, rbdToken } = device.disk;
  const { offsetAlign, memAlign, lenAlign } = device.rules;
  return {
    queues: device.queues,
    maxQueueSize: device.maxQueueSize,
    serial: device.serial,
    fixedBuffers: device.fixedBuffers,
    maxPinnedBytes: device.maxPinnedBytes,
    blkDisk: { ...device.blkDisk },
    rules: { offsetAlign, memAlign, lenAlign },
    disk: { fd, sizeBytes, kind, ...(rbdToken === undefined ? {} : { rbdToken }) },
    shared: device.shared.buffer,
  };
}

/**
 * The device inside worker `worker`: capacity and write cache mode read
 * from the shared state; a resize reaches it through resized() (the main
 * thread calls it by RPC before it tells the frontend).
 */
export class WorkerDevice implements PlaneDevice {
  readonly queues: number;
  readonly maxQueueSize: number;
  readonly serial: string;
  readonly fixedBuffers: boolean;
  readonly maxPinnedBytes: number;
  readonly blkDisk: DiskView;
  readonly rules: HostRules;
  readonly disk: { fd: number; sizeBytes: number; kind: 'file' | 'block' | 'rbd'; rbdToken?: number };
  private readonly shared: SharedDiskState;
  private readonly listeners = new Set<(hostBytes: number) => void>();

  constructor(spec: DeviceSpec, worker: number) {
    this.queues = spec.queues;
    this.maxQueueSize = spec.maxQueueSize;
    this.serial = spec.serial;
    this.fixedBuffers = spec.fixedBuffers;
    this.maxPinnedBytes = spec.maxPinnedBytes;
    this.rules = spec.rules;
    this.disk = { ...spec.disk };
    this.shared = new SharedDiskState(spec.shared);
    this.blkDisk = this.shared.view(spec.blkDisk, 1 + worker);
  }

  writeback(): boolean {
    return this.shared.writeback;
  }

  onCapacityChange(fn: (hostBytes: number) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** The host disk is now hostBytes (the shared capacity was already updated). */
  resized(hostBytes: number): void {
    this.disk.sizeBytes = hostBytes;
    for (const fn of [...this.listeners]) fn(hostBytes);
  }
}
