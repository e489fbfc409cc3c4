// MessageReader over a fake non-blocking socket: framing across partial reads,
// fd ownership (every fd closed exactly once), size and fd limits.
import t from 'tap';
import fc from 'fast-check';
import { type Message } from '../../src/vhost-user/message';
import { encodeMessage, encodeU64Payload } from '../../src/vhost-user/encode';
import { encodeMemTablePayload, encodeVringFilePayload } from '../../src/frontend/encode';
import { decodeRequest } from '../helpers/decode-request';
import { MessageReader, type RecvChunk } from '../../src/vhost-user/message-reader';
import { Flags, HEADER_SIZE, MAX_FDS_PER_MESSAGE, MAX_PAYLOAD_SIZE, Request } from '../../src/vhost-user/protocol';
import { ProtocolViolation } from '../../src/vhost-user/violation';

/**
 * A fake non-blocking stream socket. The test queues segments (bytes with fds
 * attached to their first byte, as one sendmsg() does); recv behaves like
 * recvmsg on a Unix stream socket: it returns at most `length` bytes, never
 * reads past a segment that carries fds once it has read something, delivers
 * fds with the first byte of their segment, and truncates (closing them) when
 * more fds arrive than maxFds. It counts every fd it hands out and every close.
 */
class FakeSocket {
  private segments: { bytes: Buffer; fds: number[]; pos: number }[] = [];
  private nextFd = 1000;
  readonly open = new Set<number>();
  doubleCloses = 0;
  ended = false;
  /** When set, recv returns at most this many bytes per call. */
  maxChunk = Infinity;

  push(bytes: Uint8Array, nfds = 0): number[] {
    // A zero-byte sendmsg on a stream socket transfers nothing, fds included.
    if (bytes.length === 0) return [];
    const fds: number[] = [];
    for (let i = 0; i < nfds; i++) {
      const fd = this.nextFd++;
      this.open.add(fd);
      fds.push(fd);
    }
    this.segments.push({ bytes: Buffer.from(bytes), fds, pos: 0 });
    return fds;
  }

  /** Closing the socket releases fds still queued in it (the kernel does). */
  close(): void {
    for (const seg of this.segments) for (const fd of seg.fds) this.open.delete(fd);
    this.segments = [];
  }

  readonly closeFd = (fd: number): void => {
    if (!this.open.delete(fd)) this.doubleCloses++;
  };

  readonly recv = (buf: Uint8Array, offset: number, length: number, maxFds: number): RecvChunk => {
    let copied = 0;
    let fds: number[] = [];
    let fdsTruncated = false;
    while (copied < length && this.segments.length > 0 && copied < this.maxChunk) {
      const seg = this.segments[0]!;
      if (seg.pos === 0 && seg.fds.length > 0) {
        if (copied > 0) break; // fds start a new recvmsg
        if (seg.fds.length > maxFds) {
          for (const fd of seg.fds) this.open.delete(fd); // the kernel/native closes them
          fdsTruncated = true;
        } else {
          fds = seg.fds;
        }
        seg.fds = [];
      }
      const n = Math.min(length - copied, seg.bytes.length - seg.pos, this.maxChunk - copied);
      buf.set(seg.bytes.subarray(seg.pos, seg.pos + n), offset + copied);
      seg.pos += n;
      copied += n;
      if (seg.pos === seg.bytes.length) this.segments.shift();
    }
    if (copied === 0 && fds.length === 0 && !fdsTruncated) return { bytes: this.ended ? 0 : -1, fds, fdsTruncated };
    return { bytes: copied === 0 ? (this.ended ? 0 : -1) : copied, fds, fdsTruncated };
  };
}

function reader(sock: FakeSocket, expect: 'request' | 'reply' = 'request'): MessageReader {
  return new MessageReader({ recv: sock.recv, closeFd: sock.closeFd, expect });
}

function violation(tt: tap.Test, fn: () => unknown, re: RegExp): void {
  try {
    fn();
  } catch (err) {
    tt.ok(err instanceof ProtocolViolation, `throws ProtocolViolation (${(err as Error).message})`);
    tt.match((err as Error).message, re);
    return;
  }
  tt.fail(`did not throw ${re}`);
}

const setFeatures = encodeMessage(Request.SET_FEATURES, Flags.VERSION, encodeU64Payload(0x1234));
const kick = encodeMessage(Request.SET_VRING_KICK, Flags.VERSION | Flags.NEED_REPLY, encodeVringFilePayload(1, false));

