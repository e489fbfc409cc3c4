// The virtio-blk device vublk presents: what it offers (features, config
// space, queue limits) for one host disk. Connections come and go; the device
// and its disk stay for the daemon's life.

import os from 'node:os';
import { BlkConfig, encodeConfig, makeBlkConfig, readConfig, applyConfigWrite, diskViewOf, BLK_CONFIG_SIZE } from '../blk/config-space';
import { deriveSegMax, deviceFeatures } from '../blk/features';
import type { DiskView } from '../blk/disk-view';
import type { HostDisk } from '../disk/host-disk';
import { ProtocolFeature, featureBit } from '../vhost-user/protocol';
import { SECTOR_SIZE, VIRTIO_BLK_F_CONFIG_WCE, hasFeature } from '../virtio/constants';
import type { HostRules } from '../align/rw-plan';
import { log } from '../log';
import { DeviceStats } from '../metrics/device-stats';
import { SharedDiskState } from './shared-disk-state';

/**
 * Segments per DISCARD / WRITE_ZEROES request (max_*_seg). Linux merges
 * discards up to this many ranges; each one is a separate host operation.
 */
const ZERO_DISCARD_SEGMENTS = 64;

export interface BlkDeviceOptions {
  queues: number;
  queueSize: number;
  readOnly: boolean;
  serial: string;
  logicalBlockSize: number;
  /** Register guest memory as io_uring fixed buffers. */
  fixedBuffers: boolean;
  /** Most guest memory a connection registers (pins); undefined: DEFAULT_PINNED_FRACTION of RAM. */
  maxPinnedMemory?: number | undefined;
  /** Where the write cache mode is kept across restarts; undefined: in memory only (--state-file none). */
  writeCacheState?: WriteCacheStore | undefined;
  /** Data-plane worker threads per connection (--workers); 0: the data plane runs on the main thread. */
  workers?: number | undefined;
  /** Bound on a worker's busy-poll pass, in microseconds (--poll-max-us); 0: no polling. */
  pollMaxUs?: number | undefined;
}

/** The write cache mode's home across restarts (WriteCacheStateFile; a test may give another). */
export interface WriteCacheStore {
  /** Named in log lines. */
  readonly file: string;
  /** true: write-back; undefined: nothing saved. Throws (a VublkError) rather than guess. */
  load(): boolean | undefined;
  /** Durable once it returns; throws on failure. */
  save(writeback: boolean): void;
}

/**
 * Default bound on pinned guest memory: a quarter of the host's RAM. A
 * shared host keeps three quarters for everything else even if a frontend
 * announces absurd regions; a guest larger than that runs with plain I/O.
 */
export const DEFAULT_PINNED_FRACTION = 0.25;

/** Protocol features this backend implements. */
export const PROTOCOL_FEATURES =
  featureBit(ProtocolFeature.MQ) |
  featureBit(ProtocolFeature.REPLY_ACK) |
  featureBit(ProtocolFeature.CONFIG) |
  featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  featureBit(ProtocolFeature.BACKEND_REQ) |
  featureBit(ProtocolFeature.INFLIGHT_SHMFD) |
  featureBit(ProtocolFeature.RESET_DEVICE) |
  featureBit(ProtocolFeature.STATUS);

/** What resize() did, in sectors; writtenEnd: the sector after the highest write accepted. */
export interface ResizeResult {
  outcome: 'applied' | 'unchanged' | 'refused';
  before: number;
  after: number;
  writtenEnd: number;
}

export class BlkDevice {
  readonly features: bigint;
  readonly protocolFeatures = PROTOCOL_FEATURES;
  readonly queues: number;
  readonly maxQueueSize: number;
  readonly serial: string;
  readonly fixedBuffers: boolean;
  /** Most guest memory one connection registers (pins) as fixed buffers, in bytes. */
  readonly maxPinnedBytes: number;
  /** The guest's view of the disk, shared with every connection's handler (main thread's writer slot). */
  readonly blkDisk: DiskView;
  /** Capacity, write cache mode and written ends, shared with data-plane workers. */
  readonly shared = new SharedDiskState();
  /** Data-plane worker threads per connection; 0: in-thread data plane. */
  readonly workers: number;
  /** Bound on a worker's busy-poll pass in microseconds; 0: no polling. */
  readonly pollMaxUs: number;
  /** Counters over the daemon's life, for the metrics endpoint (connections report to it). */
  readonly stats: DeviceStats;
  /** The host's O_DIRECT rules the alignment layer works to. */
  get rules(): HostRules {
    return this.disk.rules;
  }
  private readonly config: BlkConfig;
  private readonly writeCacheState: WriteCacheStore | undefined;
  private readonly configBytes = new Uint8Array(BLK_CONFIG_SIZE);
  /** Capacity counts whole blocks of this many bytes (guest and host). */
  private readonly capacityUnit: number;
  private readonly capacityListeners = new Set<(hostBytes: number) => void>();

