// An in-repo vhost-user front-end: plays QEMU (the vhost-user master) and
// the guest's virtio driver over a real Unix socket, for integration tests
// and benchmarks. It speaks to any vhost-user-blk back-end (vublk, or
// qemu-storage-daemon as a reference peer).
//
// Theory of operation:
// - Control plane: messages are written synchronously (native.sendMsg);
//   replies are read by a MessageReader in 'reply' mode whenever the socket
//   is readable, queued, and handed to recvReply() callers in order.
// - Guest memory: GuestMemory (memfds mapped into JS); the back-end gets the
//   memfds through SET_MEM_TABLE or ADD_MEM_REG.
// - Data plane: one SplitRing per queue, a kick eventfd the front-end writes
//   and a call eventfd it watches (native.FdWatcher); on a call the used
//   ring is drained and each chain's promise resolved.
// - Ownership: the front-end owns every fd it creates (socket, memfds,
//   eventfds, the back-end channel) and closes them all in close(). fds sent
//   to the back-end are duplicated by the kernel; ours stay ours.
// - When the back-end disconnects, every pending reply and I/O is rejected
//   and `closed` resolves; unless the guest (memory and rings) was passed in
//   as a GuestState: then it outlives the connection as QEMU's does, chains
//   in flight stay pending, and the next Frontend set up with the same
//   GuestState (and InflightRegion) picks them up, as QEMU after a backend
//   restart (reconnect=1).

import { native, type FdWatcher } from '../../src/native/binding';
import { type Message, needsReply } from '../../src/vhost-user/message';
import {
  encodeConfigPayload,
  encodeInflightPayload,
  encodeMessage,
  encodeU64Payload,
  encodeVringStatePayload,
} from '../../src/vhost-user/encode';
import { encodeAck, encodeMemRegPayload, encodeMemTablePayload, encodeVringAddrPayload, encodeVringFilePayload } from './encode';
import { MessageReader } from '../../src/vhost-user/message-reader';
import {
  BackendRequest,
  CONFIG_HDR_SIZE,
  Flags,
  MEMORY_BASELINE_NREGIONS,
  ProtocolFeature,
  Request,
  featureBit,
  requestName,
} from '../../src/vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/virtio/constants';
import { GuestMemory, type GuestMemoryOptions } from './guest-memory';
import { SplitRing, type RingSeg } from './split-ring';
import { InflightRegion } from './inflight-region';
import { DeviceStatus } from '../../src/vhost-user/device-status';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Virtio feature bits the front-end knows (virtio-blk device + transport). */
export const VirtioFeature = Object.freeze({
  BLK_SIZE_MAX: 1,
  BLK_SEG_MAX: 2,
  BLK_GEOMETRY: 4,
  BLK_RO: 5,
  BLK_BLK_SIZE: 6,
  BLK_FLUSH: 9,
  BLK_TOPOLOGY: 10,
  BLK_CONFIG_WCE: 11,
  BLK_MQ: 12,
  BLK_DISCARD: 13,
  BLK_WRITE_ZEROES: 14,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const);

/** Features acked by default (when offered); INDIRECT/EVENT_IDX follow the setup options. */
export const DEFAULT_BLK_FEATURES = [
  VirtioFeature.BLK_SIZE_MAX,
  VirtioFeature.BLK_SEG_MAX,
  VirtioFeature.BLK_GEOMETRY,
  VirtioFeature.BLK_RO,
  VirtioFeature.BLK_BLK_SIZE,
  VirtioFeature.BLK_FLUSH,
  VirtioFeature.BLK_TOPOLOGY,
  VirtioFeature.BLK_CONFIG_WCE,
  VirtioFeature.BLK_MQ,
  VirtioFeature.BLK_DISCARD,
  VirtioFeature.BLK_WRITE_ZEROES,
  VirtioFeature.VERSION_1,
].reduce((m, b) => m | featureBit(b), 0n);

/** The protocol features a QEMU 7.2 vhost-user-blk front-end accepts (of those offered). */
export const DEFAULT_PROTOCOL_FEATURES = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.CONFIG,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.STATUS,
].reduce((m, b) => m | featureBit(b), 0n);

