// The io_uring ring size: one entry per descriptor of every queue (capped),
// halved while the kernel refuses with ENOMEM (RLIMIT_MEMLOCK), never below
// the floor; any other error is the caller's.

import t from 'tap';
import { URING_ENTRIES_MAX, URING_ENTRIES_MIN, wantedUringEntries, withUringEntries } from '../../src/device/uring-entries';

function enomem(): Error {
  return Object.assign(new Error('io_uring_queue_init failed: Cannot allocate memory'), { code: 'ENOMEM', errno: 12 });
}

t.test('wanted entries: queues x ring size, a power of two, capped', (t) => {
  t.equal(wantedUringEntries(1, 256), 256);
  t.equal(wantedUringEntries(3, 128), 512);
  t.equal(wantedUringEntries(64, 1024), URING_ENTRIES_MAX);
  t.end();
});

t.test('ENOMEM halves the ring until the kernel takes it', (t) => {
  const tried: number[] = [];
  const got = withUringEntries(1024, 1, (n) => {
    tried.push(n);
    if (n > 128) throw enomem();
    return n;
  });
  t.equal(got, 128);
  t.same(tried, [1024, 512, 256, 128]);
  t.end();
});

t.test('other errors are not retried; ENOMEM at the floor is thrown', (t) => {
  const tried: number[] = [];
  t.throws(
    () =>
      withUringEntries(1024, 1, (n) => {
        tried.push(n);
        throw Object.assign(new Error('EMFILE'), { code: 'EMFILE' });
      }),
    { code: 'EMFILE' },
  );
  t.same(tried, [1024]);
  tried.length = 0;
  t.throws(
    () =>
      withUringEntries(64, 1, (n) => {
        tried.push(n);
        throw enomem();
      }),
    { code: 'ENOMEM' },
  );
  t.equal(tried[tried.length - 1], URING_ENTRIES_MIN);
  t.end();
});
