// Every error status a request can end with, against the real daemon. A
// failed request is a status byte, never a disconnect: after each one the
// same frontend keeps doing I/O. Failed writes leave the image unchanged
// (bytes and size).

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { BlkStatus, BlkType, SECTOR_SIZE, parseBlkConfig, type BlkDriver, type BlkResult } from '../../src/frontend/blk-driver';
import { DEFAULT_BLK_FEATURES, VirtioFeature } from '../../src/frontend/features';
import { featureBit } from '../../src/vhost-user/protocol';
import { connect, pattern, readImage, startDaemon, writeImage, type Daemon } from './harness';

const IMAGE_BYTES = 16 << 20;
const CAP = IMAGE_BYTES / SECTOR_SIZE;
/** The image is filled with this before the daemon starts, so any change shows. */
const FILL = pattern(IMAGE_BYTES, 31337);

function fill(image: string): void {
  writeImage(image, 0, FILL);
}

/** The image still holds FILL everywhere, and its size did not change. */
function imageUnchanged(t: Test, d: Daemon, what: string): void {
  t.equal(fs.statSync(d.image).size, IMAGE_BYTES, `${what}: image size unchanged`);
  t.ok(readImage(d.image, 0, IMAGE_BYTES).equals(FILL), `${what}: image bytes unchanged`);
}

/** The connection still works after an error: a read at sector 0 returns FILL. */
async function stillWorks(t: Test, drv: BlkDriver, what: string): Promise<void> {
  const r = await drv.read(0, 0, 4096);
  t.ok(r.status === BlkStatus.OK && r.data.equals(FILL.subarray(0, 4096)), `${what}: the frontend keeps doing I/O`);
}

function expectStatus(t: Test, r: BlkResult, status: number, what: string): void {
  t.equal(r.status, status, `${what}: status ${['OK', 'IOERR', 'UNSUPP'][status]}`);
  t.ok(r.usedLen >= 1, `${what}: used.len ${r.usedLen} counts the status byte`);
}

t.test('reads and writes past the capacity or straddling its end: IOERR, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { drv } = await connect(t, d, { queues: 1 });
  const cases: Array<[string, number | bigint, number]> = [
    ['at the capacity', CAP, 512],
    ['one sector straddling the end', CAP - 1, 1024],
    ['4 KiB straddling the end', CAP - 4, 8192],
    ['far past the end', CAP * 2, 4096],
    ['at sector 2^32', 2 ** 32, 512],
    ['at sector 2^53 - 1', 2 ** 53 - 1, 512],
  ];
  for (const [what, sector, len] of cases) {
    expectStatus(t, await drv.read(0, sector, len), BlkStatus.IOERR, `read ${len} B ${what}`);
    expectStatus(t, await drv.write(0, sector, pattern(len, 1)), BlkStatus.IOERR, `write ${len} B ${what}`);
    imageUnchanged(t, d, `write ${what}`);
  }
  // The last sector itself is fine.
  const last = await drv.read(0, CAP - 1, 512);
  t.ok(last.status === BlkStatus.OK && last.data.equals(FILL.subarray(IMAGE_BYTES - 512)), 'the last sector reads OK');
  await stillWorks(t, drv, 'after the range errors');
});

t.test('a length that is not a multiple of 512: IOERR, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { drv } = await connect(t, d, { queues: 1 });
  for (const len of [1, 100, 511, 513, 1000, 4097]) {
    expectStatus(t, await drv.read(0, 8, len), BlkStatus.IOERR, `read of ${len} B`);
    expectStatus(t, await drv.write(0, 8, pattern(len, len)), BlkStatus.IOERR, `write of ${len} B`);
    // The same length cut into pieces that each look aligned would be a different request; this one is not.
    expectStatus(t, await drv.write(0, 8, pattern(len, len), { layout: 'fragmented' }), BlkStatus.IOERR, `fragmented write of ${len} B`);
  }
  imageUnchanged(t, d, 'after the misaligned-length writes');
  await stillWorks(t, drv, 'after the length errors');
});

