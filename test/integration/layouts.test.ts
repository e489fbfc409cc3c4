// The guest's descriptor layouts against the real daemon: every layout a
// driver may use ('3desc' Linux, '2desc' SeaBIOS/old Windows, 'indirect',
// 'split-header', 'fragmented' with odd sizes and alignments), buffers that
// straddle a guest memory-region boundary, writes through one layout read
// through another, checked against the image file's bytes and the used
// lengths. Then FLUSH and GET_ID in every layout, canaries around read
// buffers, an indirect table across a region boundary, and the layouts on a
// 4K-sector host disk (a loop device; skipped without root/losetup) where
// 512-byte guest writes are read-modify-write cycles.

import t from 'tap';
import {
  BlkDriver,
  BlkStatus,
  BlkType,
  BLK_ID_BYTES,
  LAYOUTS,
  SECTOR_SIZE,
  parseBlkConfig,
  type BlkRequest,
} from '../../src/frontend/blk-driver';
import { DescFlags, DESC_SIZE } from '../../src/frontend/split-ring';
import { connect, pattern, readImage, startDaemon, writeImage } from './harness';
import { loopUnsupported } from '../helpers/loop-device';
import { prng } from '../helpers/prng';

const IMAGE_BYTES = 32 << 20;
const CAPACITY = IMAGE_BYTES / SECTOR_SIZE;
const SERIAL = 'vublk-layouts-01';
const SIZES = [512, 1024, 4096, 12 * 1024, 64 * 1024, 128 * 1024];
/** The image's first PREFILL bytes hold pattern(PREFILL, 7) before the daemon starts. */
const PREFILL = 4 << 20;
const SEED = Number(process.env.VUBLK_TEST_SEED ?? Date.now() % 1_000_000);
t.comment(`seed ${SEED} (set VUBLK_TEST_SEED to repeat)`);

/** A random start sector for len bytes in [lo, hi) (sectors). */
function randomSector(rand: () => number, len: number, lo = PREFILL / SECTOR_SIZE, hi = CAPACITY): number {
  return lo + Math.floor(rand() * (hi - lo - len / SECTOR_SIZE));
}

/** Watches the chains a driver queues: how many buffers cross a region boundary. */
function crossingCounter(drv: BlkDriver) {
  const c = { crossing: 0, descs: 0 };
  drv.onChain = (segs) => {
    const b = drv.fe.mem!.boundaries(); // setup() made the memory
    c.descs += segs.length;
    c.crossing += segs.filter((s) => b.some((x) => s.gpa < x && s.gpa + s.len > x)).length;
  };
  return c;
}

t.test('reads in every layout return the image bytes (image written before the daemon started)', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: (img) => writeImage(img, 0, pattern(PREFILL, 7)) });
  const { drv } = await connect(t, d, { queues: 1 });
  const want = pattern(PREFILL, 7);
  const rand = prng(SEED);
  for (const layout of LAYOUTS) {
    for (const len of SIZES) {
      const sector = randomSector(rand, len, 0, PREFILL / SECTOR_SIZE);
      const r = await drv.read(0, sector, len, { layout });
      t.same([r.status, r.usedLen], [BlkStatus.OK, len + 1], `read ${layout} ${len} B at sector ${sector}: OK, used.len = data + 1`);
      t.ok(
        r.data.equals(want.subarray(sector * SECTOR_SIZE, sector * SECTOR_SIZE + len)),
        `read ${layout} ${len} B at sector ${sector} returns the image bytes`,
      );
    }
  }
});

