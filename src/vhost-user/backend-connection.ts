// One frontend connection, backend side: reads vhost-user messages, runs one
// handler per message (named after it), and owns the connection's data plane
// (a native Session plus the virtio-blk handler).
//
// Lifecycle:
//   open -> messages ... -> close(reason)
//   close: stop reading, pause every ring, wait for in-flight I/O to drain,
//          destroy the session (unmaps memory, closes eventfds), close the
//          socket, then report `closed` to the server.
// `broken` is sticky: once a rule is broken (logged once) nothing more is
// read from this frontend.

import { native, type Session } from '../native/binding';
import { BlkHandler } from '../blk/blk-handler';
import { DEFAULT_BOUNCE_BYTES, allocateArrays, type SessionArrays } from '../blk/shared-arrays';
import type { BlkDevice } from '../device/blk-device';
import { log } from '../log';
import { background } from '../background';
import { ProtocolViolation } from '../errors';
import { MessageReader } from './message-reader';
import { FrontendChannel } from './frontend-channel';
import { BackendChannel } from './backend-channel';
import { FixedBufferPolicy } from './fixed-buffers';
import {
  type Message,
  type MemRegionWithFd,
  decodeAddMemReg,
  decodeBackendReqFd,
  decodeConfig,
  decodeEmpty,
  decodeGetInflight,
  decodeMemTable,
  decodeRemMemReg,
  decodeSetInflight,
  decodeStatus,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  needsReply,
} from './message';
import { encodeConfigReply, encodeU64Reply, encodeVringStateReply } from './encode';
import {
  MAX_MEM_SLOTS,
  ProtocolFeature,
  Request,
  featureBit,
  hasReply,
  requestName,
} from './protocol';
import { violation } from './violation';
import { checkRingSize } from './vring-rules';
import { withUringEntries, wantedUringEntries } from './uring-entries';
import { checkNotifierFd } from './notifier-fd';
import { drainTimeoutMs, settlesWithin, waitForNativeWork } from './drain';
import { checkSetInflight, createInflight } from './inflight';
import { DeviceStatusByte } from './device-status';
import { HostErrorLog } from './host-error-log';
import {
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  hasFeature,
} from '../virtio/constants';

/** How long a closing connection waits for in-flight requests before it abandons them. */
const DRAIN_TIMEOUT_MS = drainTimeoutMs();

type Handler = (msg: Message) => void | Promise<void>;

/** A handler's wait ended after the connection began closing: it stops there, silently. */
class ConnectionClosing extends Error {}

export class BackendConnection {
  readonly id: number;
  private readonly channel: FrontendChannel;
  private readonly reader: MessageReader;
  private readonly arrays: SessionArrays;
  private readonly handler: BlkHandler;
  private readonly session: Session;
  private readonly handlers: Map<number, Handler>;
  private ackedFeatures = 0n;
  private featuresSet = false;
  private ackedProtocolFeatures = 0n;
  private readonly backendChannel: BackendChannel;
  private readonly unwatchCapacity: () => void;
  private busy = false;
  /** The message being handled was refused without breaking the connection. */
  private refused = false;
  private readonly fixedBuffers: FixedBufferPolicy;
  private readonly status: DeviceStatusByte;
  private readonly hostErrors: HostErrorLog;
  private closing: Promise<void> | undefined;
  /** The daemon is exiting: close() stops waiting for native I/O. */
  private exiting = false;
  broken = false;

