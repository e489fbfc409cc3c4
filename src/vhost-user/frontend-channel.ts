// The frontend's socket as a connection uses it: one FdWatcher, and the
// replies waiting for room (ReplyQueue). Nothing here ever waits on the
// socket.
//
// What is watched:
//   reading   READABLE | DISCONNECT    (messages, or EOF)
//   waiting   DISCONNECT               (a handler waits; a hang-up ends it)
//   + WRITABLE while replies are queued, until flushed
// The socket fd stays the connection's: it closes it after close().

import { native } from '../native/binding';
import { ReplyQueue } from './reply-queue';

export interface ChannelEvents {
  /** Messages may be readable (a read also reports EOF). Not called while waiting. */
  readable(): void;
  /** The frontend hung up while a handler waits for something. */
  hungUp(): void;
  /** A send failed: the frontend is gone. */
  sendFailed(err: unknown): void;
  /** The frontend left more reply bytes unread than the queue's bound: a rule broken. */
  notReading(rule: string): void;
}

export class FrontendChannel {
  private readonly watcher: InstanceType<typeof native.FdWatcher>;
  private readonly replies: ReplyQueue;
  private waiting = false;
  private stopped = false;

  constructor(
    fd: number,
    private readonly events: ChannelEvents,
  ) {
    this.replies = new ReplyQueue(
      (buf, off, len, fds) => native.sendSome(fd, buf, off, len, fds),
      (f) => native.closeFd(f),
    );
    this.watcher = new native.FdWatcher(fd, (ev) => this.onEvents(ev));
    this.update();
  }

  /** While a handler waits, no message is read; a hang-up is still noticed. */
  setWaiting(waiting: boolean): void {
    this.waiting = waiting;
    this.update();
  }

  /**
   * Sends a reply, or queues it behind earlier ones; never waits, never
   * throws. The channel owns fds from here on (closed once sent, or dropped).
   */
  send(bytes: Uint8Array, fds: number[] = []): void {
    if (this.stopped) {
      for (const f of fds) native.closeFd(f);
      return;
    }
    let ok: boolean;
    try {
      ok = this.replies.push(bytes, fds);
    } catch (err) {
      this.events.sendFailed(err);
      return;
    }
    if (!ok) {
      this.events.notReading(`frontend does not read its replies (${this.replies.queuedBytes} bytes unread, limit ${this.replies.limit})`);
      return;
    }
    if (this.replies.pending) this.update();
  }

  /** Stops watching and drops queued replies (the connection is closing). */
  stop(): void {
    this.stopped = true;
    this.watcher.stop();
    this.replies.clear();
  }

  /** Releases the watcher for good; the fd is not closed. */
  close(): void {
    this.stop();
    this.watcher.close();
  }

  private update(): void {
    if (this.stopped) return;
    const W = native.FdWatcher;
    this.watcher.start((this.waiting ? W.DISCONNECT : W.READABLE | W.DISCONNECT) | (this.replies.pending ? W.WRITABLE : 0));
  }

  private onEvents(ev: number): void {
    if (this.stopped) return;
    if (ev & native.FdWatcher.WRITABLE) this.flush();
    if (this.stopped) return;
    if (this.waiting) {
      if (ev & native.FdWatcher.DISCONNECT) this.events.hungUp();
      return;
    }
    if (ev & (native.FdWatcher.READABLE | native.FdWatcher.DISCONNECT)) this.events.readable();
  }

  private flush(): void {
    let done: boolean;
    try {
      done = this.replies.flush();
    } catch (err) {
      this.events.sendFailed(err);
      return;
    }
    if (done) this.update();
  }
}
