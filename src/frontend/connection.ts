// The front-end's control socket: messages are written synchronously
// (native.sendMsg); replies are read by a MessageReader in 'reply' mode
// whenever the socket is readable, queued, and handed to recvReply() callers
// in order. Owns the socket and every fd registered with own().

import { native, type FdWatcher } from '../native/binding';
import type { Message } from '../vhost-user/message';
import { encodeMessage } from '../vhost-user/encode';
import { MessageReader } from '../vhost-user/message-reader';
import { Flags, ProtocolFeature, Request, featureBit, requestName } from '../vhost-user/protocol';

export interface SendOptions {
  needReply?: boolean;
}

interface Waiter {
  resolve: (m: Message) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export const DEFAULT_TIMEOUT_MS = 5000;

/** Opens a connection to socketPath, retrying while it does not exist or refuses (up to timeoutMs); returns the fd. */
export async function connectSocket(socketPath: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return native.connectUnix(socketPath);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export abstract class FrontendConnection {
  readonly fd: number;
  readonly timeoutMs: number;
  /** Virtio features offered by GET_FEATURES and acked by SET_FEATURES. */
  offeredFeatures = 0n;
  features = 0n;
  /** Protocol features offered and accepted. */
  offeredProtocolFeatures = 0n;
  protocolFeatures = 0n;
  /** Resolves when the back-end closes the connection (or close() is called). */
  readonly closed: Promise<void>;

  /** Set NEED_REPLY on every command (SetupOptions.needReplyAll, once REPLY_ACK is known). */
  protected needReplyAll = false;
  protected readonly watcher: FdWatcher;
  private readonly reader: MessageReader;
  private readonly inbox: Message[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly ownedFds: number[] = [];
  private isClosed = false;
  private closeError: Error | undefined;
  private resolveClosed!: () => void;

  protected constructor(fd: number, timeoutMs: number) {
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

  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** The error to throw for use after close (the reason the connection ended). */
  protected get closedError(): Error {
    return this.closeError ?? new Error('front-end is closed');
  }

  /** Sends one message (header built here). NEED_REPLY when asked (or needReplyAll). */
  send(request: number, payload: Uint8Array = Buffer.alloc(0), fds: number[] = [], opts: SendOptions = {}): void {
    const flags = Flags.VERSION | (opts.needReply ? Flags.NEED_REPLY : 0);
    this.write(encodeMessage(request, flags, payload), fds);
  }

  /** Writes bytes as they are, fds attached to the first byte. */
  protected write(bytes: Uint8Array, fds: number[] = []): void {
    if (this.isClosed) throw this.closedError;
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
    if (this.isClosed) return Promise.reject(this.closedError);
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

  /** Closes everything the front-end owns. Pending replies and I/O are rejected. */
  close(): void {
    this.shutdown(new Error('front-end closed'));
  }

  /** Waits for the back-end to disconnect, failing after timeoutMs. */
  async waitClosed(timeoutMs: number = this.timeoutMs): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closed,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`back-end did not disconnect within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** Registers an fd the connection closes when it ends. */
  protected own(fd: number): number {
    this.ownedFds.push(fd);
    return fd;
  }

  /** What a subclass releases when the connection ends, before the owned fds are closed. */
  protected abstract onShutdown(err: Error): void;

  protected shutdown(err: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    this.watcher.close();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.onShutdown(err);
    this.reader.discard();
    for (const m of this.inbox.splice(0)) for (const f of m.fds) native.closeFd(f);
    native.closeFd(this.fd);
    for (const fd of this.ownedFds.splice(0)) native.closeFd(fd);
    this.resolveClosed();
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
}
