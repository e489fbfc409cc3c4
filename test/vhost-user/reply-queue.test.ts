import t from 'tap';
import { ReplyQueue } from '../../src/vhost-user/reply-queue';

/** A socket that takes `room` bytes per send (then 0 until given more), recording what went with which fds. */
function fakeSocket() {
  const s = {
    room: Infinity,
    sent: [] as { bytes: number[]; fds: number[] }[],
    closed: [] as number[],
    fail: false,
    sendSome(buf: Uint8Array, off: number, len: number, fds: number[]): number {
      if (s.fail) throw Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
      const n = Math.min(len, s.room);
      s.room -= n;
      if (n > 0) s.sent.push({ bytes: [...buf.subarray(off, off + n)], fds: [...fds] });
      return n;
    },
  };
  const q = new ReplyQueue(s.sendSome, (fd) => s.closed.push(fd), 16);
  return { s, q };
}

t.test('a reply that fits goes out at once with its fds, which are closed after', async (t) => {
  const { s, q } = fakeSocket();
  t.ok(q.push(Uint8Array.of(1, 2, 3), [40]));
  t.same(s.sent, [{ bytes: [1, 2, 3], fds: [40] }]);
  t.same(s.closed, [40]);
  t.notOk(q.pending);
});

t.test('fds ride on the first bytes the socket takes, even when they go in pieces', async (t) => {
  const { s, q } = fakeSocket();
  s.room = 0;
  t.ok(q.push(Uint8Array.of(1, 2, 3, 4), [41, 42]), 'queued while the socket is full');
  t.same(s.closed, [], 'fds are kept while nothing went out');
  s.room = 2;
  t.notOk(q.flush(), 'half went out');
  t.same(s.sent, [{ bytes: [1, 2], fds: [41, 42] }]);
  t.same(s.closed, [41, 42], 'closed once the bytes carrying them went');
  s.room = Infinity;
  t.ok(q.flush());
  t.same(s.sent[1], { bytes: [3, 4], fds: [] }, 'the rest goes without fds');
});

t.test('a partly sent reply queues its rest without fds; later replies keep theirs', async (t) => {
  const { s, q } = fakeSocket();
  s.room = 1;
  t.ok(q.push(Uint8Array.of(1, 2), [50]));
  t.same(s.closed, [50], 'the first byte took the fd');
  t.ok(q.push(Uint8Array.of(3), [51]), 'queued behind');
  s.room = Infinity;
  t.ok(q.flush());
  t.same(s.sent, [
    { bytes: [1], fds: [50] },
    { bytes: [2], fds: [] },
    { bytes: [3], fds: [51] },
  ]);
  t.same(s.closed, [50, 51]);
});

t.test('clear() and a refused push close the fds that never went', async (t) => {
  const { s, q } = fakeSocket();
  s.room = 0;
  t.ok(q.push(new Uint8Array(10), [60]));
  t.notOk(q.push(new Uint8Array(10), [61]), 'past the 16-byte bound');
  t.same(s.closed, [61], 'the refused reply\u2019s fd is closed');
  t.equal(q.queuedBytes, 10);
  q.clear();
  t.same(s.closed, [61, 60]);
  t.notOk(q.pending);
  t.equal(q.queuedBytes, 0);
});

t.test('a send that fails closes the fds and throws', async (t) => {
  const { s, q } = fakeSocket();
  s.fail = true;
  t.throws(() => q.push(Uint8Array.of(1), [70]), /EPIPE/);
  t.same(s.closed, [70]);
  s.fail = false;
  s.room = 0;
  q.push(Uint8Array.of(1), [71]);
  s.fail = true;
  t.throws(() => q.flush(), /EPIPE/);
  t.same(s.closed, [70, 71]);
});
