// The back-end channel (SET_BACKEND_REQ_FD): requests from vublk to the
// frontend. vublk sends one kind, CONFIG_CHANGE_MSG after an online resize,
// and never sets NEED_REPLY, so nothing is ever read from it: QEMU answers
// with GET_CONFIG on the main socket.
//
// Sends never wait. A message the socket has no room for stays pending and
// goes out when the socket is writable (one FdWatcher, WRITABLE only while
// something is pending). Notifications coalesce: while one is pending a
// second adds nothing, since the frontend reads the whole config space when
// it gets the first. A channel the frontend closed is logged once and
// dropped; the connection itself goes on.

import { native, type FdWatcher } from '../native/binding';
import { log } from '../log';
import { encodeMessage } from './encode';
import { BackendRequest, Flags, ProtocolFeature, featureBit } from './protocol';

/** The protocol features a CONFIG_CHANGE_MSG needs acked. */
const CONFIG_CHANGE_NEEDS = featureBit(ProtocolFeature.BACKEND_REQ) | featureBit(ProtocolFeature.CONFIG);

export class BackendChannel {
  private fd = -1;
  private watcher: FdWatcher | undefined;
  /** The message being sent, and how much of it went. */
  private pending: Uint8Array | undefined;
  private sent = 0;
  /** Notifications sent whole (tests and logs). */
  delivered = 0;

  constructor(private readonly conn: number) {}

  /** SET_BACKEND_REQ_FD: fd is the channel from now on (ours; a previous one is closed). */
  attach(fd: number): void {
    this.close();
    this.fd = fd;
  }

  /**
   * Tells the frontend the config space changed, if it asked to hear it
   * (BACKEND_REQ and CONFIG acked, a channel given). Never waits, never throws.
   */
  configChanged(ackedProtocolFeatures: bigint): void {
    if (this.fd < 0 || (ackedProtocolFeatures & CONFIG_CHANGE_NEEDS) !== CONFIG_CHANGE_NEEDS) return;
    if (this.pending !== undefined) return;
    this.pending = encodeMessage(BackendRequest.CONFIG_CHANGE_MSG, Flags.VERSION);
    this.sent = 0;
    this.flush();
  }

  /** Closes the channel (the connection is closing, or a new one replaces it). */
  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.fd >= 0) native.closeFd(this.fd);
    this.fd = -1;
    this.pending = undefined;
  }

  private flush(): void {
    const msg = this.pending;
    if (msg === undefined || this.fd < 0) return;
    try {
      while (this.sent < msg.length) {
        const n = native.sendSome(this.fd, msg, this.sent, msg.length - this.sent);
        if (n === 0) break;
        this.sent += n;
      }
    } catch (err) {
      log.warn('back-end channel is gone: the frontend will not hear of config changes', { conn: this.conn, error: err as Error });
      this.close();
      return;
    }
    if (this.sent < msg.length) {
      if (this.watcher === undefined) {
        log.debug('back-end channel full: CONFIG_CHANGE_MSG waits for room', { conn: this.conn });
        this.watcher = new native.FdWatcher(this.fd, () => this.flush());
      }
      this.watcher.start(native.FdWatcher.WRITABLE);
      return;
    }
    this.pending = undefined;
    this.delivered++;
    this.watcher?.stop();
    log.debug('sent CONFIG_CHANGE_MSG on the back-end channel', { conn: this.conn });
  }
}
