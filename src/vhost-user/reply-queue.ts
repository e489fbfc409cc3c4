// Replies to one frontend, sent without ever waiting on its socket.
//
// A reply goes out at once when the socket takes it; what does not fit waits
// here, in order, until the socket is writable again (the connection watches
// for that while anything is queued). A frontend that does not read its
// replies cannot stall the daemon's single thread: it fills this queue, and
// past MAX_QUEUED_REPLY_BYTES it is disconnected. The bound is far above what
// a frontend that waits for each reply (as QEMU does) ever leaves unread.

/** Reply bytes a frontend may leave unread before it is disconnected. */
export const MAX_QUEUED_REPLY_BYTES = 64 * 1024;

/** Sends what fits now of buf[offset, offset+length); returns the bytes sent (0: full). Throws if the socket failed. */
export type SendSome = (buf: Uint8Array, offset: number, length: number) => number;

export class ReplyQueue {
  private readonly queue: Uint8Array[] = [];
  /** Bytes of queue[0] already sent. */
  private sentOfFirst = 0;
  private queued = 0;

  constructor(
    private readonly sendSome: SendSome,
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
   * Sends bytes now or queues what does not fit behind earlier replies.
   * Returns false, queuing nothing, when that would pass the limit: the
   * frontend is not reading. Throws if the socket failed.
   */
  push(bytes: Uint8Array): boolean {
    let rest = bytes;
    if (this.queue.length === 0) {
      const n = this.sendSome(bytes, 0, bytes.length);
      if (n === bytes.length) return true;
      rest = bytes.subarray(n);
    }
    if (this.queued + rest.length > this.limit) return false;
    // A copy: the caller may reuse its buffer.
    this.queue.push(Uint8Array.from(rest));
    this.queued += rest.length;
    return true;
  }

  /** Sends what the socket takes now; returns whether nothing is left. Throws if the socket failed. */
  flush(): boolean {
    for (;;) {
      const first = this.queue[0];
      if (first === undefined) return true;
      const left = first.length - this.sentOfFirst;
      const n = this.sendSome(first, this.sentOfFirst, left);
      this.queued -= n;
      if (n < left) {
        this.sentOfFirst += n;
        return false;
      }
      this.queue.shift();
      this.sentOfFirst = 0;
    }
  }

  /** Drops everything queued (the connection is closing). */
  clear(): void {
    this.queue.length = 0;
    this.sentOfFirst = 0;
    this.queued = 0;
  }
}