/** sizeof(struct virtio_blk_config) up to write_zeroes_may_unmap + padding (QEMU 7.2 default). */
export const BLK_CONFIG_SIZE = 60;

export interface SetupOptions {
  /** Number of virtqueues (default 1). */
  queues?: number;
  /** Queue size, a power of two (default 128). */
  queueSize?: number;
  /** Virtio features to ack, intersected with those offered (default DEFAULT_BLK_FEATURES). */
  features?: bigint;
  /** Negotiate VIRTIO_RING_F_EVENT_IDX: true requires it, false refuses it, undefined takes it if offered. */
  eventIdx?: boolean;
  /** Negotiate VIRTIO_RING_F_INDIRECT_DESC, like eventIdx. */
  indirect?: boolean;
  /** Guest RAM layout (default two back-to-back 16 MiB regions). */
  memory?: GuestMemoryOptions;
  /**
   * How the memory table is sent: 'set-mem-table', 'add-mem-reg' (needs
   * CONFIGURE_MEM_SLOTS), or 'auto' (default): ADD_MEM_REG when
   * CONFIGURE_MEM_SLOTS is negotiated, as QEMU does.
   */
  memTable?: 'set-mem-table' | 'add-mem-reg' | 'auto';
  /** Protocol features to accept of those offered (default DEFAULT_PROTOCOL_FEATURES). */
  protocolFeatures?: bigint;
  /** GET_CONFIG size (default 60). */
  configSize?: number;
  /** Send SET_VRING_CALL (a throwaway "masked" eventfd) and SET_VRING_ERR at init, as QEMU 7.2 does. Default true. */
  qemuInitNotifiers?: boolean;
  /** Set NEED_REPLY on every message that has no reply of its own (REPLY_ACK must be negotiated). */
  needReplyAll?: boolean;
  /**
   * INFLIGHT_SHMFD, as QEMU 7.2 vhost-user-blk: false refuses the feature;
   * a region is created by GET_INFLIGHT_FD once (if not yet created) and
   * sent with SET_INFLIGHT_FD on every setup. Default: a region of this
   * Frontend's own, closed with it.
   */
  inflight?: InflightRegion | false;
  /**
   * Guest memory and rings that survive this connection (see GuestState).
   * Rings it already holds are reused, with SET_VRING_BASE = their used
   * index (QEMU after a backend crash) unless vringBases says otherwise.
   */
  guest?: GuestState;
  /** SET_VRING_BASE per queue (default 0, or the used index of a reused ring). */
  vringBases?: number[];
}

/**
 * Guest RAM and virtqueues that outlive a Frontend, as QEMU's guest outlives
 * a backend: the caller owns it and closes it (rejecting chains never
 * completed).
 */
export class GuestState {
  mem: GuestMemory | undefined;
  readonly rings: SplitRing<Completion>[] = [];

  close(): void {
    const err = new Error('guest closed');
    for (const r of this.rings) for (const c of r.abandonAll()) c.reject(err);
    this.mem?.close();
    this.mem = undefined;
  }
}

export interface SendOptions {
  needReply?: boolean;
}

export interface QueueState {
  index: number;
  ring: SplitRing<Completion>;
  kickFd: number;
  callFd: number;
  watcher: FdWatcher | undefined;
  kicks: number;
  calls: number;
}

interface Completion {
  resolve: (usedLen: number) => void;
  reject: (err: Error) => void;
}

interface Waiter {
  resolve: (m: Message) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

const DEFAULT_TIMEOUT_MS = 5000;

export class Frontend {
  readonly fd: number;
  readonly timeoutMs: number;
  /** Virtio features offered by GET_FEATURES and acked by SET_FEATURES. */
  offeredFeatures = 0n;
  features = 0n;
  /** Protocol features offered and accepted. */
  offeredProtocolFeatures = 0n;
  protocolFeatures = 0n;
  maxQueues = 1;
  maxMemSlots = MEMORY_BASELINE_NREGIONS;
  /** Config space read during setup (GET_CONFIG), if CONFIG was negotiated. */
  config: Buffer | undefined;
  mem: GuestMemory | undefined;
  readonly queues: QueueState[] = [];
  /** CONFIG_CHANGE_MSG notifications received on the back-end channel. */
  configChanges = 0;
  /** Resolves when the back-end closes the connection (or close() is called). */
  readonly closed: Promise<void>;
  /** The inflight region in use (after setup, if INFLIGHT_SHMFD was negotiated). */
  inflight: InflightRegion | undefined;

