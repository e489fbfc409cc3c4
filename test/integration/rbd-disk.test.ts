// vublk on an RBD image of a real single-node Ceph cluster (one per file):
// every request type through the in-repo frontend, with the image checked
// through `rbd export`; a second vublk on the same image is refused while the
// first holds its exclusive lock. On worker threads and in-thread.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runVublk, startVublk, stopCleanly, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import {
  cephUnsupported,
  createImage,
  exportImage,
  osdStart,
  osdStop,
  readOnlyClient,
  startCephCluster,
  type CephCluster,
} from '../helpers/ceph-cluster';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, BlkStatus, SECTOR_SIZE, parseBlkConfig } from '../../src/frontend/blk-driver';
import { VirtioFeature } from '../../src/frontend/features';
import { pattern, sleep, until } from './harness';
import { EXIT_MARGIN_MS } from '../../src/daemon/exit-deadline';
import { execFileSync } from 'node:child_process';
import { native, type Session } from '../../src/native/binding';
import {
  allocateArrays,
  FALLOC_PUNCH,
  FALLOC_ZERO,
  OP_BLKDISCARD,
  OP_FALLOCATE,
  OP_FLAG_DSYNC,
  OP_FLAG_FIXED,
  OP_FSYNC,
  OP_READV,
  OP_WRITEV,
} from '../../src/blk/shared-arrays';

const skip = cephUnsupported();
// The suite's ASan and in-thread passes run each file with plain node (tap's
// 30 s default): a cluster, two OSD outages and a lock wait take minutes.
t.setTimeout(15 * 60_000);
const OBJECT_SECTORS = (4 << 20) / SECTOR_SIZE; // rbd create's default object size

