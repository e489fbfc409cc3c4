// vublk on an RBD image of a real single-node Ceph cluster (one per file):
// every request type through the in-repo frontend, with the image checked
// through `rbd export`; a second vublk on the same image is refused while the
// first holds its exclusive lock. On worker threads and in-thread.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runVublk, startVublk, stopCleanly, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import { cephUnsupported, createImage, exportImage, startCephCluster, type CephCluster } from '../helpers/ceph-cluster';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, SECTOR_SIZE } from '../../src/frontend/blk-driver';
import { pattern } from './harness';

const skip = cephUnsupported();
const OBJECT_SECTORS = (4 << 20) / SECTOR_SIZE; // rbd create's default object size

async function serveImage(t: Test, c: CephCluster, image: string, extra: string[]): Promise<{ v: VublkProcess; socket: string }> {
  const dir = tmpDir('vublk-rbd-');
  const socket = path.join(dir, 'vublk.sock');
  const v = await startVublk(
    ['--disk', `rbd:rbd/${image}`, '--ceph-conf', c.conf, '--socket', socket, '--serial', 'rbd-serial', ...extra],
    {
      timeoutMs: 30_000,
    },
  );
  let stopped: Promise<void> | undefined;
  t.teardown(() => (stopped ??= stopCleanly(v)));
  return { v, socket };
}

t.test('vublk on an RBD image', { skip }, async (t) => {
  const c = startCephCluster(t);
  for (const workers of [undefined, '0']) {
    await t.test(`every request type, workers ${workers ?? 'default'}`, async (t) => {
      const image = `img-${workers ?? 'default'}`;
      createImage(c, image);
      const { socket } = await serveImage(t, c, image, workers === undefined ? [] : ['--workers', workers]);
      const fe = await Frontend.connect(socket);
      t.teardown(() => fe.close());
      await fe.setup({ queues: 1, memory: { regions: [4 << 20, 4 << 20] } });
      const drv = new BlkDriver(fe);

      const big = pattern(64 << 10, 1);
      t.equal((await drv.write(0, 2048, big)).status, 0, 'a 64 KiB WRITE succeeds');
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
  });
});