for (const layout of LAYOUTS) {
  t.test(`write then read back through '${layout}', 512 B to 128 KiB at random sectors`, async (t) => {
    const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
    const { fe, drv } = await connect(t, d, { queues: 1 });
    const rand = prng(SEED ^ layout.length);
    const extra = SECTOR_SIZE * (1 + Math.floor(rand() * 255)); // one more random size
    for (const len of [...SIZES, extra]) {
      const sector = randomSector(rand, len);
      const data = pattern(len, sector);
      const w = await drv.write(0, sector, data, { layout });
      t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `write ${layout} ${len} B at sector ${sector}: OK, used.len 1`);
      t.ok(
        readImage(d.image, sector * SECTOR_SIZE, len).equals(data),
        `write ${layout} ${len} B at sector ${sector}: the image holds exactly the data`,
      );
      const r = await drv.read(0, sector, len, { layout });
      t.same([r.status, r.usedLen], [BlkStatus.OK, len + 1], `read ${layout} ${len} B: OK, used.len = data + 1`);
      t.ok(r.data.equals(data), `read ${layout} ${len} B returns what was written`);
    }
    // Neighbouring bytes are untouched: a write of 512 B between two known sectors.
    const sector = randomSector(rand, 3 * SECTOR_SIZE);
    const around = pattern(3 * SECTOR_SIZE, 99);
    t.equal((await drv.write(0, sector, around, { layout: '3desc' })).status, BlkStatus.OK, 'reference write (3desc)');
    const mid = pattern(SECTOR_SIZE, 100);
    t.equal((await drv.write(0, sector + 1, mid, { layout })).status, BlkStatus.OK, `512 B write ${layout} between two sectors`);
    t.ok(
      readImage(d.image, sector * SECTOR_SIZE, 3 * SECTOR_SIZE).equals(
        Buffer.concat([around.subarray(0, 512), mid, around.subarray(1024)]),
      ),
      'only that sector changed in the image',
    );
    t.equal(
      fe.mem!.allocated,
      fe.queues.reduce((a, q) => a + 16 * q.ring.size + 6 + 2 * q.ring.size + 6 + 8 * q.ring.size, 0),
      'every request buffer came back',
    );
  });
}

t.test('write through one layout, read through every other', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { drv } = await connect(t, d, { queues: 1 });
  const rand = prng(SEED + 1);
  let next = PREFILL / SECTOR_SIZE;
  for (const wl of LAYOUTS) {
    const len = SECTOR_SIZE * (8 + Math.floor(rand() * 120)); // 4 KiB .. 64 KiB
    const sector = next + Math.floor(rand() * 64);
    next = sector + len / SECTOR_SIZE;
    const data = pattern(len, sector ^ 0x5a5a);
    const w = await drv.write(0, sector, data, { layout: wl });
    t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `write ${wl} ${len} B at sector ${sector}`);
    t.ok(readImage(d.image, sector * SECTOR_SIZE, len).equals(data), `the image holds the ${wl} write`);
    for (const rl of LAYOUTS.filter((l) => l !== wl)) {
      const r = await drv.read(0, sector, len, { layout: rl });
      t.ok(
        r.status === BlkStatus.OK && r.usedLen === len + 1 && r.data.equals(data),
        `read ${rl} after write ${wl}: status ${r.status}, used.len ${r.usedLen}, data ${r.data.equals(data) ? 'equal' : 'DIFFERENT'}`,
      );
    }
  }
});

