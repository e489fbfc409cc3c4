// An in-repo vhost-user front-end: plays QEMU (the vhost-user master) and
// the guest's virtio driver over a real Unix socket, for `vublk bench`,
// integration tests and benchmarks. It speaks to any vhost-user-blk back-end
// (vublk, qemu-storage-daemon, SPDK).
//
// Theory of operation:
// - Control plane: FrontendConnection (connection.ts) sends messages and
//   matches replies; this class runs QEMU 7.2's start-up sequence on it.
// - Guest memory: GuestMemory (memfds mapped into JS); the back-end gets the
//   memfds through SET_MEM_TABLE or ADD_MEM_REG.
// - Data plane: one SplitRing per queue, a kick eventfd the front-end writes
//   and a call eventfd it watches (native.FdWatcher); on a call the used
//   ring is drained and each chain's promise resolved. `vublk bench` takes
//   the call over (handleCalls) or stops watching it and busy-polls.
// - Ownership: the front-end owns every fd it creates (socket, memfds,
//   eventfds, the back-end channel) and closes them all in close(). fds sent
//   to the back-end are duplicated by the kernel; ours stay ours.
// - When the back-end disconnects, every pending reply and I/O is rejected
//   and `closed` resolves; unless the guest (memory and rings) was passed in
//   as a GuestState: then it outlives the connection as QEMU's does, chains
//   in flight stay pending, and the next Frontend set up with the same
//   GuestState (and InflightRegion) picks them up, as QEMU after a backend
//   restart (reconnect=1).

import { native, type FdWatcher } from '../native/binding';
import { encodeConfigPayload, encodeInflightPayload, encodeU64Payload, encodeVringStatePayload } from '../vhost-user/encode';
import { encodeMemRegPayload, encodeMemTablePayload, encodeVringAddrPayload, encodeVringFilePayload } from './encode';
import { CONFIG_HDR_SIZE, MEMORY_BASELINE_NREGIONS, ProtocolFeature, Request, featureBit } from '../vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../virtio/constants';
import { DeviceStatus } from '../vhost-user/device-status';
import { GuestMemory } from './guest-memory';
import { SplitRing, type RingSeg } from './split-ring';
import { InflightRegion } from './inflight-region';
import { BackendChannel } from './backend-channel';
import { DEFAULT_TIMEOUT_MS, FrontendConnection, connectSocket } from './connection';
import { BLK_CONFIG_SIZE, DEFAULT_BLK_FEATURES, DEFAULT_PROTOCOL_FEATURES, VirtioFeature } from './features';
import type { Completion, GuestState } from './guest-state';
import type { SetupOptions } from './setup-options';

export interface QueueState {
  index: number;
  ring: SplitRing<Completion>;
  kickFd: number;
  callFd: number;
  watcher: FdWatcher | undefined;
  kicks: number;
  calls: number;
}

export class Frontend extends FrontendConnection {
  maxQueues = 1;
  maxMemSlots = MEMORY_BASELINE_NREGIONS;
  /** Config space read during setup (GET_CONFIG), if CONFIG was negotiated. */
  config: Buffer | undefined;
  mem: GuestMemory | undefined;
  readonly queues: QueueState[] = [];
  /** The inflight region in use (after setup, if INFLIGHT_SHMFD was negotiated). */
  inflight: InflightRegion | undefined;

  protected backend: BackendChannel | undefined;
  private guest: GuestState | undefined;
  private ownInflight = false;

  /**
   * Connects to a back-end's socket, retrying while it does not exist or
   * refuses (up to connectTimeoutMs, default timeoutMs, the reply timeout).
   */
  static async connect(socketPath: string, opts: { timeoutMs?: number; connectTimeoutMs?: number } = {}): Promise<Frontend> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Frontend(await connectSocket(socketPath, opts.connectTimeoutMs ?? timeoutMs), timeoutMs);
  }

  /** CONFIG_CHANGE_MSG notifications received on the back-end channel. */
  get configChanges(): number {
    return this.backend?.configChanges ?? 0;
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
    if (!this.isOpen) return Promise.reject(this.closedError);
    return new Promise<number>((resolve, reject) => {
      s.ring.add(segs, { resolve, reject }, opts);
    });
  }

  /** Publishes what was enqueued on q and kicks if the ring says so. Returns whether it kicked. */
  flush(q: number): boolean {
    const s = this.queue(q);
    if (!this.isOpen || !s.ring.publish()) return false;
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

  /** Kicks sent on q so far (flush() leaves a kick out when the device suppressed it). */
  kicksSent(q: number): number {
    return this.queue(q).kicks;
  }

  /** Kicks q unconditionally (e.g. after raw ring writes). */
  kick(q: number): void {
    const s = this.queue(q);
    if (!this.isOpen) throw this.closedError;
    s.kicks++;
    native.eventfdWrite(s.kickFd, 1);
  }

  /**
   * Takes over q's call notifications: onCall runs on each one (after the
   * eventfd is read) in place of the built-in drain; undefined stops
   * watching the call eventfd (a driver that busy-polls the used ring).
   */
  handleCalls(q: number, onCall: (() => void) | undefined): void {
    const s = this.queue(q);
    s.watcher?.close();
    s.watcher = undefined;
    if (!onCall) return;
    s.watcher = new native.FdWatcher(s.callFd, () => {
      native.eventfdRead(s.callFd); // 0 on a spurious wake-up
      s.calls++;
      onCall();
    });
    s.watcher.start();
  }

  /** Counts (in calls) the notifications on q's call eventfd that nobody has read; returns how many. */
  takeCalls(q: number): number {
    const s = this.queue(q);
    const n = native.eventfdRead(s.callFd); // non-blocking: 0 when none
    s.calls += n;
    return n;
  }

  /** Drains q's used ring now (also done on every call notification). */
  poll(q: number): number {
    return this.drain(this.queue(q));
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

  /** Opens the back-end channel and hands its other end over with SET_BACKEND_REQ_FD. */
  private async setupBackendChannel(): Promise<void> {
    const { channel, theirs } = await BackendChannel.open(this.timeoutMs);
    this.backend = channel;
    try {
      await this.command(Request.SET_BACKEND_REQ_FD, Buffer.alloc(0), [theirs], true);
    } finally {
      native.closeFd(theirs); // the back-end has its own copy now
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

  protected override onShutdown(err: Error): void {
    for (const q of this.queues) {
      q.watcher?.close();
      q.watcher = undefined;
    }
    this.backend?.close();
    if (this.ownInflight) this.inflight?.close();
    // Chains still in flight will never complete: reject them; unless the
    // guest outlives us (its next connection may complete them).
    if (!this.guest) {
      for (const q of this.queues) for (const c of q.ring.abandonAll()) c.reject(err);
      this.mem?.close();
    }
  }
}