t.test('whole messages, back to back', async (tt) => {
  const s = new FakeSocket();
  const r = reader(s);
  tt.equal(r.read(), 'again');
  s.push(Buffer.concat([encodeMessage(Request.GET_FEATURES, Flags.VERSION), setFeatures]));
  const a = r.read() as Message;
  tt.same([a.request, a.flags, a.size, a.payload.length, a.fds], [Request.GET_FEATURES, 1, 0, 0, []]);
  const b = r.read() as Message;
  tt.same([b.request, b.size, b.payload.readBigUInt64LE(0)], [Request.SET_FEATURES, 8, 0x1234n]);
  tt.equal(r.read(), 'again');
  const fds = s.push(kick, 1);
  const c = r.read() as Message;
  tt.same([c.request, c.flags, c.fds], [Request.SET_VRING_KICK, 9, fds]);
  tt.notOk(r.midMessage);
  s.ended = true;
  tt.equal(r.read(), 'eof');
  tt.equal(r.read(), 'eof', 'eof is sticky');
});

t.test('memory table with 8 fds', async (tt) => {
  const s = new FakeSocket();
  const regions = Array.from({ length: 8 }, (_, i) => ({ gpa: i * 4096, size: 4096, uva: 0x10000 * (i + 1), mmapOffset: 0 }));
  const fds = s.push(encodeMessage(Request.SET_MEM_TABLE, Flags.VERSION, encodeMemTablePayload(regions)), 8);
  const m = reader(s).read() as Message;
  tt.same(m.fds, fds);
  tt.equal(m.size, 8 + 8 * 32);
  const d = decodeRequest(m);
  tt.equal(d.kind, 'mem-table');
});

t.test('fragmented delivery at every byte boundary yields the same message', async (tt) => {
  const whole = encodeMessage(
    Request.SET_MEM_TABLE,
    Flags.VERSION | Flags.NEED_REPLY,
    encodeMemTablePayload([{ gpa: 0, size: 1 << 20, uva: 1 << 30, mmapOffset: 0 }]),
  );
  for (let cut = 1; cut < whole.length; cut++) {
    const s = new FakeSocket();
    const r = reader(s);
    const fds = s.push(whole.subarray(0, cut), 1);
    if (cut < whole.length) tt.equal(r.read(), 'again', `cut ${cut}: waits`);
    s.push(whole.subarray(cut));
    const m = r.read() as Message;
    if (
      m.request !== Request.SET_MEM_TABLE ||
      !m.payload.equals(whole.subarray(HEADER_SIZE)) ||
      m.fds[0] !== fds[0] ||
      m.fds.length !== 1
    ) {
      tt.fail(`cut ${cut}: different message`);
    }
  }
  // One byte at a time, with the fd on the first byte.
  const s = new FakeSocket();
  const r = reader(s);
  let got: Message | 'again' | 'eof' = 'again';
  for (let i = 0; i < whole.length; i++) {
    s.push(whole.subarray(i, i + 1), i === 0 ? 1 : 0);
    got = r.read();
    if (i < whole.length - 1 && got !== 'again') tt.fail(`byte ${i}: returned early`);
  }
  tt.ok(typeof got === 'object' && got.payload.equals(whole.subarray(HEADER_SIZE)) && got.fds.length === 1, 'byte-by-byte');
  // Fds may arrive with any header byte (a sender writing the header in pieces).
  const s2 = new FakeSocket();
  const r2 = reader(s2);
  s2.push(whole.subarray(0, 5));
  s2.push(whole.subarray(5), 1);
  const m2 = r2.read() as Message;
  tt.equal(m2.fds.length, 1);
  tt.equal(s.doubleCloses + s2.doubleCloses, 0);
});

