// Finding 4 of issue #7: I/O that outlives the drain timeout. A write that
// the kernel holds when a closing connection gives up draining must land
// before the next frontend is served; otherwise it can land after that
// frontend's own write to the same block and silently undo it.
//
// The write is held for real: the disk image lives on an ext4 file system
// that the test freezes (test/helpers/frozen-fs.ts). VUBLK_DRAIN_TIMEOUT_MS
// shortens the drain so the daemon gives up while it is frozen.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { BlkStatus, SECTOR_SIZE, type BlkDriver } from '../../src/frontend/blk-driver';
import { tmpDir } from '../helpers/vublk-process';
import { frozenFsUnsupported, makeFreezableFs } from '../helpers/frozen-fs';
import { connIdSince, connect, logSince, pattern, readImage, spinUntilPopped, startDaemon, until } from './harness';

const IMAGE_BYTES = 32 << 20;
const SECTOR = 2048;

const unsupported = frozenFsUnsupported();

interface Held {
  /** What the first frontend sends while the file system is frozen. */
  send: (drv: BlkDriver) => Promise<unknown>;
  /** The counts the daemon must say it waits for. */
  waits: RegExp;
}

async function heldPastDrain(t: Test, held: Held): Promise<void> {
  const dir = tmpDir('vublk-late-io-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let ffs: ReturnType<typeof makeFreezableFs>;
  try {
    ffs = makeFreezableFs(t, dir);
  } catch (err) {
    // A container without CAP_SYS_ADMIN cannot mount; anything else is a failure.
    if (!/permission denied|not permitted/i.test((err as Error).message)) throw err;
    t.comment(`skip: cannot mount a file system here: ${(err as Error).message}`);
    return;
  }
  const image = `${ffs.mnt}/disk.img`;
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, IMAGE_BYTES);
  const savedEnv = process.env.VUBLK_DRAIN_TIMEOUT_MS;
  process.env.VUBLK_DRAIN_TIMEOUT_MS = '200';
  t.teardown(() => {
    if (savedEnv === undefined) delete process.env.VUBLK_DRAIN_TIMEOUT_MS;
    else process.env.VUBLK_DRAIN_TIMEOUT_MS = savedEnv;
  });
  const d = await startDaemon(t, { diskFile: image, imageBytes: IMAGE_BYTES });
  // Teardowns run last-registered first: thaw before the daemon is stopped
  // (a process with a write stuck in the kernel cannot exit).
  t.teardown(() => ffs.thaw());

  const mark = d.v.stderr().length;
  const first = await connect(t, d, { queues: 1 });
  const c1 = await connIdSince(d, mark);
  const fresh = pattern(4096, 2);

  ffs.freeze();
  void held.send(first.drv).catch(() => undefined); // never completes for the first frontend
  t.ok(spinUntilPopped(first.fe, 0, 1), 'the daemon took the first frontend\u2019s request');
  first.fe.close();
  t.ok(
    await until(() => logSince(d, mark).some((l) => /in-flight requests did not drain/.test(l)), 20_000),
    'the daemon gives up draining while the request is held',
  );

  // The next frontend connects now and, as soon as it is served, writes the
  // same block (with the bug: while the stale write is still held).
  let served = false;
  const second = connect(t, d, { queues: 1 }, { timeoutMs: 60_000 }).then((c) => {
    served = true;
    return c;
  });
  const secondWrite = second.then(({ drv }) => drv.write(0, SECTOR, fresh));
  const c2Line = new RegExp(`frontend connected conn=(?!${c1}\\b)\\d+`);
  // Either the daemon says it waits for the held write, or (the bug) it serves the next frontend.
  await until(() => served || logSince(d, mark).some((l) => /waiting for native I\/O/.test(l) || c2Line.test(l)), 20_000);
  const waitLine = logSince(d, mark).find((l) => /waiting for native I\/O/.test(l));
  t.match(waitLine ?? '', new RegExp(`conn=${c1} ${held.waits.source}`), `the daemon logs what it waits for: ${waitLine ?? '(no line)'}`);
  t.notOk(served || logSince(d, mark).some((l) => c2Line.test(l)), 'the next frontend is not served while the old request is held');

  ffs.thaw();
  const { drv } = await second;
  t.equal((await secondWrite).status, BlkStatus.OK, 'the next frontend writes the same block');
  const r = await drv.read(0, SECTOR, fresh.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(fresh), 'and reads its own data back');
  // Give a stale write every chance to land, then look at the image.
  await until(() => logSince(d, mark).some((l) => new RegExp(`frontend connection closed conn=${c1}\\b`).test(l)), 20_000);
  t.ok(
    readImage(image, SECTOR * SECTOR_SIZE, fresh.length).equals(fresh),
    'the image holds the next frontend\u2019s data, not the stale write',
  );

  const lines = logSince(d, mark);
  const idx = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const finished = idx(new RegExp(`native I/O of the closing connection finished conn=${c1}\\b`));
  const closed = idx(new RegExp(`frontend connection closed conn=${c1}\\b`));
  const next = idx(c2Line);
  t.ok(
    finished >= 0 && finished < closed && closed < next,
    `order: held request finished (${finished}), conn ${c1} closed (${closed}), next served (${next})`,
  );
}

t.test('a write held past the drain timeout lands before the next frontend is served', { skip: unsupported }, (t) =>
  heldPastDrain(t, { send: (drv) => drv.write(0, SECTOR, pattern(4096, 1)), waits: /ioUring=1 threadPool=0/ }),
);
// A BLKDISCARD (the thread-pool side of Session.outstanding()) cannot be held
// this way: a loop device punches holes in its backing file without the
// file system's freeze protection, so the discard completes while frozen.
// test/device/drain.test.ts covers the thread-pool count with a fake.
