// The front-end's end of the back-end channel (SET_BACKEND_REQ_FD): counts
// CONFIG_CHANGE_MSG notifications and acks every request that asks for it.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native, type FdWatcher } from '../native/binding';
import { needsReply, type Message } from '../vhost-user/message';
import { MessageReader } from '../vhost-user/message-reader';
import { BackendRequest } from '../vhost-user/protocol';
import { encodeAck } from './encode';

export class BackendChannel {
  /** CONFIG_CHANGE_MSG notifications received. */
  configChanges = 0;

  private readonly reader: MessageReader;
  private watcher: FdWatcher | undefined;

  private constructor(
    private readonly fd: number,
    private readonly timeoutMs: number,
  ) {
    this.reader = new MessageReader({
      recv: (buf, off, len, maxFds) => native.recvMsg(fd, buf, off, len, maxFds),
      closeFd: (f) => native.closeFd(f),
    });
    this.watcher = new native.FdWatcher(fd, () => this.onReadable());
    this.watcher.start();
  }

  /**
   * A connected pair: QEMU uses a socketpair; the native binding has none,
   * so a private listening socket yields one. Returns our channel and the
   * back-end's end (`theirs`), which the caller sends and then closes.
   */
  static async open(timeoutMs: number): Promise<{ channel: BackendChannel; theirs: number }> {
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
    } catch (err) {
      if (theirs >= 0) native.closeFd(theirs);
      throw err;
    } finally {
      native.closeFd(lfd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    return { channel: new BackendChannel(ours, timeoutMs), theirs };
  }

  /** Stops (false) or resumes (true) reading: the back-end's messages then pile up in the kernel. */
  setReading(on: boolean): void {
    if (on) this.watcher?.start();
    else this.watcher?.stop();
  }

  /** Closes our end (idempotent). */
  close(): void {
    if (!this.watcher) return;
    this.watcher.close();
    this.watcher = undefined;
    this.reader.discard();
    native.closeFd(this.fd);
  }

  private onReadable(): void {
    for (;;) {
      let m: Message | 'again' | 'eof';
      try {
        m = this.reader.read();
      } catch {
        m = 'eof';
      }
      if (m === 'again') return;
      if (m === 'eof') {
        this.close();
        return;
      }
      for (const f of m.fds) native.closeFd(f);
      const known = m.request === BackendRequest.CONFIG_CHANGE_MSG;
      if (known) this.configChanges++;
      if (needsReply(m)) native.sendMsg(this.fd, encodeAck(m.request, known), [], this.timeoutMs);
    }
  }
}