t.test('buffers straddling a memory-region boundary, in every layout', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  // Three regions, one memfd at non-zero offsets (as QEMU splits RAM around a hole).
  const { drv, fe } = await connect(t, d, {
    queues: 1,
    memTable: 'set-mem-table',
    memory: { regions: [4 << 20, 4 << 20, 4 << 20], fdLayout: 'shared-fd', leadIn: 1 << 20 },
  });
  t.equal(fe.mem!.boundaries().length, 2, 'guest memory has two region boundaries');
  const rand = prng(SEED + 2);
  const c = crossingCounter(drv);
  for (const layout of LAYOUTS) {
    // 'fragmented' places its second piece (100 B) across a boundary, so it needs more than one piece.
    for (const len of layout === 'fragmented' ? [1024, 4096, 64 * 1024] : [512, 4096, 64 * 1024]) {
      const sector = randomSector(rand, len);
      const data = pattern(len, sector + 3);
      c.crossing = 0;
      const w = await drv.write(0, sector, data, { layout, straddle: layout !== 'fragmented' });
      t.ok(c.crossing >= 1, `write ${layout} ${len} B: a buffer crosses a region boundary (${c.crossing})`);
      t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `straddling write ${layout} ${len} B at sector ${sector}: OK`);
      t.ok(readImage(d.image, sector * SECTOR_SIZE, len).equals(data), `straddling write ${layout} ${len} B: the image holds the data`);
      c.crossing = 0;
      const r = await drv.read(0, sector, len, { layout, straddle: layout !== 'fragmented' });
      t.ok(c.crossing >= 1, `read ${layout} ${len} B: a buffer crosses a region boundary (${c.crossing})`);
      t.same([r.status, r.usedLen], [BlkStatus.OK, len + 1], `straddling read ${layout} ${len} B: OK, used.len = data + 1`);
      t.ok(r.data.equals(data), `straddling read ${layout} ${len} B returns the data`);
    }
  }
});

t.test('odd-sized pieces straddling a boundary: 512 + 3 + 509 bytes, written and read raw', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { drv } = await connect(t, d, { queues: 1 });
  const c = crossingCounter(drv);
  const data = pattern(1024, 4242);
  const sector = randomSector(prng(SEED + 3), 1024);
  const w = await drv.raw(0, 1, sector, [
    { len: 512, write: false, data: data.subarray(0, 512) },
    { len: 3, write: false, data: data.subarray(512, 515), straddle: true, align: 1 },
    { len: 509, write: false, data: data.subarray(515), align: 1 },
  ]);
  t.equal(c.crossing, 1, 'the 3-byte piece crosses the boundary');
  t.same([w.status, w.usedLen], [BlkStatus.OK, 1], 'write OK, used.len 1');
  t.ok(readImage(d.image, sector * SECTOR_SIZE, 1024).equals(data), 'the image holds the 1024 bytes in order');
  c.crossing = 0;
  const r = await drv.raw(0, 0, sector, [
    { len: 509, write: true, align: 1 },
    { len: 3, write: true, straddle: true, align: 1 },
    { len: 512, write: true },
  ]);
  t.equal(c.crossing, 1, 'the 3-byte piece crosses the boundary');
  t.same([r.status, r.usedLen], [BlkStatus.OK, 1025], 'read OK, used.len 1025');
  t.ok(r.data.equals(data), 'read returns the 1024 bytes in order');
});

t.test('FLUSH is OK and GET_ID returns the serial in every layout', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, serial: SERIAL });
  const { drv } = await connect(t, d, { queues: 1 });
  const want = Buffer.alloc(BLK_ID_BYTES);
  want.write(SERIAL, 'latin1');
  for (const layout of LAYOUTS) {
    const f = await drv.flush(0, { layout });
    t.same([f.status, f.usedLen], [BlkStatus.OK, 1], `FLUSH ${layout}: OK, used.len 1`);
    const id = await drv.getId(0, { layout });
    t.equal(id.status, BlkStatus.OK, `GET_ID ${layout}: OK`);
    t.equal(id.usedLen, BLK_ID_BYTES + 1, `GET_ID ${layout}: used.len 21 (20 id bytes + status)`);
    t.same(id.data, want, `GET_ID ${layout}: "${SERIAL}" zero padded to 20 bytes`);
  }
  // The 20 bytes spread over three buffers, the middle one across a region boundary.
  const c = crossingCounter(drv);
  const split = await drv.raw(0, 8, 0, [
    { len: 7, write: true, align: 1 },
    { len: 6, write: true, align: 1, straddle: true },
    { len: 7, write: true, align: 1 },
  ]);
  t.equal(c.crossing, 1, 'GET_ID in 7 + 6 + 7 bytes: the middle buffer crosses a region boundary');
  t.same([split.status, split.usedLen], [BlkStatus.OK, 21], 'GET_ID in 7 + 6 + 7 bytes: OK, used.len 21');
  t.same(split.data, want, 'GET_ID in 7 + 6 + 7 bytes: the serial, in order');
});

