// Framing of vhost-user messages over a non-blocking stream socket.
//
// Theory of operation: a message is a 12-byte header then `size` payload
// bytes. The reader asks `recv` for exactly the bytes it still needs (never
// more, so it never consumes part of the next message) and keeps its place
// across calls when the socket would block:
//
//   HEADER --12 bytes--> validate --size 0--> Message
//                           |
//                           +--size > 0--> PAYLOAD --size bytes--> Message
//
// File descriptors are attached by the sender to the first byte of a message,
// so they are accepted only while the header is being read, at most
// MAX_FDS_PER_MESSAGE in all. Fds arriving with payload bytes are a
// violation. Ownership: fds received belong to the reader until it returns
// them in a Message; if the message is abandoned (violation, EOF, a throwing
// recv, or discard()) the reader closes them through `closeFd`, exactly once.
//
// After a violation or a recv error the reader is broken: every later read()
// throws. A clean EOF between messages returns 'eof' (and keeps doing so);
// EOF inside a message is a violation ('truncated').

import { Flags, HEADER_SIZE, MAX_FDS_PER_MESSAGE, MAX_PAYLOAD_SIZE, requestName } from './protocol';
import type { Message } from './message';
import { violation } from './violation';

/** One recvmsg() result: bytes > 0 read, 0 end of stream, -1 would block. */
export interface RecvChunk {
  bytes: number;
  /** fds received with these bytes; the caller owns them. */
  fds: number[];
  /** The sender passed more fds than maxFds; all of them were already closed. */
  fdsTruncated: boolean;
}

/** Same shape as native.recvMsg bound to a socket fd. */
export type RecvFn = (buf: Uint8Array, offset: number, length: number, maxFds: number) => RecvChunk;

export interface MessageReaderOptions {
  recv: RecvFn;
  closeFd: (fd: number) => void;
  /**
   * 'request' (a back-end reading a front-end's requests): flags must be
   * VERSION, optionally with NEED_REPLY. 'reply' (a front-end reading
   * replies): flags must be exactly VERSION | REPLY. Default 'request'.
   */
  expect?: 'request' | 'reply';
  /** Largest payload accepted; default MAX_PAYLOAD_SIZE. */
  maxPayload?: number;
}

const enum Phase {
  Header,
  Payload,
}

const EMPTY = Buffer.alloc(0);

export class MessageReader {
  private readonly recv: RecvFn;
  private readonly closeFd: (fd: number) => void;
  private readonly expectReply: boolean;
  private readonly maxPayload: number;

  private readonly header = Buffer.alloc(HEADER_SIZE);
  private phase = Phase.Header;
  private fill = 0;
  private fds: number[] = [];
  private request = 0;
  private flags = 0;
  private payload: Buffer = EMPTY;
  private broken: Error | undefined;
  private ended = false;

  constructor(options: MessageReaderOptions) {
    this.recv = options.recv;
    this.closeFd = options.closeFd;
    this.expectReply = options.expect === 'reply';
    this.maxPayload = options.maxPayload ?? MAX_PAYLOAD_SIZE;
  }

  /** True while part of a message (or its fds) has been read. */
  get midMessage(): boolean {
    return this.phase !== Phase.Header || this.fill > 0 || this.fds.length > 0;
  }

  /**
   * Reads until one whole message is in, the socket would block ('again'),
   * or the peer closed between messages ('eof'). Throws ProtocolViolation on
   * a framing violation, or whatever recv throws; either breaks the reader.
   */
  read(): Message | 'again' | 'eof' {
    if (this.broken !== undefined) {
      throw violation(`message reader is broken by an earlier error: ${this.broken.message}`);
    }
    if (this.ended) return 'eof';
    try {
      for (;;) {
        const step = this.phase === Phase.Header ? this.readHeader() : this.readPayload();
        if (step !== undefined) return step;
      }
    } catch (err) {
      this.broken = err instanceof Error ? err : new Error(String(err));
      this.abandon();
      throw err;
    }
  }

  /** Abandons any partly read message, closing the fds it brought. Idempotent. */
  discard(): void {
    this.abandon();
  }