  constructor(
    private fd: number,
    id: number,
    private readonly device: BlkDevice,
    private readonly onClosed: (conn: BackendConnection) => void,
  ) {
    this.id = id;
    this.status = new DeviceStatusByte(id);
    this.hostErrors = new HostErrorLog(id, () => this.broken);
    this.reader = new MessageReader({
      recv: (buf, off, len, maxFds) => native.recvMsg(this.fd, buf, off, len, maxFds),
      closeFd: (f) => native.closeFd(f),
    });
    this.fixedBuffers = new FixedBufferPolicy({ enabled: device.fixedBuffers, maxPinnedBytes: device.maxPinnedBytes, conn: id });
    this.arrays = allocateArrays(device.maxQueueSize);
    this.handler = new BlkHandler(this.arrays, {
      queues: device.queues,
      maxQueueSize: device.maxQueueSize,
      disk: device.blkDisk,
      serial: device.serial,
      writeback: () => device.writeback(),
      onViolation: (q, rule) => this.breakConnection(`queue ${q}: ${rule}`),
      bounceBytes: DEFAULT_BOUNCE_BYTES,
      rules: device.rules,
      onFatal: (message) => this.breakConnection(message),
      onHostError: (res, type, offset) => this.hostErrors.report(res, type, offset),
    });
    // Native calls these from the event loop: nothing may escape them, or a
    // bug on one connection would take the daemon down.
    const callbacks = {
      onChains: (q: number, n: number) => this.guard(() => this.handler.onChains(q, n)),
      onCompletions: (n: number) => this.guard(() => this.handler.onCompletions(n)),
      onViolation: (q: number, rule: string) => this.breakConnection(q < 0 ? rule : `queue ${q}: ${rule}`),
    };
    this.session = withUringEntries(wantedUringEntries(device.queues, device.maxQueueSize), id, (entries) =>
      new native.Session(device.queues, device.maxQueueSize, device.disk.fd, entries, DEFAULT_BOUNCE_BYTES, this.arrays, callbacks,
        device.disk.sizeBytes, device.disk.kind === 'block'));
    const session = this.session;
    this.handler.attach({
      submit: (n) => {
        try {
          return session.submit(n);
        } catch (err) {
          log.error('io_uring submission failed', { conn: this.id, error: err as Error });
          throw err;
        }
      },
      pushUsed: (q, n) => {
        // A ring stopped under in-flight requests cannot take used entries:
        // that is the frontend's doing (it reset the ring), not a crash.
        try {
          session.pushUsed(q, n);
        } catch (err) {
          this.breakConnection(`queue ${q}: cannot complete requests: ${(err as Error).message}`);
        }
      },
      writeGuest: (bufId, off, data) => session.writeGuest(bufId, off, data),
      copy: (n) => session.copy(n),
      readGuest: (bufId, off, dst) => session.readGuest(bufId, off, dst),
    });
    this.handlers = this.handlerTable();
    // Online resize: ops may reach the new end; the frontend re-reads the config.
    this.backendChannel = new BackendChannel(id);
    this.unwatchCapacity = device.onCapacityChange((bytes) => {
      session.growDisk(bytes);
      this.backendChannel.configChanged(this.ackedProtocolFeatures);
    });
    this.channel = new FrontendChannel(fd, {
      readable: () => this.pump(),
      // Nobody is left to take the reply the handler works towards.
      hungUp: () => this.closeSoon('frontend disconnected'),
      sendFailed: (err) => this.closeSoon(`cannot send reply: ${describe(err)}`),
      notReading: (rule) => this.breakConnection(rule),
    });
    device.stats.opened(this.handler, this.session);
  }

  // ------------------------------------------------------------ messages