async function serveImage(
  t: Test,
  c: CephCluster,
  image: string,
  extra: string[],
  timeoutMs = 30_000,
): Promise<{ v: VublkProcess; socket: string }> {
  const dir = tmpDir('vublk-rbd-');
  const socket = path.join(dir, 'vublk.sock');
  const v = await startVublk(
    ['--disk', `rbd:rbd/${image}`, '--ceph-conf', c.conf, '--socket', socket, '--serial', 'rbd-serial', ...extra],
    {
      timeoutMs,
    },
  );
  t.teardown(async () => {
    try {
      await stopCleanly(v);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  return { v, socket };
}

t.test('vublk on an RBD image', { skip }, async (t) => {
  const c = startCephCluster(t);
  for (const workers of [undefined, '0']) {
    await t.test(`every request type, workers ${workers ?? 'default'}`, async (t) => {
      const image = `img-${workers ?? 'default'}`;
      createImage(c, image);
      // Default workers: two queues, so two threads' Sessions share the image.
      const queues = workers === undefined ? 2 : 1;
      const { socket } = await serveImage(t, c, image, [
        '--queues',
        String(queues),
        ...(workers === undefined ? [] : ['--workers', workers]),
      ]);
      const fe = await Frontend.connect(socket);
      t.teardown(() => fe.close());
      await fe.setup({ queues, memory: { regions: [4 << 20, 4 << 20] } });
      const drv = new BlkDriver(fe);

      const big = pattern(64 << 10, 1);
      t.equal((await drv.write(queues - 1, 2048, big)).status, 0, `a 64 KiB WRITE on queue ${queues - 1} succeeds`);
      const r = await drv.read(0, 2048, big.length);
      t.ok(r.status === 0 && r.data.equals(big), 'and reads back');

      // One 512-byte sector at an odd sector: librbd needs no alignment, so no bounce.
      const small = pattern(512, 2);
      t.equal((await drv.write(0, 4097, small)).status, 0, 'a 512-byte WRITE at an odd sector succeeds');
      const around = await drv.read(0, 4096, 1536);
      t.equal(around.status, 0, 'a 1536-byte READ around it succeeds');
      t.ok(around.data.subarray(512, 1024).equals(small), 'and sees the sector');
      t.ok(
        around.data.subarray(0, 512).equals(Buffer.alloc(512)) && around.data.subarray(1024).equals(Buffer.alloc(512)),
        'and zeroes on both sides',
      );

      t.equal((await drv.write(0, 6000, pattern(8 * 512, 3))).status, 0, 'WRITE before WRITE_ZEROES');
      t.equal((await drv.writeZeroes(0, 6000, 8)).status, 0, 'WRITE_ZEROES succeeds');
      t.ok((await drv.read(0, 6000, 8 * 512)).data.equals(Buffer.alloc(8 * 512)), 'zeroes read back');
      t.equal((await drv.write(0, 6100, pattern(8 * 512, 4))).status, 0, 'WRITE before WRITE_ZEROES with UNMAP');
      t.equal((await drv.writeZeroes(0, 6100, 8, true)).status, 0, 'WRITE_ZEROES with UNMAP succeeds');
      t.ok((await drv.read(0, 6100, 8 * 512)).data.equals(Buffer.alloc(8 * 512)), 'zeroes read back');

      // A whole object: librbd removes it (a partial one it may leave as it is).
      t.equal((await drv.write(0, OBJECT_SECTORS, pattern(1 << 20, 5))).status, 0, 'WRITE into the second object');
      t.equal((await drv.discard(0, OBJECT_SECTORS, OBJECT_SECTORS)).status, 0, 'DISCARD of the whole object succeeds');
      t.ok((await drv.read(0, OBJECT_SECTORS, 1 << 20)).data.equals(Buffer.alloc(1 << 20)), 'zeroes read back');

      t.equal((await drv.flush(0)).status, 0, 'FLUSH succeeds');
      const id = await drv.getId(0);
      t.equal(id.status, 0, 'GET_ID succeeds');
      t.equal(id.data.subarray(0, 10).toString(), 'rbd-serial', 'and names the serial');

      const img = exportImage(c, image);
      t.equal(img.length, 64 << 20, 'rbd export reads the whole image');
      t.ok(img.subarray(2048 * 512, 2048 * 512 + big.length).equals(big), 'which holds the 64 KiB write');
      t.ok(img.subarray(4097 * 512, 4098 * 512).equals(small), 'and the 512-byte one');
      t.ok(img.subarray(6000 * 512, 6108 * 512).equals(Buffer.alloc(108 * 512)), 'and zeroes where WRITE_ZEROES went');
      t.ok(img.subarray(OBJECT_SECTORS * 512, OBJECT_SECTORS * 1024).equals(Buffer.alloc(4 << 20)), 'and where DISCARD went');
    });
  }

  await t.test('a native Session on the image: ops checked as for a file, completed through librbd', async (t) => {
    createImage(c, 'native', '4M');
    const DISK = 4 << 20;
    const image = new native.RbdImage('rbd', '', 'native', c.conf, '', false);
    t.teardown(() => image.destroy());
    t.equal(image.size(), DISK, 'size()');
    t.equal(image.objectSize(), 4 << 20, 'objectSize()');
    const arrays = allocateArrays(16);
    const done = new Map<number, number>();
    const callbacks = {
      onChains() {},
      onCompletions: (n: number) => {
        for (let i = 0; i < n; i++) done.set(arrays.cqes[2 * i]!, arrays.cqes[2 * i + 1]!);
      },
      onViolation() {},
    };
    t.throws(
      () => new native.Session(1, 16, -1, 16, 1 << 20, arrays, callbacks, DISK, false, undefined, 12345),
      /rbdToken names no RbdImage/,
    );
    const session: Session = new native.Session(1, 16, -1, 16, 1 << 20, arrays, callbacks, DISK, false, undefined, image.token);
    t.teardown(() => session.destroy());
    const mfd = native.memfdCreate('vublk-rbd', 1 << 20);
    const bufId = session.addRegion(mfd, 0, 1 << 20, 0x7f0000000000, 0);
    const data = pattern(8192, 7);
    session.writeGuest(bufId, 0, data);

    const rw = (opcode: number, ud: number, offset: number, len: number, flags = 0): void => {
      arrays.sqIovs.set([bufId, 0, len], 0);
      arrays.sqOps.set([opcode, ud, offset, 0, 1, flags], 0);
    };
    const falloc = (opcode: number, ud: number, offset: number, len: number, mode: number): void => {
      arrays.sqOps.set([opcode, ud, offset, len, mode, 0], 0);
    };
    const refused: Array<[string, () => void, RegExp]> = [
      ['read crossing the end', () => rw(OP_READV, 1, DISK - 512, 1024), /outside the disk/],
      ['write far past the end', () => rw(OP_WRITEV, 1, 2 ** 52, 4096), /outside the disk/],
      ['zeroing crossing the end', () => falloc(OP_FALLOCATE, 1, DISK - 4096, 8192, FALLOC_ZERO), /outside the disk/],
      ['BLKDISCARD', () => falloc(OP_BLKDISCARD, 1, 0, 4096, 0), /not a block device/],
      ['a FIXED op (nothing is registered)', () => rw(OP_WRITEV, 1, 0, 4096, OP_FLAG_FIXED), /FIXED op/],
    ];
    for (const [name, fill, message] of refused) {
      fill();
      t.throws(() => session.submit(1), { name: 'RangeError', message }, `${name} is refused`);
    }
    t.equal(session.registerBuffers(), 0, 'registerBuffers pins nothing');

    const settle = async (ud: number): Promise<number | undefined> => {
      const until = Date.now() + 20_000;
      while (!done.has(ud) && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      return done.get(ud);
    };
    rw(OP_WRITEV, 10, DISK - 8192, 8192, OP_FLAG_DSYNC);
    t.equal(session.submit(1), 1, 'a DSYNC write of the last 8 KiB is taken');
    t.equal(await settle(10), 8192, 'and completes with its length');
    session.writeGuest(bufId, 0, Buffer.alloc(8192));
    rw(OP_READV, 11, DISK - 8192, 8192);
    session.submit(1);
    t.equal(await settle(11), 8192, 'a read completes with its length');
    const back = Buffer.alloc(8192);
    session.readGuest(bufId, 0, back);
    t.ok(back.equals(data), 'into guest memory, in place');

    // Two reads of two iovecs each, submitted one right after the other: the
    // second fills the same iovec slots with other addresses before the first
    // has completed. librbd reads a readv's iovec array only when the data has
    // come, so each op must have its own copy (a shared one put the first
    // read's data into the second's buffers, or tripped librbd's assert).
    session.writeGuest(bufId, 0, Buffer.alloc(64 << 10));
    const reads: Array<[number, Array<[number, number]>]> = [
      [
        15,
        [
          [16384, 4096],
          [24576, 4096],
        ],
      ],
      [
        16,
        [
          [32768, 2048],
          [40960, 6144],
        ],
      ],
    ];
    for (const [ud, iovs] of reads) {
      arrays.sqIovs.set(
        iovs.flatMap(([addr, len]) => [bufId, addr, len]),
        0,
      );
      arrays.sqOps.set([OP_READV, ud, DISK - 8192, 0, iovs.length, 0], 0);
      t.equal(session.submit(1), 1, `read ${ud} of two iovecs is taken`);
    }
    for (const [ud, iovs] of reads) {
      t.equal(await settle(ud), 8192, `read ${ud} completes with its length`);
      const got = Buffer.concat(
        iovs.map(([addr, len]) => {
          const b = Buffer.alloc(len);
          session.readGuest(bufId, addr, b);
          return b;
        }),
      );
      t.ok(got.equals(data), `read ${ud}'s data lands in its own iovecs`);
    }
    arrays.sqOps.set([OP_FSYNC, 12, 0, 0, 0, 0], 0);
    session.submit(1);
    t.equal(await settle(12), 0, 'FSYNC (rbd_aio_flush) completes with 0');
    falloc(OP_FALLOCATE, 13, DISK - 8192, 4096, FALLOC_ZERO);
    session.submit(1);
    t.equal(await settle(13), 0, 'zeroing completes with 0');
    let img = exportImage(c, 'native');
    t.ok(img.subarray(DISK - 8192, DISK - 4096).equals(Buffer.alloc(4096)), 'rbd export: the zeroed half reads as zeroes');
    t.ok(img.subarray(DISK - 4096).equals(data.subarray(4096)), 'and the other half holds the write');
    falloc(OP_FALLOCATE, 14, 0, DISK, FALLOC_PUNCH);
    session.submit(1);
    t.equal(await settle(14), 0, 'a punch (rbd_aio_discard) of the whole object completes with 0');
    t.equal(session.outstanding().rbd, 0, 'nothing is outstanding');
    img = exportImage(c, 'native');
    t.ok(img.equals(Buffer.alloc(DISK)), 'and the image reads as zeroes');
  });

  await t.test('a resize by another client reaches the guest through the update watch', async (t) => {
    createImage(c, 'grow');
    const { v, socket } = await serveImage(t, c, 'grow', []);
    const fe = await Frontend.connect(socket);
    t.teardown(() => fe.close());
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const capacity = async () => Number(parseBlkConfig(await fe.readConfig()).capacity);
    t.equal(await capacity(), (64 << 20) / SECTOR_SIZE, 'capacity before');
    execFileSync('rbd', ['--conf', c.conf, 'resize', '--size', '96M', 'rbd/grow'], { stdio: 'ignore' });
    t.ok(await until(() => fe.configChanges === 1, 10_000), 'the frontend got CONFIG_CHANGE_MSG');
    t.equal(await capacity(), (96 << 20) / SECTOR_SIZE, 'GET_CONFIG shows the new capacity');
    t.match(v.stderr(), /capacity changed disk=rbd:rbd\/grow trigger=rbd-update bytes=100663296/, 'noticed through the update watch');
    const drv = new BlkDriver(fe);
    const data = pattern(4096, 11);
    const sector = (64 << 20) / SECTOR_SIZE + 8;
    t.equal((await drv.write(0, sector, data)).status, 0, 'a write past the old end succeeds');
    t.equal((await drv.flush(0)).status, 0, 'FLUSH');
    t.ok(
      exportImage(c, 'grow')
        .subarray(sector * SECTOR_SIZE, sector * SECTOR_SIZE + 4096)
        .equals(data),
      'and lands in the image',
    );
  });

  await t.test('a second vublk on the same image is refused while the first holds it', async (t) => {
    createImage(c, 'locked');
    const first = await serveImage(t, c, 'locked', []);
    const dir = tmpDir('vublk-rbd-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const second = await runVublk(['--disk', 'rbd:rbd/locked', '--ceph-conf', c.conf, '--socket', path.join(dir, 's.sock')], {
      timeoutMs: 30_000,
    });
    t.equal(second.code, 1, 'the second vublk exits 1');
    t.match(second.stderr, /rbd image rbd\/locked is locked by another client/, 'saying the image is locked');
    const fe = await Frontend.connect(first.socket);
    t.teardown(() => fe.close());
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const data = pattern(4096, 9);
    const drv = new BlkDriver(fe);
    t.equal((await drv.write(0, 0, data)).status, 0, 'the first still writes');
    t.ok((await drv.read(0, 0, 4096)).data.equals(data), 'and reads');
    t.equal((await drv.flush(0)).status, 0, 'and flushes');

    // A reader takes no lock: it may run beside the writer.
    const reader = await serveImage(t, c, 'locked', ['--read-only']);
    const rfe = await Frontend.connect(reader.socket);
    t.teardown(() => rfe.close());
    await rfe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const rdrv = new BlkDriver(rfe);
    t.ok((await rdrv.read(0, 0, 4096)).data.equals(data), 'a --read-only vublk starts beside it and reads what it wrote');
    t.not((await rdrv.write(0, 0, data)).status, 0, 'but cannot write');
  });

  await t.test('after a vublk is killed, the next one takes its lock once the cluster sees it gone', async (t) => {
    createImage(c, 'crash');
    const dir = tmpDir('vublk-rbd-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const socket = path.join(dir, 'first.sock');
    const first = await startVublk(['--disk', 'rbd:rbd/crash', '--ceph-conf', c.conf, '--socket', socket], { timeoutMs: 30_000 });
    t.teardown(() => first.stop('SIGKILL'));
    const fe = await Frontend.connect(socket);
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const drv = new BlkDriver(fe);
    const data = pattern(8192, 31);
    t.equal((await drv.write(0, 64, data)).status, 0, 'the first vublk writes');
    t.equal((await drv.flush(0)).status, 0, 'and flushes');
    fe.close();
    await first.stop('SIGKILL');
    // The dead client's watch lapses after about 30 s; until then the lock is its.
    const next = await serveImage(t, c, 'crash', [], 90_000);
    t.match(next.v.stderr(), /taking the exclusive lock of the rbd image disk=rbd:rbd\/crash/, 'the next one says it takes the lock');
    const fe2 = await Frontend.connect(next.socket);
    t.teardown(() => fe2.close());
    await fe2.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const drv2 = new BlkDriver(fe2);
    t.ok((await drv2.read(0, 64, 8192)).data.equals(data), 'serves what the first one flushed');
    t.equal((await drv2.write(0, 64, pattern(8192, 32))).status, 0, 'and writes');
  });

  await t.test('a client with read-only caps: the disk follows them (read-only, with a warning)', async (t) => {
    createImage(c, 'ro');
    const conf = readOnlyClient(c, 'ro');
    const dir = tmpDir('vublk-rbd-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const socket = path.join(dir, 's.sock');
    const args = ['--disk', 'rbd:rbd/ro', '--ceph-conf', conf, '--ceph-id', 'ro', '--socket', socket];
    for (const extra of [[], ['--read-only']]) {
      const v = await startVublk([...args, ...extra], { timeoutMs: 30_000 });
      const fe = await Frontend.connect(socket);
      await fe.setup({ queues: 1, memory: { regions: [1 << 20] } });
      const drv = new BlkDriver(fe);
      const what = extra.length === 0 ? 'without --read-only' : 'with --read-only';
      t.equal((await drv.read(0, 0, 4096)).status, 0, `${what}: a READ succeeds`);
      t.ok(fe.hasFeature(VirtioFeature.BLK_RO), `${what}: VIRTIO_BLK_F_RO is offered`);
      t.equal((await drv.write(0, 0, pattern(4096, 9))).status, BlkStatus.IOERR, `${what}: a WRITE gets IOERR`);
      fe.close();
      await stopCleanly(v);
      t.match(v.stderr(), /serving disk=rbd:rbd\/ro .*readOnly=true/, `${what}: served read-only`);
      const warned =
        /vublk: warn: serving the rbd image read-only: this client may not write to it \(read-only caps\) disk=rbd:rbd\/ro client=ro/;
      if (extra.length === 0) t.match(v.stderr(), warned, 'and says why');
      else t.notMatch(v.stderr(), warned, 'no warning when it was asked for');
    }
  });

  await t.test('rbd:POOL/IMAGE@SNAP serves the snapshot, read-only, beside the image that moved on', async (t) => {
    createImage(c, 'snapped');
    const before = pattern(8192, 41);
    const live = await serveImage(t, c, 'snapped', []);
    const fe = await Frontend.connect(live.socket);
    t.teardown(() => fe.close());
    await fe.setup({ queues: 1, memory: { regions: [1 << 20] } });
    const drv = new BlkDriver(fe);
    t.equal((await drv.write(0, 8, before)).status, 0, 'the image is written');
    t.equal((await drv.flush(0)).status, 0, 'and flushed');
    execFileSync('rbd', ['--conf', c.conf, 'snap', 'create', 'rbd/snapped@s1']);
    t.equal((await drv.write(0, 8, pattern(8192, 42))).status, 0, 'the image moves on after the snapshot');

    const dir = tmpDir('vublk-rbd-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const socket = path.join(dir, 'snap.sock');
    const v = await startVublk(['--disk', 'rbd:rbd/snapped@s1', '--ceph-conf', c.conf, '--socket', socket], { timeoutMs: 30_000 });
    t.teardown(() => stopCleanly(v));
    const sfe = await Frontend.connect(socket);
    t.teardown(() => sfe.close());
    await sfe.setup({ queues: 1, memory: { regions: [1 << 20] } });
    const sdrv = new BlkDriver(sfe);
    t.ok(sfe.hasFeature(VirtioFeature.BLK_RO), 'VIRTIO_BLK_F_RO is offered');
    t.ok((await sdrv.read(0, 8, 8192)).data.equals(before), 'a READ returns the data as it was at the snapshot');
    t.equal((await sdrv.write(0, 8, before)).status, BlkStatus.IOERR, 'a WRITE gets IOERR');
    t.match(v.stderr(), /serving an rbd snapshot: the disk is read-only disk=rbd:rbd\/snapped@s1/, 'it says so');
    const missing = await runVublk(['--disk', 'rbd:rbd/snapped@nope', '--ceph-conf', c.conf, '--socket', path.join(dir, 'x.sock')], {
      timeoutMs: 30_000,
    });
    t.equal(missing.code, 1, 'a snapshot that does not exist: exit 1');
    t.match(missing.stderr, /cannot open disk rbd:rbd\/snapped@nope/, 'naming it');
  });

  await t.test('an OSD stopped for 10 s: requests wait, then complete when it is back', async (t) => {
    createImage(c, 'outage');
    // Data vublk's librbd has not cached: only an OSD can answer a READ of it.
    execFileSync(
      'rbd',
      ['--conf', c.conf, 'bench', '--io-type', 'write', '--io-size', '4096', '--io-total', '65536', '--io-pattern', 'seq', 'rbd/outage'],
      { stdio: 'ignore' },
    );
    const { socket } = await serveImage(t, c, 'outage', []);
    const fe = await Frontend.connect(socket);
    t.teardown(() => fe.close());
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const drv = new BlkDriver(fe);
    const data = pattern(64 << 10, 21);
    osdStop(c);
    let osdDown = true;
    t.teardown(() => {
      if (osdDown) osdStart(c);
    });
    const settled = new Set<string>();
    const track = <T>(name: string, p: Promise<T>) => p.finally(() => settled.add(name));
    const write = track('write', drv.write(0, 1024, data));
    const flush = track('flush', drv.flush(0));
    const read = track('read', drv.read(0, 0, 4096));
    await sleep(10_000);
    t.notOk(settled.has('flush'), 'FLUSH waits while the OSD is down');
    t.notOk(settled.has('read'), 'so does a READ only an OSD can answer');
    osdStart(c);
    osdDown = false;
    t.equal((await write).status, 0, 'the WRITE completes with OK');
    t.equal((await flush).status, 0, 'the FLUSH completes with OK');
    const r = await read;
    const img = exportImage(c, 'outage');
    t.ok(r.status === 0 && r.data.equals(img.subarray(0, 4096)), 'the READ completes with what rbd bench wrote');
    t.ok((await drv.read(0, 1024, data.length)).data.equals(data), 'the write reads back');
    t.ok(img.subarray(1024 * SECTOR_SIZE, 1024 * SECTOR_SIZE + data.length).equals(data), 'and is in the image');
  });

  await t.test('SIGTERM while the OSD is down and a WRITE waits: vublk exits within its bound and says why', async (t) => {
    createImage(c, 'stuck');
    const dir = tmpDir('vublk-rbd-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const socket = path.join(dir, 'vublk.sock');
    const drainMs = 1000;
    const v = await startVublk(['--disk', 'rbd:rbd/stuck', '--ceph-conf', c.conf, '--socket', socket], {
      timeoutMs: 30_000,
      env: { VUBLK_DRAIN_TIMEOUT_MS: String(drainMs) },
    });
    t.teardown(() => v.stop('SIGKILL'));
    const fe = await Frontend.connect(socket);
    t.teardown(() => fe.close());
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const drv = new BlkDriver(fe);
    t.equal((await drv.write(0, 0, pattern(4096, 31))).status, 0, 'a WRITE before the outage completes');
    osdStop(c);
    let osdDown = true;
    t.teardown(() => {
      if (osdDown) osdStart(c);
    });
    // Never completed: the connection goes with the daemon.
    drv.write(0, 8, pattern(4096, 32)).catch(() => {});
    await sleep(1000);
    const t0 = Date.now();
    const r = await v.stop('SIGTERM');
    const tookMs = Date.now() - t0;
    const bound = drainMs + EXIT_MARGIN_MS;
    t.ok(tookMs >= bound - 500 && tookMs < bound + 5000, `vublk exits about ${bound} ms after SIGTERM (took ${tookMs} ms)`);
    t.same({ code: r.code, signal: r.signal }, { code: 1, signal: null }, 'with exit code 1');
    t.match(r.stderr, /vublk: error: exiting with native I\/O outstanding conn=1 .*rbd=1/, 'naming the op librbd still holds');
    t.match(
      r.stderr,
      new RegExp(
        `vublk: error: shutdown did not finish in time; exiting without closing the disk waitedMs=${bound} .*Ceph cluster reachable`,
      ),
      'and why it exits without closing the disk',
    );
    osdStart(c);
    osdDown = false;
  });
});