  private readHeader(): Message | 'again' | 'eof' | undefined {
    const want = HEADER_SIZE - this.fill;
    const room = MAX_FDS_PER_MESSAGE - this.fds.length;
    const r = this.recv(this.header, this.fill, want, room);
    if (r.fdsTruncated) {
      // recv already closed every fd of that batch (see RecvChunk).
      throw violation(`message carries more than ${MAX_FDS_PER_MESSAGE} fds`);
    }
    for (const fd of r.fds) this.fds.push(fd);
    if (this.fds.length > MAX_FDS_PER_MESSAGE) {
      // Only reachable with a recv that ignores maxFds; the fds are closed by abandon().
      throw violation(`message carries ${this.fds.length} fds, more than ${MAX_FDS_PER_MESSAGE}`);
    }
    if (r.bytes < 0) return 'again';
    if (r.bytes === 0) {
      if (this.midMessage) {
        throw violation(`peer closed the connection after ${this.fill} of ${HEADER_SIZE} header bytes`);
      }
      this.ended = true;
      return 'eof';
    }
    this.checkCount(r.bytes, want);
    this.fill += r.bytes;
    if (this.fill < HEADER_SIZE) return undefined;

    this.request = this.header.readUInt32LE(0);
    this.flags = this.header.readUInt32LE(4);
    const size = this.header.readUInt32LE(8);
    this.checkFlags();
    if (size > this.maxPayload) {
      throw violation(`${requestName(this.request)} payload size ${size} exceeds the maximum ${this.maxPayload}`);
    }
    this.fill = 0;
    if (size === 0) return this.finish(EMPTY);
    this.payload = Buffer.alloc(size);
    this.phase = Phase.Payload;
    return undefined;
  }

  private readPayload(): Message | 'again' | undefined {
    const size = this.payload.length;
    const want = size - this.fill;
    const r = this.recv(this.payload, this.fill, want, MAX_FDS_PER_MESSAGE);
    if (r.fds.length > 0 || r.fdsTruncated) {
      const n = r.fds.length;
      if (!r.fdsTruncated) for (const fd of r.fds) this.closeFd(fd);
      throw violation(
        `${requestName(this.request)}: ${r.fdsTruncated ? 'too many' : n} fds arrived with payload bytes, not with the header`,
      );
    }
    if (r.bytes < 0) return 'again';
    if (r.bytes === 0) {
      throw violation(`peer closed the connection after ${this.fill} of ${size} ${requestName(this.request)} payload bytes`);
    }
    this.checkCount(r.bytes, want);
    this.fill += r.bytes;
    if (this.fill < size) return undefined;
    return this.finish(this.payload);
  }

  private checkFlags(): void {
    const f = this.flags;
    const name = requestName(this.request);
    if ((f & Flags.VERSION_MASK) !== Flags.VERSION) {
      throw violation(`${name} header version ${f & Flags.VERSION_MASK}, expected ${Flags.VERSION}`);
    }
    if (this.expectReply) {
      if (f !== (Flags.VERSION | Flags.REPLY)) {
        throw violation(`reply to ${name} has flags 0x${f.toString(16)}, expected 0x${(Flags.VERSION | Flags.REPLY).toString(16)}`);
      }
    } else if ((f & ~(Flags.VERSION_MASK | Flags.NEED_REPLY)) !== 0) {
      throw violation(`${name} request has flags 0x${f.toString(16)}: only version and NEED_REPLY may be set`);
    }
  }

  private checkCount(got: number, want: number): void {
    if (!Number.isInteger(got) || got > want) {
      // recv broke its contract; nothing read past here can be trusted.
      throw new Error(`recv returned ${got} bytes when at most ${want} were asked for`);
    }
  }

  private finish(payload: Buffer): Message {
    const msg: Message = { request: this.request, flags: this.flags, size: payload.length, payload, fds: this.fds };
    this.reset();
    return msg;
  }

  private reset(): void {
    this.phase = Phase.Header;
    this.fill = 0;
    this.fds = [];
    this.payload = EMPTY;
  }

  private abandon(): void {
    const fds = this.fds;
    this.reset();
    for (const fd of fds) {
      try {
        this.closeFd(fd);
      } catch {
        // Closing an fd we own only fails on a bug elsewhere (EBADF); keep
        // closing the others and let the original error stand.
      }
    }
  }
}