  private readonly reader: MessageReader;
  private readonly watcher: FdWatcher;
  private readonly inbox: Message[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly ownedFds: number[] = [];
  private backend: { fd: number; watcher: FdWatcher; reader: MessageReader } | undefined;
  private isClosed = false;
  private closeError: Error | undefined;
  private resolveClosed!: () => void;
  private needReplyAll = false;
  private guest: GuestState | undefined;
  private ownInflight = false;

  private constructor(fd: number, timeoutMs: number) {
    this.fd = fd;
    this.timeoutMs = timeoutMs;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.reader = new MessageReader({
      recv: (buf, off, len, maxFds) => native.recvMsg(fd, buf, off, len, maxFds),
      closeFd: (f) => native.closeFd(f),
      expect: 'reply',
    });
    this.watcher = new native.FdWatcher(fd, () => this.onSocketReadable());
    this.watcher.start();
  }

  /** Connects to a back-end's socket, retrying while it does not exist or refuses (up to timeoutMs). */
  static async connect(socketPath: string, opts: { timeoutMs?: number } = {}): Promise<Frontend> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new Frontend(native.connectUnix(socketPath), timeoutMs);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  // ------------------------------------------------------------ low level

  /** Sends one message (header built here). NEED_REPLY when asked (or needReplyAll). */
  send(request: number, payload: Uint8Array = Buffer.alloc(0), fds: number[] = [], opts: SendOptions = {}): void {
    const flags = Flags.VERSION | (opts.needReply ? Flags.NEED_REPLY : 0);
    this.sendRaw(encodeMessage(request, flags, payload), fds);
  }

  /**
   * Stops (false) or resumes (true) reading the socket: replies then pile up
   * in the kernel, as with a frontend that does not read them.
   */
  setReading(on: boolean): void {
    if (this.isClosed) return;
    if (on) this.watcher.start();
    else this.watcher.stop();
  }

  /** Stops (false) or resumes (true) reading the back-end channel: its messages then pile up in the kernel. */
  setBackendReading(on: boolean): void {
    if (on) this.backend?.watcher.start();
    else this.backend?.watcher.stop();
  }

  /** Sends bytes as they are, fds attached to the first byte (for malformed-message tests). */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    if (this.isClosed) throw this.closeError ?? new Error('front-end is closed');
    native.sendMsg(this.fd, bytes, fds, this.timeoutMs);
  }