t.test('unknown and never-offered request types: UNSUPP, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { drv } = await connect(t, d, { queues: 1 });
  for (const type of [2, 3, 5, 7, 9, 0x7777, 0xffffffff]) {
    expectStatus(t, await drv.raw(0, type, 0, []), BlkStatus.UNSUPP, `type ${type} without data`);
    expectStatus(
      t,
      await drv.raw(0, type, 0, [{ len: 512, write: false, data: pattern(512, type) }]),
      BlkStatus.UNSUPP,
      `type ${type} with readable data`,
    );
    expectStatus(t, await drv.raw(0, type, 0, [{ len: 512, write: true }]), BlkStatus.UNSUPP, `type ${type} with writable data`);
  }
  expectStatus(
    t,
    await drv.raw(0, BlkType.SECURE_ERASE, 0, [{ len: 16, write: false, data: Buffer.alloc(16) }]),
    BlkStatus.UNSUPP,
    'SECURE_ERASE',
  );
  expectStatus(t, await drv.raw(0, BlkType.GET_LIFETIME, 0, [{ len: 8, write: true }]), BlkStatus.UNSUPP, 'GET_LIFETIME');
  imageUnchanged(t, d, 'after the unknown types and SECURE_ERASE');
  await stillWorks(t, drv, 'after the UNSUPP requests');
});

// Whether or not the daemon offers them (the image's file system decides),
// a driver that did not negotiate DISCARD / WRITE_ZEROES gets UNSUPP for them.
t.test('DISCARD and WRITE_ZEROES the driver did not negotiate: UNSUPP, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const features = DEFAULT_BLK_FEATURES & ~(featureBit(VirtioFeature.BLK_DISCARD) | featureBit(VirtioFeature.BLK_WRITE_ZEROES));
  const { fe, drv } = await connect(t, d, { queues: 1, features });
  t.comment(
    `offered: DISCARD ${(fe.offeredFeatures & featureBit(VirtioFeature.BLK_DISCARD)) !== 0n}, WRITE_ZEROES ${(fe.offeredFeatures & featureBit(VirtioFeature.BLK_WRITE_ZEROES)) !== 0n}`,
  );
  t.notOk(fe.hasFeature(VirtioFeature.BLK_DISCARD), 'DISCARD is not negotiated');
  t.notOk(fe.hasFeature(VirtioFeature.BLK_WRITE_ZEROES), 'WRITE_ZEROES is not negotiated');
  expectStatus(t, await drv.discard(0, 0, 64), BlkStatus.UNSUPP, 'DISCARD of sectors 0..63');
  expectStatus(t, await drv.writeZeroes(0, 0, 64), BlkStatus.UNSUPP, 'WRITE_ZEROES of sectors 0..63');
  expectStatus(t, await drv.writeZeroes(0, 0, 64, true), BlkStatus.UNSUPP, 'WRITE_ZEROES (unmap) of sectors 0..63');
  imageUnchanged(t, d, 'after DISCARD / WRITE_ZEROES');
  await stillWorks(t, drv, 'after the UNSUPP requests');
});

t.test('--read-only: writes fail with IOERR and leave the image unchanged, reads work', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill, readOnly: true });
  const { fe, drv } = await connect(t, d, { queues: 1 });
  t.ok(fe.hasFeature(VirtioFeature.BLK_RO), 'VIRTIO_BLK_F_RO is offered and acked');
  for (const layout of ['3desc', '2desc', 'indirect', 'fragmented'] as const) {
    expectStatus(t, await drv.write(0, 16, pattern(4096, 5), { layout }), BlkStatus.IOERR, `write ${layout} on a read-only disk`);
  }
  expectStatus(t, await drv.write(0, CAP - 8, pattern(4096, 6)), BlkStatus.IOERR, 'write of the last 4 KiB');
  t.notOk(fe.offeredFeatures & featureBit(VirtioFeature.BLK_DISCARD), 'DISCARD is not offered on a read-only disk');
  t.notOk(fe.offeredFeatures & featureBit(VirtioFeature.BLK_WRITE_ZEROES), 'WRITE_ZEROES is not offered on a read-only disk');
  t.not((await drv.discard(0, 0, 64)).status, BlkStatus.OK, 'DISCARD on a read-only disk fails');
  t.not((await drv.writeZeroes(0, 0, 64)).status, BlkStatus.OK, 'WRITE_ZEROES on a read-only disk fails');
  imageUnchanged(t, d, 'after writes to a read-only disk');
  for (const [sector, len] of [
    [0, 512],
    [16, 4096],
    [CAP - 256, 128 * 1024],
  ] as const) {
    const r = await drv.read(0, sector, len);
    t.ok(
      r.status === BlkStatus.OK && r.usedLen === len + 1 && r.data.equals(FILL.subarray(sector * 512, sector * 512 + len)),
      `read ${len} B at sector ${sector} works: status ${r.status}`,
    );
  }
  expectStatus(t, await drv.read(0, CAP, 512), BlkStatus.IOERR, 'read past the end is still IOERR');
});