  constructor(
    readonly disk: HostDisk,
    opts: BlkDeviceOptions,
  ) {
    this.queues = opts.queues;
    this.maxQueueSize = opts.queueSize;
    this.stats = new DeviceStats(opts.queues);
    this.serial = opts.serial;
    // librbd takes plain iovecs: pinning guest memory would buy nothing.
    this.fixedBuffers = opts.fixedBuffers && disk.kind !== 'rbd';
    // A guest block smaller than the host's: read-modify-writes of one host
    // block are serialised by the handler's RangeLock, which lives in one
    // thread, so one worker serves every queue of a connection.
    const emulated = opts.logicalBlockSize < disk.rules.offsetAlign;
    this.workers = emulated ? Math.min(opts.workers ?? 0, 1) : (opts.workers ?? 0);
    if (emulated && (opts.workers ?? 0) > 1)
      log.info('one data-plane worker per connection: the guest block is smaller than the host block', {
        logicalBlockSize: opts.logicalBlockSize,
        hostBlock: disk.rules.offsetAlign,
      });
    this.pollMaxUs = opts.pollMaxUs ?? 0;
    this.maxPinnedBytes = opts.maxPinnedMemory ?? Math.floor(os.totalmem() * DEFAULT_PINNED_FRACTION);
    const readOnly = opts.readOnly || disk.readOnly;
    const zd = disk.discard;
    this.writeCacheState = opts.writeCacheState;
    const savedWriteback = this.writeCacheState?.load();
    this.features = deviceFeatures({ readOnly, queues: opts.queues, discard: zd.discard, writeZeroes: zd.writeZeroes });
    // Whole blocks only, guest and host: a trailing partial block is not
    // exposed (O_DIRECT could not reach it).
    const lbs = opts.logicalBlockSize;
    this.capacityUnit = Math.max(lbs, disk.rules.offsetAlign);
    this.config = makeBlkConfig({
      capacitySectors: this.capacityFor(disk.sizeBytes),
      logicalBlockSize: lbs,
      physicalBlockSize: Math.max(disk.rules.physicalBlock, lbs),
      minIoBytes: Math.max(disk.rules.ioMin, disk.rules.offsetAlign),
      optIoBytes: disk.rules.ioOpt,
      queues: opts.queues,
      segMax: deriveSegMax(opts.queueSize),
      maxDiscardBytes: readOnly || !zd.discard ? 0 : zd.maxDiscardBytes,
      discardAlignBytes: zd.discardAlign,
      maxWriteZeroesBytes: readOnly || !zd.writeZeroes ? 0 : zd.maxWriteZeroesBytes,
      writeZeroesMayUnmap: zd.mayUnmap,
      maxSegments: ZERO_DISCARD_SEGMENTS,
      writeback: savedWriteback ?? true,
    });
    // The request path reads the capacity from blkDisk alone (see resize()).
    this.shared.capacitySectors = this.config.capacity;
    this.shared.writeback = this.config.writeback !== 0;
    this.blkDisk = this.shared.view(diskViewOf(this.config, readOnly, disk.kind === 'block'), 0);
    encodeConfig(this.config, this.configBytes);
    // The write cache mode (CONFIG_WCE) belongs to the device, not to a
    // connection: a QEMU that reconnects does not repeat the guest's choice,
    // not even to a restarted vublk, hence the state file.
    if (savedWriteback !== undefined) {
      log.info('write cache mode restored from state file', {
        file: this.writeCacheState?.file,
        mode: savedWriteback ? 'write-back' : 'write-through',
      });
    }
  }