  /**
   * Waits for the next reply. With `request`, it must be the reply to that
   * request. Rejects on timeout or when the back-end disconnects.
   */
  recvReply(request?: number, timeoutMs: number = this.timeoutMs, keepFds = false): Promise<Message> {
    const check = (m: Message): Message => {
      if (request !== undefined && m.request !== request) {
        for (const f of m.fds) native.closeFd(f);
        throw new Error(`expected a reply to ${requestName(request)} but got one to ${requestName(m.request)}`);
      }
      // Only GET_INFLIGHT_FD's reply carries an fd: the caller asked for it.
      if (!keepFds) for (const f of m.fds.splice(0)) native.closeFd(f);
      return m;
    };
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve().then(() => check(queued));
    if (this.isClosed) return Promise.reject(this.closeError ?? new Error('front-end is closed'));
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.findIndex((w) => w.timer === timer);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`no reply${request !== undefined ? ` to ${requestName(request)}` : ''} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push({ resolve, reject, timer });
    }).then(check);
  }

  /** Sends a request that has a reply of its own and returns the reply. */
  async call(request: number, payload?: Uint8Array, fds: number[] = []): Promise<Message> {
    this.send(request, payload, fds);
    return this.recvReply(request);
  }

  /** GET_* with a u64 reply. */
  async getU64(request: number): Promise<bigint> {
    const m = await this.call(request);
    if (m.size !== 8) throw new Error(`${requestName(request)} reply has ${m.size} payload bytes, expected 8`);
    return m.payload.readBigUInt64LE(0);
  }

  /**
   * Sends a request without a reply of its own. When `wait` (or needReplyAll)
   * and REPLY_ACK is negotiated, sets NEED_REPLY and throws if the back-end
   * acks failure; when `wait` without REPLY_ACK, syncs with GET_FEATURES as
   * QEMU does.
   */
  async command(request: number, payload?: Uint8Array, fds: number[] = [], wait = false): Promise<void> {
    const ack = this.has(ProtocolFeature.REPLY_ACK);
    if ((wait || this.needReplyAll) && ack) {
      this.send(request, payload, fds, { needReply: true });
      const m = await this.recvReply(request);
      if (m.size !== 8) throw new Error(`${requestName(request)} REPLY_ACK has ${m.size} payload bytes, expected 8`);
      const v = m.payload.readBigUInt64LE(0);
      if (v !== 0n) throw new Error(`back-end refused ${requestName(request)} (ack ${v})`);
      return;
    }
    this.send(request, payload, fds);
    if (wait) await this.getU64(Request.GET_FEATURES);
  }

  /** Whether a protocol feature was negotiated. */
  has(bit: number): boolean {
    return (this.protocolFeatures & featureBit(bit)) !== 0n;
  }

  /** Whether a virtio feature was acked. */
  hasFeature(bit: number): boolean {
    return (this.features & featureBit(bit)) !== 0n;
  }

  // ------------------------------------------------------------ high level

  /** Runs the QEMU 7.2 vhost-user-blk start-up sequence and starts the queues. */
  async setup(opts: SetupOptions = {}): Promise<void> {
    const nq = opts.queues ?? 1;
    const qsize = opts.queueSize ?? 128;
    const qemuInit = opts.qemuInitNotifiers ?? true;

    this.offeredFeatures = await this.getU64(Request.GET_FEATURES);
    const protocolBit = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
    if (this.offeredFeatures & protocolBit) {
      this.offeredProtocolFeatures = await this.getU64(Request.GET_PROTOCOL_FEATURES);
      let accept = opts.protocolFeatures ?? DEFAULT_PROTOCOL_FEATURES;
      if (opts.inflight === false) accept &= ~featureBit(ProtocolFeature.INFLIGHT_SHMFD);
      this.protocolFeatures = this.offeredProtocolFeatures & accept;
      this.send(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(this.protocolFeatures));
    }
    this.needReplyAll = (opts.needReplyAll ?? false) && this.has(ProtocolFeature.REPLY_ACK);
    if (this.has(ProtocolFeature.MQ)) {
      this.maxQueues = Number(await this.getU64(Request.GET_QUEUE_NUM));
    }
    if (nq > this.maxQueues) throw new Error(`back-end supports ${this.maxQueues} queues, ${nq} wanted`);
    if (this.has(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      this.maxMemSlots = Number(await this.getU64(Request.GET_MAX_MEM_SLOTS));
    }
    if (this.has(ProtocolFeature.BACKEND_REQ)) await this.setupBackendChannel();

    await this.command(Request.SET_OWNER);
    // vhost_dev_init asks again after SET_OWNER; the answer must not change.
    const again = await this.getU64(Request.GET_FEATURES);
    if (again !== this.offeredFeatures)
      throw new Error(`GET_FEATURES changed from 0x${this.offeredFeatures.toString(16)} to 0x${again.toString(16)}`);

    if (qemuInit) {
      for (let q = 0; q < nq; q++) {
        // QEMU's vhost_virtqueue_init: the masked call notifier, then the error notifier.
        await this.command(Request.SET_VRING_CALL, encodeVringFilePayload(q, false), [this.own(native.eventfdCreate())]);
        await this.command(Request.SET_VRING_ERR, encodeVringFilePayload(q, false), [this.own(native.eventfdCreate())]);
      }
    }

    if (this.has(ProtocolFeature.CONFIG)) this.config = await this.readConfig(opts.configSize ?? BLK_CONFIG_SIZE);

    let want = opts.features ?? DEFAULT_BLK_FEATURES;
    want = this.pickRingFeature(want, VirtioFeature.RING_EVENT_IDX, opts.eventIdx, 'EVENT_IDX');
    want = this.pickRingFeature(want, VirtioFeature.RING_INDIRECT_DESC, opts.indirect, 'INDIRECT_DESC');
    if (nq > 1) want |= featureBit(VirtioFeature.BLK_MQ);
    this.features = (this.offeredFeatures & want) | (this.offeredFeatures & protocolBit);
    if (!this.hasFeature(VirtioFeature.VERSION_1)) throw new Error('back-end does not offer VIRTIO_F_VERSION_1');
    if (nq > 1 && !this.hasFeature(VirtioFeature.BLK_MQ)) throw new Error('back-end does not offer VIRTIO_BLK_F_MQ');
    await this.command(Request.SET_FEATURES, encodeU64Payload(this.features));
    if (this.has(ProtocolFeature.STATUS)) await this.addStatus(DeviceStatus.FEATURES_OK);
    if (this.has(ProtocolFeature.INFLIGHT_SHMFD) && opts.inflight !== false) await this.startInflight(opts.inflight, nq, qsize);

    this.guest = opts.guest;
    this.mem = this.guest?.mem ?? GuestMemory.create(opts.memory);
    if (this.guest) this.guest.mem = this.mem;
    await this.sendMemoryTable(opts.memTable ?? 'auto');

    const eventIdx = this.hasFeature(VirtioFeature.RING_EVENT_IDX);
    for (let i = 0; i < nq; i++) {
      const reused = this.guest?.rings[i];
      if (reused && (reused.size !== qsize || reused.eventIdx !== eventIdx))
        throw new Error(`guest ring ${i} does not match queueSize/EVENT_IDX`);
      const ring = reused ?? new SplitRing<Completion>(this.mem, { size: qsize, eventIdx });
      if (this.guest && !reused) this.guest.rings[i] = ring;
      const q: QueueState = {
        index: i,
        ring,
        kickFd: this.own(native.eventfdCreate()),
        callFd: this.own(native.eventfdCreate()),
        watcher: undefined,
        kicks: 0,
        calls: 0,
      };
      this.queues.push(q);
      q.watcher = new native.FdWatcher(q.callFd, () => this.onCall(q));
      q.watcher.start();
    }
    await this.startRings(this.queues.map((q) => opts.vringBases?.[q.index] ?? (this.guest ? q.ring.usedIdx() : 0)));
  }

  /**
   * Starts the rings again on this connection, as QEMU's vhost_dev_start
   * after a stop() (and RESET_DEVICE): SET_FEATURES, the inflight region,
   * every ring from `bases`, enable, DRIVER_OK.
   */
  async restart(bases: number[]): Promise<void> {
    await this.command(Request.SET_FEATURES, encodeU64Payload(this.features));
    if (this.has(ProtocolFeature.STATUS)) await this.addStatus(DeviceStatus.FEATURES_OK);
    if (this.inflight) await this.setInflightFd(this.inflight);
    await this.startRings(bases);
  }

  private async startRings(bases: number[]): Promise<void> {
    const mem = this.mem!; // setup() made it
    for (const q of this.queues) {
      const i = q.index;
      await this.command(Request.SET_VRING_NUM, encodeVringStatePayload(i, q.ring.size));
      await this.command(Request.SET_VRING_BASE, encodeVringStatePayload(i, bases[i] ?? 0));
      await this.command(
        Request.SET_VRING_ADDR,
        encodeVringAddrPayload({
          index: i,
          desc: mem.gpaToUva(q.ring.descGpa),
          used: mem.gpaToUva(q.ring.usedGpa),
          avail: mem.gpaToUva(q.ring.availGpa),
          log: q.ring.usedGpa,
        }),
      );
      await this.command(Request.SET_VRING_KICK, encodeVringFilePayload(i, false), [q.kickFd]);
      await this.command(Request.SET_VRING_CALL, encodeVringFilePayload(i, false), [q.callFd]);
    }
    if (this.offeredFeatures & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) {
      for (const q of this.queues) await this.command(Request.SET_VRING_ENABLE, encodeVringStatePayload(q.index, 1), [], true);
    }
    if (this.has(ProtocolFeature.STATUS)) {
      await this.addStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.DRIVER_OK);
    }
    // Completions a new backend made while the rings were being set up (resubmitted requests).
    for (const q of this.queues) this.drain(q);
  }

  /** QEMU 7.2's vhost_user_add_status: GET_STATUS, then SET_STATUS with bits added. */
  async addStatus(bits: number): Promise<void> {
    const now = Number(await this.getU64(Request.GET_STATUS));
    await this.command(Request.SET_STATUS, encodeU64Payload(now | bits));
  }

  /**
   * Stops the device as QEMU 7.2's vhost_dev_stop: SET_STATUS 0 (with
   * STATUS), then GET_VRING_BASE for each queue. Returns the bases.
   */
  async stop(): Promise<number[]> {
    if (this.has(ProtocolFeature.STATUS)) await this.command(Request.SET_STATUS, encodeU64Payload(0));
    const bases: number[] = [];
    for (const q of this.queues) bases.push(await this.getVringBase(q.index));
    return bases;
  }

  /** GET_INFLIGHT_FD; the reply's fd is the caller's. */
  async getInflightFd(
    numQueues: number,
    queueSize: number,
  ): Promise<{ fd: number; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }> {
    this.send(Request.GET_INFLIGHT_FD, encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues, queueSize }));
    const m = await this.recvReply(Request.GET_INFLIGHT_FD, this.timeoutMs, true);
    const fd = m.fds.shift();
    for (const f of m.fds) native.closeFd(f);
    if (fd === undefined) throw new Error('GET_INFLIGHT_FD reply carries no fd');
    if (m.size !== 24) {
      native.closeFd(fd);
      throw new Error(`GET_INFLIGHT_FD reply has ${m.size} payload bytes, expected 24`);
    }
    const p = m.payload;
    return {
      fd,
      mmapSize: Number(p.readBigUInt64LE(0)),
      mmapOffset: Number(p.readBigUInt64LE(8)),
      numQueues: p.readUInt16LE(16),
      queueSize: p.readUInt16LE(18),
    };
  }

  /** SET_INFLIGHT_FD with the region's fields (or forged ones) and fd. */
  async setInflightFd(
    r: { fd: number; mmapSize: number | bigint; mmapOffset: number | bigint; numQueues: number; queueSize: number },
    wait = true,
  ): Promise<void> {
    await this.command(Request.SET_INFLIGHT_FD, encodeInflightPayload(r), r.fd >= 0 ? [r.fd] : [], wait);
  }

  /** QEMU 7.2 vhost_user_blk_start: create the region once, then hand it over. */
  private async startInflight(region: InflightRegion | undefined, nq: number, qsize: number): Promise<void> {
    this.ownInflight = region === undefined;
    const r = region ?? new InflightRegion();
    this.inflight = r;
    if (!r.created) {
      const got = await this.getInflightFd(nq, qsize);
      try {
        r.adopt(got);
      } catch (err) {
        native.closeFd(got.fd);
        throw err;
      }
    }
    await this.setInflightFd(r);
  }

  /** GET_CONFIG of `size` bytes at offset 0; returns the config bytes. */
  async readConfig(size: number = BLK_CONFIG_SIZE): Promise<Buffer> {
    const m = await this.call(Request.GET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(size)));
    if (m.size !== CONFIG_HDR_SIZE + size)
      throw new Error(`GET_CONFIG reply has ${m.size} payload bytes, expected ${CONFIG_HDR_SIZE + size}`);
    return Buffer.from(m.payload.subarray(CONFIG_HDR_SIZE));
  }

  /** GET_VRING_BASE: stops queue q in the back-end and returns its last avail idx. */
  async getVringBase(q: number, timeoutMs: number = this.timeoutMs): Promise<number> {
    this.send(Request.GET_VRING_BASE, encodeVringStatePayload(q, 0));
    const m = await this.recvReply(Request.GET_VRING_BASE, timeoutMs);
    if (m.size !== 8) throw new Error(`GET_VRING_BASE reply has ${m.size} payload bytes, expected 8`);
    const index = m.payload.readUInt32LE(0);
    if (index !== q) throw new Error(`GET_VRING_BASE reply is for queue ${index}, expected ${q}`);
    return m.payload.readUInt32LE(4);
  }

  // ------------------------------------------------------------ data plane

  /** Queue state for q (throws if setup did not create it). */
  queue(q: number): QueueState {
    const s = this.queues[q];
    if (!s) throw new RangeError(`no queue ${q}`);
    return s;
  }

  /**
   * Adds a chain to queue q without publishing it; the promise resolves with
   * the used length when the back-end returns it. Call flush(q) (or use
   * submit) to publish and kick.
   */
  enqueue(q: number, segs: readonly RingSeg[], opts: { indirect?: boolean } = {}): Promise<number> {
    const s = this.queue(q);
    if (this.isClosed) return Promise.reject(this.closeError ?? new Error('front-end is closed'));
    return new Promise<number>((resolve, reject) => {
      s.ring.add(segs, { resolve, reject }, opts);
    });
  }

  /** Publishes what was enqueued on q and kicks if the ring says so. Returns whether it kicked. */
  flush(q: number): boolean {
    const s = this.queue(q);
    if (this.isClosed || !s.ring.publish()) return false;
    s.kicks++;
    native.eventfdWrite(s.kickFd, 1);
    return true;
  }

  /** enqueue + flush for one chain. */
  submit(q: number, segs: readonly RingSeg[], opts: { indirect?: boolean } = {}): Promise<number> {
    const p = this.enqueue(q, segs, opts);
    this.flush(q);
    return p;
  }

  /** Kicks q unconditionally (e.g. after raw ring writes). */
  kick(q: number): void {
    const s = this.queue(q);
    if (this.isClosed) throw this.closeError ?? new Error('front-end is closed');
    s.kicks++;
    native.eventfdWrite(s.kickFd, 1);
  }

  /** Drains q's used ring now (also done on every call notification). */
  poll(q: number): number {
    return this.drain(this.queue(q));
  }

  /** Closes everything the front-end owns. Pending replies and I/O are rejected. */
  close(): void {
    this.shutdown(new Error('front-end closed'));
  }

  // ------------------------------------------------------------ internals

  private pickRingFeature(want: bigint, bit: number, opt: boolean | undefined, name: string): bigint {
    const m = featureBit(bit);
    if (opt === false) return want & ~m;
    if (opt === true && !(this.offeredFeatures & m)) throw new Error(`back-end does not offer VIRTIO_RING_F_${name}`);
    return want | m;
  }

  private async sendMemoryTable(mode: 'set-mem-table' | 'add-mem-reg' | 'auto'): Promise<void> {
    const mem = this.mem!; // created just before
    const slots = this.has(ProtocolFeature.CONFIGURE_MEM_SLOTS);
    const useAdd = mode === 'add-mem-reg' || (mode === 'auto' && slots);
    if (useAdd) {
      if (!slots) throw new Error('ADD_MEM_REG needs CONFIGURE_MEM_SLOTS');
      if (mem.regions.length > this.maxMemSlots) throw new Error(`back-end allows ${this.maxMemSlots} memory slots`);
      for (const r of mem.regions) {
        await this.command(Request.ADD_MEM_REG, encodeMemRegPayload(r), [r.fd], true);
      }
      return;
    }
    if (mem.regions.length > MEMORY_BASELINE_NREGIONS) throw new Error('SET_MEM_TABLE carries at most 8 regions');
    await this.command(
      Request.SET_MEM_TABLE,
      encodeMemTablePayload(mem.regions),
      mem.regions.map((r) => r.fd),
      true,
    );
  }

  /**
   * The back-end channel: QEMU uses a socketpair; the native binding has
   * none, so a private listening socket yields a connected pair.
   */
  private async setupBackendChannel(): Promise<void> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-fe-'));
    const sockPath = path.join(dir, 'backend.sock');
    const lfd = native.listenUnix(sockPath, 1);
    let ours = -1;
    let theirs = -1;
    try {
      theirs = native.connectUnix(sockPath);
      for (let i = 0; i < 100 && ours < 0; i++) {
        ours = native.acceptUnix(lfd);
        if (ours < 0) await new Promise((r) => setTimeout(r, 1));
      }
      if (ours < 0) throw new Error('back-end channel: accept did not complete');
    } finally {
      native.closeFd(lfd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const fd = this.own(ours);
    const reader = new MessageReader({
      recv: (buf, off, len, maxFds) => native.recvMsg(fd, buf, off, len, maxFds),
      closeFd: (f) => native.closeFd(f),
    });
    const watcher = new native.FdWatcher(fd, () => this.onBackendReadable());
    this.backend = { fd, watcher, reader };
    watcher.start();
    try {
      await this.command(Request.SET_BACKEND_REQ_FD, Buffer.alloc(0), [theirs], true);
    } finally {
      native.closeFd(theirs); // the back-end has its own copy now
    }
  }

  private onBackendReadable(): void {
    const b = this.backend;
    if (!b) return;
    for (;;) {
      let m: Message | 'again' | 'eof';
      try {
        m = b.reader.read();
      } catch {
        m = 'eof';
      }
      if (m === 'again') return;
      if (m === 'eof') {
        b.watcher.close();
        this.backend = undefined;
        return;
      }
      for (const f of m.fds) native.closeFd(f);
      const known = m.request === BackendRequest.CONFIG_CHANGE_MSG;
      if (known) this.configChanges++;
      if (needsReply(m)) native.sendMsg(b.fd, encodeAck(m.request, known), [], this.timeoutMs);
    }
  }

  private onSocketReadable(): void {
    for (;;) {
      let m: Message | 'again' | 'eof';
      try {
        m = this.reader.read();
      } catch (err) {
        this.shutdown(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      if (m === 'again') return;
      if (m === 'eof') {
        this.shutdown(new Error('back-end closed the connection'));
        return;
      }
      const w = this.waiters.shift();
      if (w) {
        clearTimeout(w.timer);
        w.resolve(m);
      } else {
        this.inbox.push(m);
      }
    }
  }

  private onCall(q: QueueState): void {
    native.eventfdRead(q.callFd); // 0 on a spurious wake-up; drain anyway
    q.calls++;
    try {
      this.drain(q);
    } catch (err) {
      this.shutdown(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private drain(q: QueueState): number {
    return q.ring.drainUsed((e) => e.token.resolve(e.len));
  }

  private own(fd: number): number {
    this.ownedFds.push(fd);
    return fd;
  }

  private shutdown(err: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    this.watcher.close();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    for (const q of this.queues) {
      q.watcher?.close();
      q.watcher = undefined;
    }
    if (this.backend) {
      this.backend.watcher.close();
      this.backend.reader.discard();
      this.backend = undefined;
    }
    this.reader.discard();
    for (const m of this.inbox.splice(0)) for (const f of m.fds) native.closeFd(f);
    native.closeFd(this.fd);
    for (const fd of this.ownedFds.splice(0)) native.closeFd(fd);
    if (this.ownInflight) this.inflight?.close();
    // Chains still in flight will never complete: reject them; unless the
    // guest outlives us (its next connection may complete them).
    if (!this.guest) {
      for (const q of this.queues) for (const c of q.ring.abandonAll()) c.reject(err);
      this.mem?.close();
    }
    this.resolveClosed();
  }

  /** For tests: waits for the back-end to disconnect, failing after timeoutMs. */
  async waitClosed(timeoutMs: number = this.timeoutMs): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closed,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`back-end did not disconnect within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }
}