t.test('GET_ID with a 20-character serial has no terminating NUL', async (t) => {
  const serial = 'ABCDEFGHIJ0123456789';
  const d = await startDaemon(t, { imageBytes: 1 << 20, serial });
  const { drv } = await connect(t, d, { queues: 1 });
  const id = await drv.getId(0);
  t.same([id.status, id.usedLen], [BlkStatus.OK, 21]);
  t.equal(id.data.toString('latin1'), serial);
  // A 64-byte buffer: the device writes 20 bytes, used.len says 21.
  const big = await drv.raw(0, 8, 0, [{ len: 64, write: true }]);
  t.same([big.status, big.usedLen], [BlkStatus.OK, 21], 'GET_ID into a 64-byte buffer: OK, used.len 21');
  t.equal(big.data.subarray(0, 20).toString('latin1'), serial, 'the first 20 bytes are the serial');
  t.ok(
    big.data.subarray(20).every((b) => b === 0xff),
    'nothing written past the 20 id bytes',
  );
});

t.test('reads write only inside the buffers they were given (canaries around every piece)', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, prepare: (img) => writeImage(img, 0, pattern(PREFILL, 7)) });
  const { fe } = await connect(t, d, { queues: 1 });
  const mem = fe.mem!;
  const want = pattern(PREFILL, 7);
  // Piece layouts (offset into a canary area, length); the odd ones force a bounce buffer.
  const layouts: Array<[string, Array<[number, number]>]> = [
    [
      'aligned pieces',
      [
        [512, 512],
        [2048, 1024],
      ],
    ],
    [
      'odd pieces',
      [
        [64, 100],
        [1003, 412],
        [4096 + 7, 512],
      ],
    ],
    ['one odd piece', [[3, 4096]]],
  ];
  for (const [what, pieces] of layouts) {
    const area = 16384;
    const base = mem.alloc(area, 4096);
    mem.fill(base, area, 0xaa);
    const hdr = mem.alloc(16, 16);
    const h = Buffer.alloc(16);
    h.writeUInt32LE(0, 0); // IN
    h.writeBigUInt64LE(16n, 8);
    mem.write(hdr, h);
    const status = mem.alloc(1, 1);
    mem.fill(status, 1, 0xff);
    const len = pieces.reduce((a, [, l]) => a + l, 0);
    const usedLen = await fe.submit(0, [
      { gpa: hdr, len: 16, write: false },
      ...pieces.map(([off, l]) => ({ gpa: base + off, len: l, write: true })),
      { gpa: status, len: 1, write: true },
    ]);
    t.same([mem.read(status, 1)[0], usedLen], [BlkStatus.OK, len + 1], `${what}: read of ${len} B OK, used.len ${len + 1}`);
    const got = Buffer.concat(pieces.map(([off, l]) => mem.read(base + off, l)));
    t.ok(got.equals(want.subarray(16 * SECTOR_SIZE, 16 * SECTOR_SIZE + len)), `${what}: the pieces hold the image bytes in order`);
    const areaBytes = mem.read(base, area);
    let touched = 0;
    for (let i = 0; i < area; i++) {
      if (pieces.some(([off, l]) => i >= off && i < off + l)) continue;
      if (areaBytes[i] !== 0xaa) touched++;
    }
    t.equal(touched, 0, `${what}: no byte outside the pieces was written`);
    for (const g of [base, hdr, status]) mem.release(g);
  }
});