t.test('GET_ID with no room for the id: IOERR', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { drv } = await connect(t, d, { queues: 1 });
  expectStatus(t, await drv.raw(0, BlkType.GET_ID, 0, []), BlkStatus.IOERR, 'GET_ID with header and status only');
  expectStatus(
    t,
    await drv.raw(0, BlkType.GET_ID, 0, [{ len: 0, write: true }]),
    BlkStatus.IOERR,
    'GET_ID with a 0-length data descriptor',
  );
  const ok = await drv.getId(0);
  t.equal(ok.status, BlkStatus.OK, 'a proper GET_ID still works');
});

t.test('a sector of 2^53 or more: IOERR, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { drv } = await connect(t, d, { queues: 1 });
  // 2^55 + 1 and 2^64 - 2^55: sector * 512 wraps 2^64 to a small offset inside the disk.
  const wraps = [2n ** 55n + 1n, 2n ** 64n - 2n ** 55n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n];
  for (const sector of wraps) {
    expectStatus(t, await drv.read(0, sector, 512), BlkStatus.IOERR, `read at sector ${sector}`);
    expectStatus(t, await drv.write(0, sector, pattern(512, 9)), BlkStatus.IOERR, `write at sector ${sector}`);
    expectStatus(t, await drv.write(0, sector, pattern(512, 9), { layout: '2desc' }), BlkStatus.IOERR, `2desc write at sector ${sector}`);
  }
  imageUnchanged(t, d, 'after writes at huge sectors');
  await stillWorks(t, drv, 'after the huge sectors');
});

t.test('--logical-block-size 4096: I/O that is not whole 4 KiB blocks is IOERR, image unchanged', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill, extraArgs: ['--logical-block-size', '4096'] });
  const { fe, drv } = await connect(t, d, { queues: 1 });
  t.equal(parseBlkConfig(fe.config!).blkSize, 4096, 'the guest is told 4096-byte blocks');
  const cases: Array<[string, number, number]> = [
    ['512 B at sector 0', 0, 512],
    ['4 KiB at sector 1', 1, 4096],
    ['4 KiB at sector 4', 4, 4096],
    ['6 KiB at sector 8', 8, 6144],
    ['4 KiB straddling the end', CAP - 4, 4096],
  ];
  for (const [what, sector, len] of cases) {
    expectStatus(t, await drv.read(0, sector, len), BlkStatus.IOERR, `read ${what}`);
    expectStatus(t, await drv.write(0, sector, pattern(len, 3)), BlkStatus.IOERR, `write ${what}`);
  }
  imageUnchanged(t, d, 'after the misaligned 4K-block requests');
  const data = pattern(8192, 12);
  const w = await drv.write(0, 16, data, { layout: '2desc' });
  const r = await drv.read(0, 16, 8192, { layout: 'fragmented' });
  t.ok(
    w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data),
    'whole 4 KiB blocks at a 4 KiB boundary work (2desc write, fragmented read)',
  );
  t.ok(readImage(d.image, 16 * 512, 8192).equals(data), 'and land in the image');
});

