// A 4096-byte logical block guest (--logical-block-size 4096) on a host that
// takes 512-byte I/O: the config space says so, 4 KiB-aligned I/O in every
// layout reads back what was written and lands in the image, and I/O that is
// not whole 4 KiB blocks is refused with IOERR and changes nothing.

import t from 'tap';
import { BlkStatus, LAYOUTS, SECTOR_SIZE, parseBlkConfig } from '../../src/frontend/blk-driver';
import { connect, pattern, readImage, startDaemon } from './harness';
import { prng } from '../helpers/prng';

const IMAGE_BYTES = 16 << 20;

t.test('4096-byte logical blocks on a 512-byte host', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, extraArgs: ['--logical-block-size', '4096'] });
  const { fe, drv } = await connect(t, d, { queues: 1 });
  const cfg = parseBlkConfig(fe.config!);
  t.equal(cfg.blkSize, 4096, 'blk_size 4096');
  t.equal(cfg.capacity, BigInt(IMAGE_BYTES / SECTOR_SIZE), 'capacity still in 512-byte sectors');
  const rand = prng(4096);
  for (const layout of LAYOUTS) {
    for (const blocks of [1, 2, 5, 16]) {
      const sector = 8 * Math.floor(rand() * (IMAGE_BYTES / 4096 - blocks));
      const data = pattern(blocks * 4096, sector + blocks);
      const w = await drv.write(0, sector, data, { layout });
      t.equal(w.status, BlkStatus.OK, `write ${layout} ${blocks} block(s) at sector ${sector}`);
      const r = await drv.read(0, sector, data.length, { layout: '3desc' });
      t.ok(r.status === BlkStatus.OK && r.data.equals(data), `reads back (${layout}, ${blocks})`);
      t.ok(readImage(d.image, sector * SECTOR_SIZE, data.length).equals(data), 'the image holds it');
    }
  }
  const before = readImage(d.image, 0, 16384);
  const odd = await drv.write(0, 1, pattern(4096, 1), {});
  t.equal(odd.status, BlkStatus.IOERR, 'a write at a sector that is not a 4 KiB boundary: IOERR');
  const short = await drv.write(0, 8, pattern(512, 2), {});
  t.equal(short.status, BlkStatus.IOERR, 'a 512-byte write: IOERR');
  t.ok(readImage(d.image, 0, 16384).equals(before), 'and nothing changed');
});