t.test('an indirect table that straddles a memory-region boundary', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe } = await connect(t, d, { queues: 1, indirect: true });
  const mem = fe.mem!;
  const ring = fe.queue(0).ring;
  const boundary = mem.boundaries()[0]!;
  const data = pattern(8192, 555);
  const run = async (type: number, sector: number, dataLen: number, writeData?: Buffer) => {
    // Four descriptors: header, two data halves, status; the table is cut 2 + 2 by the boundary.
    const table = mem.alloc(4 * DESC_SIZE, 16, { straddle: true });
    if (!(table < boundary && table + 4 * DESC_SIZE > boundary)) throw new Error('table does not straddle');
    const hdr = mem.alloc(16, 16);
    const h = Buffer.alloc(16);
    h.writeUInt32LE(type, 0);
    h.writeBigUInt64LE(BigInt(sector), 8);
    mem.write(hdr, h);
    const buf = mem.alloc(dataLen, 512);
    if (writeData) mem.write(buf, writeData);
    else mem.fill(buf, dataLen, 0);
    const status = mem.alloc(1, 1);
    mem.fill(status, 1, 0xff);
    const w = writeData ? 0 : DescFlags.WRITE;
    ring.writeDescAt(table, { addr: hdr, len: 16, flags: DescFlags.NEXT, next: 1 });
    ring.writeDescAt(table + 16, { addr: buf, len: dataLen / 2, flags: DescFlags.NEXT | w, next: 2 });
    ring.writeDescAt(table + 32, { addr: buf + dataLen / 2, len: dataLen / 2, flags: DescFlags.NEXT | w, next: 3 });
    ring.writeDescAt(table + 48, { addr: status, len: 1, flags: DescFlags.WRITE, next: 0 });
    const head = ring.takeDesc();
    ring.writeDesc(head, { addr: table, len: 4 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
    const usedLen = await new Promise<number>((resolve, reject) => {
      ring.pushAvail(head, { resolve, reject }, [head], table);
      ring.publish();
      fe.kick(0);
    });
    const out = { status: mem.read(status, 1)[0], usedLen, data: mem.read(buf, dataLen) };
    for (const g of [hdr, buf, status]) mem.release(g);
    return out;
  };
  const w = await run(1, 700, data.length, data);
  t.same([w.status, w.usedLen], [BlkStatus.OK, 1], 'write through a straddling indirect table: OK');
  t.ok(readImage(d.image, 700 * SECTOR_SIZE, data.length).equals(data), 'the image holds it');
  const r = await run(0, 700, data.length);
  t.same([r.status, r.usedLen], [BlkStatus.OK, data.length + 1], 'read through a straddling indirect table: OK');
  t.ok(r.data.equals(data), 'and returns the data');
});

// A 4K-native host disk (a loop device with 4096-byte sectors) under a guest
// that uses 512-byte sectors: every write that covers part of a host block
// is a read-modify-write, and writes sharing a host block must not lose
// each other's bytes.
const noLoop = loopUnsupported();
t.test('every layout on a host disk with 4 KiB sectors (512-byte guest I/O is read-modify-write)', { skip: noLoop }, async (t) => {
  const fill = pattern(IMAGE_BYTES, 4096);
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, loopSectorSize: 4096, prepare: (img) => writeImage(img, 0, fill) });
  const { fe, drv } = await connect(t, d, { queues: 1 });
  t.equal(parseBlkConfig(fe.config!).blkSize, 512, 'the guest is told 512-byte blocks');
  const rand = prng(SEED + 4);
  const expect = Buffer.from(fill);
  for (const layout of LAYOUTS) {
    for (const len of [512, 1024, 3584, 4096, 4608, 12 * 1024 + 512, 128 * 1024]) {
      const sector = randomSector(rand, len);
      const data = pattern(len, sector + len);
      const w = await drv.write(0, sector, data, { layout });
      t.same(
        [w.status, w.usedLen],
        [BlkStatus.OK, 1],
        `write ${layout} ${len} B at sector ${sector} (host block offset ${(sector % 8) * 512}): OK`,
      );
      data.copy(expect, sector * SECTOR_SIZE);
      const lo = Math.floor((sector * SECTOR_SIZE) / 4096) * 4096;
      const hi = Math.ceil((sector * SECTOR_SIZE + len) / 4096) * 4096;
      t.ok(
        readImage(d.image, lo, hi - lo).equals(expect.subarray(lo, hi)),
        `write ${layout} ${len} B: the image holds the data and the rest of the host blocks is intact`,
      );
      const r = await drv.read(0, sector, len, { layout });
      t.ok(
        r.status === BlkStatus.OK && r.usedLen === len + 1 && r.data.equals(data),
        `read ${layout} ${len} B at sector ${sector}: status ${r.status}, data ${r.data.equals(data) ? 'equal' : 'DIFFERENT'}`,
      );
    }
  }
  t.ok(readImage(d.image, 0, IMAGE_BYTES).equals(expect), 'the whole image is exactly what was written over the fill');
  t.match(d.v.stderr(), /vublk: info: serving .*kind=block/, 'the daemon serves the loop block device');
  fe.close();
  await d.stop();
  t.comment(
    d.v
      .stderr()
      .split('\n')
      .filter((l) => /counters|direct I\/O|O_DIRECT|align/i.test(l))
      .join('\n'),
  );
});