  get capacitySectors(): number {
    return this.config.capacity;
  }

  /** Capacity for a host disk of sizeBytes: whole guest and host blocks only. */
  capacityFor(sizeBytes: number): number {
    const unit = this.capacityUnit;
    return Math.floor(sizeBytes / unit) * (unit / SECTOR_SIZE);
  }

  /**
   * The host disk is now sizeBytes (online resize): the capacity it allows
   * takes effect for config space and the request path at once, and every
   * listener (connection) is told. A shrink below the end of the highest
   * write accepted since start-up is refused: nothing changes.
   */
  resize(sizeBytes: number): ResizeResult {
    const before = this.config.capacity;
    const after = this.capacityFor(sizeBytes);
    const writtenEnd = this.shared.writtenEndSector;
    if (after < before && after < writtenEnd) return { outcome: 'refused', before, after, writtenEnd };
    // The native bound (HostDisk.sizeBytes) follows even when the capacity
    // does not: a partial block grown to a whole one is reachable next time.
    this.disk.sizeBytes = sizeBytes;
    if (after === before) return { outcome: 'unchanged', before, after, writtenEnd };
    this.config.capacity = after;
    this.blkDisk.capacitySectors = after;
    encodeConfig(this.config, this.configBytes);
    for (const fn of [...this.capacityListeners]) fn(sizeBytes);
    return { outcome: 'applied', before, after, writtenEnd };
  }

  /** Calls fn(hostBytes) after every capacity change; returns the way to stop. */
  onCapacityChange(fn: (hostBytes: number) => void): () => void {
    this.capacityListeners.add(fn);
    return () => this.capacityListeners.delete(fn);
  }

  /** True while the guest has the volatile write cache on. */
  writeback(): boolean {
    return this.config.writeback !== 0;
  }

  /** GET_CONFIG: a window of the config space, or null if out of range. */
  readConfig(offset: number, size: number): Uint8Array | null {
    return readConfig(this.configBytes, offset, size);
  }

  /**
   * SET_CONFIG from the driver: only the writeback byte may change. A new
   * mode is saved (durably) before it takes effect; false if it could not be,
   * and the mode stays as it was.
   */
  writeConfig(offset: number, data: Uint8Array): boolean {
    const next: BlkConfig = { ...this.config };
    if (!applyConfigWrite(next, offset, data)) return false;
    const before = this.writeback();
    const after = next.writeback !== 0;
    if (after !== before && this.writeCacheState !== undefined && !this.saveWriteCache(this.writeCacheState, after, before)) {
      return false;
    }
    this.config.writeback = next.writeback;
    this.shared.writeback = next.writeback !== 0;
    encodeConfig(this.config, this.configBytes);
    return true;
  }

  /**
   * SET_CONFIG on connection `conn`, whose driver acked `acked`: the one
   * place that decides the write cache mode. The driver may set it only with
   * CONFIG_WCE negotiated, and only through the writeback byte (writeConfig).
   * false: refused (logged), the mode stays.
   */
  setWriteCache(acked: bigint, offset: number, data: Uint8Array, conn: number): boolean {
    const wce = hasFeature(acked, VIRTIO_BLK_F_CONFIG_WCE);
    if (!wce || !this.writeConfig(offset, data)) {
      // Refused, not a violation: the frontend is told (REPLY_ACK 1) and QEMU
      // reports it to the guest; the connection stays.
      log.warn('SET_CONFIG refused: only the writeback byte is writable, with CONFIG_WCE', { conn, offset, size: data.length });
      return false;
    }
    log.info('guest set the write cache mode', { conn, writeback: this.writeback() });
    return true;
  }

  private saveWriteCache(state: WriteCacheStore, writeback: boolean, previous: boolean): boolean {
    try {
      state.save(writeback);
      return true;
    } catch (err) {
      log.error('cannot save the write cache mode; SET_CONFIG refused, the mode stays', {
        file: state.file,
        mode: previous ? 'write-back' : 'write-through',
        error: err as Error,
      });
      // A failure after the rename (syncing the directory) leaves the new
      // mode in the file: put the one still in force back, if that works.
      try {
        state.save(previous);
      } catch {
        // the first error was logged
      }
      return false;
    }
  }
}