t.test('header violations close the fds that came with it', async (tt) => {
  const cases: [Buffer, RegExp][] = [
    [encodeMessage(Request.SET_FEATURES, 0x2, encodeU64Payload(1)), /SET_FEATURES header version 2, expected 1/],
    [encodeMessage(Request.SET_FEATURES, 0x0, encodeU64Payload(1)), /header version 0, expected 1/],
    [
      encodeMessage(Request.SET_FEATURES, Flags.VERSION | Flags.REPLY, encodeU64Payload(1)),
      /SET_FEATURES request has flags 0x5: only version and NEED_REPLY may be set/,
    ],
    [encodeMessage(Request.SET_FEATURES, Flags.VERSION | 0x10, encodeU64Payload(1)), /flags 0x11/],
    [
      encodeMessage(Request.SET_CONFIG, Flags.VERSION, Buffer.alloc(MAX_PAYLOAD_SIZE + 1)),
      /SET_CONFIG payload size 269 exceeds the maximum 268/,
    ],
  ];
  for (const [bytes, re] of cases) {
    const s = new FakeSocket();
    const r = reader(s);
    s.push(bytes, 2);
    violation(tt, () => r.read(), re);
    tt.equal(s.open.size, 0, 'fds closed');
    violation(tt, () => r.read(), /message reader is broken by an earlier error/);
  }
  const s = new FakeSocket();
  const big = Buffer.alloc(HEADER_SIZE);
  big.writeUInt32LE(Request.SET_CONFIG, 0);
  big.writeUInt32LE(1, 4);
  big.writeUInt32LE(0xffff_ffff, 8);
  s.push(big);
  violation(tt, () => reader(s).read(), /payload size 4294967295 exceeds the maximum/);
});

t.test('fd rules', async (tt) => {
  // More fds than any message may carry: native closes them and reports truncation.
  const s1 = new FakeSocket();
  s1.push(kick, MAX_FDS_PER_MESSAGE + 1);
  violation(tt, () => reader(s1).read(), /message carries more than 8 fds/);
  tt.equal(s1.open.size, 0);

  // Fds split over two header pieces, 9 in total.
  const s2 = new FakeSocket();
  s2.push(kick.subarray(0, 3), 5);
  s2.push(kick.subarray(3), 4);
  violation(tt, () => reader(s2).read(), /more than 8 fds/);
  tt.equal(s2.open.size, 0, 'the first 5 are closed by the reader, the last 4 by recv');
  tt.equal(s2.doubleCloses, 0);

  // Fds arriving with payload bytes.
  const s3 = new FakeSocket();
  s3.push(setFeatures.subarray(0, HEADER_SIZE), 1);
  s3.push(setFeatures.subarray(HEADER_SIZE), 2);
  violation(tt, () => reader(s3).read(), /SET_FEATURES: 2 fds arrived with payload bytes, not with the header/);
  tt.equal(s3.open.size, 0);
  tt.equal(s3.doubleCloses, 0);
});

t.test('EOF', async (tt) => {
  const mid = [3, HEADER_SIZE, HEADER_SIZE + 4];
  for (const cut of mid) {
    const s = new FakeSocket();
    const r = reader(s);
    s.push(setFeatures.subarray(0, cut), 1);
    s.ended = true;
    violation(
      tt,
      () => r.read(),
      cut < HEADER_SIZE
        ? /peer closed the connection after 3 of 12 header bytes/
        : new RegExp(`after ${cut - HEADER_SIZE} of 8 SET_FEATURES payload bytes`),
    );
    tt.equal(s.open.size, 0, `cut ${cut}: fd closed`);
  }
  const s = new FakeSocket();
  s.ended = true;
  tt.equal(reader(s).read(), 'eof');
});

t.test('discard() and a throwing recv close held fds', async (tt) => {
  const s = new FakeSocket();
  const r = reader(s);
  s.push(setFeatures.subarray(0, 4), 3);
  tt.equal(r.read(), 'again');
  tt.ok(r.midMessage);
  r.discard();
  tt.equal(s.open.size, 0);
  r.discard();
  tt.equal(s.doubleCloses, 0, 'idempotent');

  const s2 = new FakeSocket();
  s2.push(setFeatures.subarray(0, 4), 2);
  let calls = 0;
  const r2 = new MessageReader({
    recv: (b, o, l, m) => {
      if (calls++ === 2) throw Object.assign(new Error('recvmsg: ECONNRESET'), { code: 'ECONNRESET' });
      return s2.recv(b, o, l, m);
    },
    closeFd: s2.closeFd,
  });
  tt.equal(r2.read(), 'again');
  tt.throws(() => r2.read(), /ECONNRESET/);
  tt.equal(s2.open.size, 0);
  tt.throws(() => r2.read(), /broken by an earlier error: recvmsg: ECONNRESET/);
});

t.test('reply mode', async (tt) => {
  const s = new FakeSocket();
  const r = reader(s, 'reply');
  s.push(encodeMessage(Request.GET_FEATURES, Flags.VERSION | Flags.REPLY, encodeU64Payload(7)));
  tt.equal((r.read() as Message).payload.readBigUInt64LE(0), 7n);
  s.push(encodeMessage(Request.GET_FEATURES, Flags.VERSION, encodeU64Payload(7)));
  violation(tt, () => r.read(), /reply to GET_FEATURES has flags 0x1, expected 0x5/);
});