  private handlerTable(): Map<number, Handler> {
    const h = new Map<number, Handler>();
    h.set(Request.GET_FEATURES, (m) => this.getFeatures(m));
    h.set(Request.SET_FEATURES, (m) => this.setFeatures(m));
    h.set(Request.GET_PROTOCOL_FEATURES, (m) => this.getProtocolFeatures(m));
    h.set(Request.SET_PROTOCOL_FEATURES, (m) => this.setProtocolFeatures(m));
    h.set(Request.SET_OWNER, (m) => decodeEmpty(m));
    h.set(Request.RESET_OWNER, (m) => this.resetOwner(m));
    h.set(Request.SET_MEM_TABLE, (m) => this.setMemTable(m));
    h.set(Request.GET_MAX_MEM_SLOTS, (m) => this.getMaxMemSlots(m));
    h.set(Request.ADD_MEM_REG, (m) => this.addMemReg(m));
    h.set(Request.REM_MEM_REG, (m) => this.remMemReg(m));
    h.set(Request.SET_VRING_NUM, (m) => this.setVringNum(m));
    h.set(Request.SET_VRING_ADDR, (m) => this.setVringAddr(m));
    h.set(Request.SET_VRING_BASE, (m) => this.setVringBase(m));
    h.set(Request.GET_VRING_BASE, (m) => this.getVringBase(m));
    h.set(Request.SET_VRING_KICK, (m) => this.setVringKick(m));
    h.set(Request.SET_VRING_CALL, (m) => this.setVringCall(m));
    h.set(Request.SET_VRING_ERR, (m) => this.setVringErr(m));
    h.set(Request.SET_VRING_ENABLE, (m) => this.setVringEnable(m));
    h.set(Request.GET_QUEUE_NUM, (m) => this.getQueueNum(m));
    h.set(Request.GET_CONFIG, (m) => this.getConfig(m));
    h.set(Request.SET_CONFIG, (m) => this.setConfig(m));
    h.set(Request.SET_BACKEND_REQ_FD, (m) => this.setBackendReqFd(m));
    h.set(Request.GET_INFLIGHT_FD, (m) => this.getInflightFd(m));
    h.set(Request.SET_INFLIGHT_FD, (m) => this.setInflightFd(m));
    h.set(Request.RESET_DEVICE, (m) => this.resetDevice(m));
    h.set(Request.SET_STATUS, (m) => this.setStatus(m));
    h.set(Request.GET_STATUS, (m) => this.getStatus(m));
    return h;
  }

  /** Reads and handles messages until the socket would block or a handler waits. */
  private pump(): void {
    if (this.busy || this.broken || this.closing) return;
    for (;;) {
      let msg: Message | 'again' | 'eof';
      try {
        msg = this.reader.read();
      } catch (err) {
        this.breakConnection(describe(err));
        return;
      }
      if (msg === 'again') return;
      if (msg === 'eof') {
        this.closeSoon('frontend disconnected');
        return;
      }
      let result: void | Promise<void>;
      try {
        result = this.dispatch(msg);
      } catch (err) {
        closeAll(msg.fds);
        this.breakConnection(ruleFor(msg.request, err));
        return;
      }
      if (result instanceof Promise) {
        // Wait (e.g. for in-flight I/O to drain); the frontend waits for our reply.
        this.busy = true;
        this.channel.setWaiting(true);
        const m = msg;
        const done = result.then(
          () => {
            this.busy = false;
            closeAll(m.fds); // whatever the handler did not hand on
            if (this.broken || this.closing) return;
            this.ack(m);
            if (this.closing) return;
            this.channel.setWaiting(false);
            this.pump();
          },
          (err: unknown) => {
            this.busy = false;
            closeAll(m.fds);
            if (err instanceof ConnectionClosing) return;
            this.breakConnection(ruleFor(m.request, err));
          },
        );
        background(done, 'finishing a message', { conn: this.id, request: requestName(m.request) });
        return;
      }
      this.ack(msg);
      if (this.broken || this.closing) return;
    }
  }

  private dispatch(msg: Message): void | Promise<void> {
    const handle = this.handlers.get(msg.request);
    if (handle === undefined) throw violation(`unknown or unsupported request ${msg.request}`);
    log.debug('message', { conn: this.id, request: requestName(msg.request), size: msg.size, fds: msg.fds.length });
    const result = handle(msg);
    // Whatever fds a handler did not hand on are closed here.
    if (!(result instanceof Promise)) closeAll(msg.fds);
    return result;
  }

  /** REPLY_ACK: a u64 0 for messages that have no reply of their own. */
  private ack(msg: Message): void {
    const refused = this.refused;
    this.refused = false;
    if (!needsReply(msg) || hasReply(msg.request)) return;
    if ((this.ackedProtocolFeatures & featureBit(ProtocolFeature.REPLY_ACK)) === 0n) return;
    this.send(encodeU64Reply(msg.request, refused ? 1 : 0));
  }

