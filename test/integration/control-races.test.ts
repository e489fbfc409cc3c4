// A connection that starts closing while a message handler waits for
// in-flight I/O to drain (SET_MEM_TABLE pauses the rings and waits) must not
// resume its rings afterwards: close() destroys the session as soon as the
// same drain ends, so requests popped by the handler's resume() would run on
// a session being destroyed. The close is started two ways: SIGTERM (the
// daemon shuts down) and the frontend hanging up while it waits for the
// reply. Either way, requests the guest made available after the handler
// paused the rings are never started (the image shows it), nothing is
// logged at error level, and after a hang-up the daemon serves the next
// frontend.

import t, { type Test } from 'tap';
import { encodeMemTablePayload } from '../../src/frontend/encode';
import { Request } from '../../src/vhost-user/protocol';
import { BlkType, SECTOR_SIZE } from '../../src/frontend/blk-driver';
import { asanEnabled, runsAsanAddon } from '../helpers/vublk-process';
import { countersOf, total } from '../helpers/counters';
import { loopUnsupported } from '../helpers/loop-device';
import { throttleUnsupported, throttleWrites } from '../helpers/write-throttle';
import {
  connIdSince,
  connect,
  expectServes,
  logSince,
  readImage,
  spinUntilPopped,
  startDaemon,
  until,
  waitConnClosed,
  type Daemon,
} from './harness';

const MiB = 1 << 20;
/**
 * Large writes in flight, to a loop device whose writes are throttled to
 * THROTTLE_BPS: the drain lasts about FIRST * LEN / THROTTLE_BPS seconds,
 * long past the trigger.
 */
const THROTTLE_BPS = 8 * MiB;
const FIRST = 16;
const SECOND = 16;
const LEN = MiB;
/** The second batch lands past the first on the disk. */
const SECOND_AT = FIRST * LEN;

async function drainRace(t: Test, trigger: 'SIGTERM' | 'hang-up'): Promise<Daemon> {
  const d = await startDaemon(t, { imageBytes: 64 * MiB, loopSectorSize: 512, extraArgs: ['--log-level', 'debug'] });
  throttleWrites(t, d.disk, THROTTLE_BPS);
  if (asanEnabled()) t.ok(runsAsanAddon(d.v.child.pid!), 'the daemon runs the ASan addon'); // spawned
  const mark = d.v.stderr().length;
  const { fe, drv } = await connect(t, d, {
    queueSize: 256, // room for both batches (3 descriptors each)
    eventIdx: true,
    memTable: 'set-mem-table',
    memory: { regions: [32 * MiB, 32 * MiB] },
  });
  const conn = await connIdSince(d, mark);
  const noop = () => undefined;

  // The first batch: in flight when SET_MEM_TABLE arrives.
  const first = drv.submitBatch(
    Array.from({ length: FIRST }, (_, i) => ({
      q: 0,
      type: BlkType.OUT,
      sector: (i * LEN) / SECTOR_SIZE,
      data: Buffer.alloc(LEN, 0x10 + i),
      align: 4096,
    })),
  );
  for (const p of first) p.catch(noop);
  t.ok(spinUntilPopped(fe, 0, FIRST), `the daemon popped all ${FIRST} writes`);

  const tableMark = d.v.stderr().length;
  const mem = fe.mem!; // set up
  fe.send(
    Request.SET_MEM_TABLE,
    encodeMemTablePayload(mem.regions),
    mem.regions.map((r) => r.fd),
  );
  const handling = await until(() => logSince(d, tableMark).some((l) => /message .*request=SET_MEM_TABLE/.test(l)), 5000);
  t.ok(handling, 'the daemon took SET_MEM_TABLE (and paused the ring to drain)');

  // The second batch: available while the ring is paused.
  const second = drv.submitBatch(
    Array.from({ length: SECOND }, (_, i) => ({
      q: 0,
      type: BlkType.OUT,
      sector: (SECOND_AT + i * LEN) / SECTOR_SIZE,
      data: Buffer.alloc(LEN, 0xa0 + i),
      align: 4096,
    })),
  );
  for (const p of second) p.catch(noop);

  const closeMark = d.v.stderr().length;
  if (trigger === 'SIGTERM') {
    const r = await d.v.stop();
    t.equal(r.code, 0, 'the daemon exits 0');
  } else {
    fe.close();
    await waitConnClosed(d, closeMark, conn, 60_000);
  }
  const lines = logSince(d, closeMark);
  t.ok(
    lines.some((l) => /draining in-flight requests .*inflight=[1-9]/.test(l)),
    `the close started while the writes were still draining:\n${lines.join('\n')}`,
  );
  t.notOk(
    lines.some((l) => /^vublk: error: /.test(l)),
    `no error-level line (e.g. "session is destroyed"):\n${lines.filter((l) => /error/.test(l)).join('\n')}`,
  );
  // Each write is one disk op: the second batch issued none.
  const c = total(countersOf(d.v.stderr(), conn, 'closed'));
  t.equal(c.fixedOps + c.plainOps, FIRST, `only the first batch reached the disk (fixedOps=${c.fixedOps} plainOps=${c.plainOps})`);
  let started = 0;
  for (let i = 0; i < SECOND; i++) {
    const b = readImage(d.image, SECOND_AT + i * LEN, 4096);
    if (b.some((x) => x !== 0)) started++;
  }
  t.equal(started, 0, 'no request made available after the pause was started once the close began');
  return d;
}

const skip = loopUnsupported() ?? throttleUnsupported();

t.test('SIGTERM while SET_MEM_TABLE waits for the drain', { skip }, async (t) => {
  await drainRace(t, 'SIGTERM');
});

t.test('the frontend hangs up while SET_MEM_TABLE waits for the drain', { skip }, async (t) => {
  const d = await drainRace(t, 'hang-up');
  await expectServes(t, d);
});
