// One frontend connection, backend side: reads vhost-user messages, runs one
// handler per message (named after it) and forwards each to the device's
// data plane (a VhostUserDataPlane from the VhostUserBackend it serves).
//
// Lifecycle:
//   open -> messages ... -> close(reason)
//   close: stop reading, drain the data plane (rings paused, in-flight I/O
//          waited for), destroy it (unmaps memory, closes eventfds), close
//          the socket, then report `closed` to the server.
// `broken` is sticky: once a rule is broken (logged once) nothing more is
// read from this frontend.

import { native } from '../native/binding';
import { log } from '../log';
import { background } from '../background';
import { MessageReader } from './message-reader';
import { FrontendChannel } from './frontend-channel';
import { BackendChannel } from './backend-channel';
import {
  type Message,
  decodeBackendReqFd,
  decodeConfig,
  decodeEmpty,
  decodeGetInflight,
  decodeSetInflight,
  decodeStatus,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  needsReply,
} from './message';
import { encodeConfigReply, encodeU64Reply, encodeVringStateReply } from './encode';
import { MAX_MEM_SLOTS, ProtocolFeature, Request, featureBit, hasReply, requestName } from './protocol';
import { violation } from './violation';
import { ConnectionClosing, type Handler, MessageLoop, closeAll, describe } from './message-loop';
import { checkRingSize } from './vring-rules';
import { addMemReg, remMemReg, setMemTable } from './mem-table';
import { checkNotifierFd } from './notifier-fd';
import { drainTimeoutMs } from '../device/drain';
import { checkSetInflight, createInflight } from './inflight';
import { DeviceStatusByte } from './device-status';
import type { VhostUserBackend, VhostUserDataPlane } from './backend';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../virtio/constants';

/** How long a closing connection waits for in-flight requests before it abandons them. */
const DRAIN_TIMEOUT_MS = drainTimeoutMs();

export class BackendConnection {
  readonly id: number;
  private readonly channel: FrontendChannel;
  private readonly reader: MessageReader;
  private readonly plane: VhostUserDataPlane;
  private readonly handlers: Map<number, Handler>;
  private ackedFeatures = 0n;
  private featuresSet = false;
  private ackedProtocolFeatures = 0n;
  private readonly backendChannel: BackendChannel;
  private readonly loop: MessageLoop;
  /** The message being handled was refused without breaking the connection. */
  private refused = false;
  private readonly status: DeviceStatusByte;
  private closing: Promise<void> | undefined;
  /** The daemon is exiting: close() stops waiting for native I/O. */
  private exiting = false;
  broken = false;

  constructor(
    private fd: number,
    id: number,
    private readonly device: VhostUserBackend,
    private readonly onClosed: (conn: BackendConnection) => void,
  ) {
    this.id = id;
    this.status = new DeviceStatusByte(id);
    this.reader = new MessageReader({
      recv: (buf, off, len, maxFds) => native.recvMsg(this.fd, buf, off, len, maxFds),
      closeFd: (f) => native.closeFd(f),
    });
    this.backendChannel = new BackendChannel(id);
    this.plane = device.connect(id, {
      violation: (rule) => this.breakConnection(rule),
      broken: () => this.broken,
      configChanged: () => this.backendChannel.configChanged(this.ackedProtocolFeatures),
    });
    this.handlers = this.handlerTable();
    this.channel = new FrontendChannel(fd, {
      readable: () => this.loop.pump(),
      // Nobody is left to take the reply the handler works towards.
      hungUp: () => this.closeSoon('frontend disconnected'),
      sendFailed: (err) => this.closeSoon(`cannot send reply: ${describe(err)}`),
      notReading: (rule) => this.breakConnection(rule),
    });
    this.loop = new MessageLoop(this.reader, this.channel, {
      id,
      stopped: () => this.broken || this.closing !== undefined,
      handler: (request) => this.handlers.get(request),
      ack: (msg) => this.ack(msg),
      breakConnection: (rule) => this.breakConnection(rule),
      closeSoon: (reason) => this.closeSoon(reason),
    });
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
    h.set(Request.SET_MEM_TABLE, (m) => setMemTable(m, this.plane, () => this.quiesce()));
    h.set(Request.GET_MAX_MEM_SLOTS, (m) => this.getMaxMemSlots(m));
    h.set(Request.ADD_MEM_REG, (m) => addMemReg(m, this.plane, () => this.quiesce()));
    h.set(Request.REM_MEM_REG, (m) => remMemReg(m, this.plane, () => this.quiesce()));
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
    this.plane.setFeatures(value);
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
    this.plane.clearInflight();
    for (let q = 0; q < this.device.queues; q++) this.plane.setVringBase(q, 0);
  }

  private forgetFeatures(): void {
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.plane.setFeatures(0n);
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
    checkSetInflight(this.plane, r, this.device);
    msg.fds.length = 0; // setInflight closes it, mapped or not
    this.plane.setInflight(r.fd, r.mmapSize, r.mmapOffset, r.numQueues, r.queueSize);
  }

