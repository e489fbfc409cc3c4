// Kick, call and err fds (issue #7, finding 3). The daemon's only JS thread
// writes call fds and polls kick fds, so a frontend must not be able to hand
// it an fd that blocks a write (a full blocking eventfd, a full pipe) or one
// that is always readable without a kick (a pipe at EOF, /dev/null, a
// memfd). Only eventfds are accepted; each is made non-blocking; a call
// that finds the counter full means an interrupt is already pending.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { native } from '../../src/native/binding';
import { encodeVringFilePayload } from '../../src/frontend/encode';
import { Request } from '../../src/vhost-user/protocol';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { connIdSince, expectServes, expectViolation, startDaemon, until, waitConnClosed, type Daemon } from './harness';

const MiB = 1 << 20;
/** Generous guard for the checks that would hang on the unfixed daemon. */
const HANG_GUARD_MS = 15_000;

let shared: Promise<Daemon> | undefined;
function sharedDaemon(): Promise<Daemon> {
  shared ??= startDaemon(t, { imageBytes: 16 * MiB });
  return shared;
}

async function setUp(t: Test, d: Daemon): Promise<{ fe: Frontend; mark: number; conn: number }> {
  const mark = d.v.stderr().length;
  const fe = await Frontend.connect(d.socket);
  t.teardown(() => fe.close());
  await fe.setup({ queues: 1, memory: { regions: [4 * MiB, 4 * MiB] } });
  const conn = await connIdSince(d, mark);
  t.equal((await new BlkDriver(fe).flush(0)).status, BlkStatus.OK, 'the frontend is served first');
  return { fe, mark, conn };
}

/** A named pipe in the daemon's directory (removed with it); the daemon names it by path. */
function fifo(d: Daemon, name: string): string {
  const p = path.join(d.dir, name);
  execFileSync('mkfifo', [p]);
  return p;
}

function openFd(t: Test, p: string, flags: number): number {
  const fd = fs.openSync(p, flags);
  t.teardown(() => fs.closeSync(fd));
  return fd;
}

/** Races p against a guard; on timeout resolves 'hung'. */
function guard<T>(p: Promise<T>, ms = HANG_GUARD_MS): Promise<T | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), ms)))]).finally(() => clearTimeout(timer));
}

/** One case on the shared daemon: `fd` handed over with `request` for queue 0 is refused as `rule`. */
function refusedFd(name: string, request: number, rule: RegExp, make: (t: Test, d: Daemon) => number): void {
  t.test(name, async (t) => {
    const d = await sharedDaemon();
    const { fe, mark, conn } = await setUp(t, d);
    fe.send(request, encodeVringFilePayload(0, false), [make(t, d)]);
    // A kick on a ring whose kick fd is broken must not be what ends it.
    await expectViolation(t, d, fe, mark, conn, rule);
    await expectServes(t, d);
  });
}

t.test('a blocking eventfd at 0xfffffffffffffffe as call fd: I/O completes, others are served, SIGTERM works', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB });
  const { fe, mark, conn } = await setUp(t, d);
  const full = native.eventfdCreate(true);
  t.teardown(() => native.closeFd(full));
  // 2047 x 2^53 + (2^53 - 2) = 2^64 - 2, the most an eventfd holds: one more blocks a writer.
  for (let i = 0; i < 2047; i++) native.eventfdWrite(full, 2 ** 53);
  native.eventfdWrite(full, 2 ** 53 - 2);
  await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(0, false), [full], true);
  // The call goes to `full`, which nobody watches: look at the used ring.
  let done = false;
  const req = new BlkDriver(fe).write(0, 64, Buffer.alloc(4096, 0x5a)).then((r) => {
    done = true;
    return r;
  });
  t.ok(await until(() => (fe.poll(0), done), HANG_GUARD_MS), 'the write completes (the call fd being full is not an error)');
  if (done) t.equal((await req).status, BlkStatus.OK, 'with status OK');
  // The daemon serves one frontend at a time: this one leaves first.
  fe.close();
  t.equal(await guard(waitConnClosed(d, mark, conn, HANG_GUARD_MS).then(() => undefined)), undefined, 'the frontend leaving is noticed');
  t.equal(await guard(expectServes(t, d)), undefined, 'another frontend is served');
  const stopped = await guard(d.stop());
  if (stopped === 'hung') d.v.child.kill('SIGKILL');
  t.not(stopped, 'hung', 'SIGTERM stops the daemon');
});

t.test('SET_VRING_CALL without an fd (NOFD) still works: completions are polled', async (t) => {
  const d = await sharedDaemon();
  const { fe } = await setUp(t, d);
  await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(0, true), [], true);
  let done = false;
  const req = new BlkDriver(fe).flush(0).then((r) => ((done = true), r));
  t.ok(await until(() => (fe.poll(0), done)), 'a FLUSH completes with no call fd');
  if (done) t.equal((await req).status, BlkStatus.OK);
});

refusedFd(
  'a pipe nobody reads (and full) as call fd',
  Request.SET_VRING_CALL,
  /SET_VRING_CALL fd is \S+\/call-fifo, not an eventfd/,
  (t, d) => {
    const p = fifo(d, 'call-fifo');
    const mine = openFd(t, p, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    // Fill it through our own (non-blocking) description; the daemon gets a blocking one.
    const chunk = Buffer.alloc(4096);
    for (;;) {
      try {
        fs.writeSync(mine, chunk);
      } catch {
        break; // EAGAIN: full
      }
    }
    return openFd(t, p, fs.constants.O_RDWR);
  },
);

refusedFd(
  'a pipe whose write end is closed as kick fd',
  Request.SET_VRING_KICK,
  /SET_VRING_KICK fd is \S+\/kick-fifo, not an eventfd/,
  (t, d) => {
    const p = fifo(d, 'kick-fifo');
    const reader = openFd(t, p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    fs.closeSync(fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)); // a writer came and went: EOF
    return reader;
  },
);

refusedFd('/dev/null as kick fd', Request.SET_VRING_KICK, /SET_VRING_KICK fd is \/dev\/null, not an eventfd/, (t) =>
  openFd(t, '/dev/null', fs.constants.O_RDONLY),
);

refusedFd('a memfd as kick fd', Request.SET_VRING_KICK, /SET_VRING_KICK fd is \/memfd:vublk-int-kick \(deleted\), not an eventfd/, (t) => {
  const fd = native.memfdCreate('vublk-int-kick', 4096);
  t.teardown(() => native.closeFd(fd));
  return fd;
});

refusedFd('a memfd as err fd', Request.SET_VRING_ERR, /SET_VRING_ERR fd is \/memfd:vublk-int-err \(deleted\), not an eventfd/, (t) => {
  const fd = native.memfdCreate('vublk-int-err', 4096);
  t.teardown(() => native.closeFd(fd));
  return fd;
});

t.test('the shared daemon exits 0 on SIGTERM', async (t) => {
  const d = await sharedDaemon();
  await t.resolves(d.stop());
});