t.test('512-byte writes sharing 4 KiB host blocks, all in flight at once, on two queues: none is lost', { skip: noLoop }, async (t) => {
  const fill = pattern(4 << 20, 8192);
  const d = await startDaemon(t, {
    imageBytes: IMAGE_BYTES,
    queues: 2,
    queueSize: 256,
    loopSectorSize: 4096,
    prepare: (img) => writeImage(img, 0, fill),
  });
  const { drv } = await connect(t, d, { queues: 2, queueSize: 256 });
  const expect = Buffer.from(fill);
  for (let round = 0; round < 3; round++) {
    // 128 writes of 512 B to sectors 1000..1127 (16 host blocks), alternating queues and
    // layouts, then 40 writes of 1.5 KiB straddling host blocks over the same range.
    const reqs: BlkRequest[] = [];
    for (let i = 0; i < 128; i++) {
      const data = pattern(512, round * 1000 + i);
      reqs.push({
        q: i % 2,
        type: BlkType.OUT,
        sector: 1000 + i,
        data,
        layout: (['3desc', '2desc', 'indirect', 'fragmented'] as const)[i % 4]!,
      });
    }
    const ws = await Promise.all(drv.submitBatch(reqs));
    t.equal(ws.filter((r) => r.status === BlkStatus.OK).length, 128, `round ${round}: 128 sub-block writes OK`);
    for (const r of reqs) Buffer.from(r.data!).copy(expect, Number(r.sector) * SECTOR_SIZE);
    t.ok(
      readImage(d.image, 0, 4 << 20).equals(expect.subarray(0, 4 << 20)),
      `round ${round}: every 512-byte write is in the image, nothing around them changed`,
    );
    const straddling: BlkRequest[] = [];
    for (let i = 0; i < 40; i++) {
      const data = pattern(1536, round * 7000 + i);
      straddling.push({ q: i % 2, type: BlkType.OUT, sector: 1000 + i * 3 + (i % 2), data, layout: i % 3 === 0 ? '2desc' : '3desc' });
    }
    // Overlapping writes complete in some order: the image must equal one of the orders, so
    // only disjoint ones are checked byte for byte: every other write (i even) is disjoint.
    const ss = await Promise.all(drv.submitBatch(straddling.filter((_, i) => i % 2 === 0)));
    t.equal(ss.filter((r) => r.status === BlkStatus.OK).length, 20, `round ${round}: 20 disjoint writes straddling host blocks OK`);
    for (const r of straddling.filter((_, i) => i % 2 === 0)) Buffer.from(r.data!).copy(expect, Number(r.sector) * SECTOR_SIZE);
    t.ok(readImage(d.image, 0, 4 << 20).equals(expect.subarray(0, 4 << 20)), `round ${round}: and the image holds them all`);
  }
  await d.stop();
  t.comment(
    d.v
      .stderr()
      .split('\n')
      .filter((l) => /counters/.test(l))
      .join('\n'),
  );
});