  private getMaxMemSlots(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, MAX_MEM_SLOTS));
  }

  /** Logs the per-queue counters, one line per queue. */
  logCounters(reason: string): void {
    this.plane.logCounters(reason);
  }

  private setVringNum(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_NUM');
    checkRingSize(s.num, this.device.maxQueueSize);
    // Native checked the ring's addresses for the size it started with.
    if (this.plane.vringStarted(q)) throw violation('SET_VRING_NUM on a running ring');
    this.plane.setVringNum(q, s.num);
  }

  private setVringAddr(msg: Message): void {
    const a = decodeVringAddr(msg);
    const q = this.queueIndex(a.index, 'SET_VRING_ADDR');
    // QEMU re-sends it on a running ring only to toggle dirty logging, which
    // needs LOG_SHMFD (not offered): otherwise rings move only when stopped.
    if (this.plane.vringStarted(q)) throw violation('SET_VRING_ADDR on a running ring');
    this.plane.setVringAddr(q, a.desc, a.used, a.avail);
  }

  private setVringBase(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_BASE');
    if (s.num > 0xffff) throw violation(`SET_VRING_BASE ${s.num} does not fit a split ring's 16-bit index`);
    if (this.plane.vringStarted(q)) throw violation('SET_VRING_BASE on a running ring');
    this.plane.setVringBase(q, s.num);
  }

  /** Stops the ring once its in-flight requests complete; replies with its index. */
  private async getVringBase(msg: Message): Promise<void> {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'GET_VRING_BASE');
    if (!(await this.settled(this.plane.drainVring(q, DRAIN_TIMEOUT_MS)))) {
      log.error(`GET_VRING_BASE: queue ${q} did not drain`, {
        conn: this.id,
        inflight: this.plane.inflight(q),
        timeoutMs: DRAIN_TIMEOUT_MS,
      });
      this.closeSoon('GET_VRING_BASE could not drain the ring');
      throw new ConnectionClosing('no reply: the ring did not drain');
    }
    const base = this.plane.stopVring(q);
    this.send(encodeVringStateReply(msg.request, q, base));
  }

  private setVringKick(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_KICK');
    if (f.fd < 0) throw violation('SET_VRING_KICK without an fd: polling mode is not supported');
    checkNotifierFd('SET_VRING_KICK', f.fd);
    msg.fds.length = 0;
    this.plane.setVringKick(q, f.fd);
    // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled when started;
    // with it, SET_VRING_ENABLE decides.
    if (!this.protocolFeaturesAcked()) this.plane.setVringEnabled(q, true);
    this.plane.startVring(q);
  }

  private setVringCall(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_CALL');
    if (f.fd >= 0) checkNotifierFd('SET_VRING_CALL', f.fd);
    msg.fds.length = 0;
    this.plane.setVringCall(q, f.fd);
  }

  private setVringErr(msg: Message): void {
    const f = decodeVringFile(msg);
    const q = this.queueIndex(f.index, 'SET_VRING_ERR');
    if (f.fd >= 0) checkNotifierFd('SET_VRING_ERR', f.fd);
    msg.fds.length = 0;
    this.plane.setVringErr(q, f.fd);
  }

  private setVringEnable(msg: Message): void {
    const s = decodeVringState(msg);
    const q = this.queueIndex(s.index, 'SET_VRING_ENABLE');
    if (s.num > 1) throw violation(`SET_VRING_ENABLE ${s.num} is neither 0 nor 1`);
    if (!this.protocolFeaturesAcked() && this.featuresSet) {
      throw violation('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES');
    }
    this.plane.setVringEnabled(q, s.num === 1);
  }

  private getQueueNum(msg: Message): void {
    decodeEmpty(msg);
    this.send(encodeU64Reply(msg.request, this.device.queues));
  }

  private getConfig(msg: Message): void {
    const c = decodeConfig(msg);
    const window = this.plane.readConfig(c.offset, c.size);
    if (window === null) throw violation(`GET_CONFIG window ${c.offset}+${c.size} is out of range`);
    this.send(encodeConfigReply(c.offset, c.flags, window));
  }

  private setConfig(msg: Message): void {
    const c = decodeConfig(msg);
    // Refused (logged by the device), not a violation: the frontend is told
    // (REPLY_ACK 1) and QEMU reports it to the guest; the connection stays.
    if (!this.plane.writeConfig(c.offset, c.data)) this.refused = true;
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
  private quiesce(): Promise<number[]> {
    return this.settled(this.plane.quiesce());
  }

  private async stopAllRings(): Promise<void> {
    await this.quiesce();
    this.plane.stopAllRings();
  }

  // ------------------------------------------------------------ teardown

  /** A rule was broken: log it once and disconnect. */
  breakConnection(rule: string): void {
    if (this.broken) return;
    this.broken = true;
    this.device.countViolation();
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
      await this.plane.drain(DRAIN_TIMEOUT_MS, () => this.exiting);
      this.channel.close();
      this.plane.destroy();
      this.backendChannel.close();
      native.closeFd(this.fd);
      this.fd = -1;
      log.info('frontend connection closed', { conn: this.id, reason });
      this.onClosed(this);
    })();
    return this.closing;
  }
}
