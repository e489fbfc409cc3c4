// io_uring fixed buffers: vublk registers guest memory with io_uring and
// issues READ_FIXED / WRITE_FIXED for single-segment I/O that needs no
// bounce; when registration is refused (RLIMIT_MEMLOCK without
// CAP_IPC_LOCK) it warns once and serves with plain reads and writes.
// The daemon's per-queue counters (SIGUSR1) tell which ops it issued.

import t, { type Test } from 'tap';
import path from 'node:path';
import {
  asanEnabled,
  makeImage,
  runsAsanAddon,
  startVublk,
  teardownDaemon,
  tmpDir,
  warnLines,
  type VublkProcess,
} from '../helpers/vublk-process';
import { total } from '../helpers/counters';
import { BlkStatus, SECTOR_SIZE, type BlkDriver } from '../../src/frontend/blk-driver';
import type { Frontend } from '../../src/frontend/frontend';
import { pattern } from './harness';
import {
  CAP_IPC_LOCK,
  buildRawRequest,
  runRaw,
  countersNow,
  firstDiff,
  openSession,
  procCapsAndMemlock,
  readDirect,
  requirements,
} from './align-helpers';

const IMAGE_BYTES = 32 << 20;
const MEMLOCK = 65536;
const WARN = /^vublk: warn: cannot register guest memory with io_uring; using plain reads and writes/;

interface Daemon {
  v: VublkProcess;
  image: string;
  socket: string;
}

/** Image + socket in a fresh directory; teardown stops vublk (exit 0) and removes it. */
async function daemon(t: Test, start: (args: string[]) => Promise<VublkProcess>): Promise<Daemon> {
  const dir = tmpDir('vublk-fixed-');
  const image = makeImage(dir, IMAGE_BYTES);
  const socket = path.join(dir, 'vublk.sock');
  let v: VublkProcess | undefined;
  teardownDaemon(t, dir, () => v);
  v = await start(['--disk', image, '--socket', socket]);
  if (asanEnabled()) t.ok(runsAsanAddon(v.child.pid!), 'the daemon runs the ASan addon'); // spawned
  return { v, image, socket };
}

/**
 * Aligned single-segment I/O ('3desc', 4 KiB aligned buffers and offsets,
 * one data descriptor): writes and reads of 4 KiB and 64 KiB. Checks every
 * read and the image. Returns how many disk ops it caused.
 */
async function alignedIo(t: Test, d: Daemon, drv: BlkDriver, seed: number): Promise<number> {
  let ops = 0;
  const sizes = [4096, 4096, 8192, 65536];
  for (let i = 0; i < 8; i++) {
    const len = sizes[i % sizes.length]!; // in range
    const sector = (1 << 20) / SECTOR_SIZE + i * 256; // 4 KiB aligned, 128 KiB apart
    const data = pattern(len, seed + i);
    const w = await drv.write(0, sector, data, { layout: '3desc', align: 4096 });
    const r = await drv.read(0, sector, len, { layout: '3desc', align: 4096 });
    ops += 2;
    t.ok(
      w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data),
      `${len} B at sector ${sector}: write and read back (status ${w.status}/${r.status})`,
    );
    const i2 = firstDiff(readDirect(d.image, sector * SECTOR_SIZE, len), data);
    t.ok(i2 < 0, `${len} B at sector ${sector}: the image holds the write${i2 < 0 ? '' : ` (first difference at ${i2})`}`);
  }
  return ops;
}

const connect = (t: Test, d: Daemon) => openSession(t, d.v, d.socket, { queues: 1 });

t.test('registered guest memory: aligned single-segment I/O uses READ_FIXED/WRITE_FIXED', async (t) => {
  const d = await daemon(t, (args) => startVublk(args));
  const { fe, drv, conn, mark } = await connect(t, d);
  const ops = await alignedIo(t, d, drv, 1);
  const c = total(await countersNow(d.v, conn, 1));
  t.equal(c.fixedOps, ops, `every one of the ${ops} ops was fixed (fixedOps=${c.fixedOps})`);
  t.equal(c.plainOps, 0, 'no plain op');
  t.equal(c.bytesBounced, 0, 'nothing bounced');

  // What does not qualify goes plain: two data segments, a segment across a
  // memory-region boundary (two iovecs), a FLUSH.
  const a = pattern(4096, 11);
  const b = pattern(4096, 12);
  // (The two segments are apart in memory, second page first, so the daemon cannot merge them.)
  const mem = fe.mem!; // set up
  const area = mem.alloc(3 * 4096, 4096);
  const req = buildRawRequest(
    mem,
    1,
    4096,
    [
      { gpa: area + 2 * 4096, len: 4096 },
      { gpa: area, len: 4096 },
    ],
    { payload: Buffer.concat([a, b]) },
  );
  const two = await runRaw(fe, 0, req);
  mem.release(area);
  t.equal(two.status, BlkStatus.OK, 'a two-segment write: OK');
  const straddle = await drv.read(0, 4096, 8192, { layout: '3desc', align: 4096, straddle: true });
  t.ok(
    straddle.status === BlkStatus.OK && straddle.data.equals(Buffer.concat([a, b])),
    'a read into a buffer across a region boundary returns it',
  );
  t.equal((await drv.flush(0)).status, BlkStatus.OK, 'a flush: OK');
  const c2 = total(await countersNow(d.v, conn, 1));
  t.equal(c2.fixedOps, c.fixedOps, 'fixedOps unchanged by them');
  t.equal(c2.plainOps, 3, 'three plain ops (writev, readv, fsync)');
  t.same(warnLines(d.v, mark), [], 'no warning: registration worked');
});