// --------------------------------------------------------------- properties

interface Seg {
  bytes: Uint8Array;
  nfds: number;
}

/** Drives reader + decoder like a connection would; returns how it ended. */
function drain(s: FakeSocket, r: MessageReader, msgs: Message[]): 'eof' | 'violation' {
  for (;;) {
    let m: Message | 'again' | 'eof';
    try {
      m = r.read();
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw err;
      return 'violation';
    }
    if (m === 'again') throw new Error('socket ended but reader wants more');
    if (m === 'eof') return 'eof';
    msgs.push(m);
    // The handler owns msg.fds: decode, then close them whatever the outcome.
    try {
      decodeRequest(m);
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw err;
    }
    for (const fd of m.fds) s.closeFd(fd);
  }
}

t.test('property: random streams only raise ProtocolViolation and never leak an fd', async (tt) => {
  const seg = fc.record({ bytes: fc.uint8Array({ minLength: 0, maxLength: 64 }), nfds: fc.nat({ max: 10 }) });
  // Headers that look plausible, so the reader gets past the header often.
  const plausible = fc
    .record({
      request: fc.integer({ min: 0, max: 42 }),
      flags: fc.constantFrom(1, 9, 1, 5, 2),
      size: fc.oneof(fc.integer({ min: 0, max: 48 }), fc.integer({ min: 0, max: 300 })),
      nfds: fc.nat({ max: 9 }),
      extra: fc.uint8Array({ maxLength: 64 }),
    })
    .map(({ request, flags, size, nfds, extra }) => {
      const h = Buffer.alloc(HEADER_SIZE);
      h.writeUInt32LE(request, 0);
      h.writeUInt32LE(flags, 4);
      h.writeUInt32LE(size, 8);
      return { bytes: Buffer.concat([h, extra]), nfds } as Seg;
    });
  fc.assert(
    fc.property(fc.array(fc.oneof(seg, plausible), { maxLength: 12 }), fc.integer({ min: 1, max: 40 }), (segs, chunk) => {
      const s = new FakeSocket();
      s.maxChunk = chunk;
      for (const g of segs) s.push(g.bytes, g.nfds);
      s.ended = true;
      const r = reader(s);
      drain(s, r, []);
      r.discard();
      s.close();
      return s.open.size === 0 && s.doubleCloses === 0;
    }),
    { numRuns: 5000 },
  );
  tt.pass();
});

t.test('property: any chunking of a valid stream yields the same messages', async (tt) => {
  const message = fc
    .record({
      request: fc.integer({ min: 1, max: 40 }),
      needReply: fc.boolean(),
      payload: fc.uint8Array({ maxLength: MAX_PAYLOAD_SIZE }),
      nfds: fc.nat({ max: MAX_FDS_PER_MESSAGE }),
    })
    .map((m) => ({ ...m, bytes: encodeMessage(m.request, Flags.VERSION | (m.needReply ? Flags.NEED_REPLY : 0), m.payload) }));
  fc.assert(
    fc.property(
      fc.array(message, { minLength: 1, maxLength: 6 }),
      fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 8 }),
      (msgs, cuts) => {
        const s = new FakeSocket();
        // Each message is one segment (fds on its first byte), then re-cut the
        // stream further by capping every recv at a varying size.
        const sent = msgs.map((m) => s.push(m.bytes, m.nfds));
        const r = reader(s);
        const got: Message[] = [];
        let i = 0;
        for (let guard = 0; guard < 100000 && got.length < msgs.length; guard++) {
          s.maxChunk = cuts[i++ % cuts.length]!;
          const m = r.read();
          if (m === 'eof') return false;
          if (m !== 'again') got.push(m);
        }
        return got.every((m, k) => {
          const want = msgs[k]!;
          return (
            m.request === want.request &&
            m.flags === (Flags.VERSION | (want.needReply ? Flags.NEED_REPLY : 0)) &&
            m.size === want.payload.length &&
            Buffer.from(want.payload).equals(m.payload) &&
            JSON.stringify(m.fds) === JSON.stringify(sent[k])
          );
        });
      },
    ),
    { numRuns: 2000 },
  );
  tt.pass();
});
