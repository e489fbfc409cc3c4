// Replies to one frontend, sent without ever waiting on its socket.
//
// A reply goes out at once when the socket takes it; what does not fit waits
// here, in order, until the socket is writable again (the connection watches
// for that while anything is queued). A frontend that does not read its
// replies cannot stall the daemon's single thread: it fills this queue, and
// past MAX_QUEUED_REPLY_BYTES it is disconnected. The bound is far above what
// a frontend that waits for each reply (as QEMU does) ever leaves unread.
//
// A reply may carry fds (GET_INFLIGHT_FD). The queue owns them from push():
// they ride on the first bytes of the reply that the socket takes and are
// closed (our copies) once those bytes went out, or when the queue drops the
// reply (clear(), or a push refused for the bound).

/** Reply bytes a frontend may leave unread before it is disconnected. */
export const MAX_QUEUED_REPLY_BYTES = 64 * 1024;

/**
 * Sends what fits now of buf[offset, offset+length), fds attached to the
 * first byte sent; returns the bytes sent (0: full, the fds did not go).
 * Throws if the socket failed.
 */
export type SendSome = (buf: Uint8Array, offset: number, length: number, fds: number[]) => number;

interface Entry {
  bytes: Uint8Array;
  /** Still to be sent with the entry's first bytes; empty once they went. */
  fds: number[];
}

export class ReplyQueue {
  private readonly queue: Entry[] = [];
  /** Bytes of queue[0] already sent. */
  private sentOfFirst = 0;
  private queued = 0;

  constructor(
    private readonly sendSome: SendSome,
    private readonly closeFd: (fd: number) => void,
    readonly limit: number = MAX_QUEUED_REPLY_BYTES,
  ) {}

  /** Whether replies wait for the socket to become writable. */
  get pending(): boolean {
    return this.queue.length > 0;
  }

  /** Bytes waiting to be sent. */
  get queuedBytes(): number {
    return this.queued;
  }

  /**
   * Sends bytes (with fds, which the queue owns from now on) or queues what
   * does not fit behind earlier replies. Returns false, queuing nothing and
   * closing the fds, when that would pass the limit: the frontend is not
   * reading. Throws if the socket failed (the fds are closed first).
   */
  push(bytes: Uint8Array, fds: number[] = []): boolean {
    const entry: Entry = { bytes, fds: [...fds] };
    let rest = bytes;
    if (this.queue.length === 0) {
      const n = this.send(entry, 0);
      if (n === bytes.length) return true;
      rest = bytes.subarray(n);
    }
    if (this.queued + rest.length > this.limit) {
      this.release(entry);
      return false;
    }
    // A copy: the caller may reuse its buffer.
    this.queue.push({ bytes: Uint8Array.from(rest), fds: entry.fds });
    this.queued += rest.length;
    return true;
  }

  /** Sends what the socket takes now; returns whether nothing is left. Throws if the socket failed. */
  flush(): boolean {
    for (;;) {
      const first = this.queue[0];
      if (first === undefined) return true;
      const left = first.bytes.length - this.sentOfFirst;
      const n = this.send(first, this.sentOfFirst);
      this.queued -= n;
      if (n < left) {
        this.sentOfFirst += n;
        return false;
      }
      this.queue.shift();
      this.sentOfFirst = 0;
    }
  }

  /** Drops everything queued and closes its fds (the connection is closing). */
  clear(): void {
    for (const e of this.queue) this.release(e);
    this.queue.length = 0;
    this.sentOfFirst = 0;
    this.queued = 0;
  }

  /** One sendSome of entry from `from`; its fds are closed once they went out (or the send threw). */
  private send(entry: Entry, from: number): number {
    let n: number;
    try {
      n = this.sendSome(entry.bytes, from, entry.bytes.length - from, entry.fds);
    } catch (err) {
      this.release(entry);
      throw err;
    }
    if (n > 0) this.release(entry);
    return n;
  }

  private release(entry: Entry): void {
    for (const fd of entry.fds.splice(0)) this.closeFd(fd);
  }
}