  /** Replies never wait on the socket (see FrontendChannel); none after close began. fds: ours, closed once sent. */
  private send(bytes: Uint8Array, fds: number[] = []): void {
    if (this.closing) {
      closeAll(fds);
      return;
    }
    this.channel.send(bytes, fds);
  }

  /**
   * Every await in a message handler goes through here: once it resolves, a
   * connection that began closing meanwhile (close() drains the same I/O and
   * then destroys the session) must not be touched again, so the handler
   * ends with ConnectionClosing, which pump() drops silently.
   */
  private async settled<T>(wait: Promise<T>): Promise<T> {
    const value = await wait;
    if (this.broken || this.closing) throw new ConnectionClosing('connection closing');
    return value;
  }

  private queueIndex(index: number, what: string): number {
    if (index >= this.device.queues) {
      throw violation(`${what} names queue ${index}, but there are ${this.device.queues}`);
    }
    return index;
  }

  // ------------------------------------------------------------ handlers

  private getFeatures(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, this.device.features));
  }

  private setFeatures(msg: Message): void {
    const value = decodeU64(msg);
    const extra = value & ~this.device.features;
    if (extra !== 0n) throw violation(`SET_FEATURES acks features never offered: 0x${extra.toString(16)}`);
    this.ackedFeatures = value;
    this.featuresSet = true;
    this.session.setEventIdx(hasFeature(value, VIRTIO_RING_F_EVENT_IDX));
    this.session.setIndirect(hasFeature(value, VIRTIO_RING_F_INDIRECT_DESC));
    this.handler.setNegotiated(hasFeature(value, VIRTIO_BLK_F_DISCARD), hasFeature(value, VIRTIO_BLK_F_WRITE_ZEROES));
  }

  private getProtocolFeatures(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, this.device.protocolFeatures));
  }

  private setProtocolFeatures(msg: Message): void {
    const value = decodeU64(msg);
    const extra = value & ~this.device.protocolFeatures;
    if (extra !== 0n) throw violation(`SET_PROTOCOL_FEATURES acks features never offered: 0x${extra.toString(16)}`);
    this.ackedProtocolFeatures = value;
  }

  /** Deprecated RESET_OWNER: disables the rings and forgets the features. */
  private async resetOwner(msg: Message): Promise<void> {
    decodeEmpty(msg);
    await this.stopAllRings();
    this.forgetFeatures();
  }

  /** RESET_DEVICE: as RESET_OWNER, and forgets status, inflight region and ring bases; ownership and protocol features stay. */
  private async resetDevice(msg: Message): Promise<void> {
    this.requireProtocolFeature(msg, ProtocolFeature.RESET_DEVICE);
    decodeEmpty(msg);
    await this.stopAllRings();
    this.forgetFeatures();
    this.status.reset();
    this.session.clearInflight();
    for (let q = 0; q < this.device.queues; q++) this.session.setVringBase(q, 0);
  }

  private forgetFeatures(): void {
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.session.setEventIdx(false);
    this.session.setIndirect(false);
    this.handler.setNegotiated(false, false);
  }

  private setStatus(msg: Message): void {
    this.requireProtocolFeature(msg, ProtocolFeature.STATUS);
    this.status.set(decodeStatus(msg), this.featuresSet);
  }

  private getStatus(msg: Message): void {
    this.requireProtocolFeature(msg, ProtocolFeature.STATUS);
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, this.status.get()));
  }

  private getInflightFd(msg: Message): void {
    this.requireProtocolFeature(msg, ProtocolFeature.INFLIGHT_SHMFD);
    const { reply, fd } = createInflight(decodeGetInflight(msg), this.device);
    this.send(reply, [fd]);
  }

  private setInflightFd(msg: Message): void {
    this.requireProtocolFeature(msg, ProtocolFeature.INFLIGHT_SHMFD);
    const r = decodeSetInflight(msg);
    checkSetInflight(this.session, r, this.device);
    msg.fds.length = 0; // setInflight closes it, mapped or not
    this.session.setInflight(r.fd, r.mmapSize, r.mmapOffset, r.numQueues, r.queueSize);
  }

  private getMaxMemSlots(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, MAX_MEM_SLOTS));
  }

  /** Replaces the whole memory table, after I/O on the old one has drained. */
  private async setMemTable(msg: Message): Promise<void> {
    const table = decodeMemTable(msg);
    const running = await this.quiesce();
    try {
      this.session.clearRegions();
      for (let i = 0; i < table.regions.length; i++) {
        const r = table.regions[i]!;
        msg.fds[i] = -1; // addRegion closes it, mapped or not
        this.addRegion(r, `SET_MEM_TABLE region ${i}`);
      }
    } finally {
      closeAll(msg.fds);
    }
    this.registerMemory();
    this.resume(running);
  }

  private async addMemReg(msg: Message): Promise<void> {
    const r = decodeAddMemReg(msg);
    // Fixed buffers are re-registered, so I/O on the old set must drain first.
    // Until addRegion takes the fd, msg.fds owns it (closed if this fails).
    const running = await this.quiesce();
    msg.fds.length = 0; // addRegion closes it, mapped or not
    this.addRegion(r, 'ADD_MEM_REG');
    this.registerMemory();
    this.resume(running);
  }

  /** Registers guest memory as io_uring fixed buffers if the policy allows (see fixed-buffers.ts). Called with I/O drained. */
  private registerMemory(): void {
    this.handler.setRegistered(false);
    this.handler.setRegistered(this.fixedBuffers.apply(this.session.regionBytes(), () => this.session.registerBuffers()));
  }

  /** Logs the per-queue counters, one line per queue. */
  logCounters(reason: string): void {
    this.handler.counters().forEach((c, q) => {
      log.info('counters', { conn: this.id, queue: q, reason, ...c });
    });
  }

  private addRegion(r: MemRegionWithFd, what: string): void {
    let bufId: number;
    try {
      bufId = this.session.addRegion(r.fd, r.gpa, r.size, r.uva, r.mmapOffset);
    } catch (err) {
      throw violation(`${what}: ${describe(err)}`);
    }
    // Our mapping starts page aligned at file offset 0: the region's first
    // byte sits mmap_offset into a page.
    this.handler.setRegionPhase(bufId, r.mmapOffset);
  }

  private async remMemReg(msg: Message): Promise<void> {
    const r = decodeRemMemReg(msg);
    closeAll(msg.fds);
    const running = await this.quiesce();
    this.handler.setRegistered(false);
    if (!this.session.removeRegion(r.gpa, r.size)) {
      throw violation(`REM_MEM_REG names no mapped region (gpa 0x${r.gpa.toString(16)} size ${r.size})`);
    }
    this.registerMemory();
    this.resume(running);
  }

  private setVringNum(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_NUM');
    checkRingSize(s.num, this.device.maxQueueSize);
    // Native checked the ring's addresses for the size it started with.
    if (this.session.vringStarted(q)) throw violation('SET_VRING_NUM on a running ring');
    this.session.setVringNum(q, s.num);
  }

  private setVringAddr(msg: Message): void {
    const a = decodeVringAddr(msg);
    const q = this.queueIndex(a.index, 'SET_VRING_ADDR');
    // QEMU re-sends it on a running ring only to toggle dirty logging, which
    // needs LOG_SHMFD (not offered): otherwise rings move only when stopped.
    if (this.session.vringStarted(q)) throw violation('SET_VRING_ADDR on a running ring');
    this.session.setVringAddr(q, a.desc, a.used, a.avail);
  }

  private setVringBase(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_BASE');
    if (s.num > 0xffff) throw violation(`SET_VRING_BASE ${s.num} does not fit a split ring's 16-bit index`);
    if (this.session.vringStarted(q)) throw violation('SET_VRING_BASE on a running ring');
    this.session.setVringBase(q, s.num);
  }

  /** Stops the ring once its in-flight requests complete; replies with its index. */
  private async getVringBase(msg: Message): Promise<void> {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'GET_VRING_BASE');
    this.session.pauseVring(q, true);
    if (!(await this.settled(settlesWithin(this.handler.whenIdle(q), DRAIN_TIMEOUT_MS)))) {
      log.error(`GET_VRING_BASE: queue ${q} did not drain`, { conn: this.id, inflight: this.handler.inflight(q), timeoutMs: DRAIN_TIMEOUT_MS });
      this.closeSoon('GET_VRING_BASE could not drain the ring');
      throw new ConnectionClosing('no reply: the ring did not drain');
    }
    const base = this.session.stopVring(q);
    this.session.pauseVring(q, false);
    this.send(encodeVringStateReply(msg.request, q, base));
  }

  private setVringKick(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_KICK');
    if (f.fd < 0) throw violation('SET_VRING_KICK without an fd: polling mode is not supported');
    checkNotifierFd('SET_VRING_KICK', f.fd);
    msg.fds.length = 0;
    this.session.setVringKick(q, f.fd);
    // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled when started;
    // with it, SET_VRING_ENABLE decides.
    if (!this.protocolFeaturesAcked()) this.session.setVringEnabled(q, true);
    this.startRing(q, 'SET_VRING_KICK');
  }

  private startRing(q: number, what: string): void {
    let resubmit: number;
    try {
      resubmit = this.session.startVring(q);
    } catch (err) {
      throw violation(`${what}: queue ${q}: ${describe(err)}`);
    }
    if (resubmit < 0) {
      resubmit = -1 - resubmit;
      log.warn('inflight region was behind the ring: re-synchronised, not kept by vublk', { conn: this.id, queue: q, count: resubmit });
    }
    if (resubmit > 0) {
      log.info('resubmitting requests left in flight by an earlier backend', { conn: this.id, queue: q, count: resubmit });
      this.handler.counters()[q]!.resubmitted += resubmit; // q < device.queues: queueIndex checked it
    }
    this.session.pollVring(q);
  }

  private setVringCall(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_CALL');
    if (f.fd >= 0) checkNotifierFd('SET_VRING_CALL', f.fd);
    msg.fds.length = 0;
    this.session.setVringCall(q, f.fd);
  }

  private setVringErr(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_ERR');
    if (f.fd >= 0) checkNotifierFd('SET_VRING_ERR', f.fd);
    msg.fds.length = 0;
    this.session.setVringErr(q, f.fd);
  }

  private setVringEnable(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_ENABLE');
    if (s.num > 1) throw violation(`SET_VRING_ENABLE ${s.num} is neither 0 nor 1`);
    if (!this.protocolFeaturesAcked() && this.featuresSet) {
      throw violation('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES');
    }
    this.session.setVringEnabled(q, s.num === 1);
    if (s.num === 1 && this.session.vringStarted(q)) this.session.pollVring(q);
  }

  private getQueueNum(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, this.device.queues));
  }

  private getConfig(msg: Message): void {
    const c = decodeConfig(msg);
    const window = this.device.readConfig(c.offset, c.size);
    if (window === null) throw violation(`GET_CONFIG window ${c.offset}+${c.size} is out of range`);
    this.send(encodeConfigReply(c.offset, c.flags, window));
  }

  private setConfig(msg: Message): void {
    const c = decodeConfig(msg);
    const wce = hasFeature(this.ackedFeatures, VIRTIO_BLK_F_CONFIG_WCE);
    if (!wce || !this.device.writeConfig(c.offset, c.data)) {
      // Refused, not a violation: the frontend is told (REPLY_ACK 1) and QEMU
      // reports it to the guest; the connection stays.
      log.warn('SET_CONFIG refused: only the writeback byte is writable, with CONFIG_WCE', {
        conn: this.id,
        offset: c.offset,
        size: c.size,
      });
      this.refused = true;
      return;
    }
    log.info('guest set the write cache mode', { conn: this.id, writeback: this.device.writeback() });
  }

  private setBackendReqFd(msg: Message): void {
    const fd = decodeBackendReqFd(msg);
    msg.fds.length = 0;
    this.backendChannel.attach(fd);
  }

  // ------------------------------------------------------------ rings

  /** Messages of a protocol feature are a violation unless the frontend acked it. */
  private requireProtocolFeature(msg: Message, bit: number): void {
    if ((this.ackedProtocolFeatures & featureBit(bit)) === 0n) {
      throw violation(`${requestName(msg.request)} without its protocol feature (bit ${bit}) negotiated`);
    }
  }

  private protocolFeaturesAcked(): boolean {
    return (this.ackedFeatures & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
  }

  /** Pauses every running ring and waits until nothing is in flight. Returns the paused rings. */
  private async quiesce(): Promise<number[]> {
    const running: number[] = [];
    for (let q = 0; q < this.device.queues; q++) {
      if (this.session.vringStarted(q)) {
        this.session.pauseVring(q, true);
        running.push(q);
      }
    }
    await this.settled(this.handler.whenIdle());
    return running;
  }

  /** Re-translates and restarts rings after a memory table change. */
  private resume(running: number[]): void {
    for (const q of running) {
      this.session.pauseVring(q, false);
      this.startRing(q, 'memory table change');
    }
  }

  private async stopAllRings(): Promise<void> {
    await this.quiesce();
    for (let q = 0; q < this.device.queues; q++) {
      this.session.stopVring(q);
      this.session.pauseVring(q, false);
    }
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      log.error('internal error on the data path', { conn: this.id, error: err as Error });
      this.breakConnection(`internal error: ${describe(err)}`);
    }
  }

  // ------------------------------------------------------------ teardown

  /** A rule was broken: log it once and disconnect. */
  breakConnection(rule: string): void {
    if (this.broken) return;
    this.broken = true;
    this.device.stats.violations++;
    log.warn('disconnecting frontend: protocol violation', { conn: this.id, rule });
    this.closeSoon('protocol violation');
  }

  /** close() from a callback that cannot wait for it: a failure is logged, never an unhandled rejection. */
  private closeSoon(reason: string): void {
    background(this.close(reason), 'closing the frontend connection', { conn: this.id, reason });
  }

  /**
   * Stops reading, drains in-flight I/O, releases everything. Idempotent.
   * `exiting`: the daemon is shutting down, so it need not wait for native
   * I/O that outlives the drain (nothing will be served after it).
   */
  close(reason: string, exiting = false): Promise<void> {
    if (exiting) this.exiting = true;
    if (this.closing) return this.closing;
    this.closing = (async () => {
      this.channel.stop();
      this.reader.discard();
      this.unwatchCapacity();
      for (let q = 0; q < this.device.queues; q++) this.session.pauseVring(q, true);
      const inflight = this.handler.inflight();
      if (inflight > 0) log.info('draining in-flight requests', { conn: this.id, inflight });
      if (!(await settlesWithin(this.handler.whenIdle(), DRAIN_TIMEOUT_MS))) {
        // Requests still in flight are abandoned; their ops still with the
        // kernel are cancelled or waited for just below.
        log.error('in-flight requests did not drain; closing anyway', {
          conn: this.id,
          inflight: this.handler.inflight(),
          timeoutMs: DRAIN_TIMEOUT_MS,
        });
      }
      // No op of this connection may land once the next one is served.
      await waitForNativeWork(this.session, this.id, () => this.handler.abandonAll(), () => this.exiting);
      this.channel.close();
      this.logCounters('closed');
      this.device.stats.closing(this.handler, this.session);
      this.session.destroy();
      this.handler.abandonAll();
      this.backendChannel.close();
      native.closeFd(this.fd);
      this.fd = -1;
      log.info('frontend connection closed', { conn: this.id, reason });
      this.onClosed(this);
    })();
    return this.closing;
  }
}

function closeAll(fds: number[]): void {
  for (const f of fds) if (f >= 0) native.closeFd(f);
  fds.length = 0;
}

/** The rule a failed message broke, named after the message once. */
function ruleFor(request: number, err: unknown): string {
  const name = requestName(request);
  const text = describe(err);
  return text.startsWith(name) ? text : `${name}: ${text}`;
}

function describe(err: unknown): string {
  if (err instanceof ProtocolViolation) return err.rule;
  if (err instanceof Error) return err.message;
  return String(err);
}