// Offered when the image's file system can punch holes (ext4, xfs, tmpfs).
t.test('negotiated DISCARD / WRITE_ZEROES with a bad segment list: UNSUPP or IOERR, and nothing is done', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: fill });
  const { fe, drv } = await connect(t, d, { queues: 1 });
  const has = { discard: fe.hasFeature(VirtioFeature.BLK_DISCARD), writeZeroes: fe.hasFeature(VirtioFeature.BLK_WRITE_ZEROES) };
  if (!has.discard || !has.writeZeroes) {
    t.comment(`not offered here (DISCARD ${has.discard}, WRITE_ZEROES ${has.writeZeroes}): nothing to check`);
    return;
  }
  const cfg = parseBlkConfig(fe.config!);
  t.comment(
    `max_discard_sectors ${cfg.maxDiscardSectors}, max_discard_seg ${cfg.maxDiscardSeg}, max_write_zeroes_sectors ${cfg.maxWriteZeroesSectors}, max_write_zeroes_seg ${cfg.maxWriteZeroesSeg}`,
  );
  /** A raw segment list (16 bytes per segment, or any bytes). */
  const list = (segs: Array<[number | bigint, number, number]>) => {
    const b = Buffer.alloc(16 * segs.length);
    segs.forEach(([sector, n, flags], i) => {
      b.writeBigUInt64LE(BigInt(sector), 16 * i);
      b.writeUInt32LE(n, 16 * i + 8);
      b.writeUInt32LE(flags, 16 * i + 12);
    });
    return b;
  };
  const send = (type: number, data: Buffer) => drv.raw(0, type, 0, data.length === 0 ? [] : [{ len: data.length, write: false, data }]);
  for (const [name, type] of [
    ['DISCARD', BlkType.DISCARD],
    ['WRITE_ZEROES', BlkType.WRITE_ZEROES],
  ] as const) {
    const maxSeg = type === BlkType.DISCARD ? cfg.maxDiscardSeg : cfg.maxWriteZeroesSeg;
    const maxSectors = type === BlkType.DISCARD ? cfg.maxDiscardSectors : cfg.maxWriteZeroesSectors;
    const cases: Array<[string, Buffer, number]> = [
      ['an unknown flag (bit 1)', list([[0, 64, 2]]), BlkStatus.UNSUPP],
      ['a segment past the capacity', list([[CAP, 8, 0]]), BlkStatus.IOERR],
      ['a segment straddling the end', list([[CAP - 8, 16, 0]]), BlkStatus.IOERR],
      ['a segment at sector 2^63', list([[2n ** 63n, 8, 0]]), BlkStatus.IOERR],
      [
        'a good segment, then one past the end (nothing may run)',
        list([
          [0, 64, 0],
          [CAP, 8, 0],
        ]),
        BlkStatus.IOERR,
      ],
      ['a list of 20 bytes (not whole segments)', Buffer.concat([list([[0, 64, 0]]), Buffer.alloc(4)]), BlkStatus.IOERR],
      ['an empty list', Buffer.alloc(0), BlkStatus.IOERR],
      [
        `${maxSeg + 1} segments (max ${maxSeg})`,
        list(Array.from({ length: maxSeg + 1 }, (_, i) => [i * 8, 8, 0] as [number, number, number])),
        BlkStatus.IOERR,
      ],
    ];
    if (type === BlkType.DISCARD) cases.push(['UNMAP on a DISCARD', list([[0, 64, 1]]), BlkStatus.UNSUPP]);
    if (maxSectors + 1 <= CAP)
      cases.push([`${maxSectors + 1} sectors in one segment (max ${maxSectors})`, list([[0, maxSectors + 1, 0]]), BlkStatus.IOERR]);
    for (const [what, data, status] of cases) {
      expectStatus(t, await send(type, data), status, `${name} with ${what}`);
    }
  }
  imageUnchanged(t, d, 'after the refused DISCARD / WRITE_ZEROES');
  await stillWorks(t, drv, 'after them');
  // And a good one does what it says, only where it says.
  const wz = await drv.writeZeroes(0, 64, 16);
  t.equal(wz.status, BlkStatus.OK, 'a proper WRITE_ZEROES of sectors 64..79 is OK');
  const expect = Buffer.from(FILL);
  expect.fill(0, 64 * 512, 80 * 512);
  t.ok(readImage(d.image, 0, 1 << 20).equals(expect.subarray(0, 1 << 20)), 'and zeroes exactly those sectors');
});