/** A write and a read whose guest buffers sit 1 byte past a page: the daemon bounces both. */
async function bouncedIo(t: Test, d: Daemon, fe: Frontend, seed: number): Promise<number> {
  const mem = fe.mem!; // set up
  const area = mem.alloc(3 * 4096, 4096);
  const sector = (3 << 20) / SECTOR_SIZE;
  const data = pattern(4096, seed);
  const w = await runRaw(fe, 0, buildRawRequest(mem, 1, sector, [{ gpa: area + 1, len: 4096 }], { payload: data }));
  const r = await runRaw(fe, 0, buildRawRequest(mem, 0, sector, [{ gpa: area + 4096 + 1, len: 4096 }]));
  mem.release(area);
  t.ok(w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data), 'an unaligned write and read back: OK');
  t.ok(firstDiff(readDirect(d.image, sector * SECTOR_SIZE, 4096), data) < 0, 'the image holds the write');
  return 2;
}

t.test('the bounce arena is registered too: bounced requests use READ_FIXED/WRITE_FIXED', async (t) => {
  const d = await daemon(t, (args) => startVublk(args));
  const { fe, conn } = await connect(t, d);
  const ops = await bouncedIo(t, d, fe, 31);
  const c = total(await countersNow(d.v, conn, 1));
  t.ok(c.bytesBounced >= 2 * 4096, `both were bounced (bytesBounced=${c.bytesBounced})`);
  t.equal(c.fixedOps, ops, `their ${ops} ops were fixed (fixedOps=${c.fixedOps})`);
  t.equal(c.plainOps, 0, 'no plain op');
});

// Root has CAP_IPC_LOCK, which lets io_uring pin memory past RLIMIT_MEMLOCK:
// drop it (bounding set, so the exec'd node cannot regain it) and lower the
// limit. Without root there is no CAP_IPC_LOCK to drop.
const isRoot = process.getuid?.() === 0;
const skipMemlock = requirements({ commands: isRoot ? ['setpriv', 'prlimit'] : ['prlimit'] });
const WRAPPER = [
  ...(isRoot ? ['setpriv', '--inh-caps=-ipc_lock', '--ambient-caps=-ipc_lock', '--bounding-set=-ipc_lock', '--'] : []),
  'prlimit',
  `--memlock=${MEMLOCK}`,
  '--',
];

t.test(
  'registration refused (low RLIMIT_MEMLOCK, no CAP_IPC_LOCK): one warning, plain ops, same data',
  { skip: skipMemlock },
  async (t) => {
    const d = await daemon(t, (args) => startVublk(args, { wrapper: WRAPPER }));
    const pc = procCapsAndMemlock(d.v.child.pid!); // spawned
    t.equal((pc.capEff >> BigInt(CAP_IPC_LOCK)) & 1n, 0n, `the daemon has no CAP_IPC_LOCK (CapEff ${pc.capEff.toString(16)})`);
    t.same([pc.memlockSoft, pc.memlockHard], [String(MEMLOCK), String(MEMLOCK)], `its RLIMIT_MEMLOCK is ${MEMLOCK}`);

    const { drv, conn, mark } = await connect(t, d);
    const warn = await d.v.waitForLog(WARN, 10000);
    t.match(warn, new RegExp(`conn=${conn}( |$)`), `the warning names the connection: ${warn}`);
    const ops = await alignedIo(t, d, drv, 2);
    const c = total(await countersNow(d.v, conn, 1));
    t.equal(c.fixedOps, 0, 'no fixed op');
    t.equal(c.plainOps, ops, `all ${ops} ops were plain (plainOps=${c.plainOps})`);
    t.equal(c.errors, 0, 'no request failed');
    const warns = warnLines(d.v, mark);
    t.equal(warns.length, 1, `exactly one warning line for the connection:\n${warns.join('\n')}`);
  },
);

t.test('--no-fixed-buffers: no registration, no warning, plain ops', async (t) => {
  const d = await daemon(t, (args) => startVublk([...args, '--no-fixed-buffers']));
  const { fe, drv, conn, mark } = await connect(t, d);
  const ops = (await alignedIo(t, d, drv, 3)) + (await bouncedIo(t, d, fe, 32));
  const c = total(await countersNow(d.v, conn, 1));
  t.ok(c.bytesBounced >= 2 * 4096, `the unaligned ones were bounced (bytesBounced=${c.bytesBounced})`);
  t.equal(c.fixedOps, 0, 'no fixed op');
  t.equal(c.plainOps, ops, `all ${ops} ops were plain`);
  t.same(warnLines(d.v, mark), [], 'no warning');
});
