// src/device/drain.ts without a daemon: the drain timeout's env var, and
// waitForNativeWork against a fake session whose work finishes over time.
// (test/integration/late-io.test.ts holds a real write in the kernel.)

import t from 'tap';
import { drainTimeoutMs, waitForNativeWork } from '../../src/device/drain';
import { setLogSink } from '../../src/log';
import type { Session } from '../../src/native/binding';

t.test('VUBLK_DRAIN_TIMEOUT_MS', (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => setLogSink(undefined));
  t.equal(drainTimeoutMs({}), 30_000, 'default 30 s');
  t.equal(drainTimeoutMs({ VUBLK_DRAIN_TIMEOUT_MS: '250' }), 250);
  t.equal(drainTimeoutMs({ VUBLK_DRAIN_TIMEOUT_MS: '0' }), 0);
  t.equal(drainTimeoutMs({ VUBLK_DRAIN_TIMEOUT_MS: 'soon' }), 30_000, 'a bad value falls back');
  t.equal(drainTimeoutMs({ VUBLK_DRAIN_TIMEOUT_MS: '-1' }), 30_000);
  t.match(lines.join('\n'), /VUBLK_DRAIN_TIMEOUT_MS expects an integer/, 'and is logged');
  t.end();
});

function fakeSession(work: { ioUring: number; threadPool: number; rbd?: number }, calls: string[]): Session {
  return {
    outstanding: () => ({ rbd: 0, ...work }),
    cancelIo: () => {
      calls.push('cancel');
      work.ioUring = Math.max(0, work.ioUring - 1); // one op was cancellable
    },
  } as unknown as Session;
}

t.test('waits for uring ops and thread-pool work, abandoning requests and cancelling first', async (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => setLogSink(undefined));
  const calls: string[] = [];
  const work = { ioUring: 2, threadPool: 1 };
  let done = false;
  const p = waitForNativeWork(
    fakeSession(work, calls),
    7,
    () => calls.push('abandon'),
    () => false,
  ).then(() => {
    done = true;
  });
  t.same(calls, ['abandon', 'cancel'], 'requests abandoned, then io_uring asked to cancel');
  t.match(lines[0] ?? '', /waiting for native I\/O .* conn=7 ioUring=2 threadPool=1/);
  await new Promise((r) => setTimeout(r, 30));
  t.notOk(done, 'still waiting with work outstanding');
  work.ioUring = 0;
  await new Promise((r) => setTimeout(r, 30));
  t.notOk(done, 'still waiting for the thread pool');
  work.threadPool = 0;
  await p;
  t.match(lines[lines.length - 1] ?? '', /native I\/O of the closing connection finished conn=7/);
});

t.test('waits for ops librbd holds, which cannot be cancelled', async (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => setLogSink(undefined));
  const work = { ioUring: 0, threadPool: 0, rbd: 2 };
  let done = false;
  const p = waitForNativeWork(
    fakeSession(work, []),
    3,
    () => undefined,
    () => false,
  ).then(() => (done = true));
  await new Promise((r) => setTimeout(r, 30));
  t.notOk(done, 'still waiting while librbd holds ops');
  work.rbd = 0;
  await p;
  t.match(lines.join('\n'), /waiting for native I\/O of the closing connection.*conn=3.*rbd=2/);
});

t.test('nothing outstanding: no log, no abandon', async (t) => {
  const calls: string[] = [];
  await waitForNativeWork(
    fakeSession({ ioUring: 0, threadPool: 0 }, calls),
    1,
    () => calls.push('abandon'),
    () => false,
  );
  t.same(calls, []);
});

t.test('an exiting daemon stops waiting', async (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => setLogSink(undefined));
  let exiting = false;
  const p = waitForNativeWork(
    fakeSession({ ioUring: 3, threadPool: 0 }, []),
    2,
    () => undefined,
    () => exiting,
  );
  setTimeout(() => (exiting = true), 20);
  await p;
  t.match(lines.join('\n'), /exiting with native I\/O outstanding conn=2 ioUring=2/);
});
