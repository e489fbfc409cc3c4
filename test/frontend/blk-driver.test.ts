import t from 'tap';
import { BlkDriver, BlkStatus, BlkType, BLK_HEADER_SIZE, parseBlkConfig, type Layout } from '../../src/frontend/blk-driver';
import type { Frontend } from '../../src/frontend/frontend';
import { GuestMemory } from '../../src/frontend/guest-memory';
import type { RingSeg } from '../../src/frontend/split-ring';

/** A stand-in front-end: captures chains; the test completes them like a device. */
function fakeFrontend(mem: GuestMemory) {
  const chains: { q: number; segs: readonly RingSeg[]; indirect: boolean; done: (len: number) => void }[] = [];
  let flushes = 0;
  const fe = {
    mem,
    enqueue(q: number, segs: readonly RingSeg[], opts: { indirect?: boolean }) {
      return new Promise<number>((done) => chains.push({ q, segs, indirect: opts.indirect ?? false, done }));
    },
    flush() {
      flushes++;
      return true;
    },
  } as unknown as Frontend;
  return { fe, chains, flushes: () => flushes };
}

/** Completes a chain: writes `fill` into device-writable data, status 0 last. */
function complete(mem: GuestMemory, c: { segs: readonly RingSeg[]; done: (n: number) => void }, fill: number): void {
  let written = 0;
  const w = c.segs.filter((s) => s.write);
  w.forEach((s, i) => {
    const last = i === w.length - 1;
    const dataLen = last ? s.len - 1 : s.len;
    mem.fill(s.gpa, dataLen, fill);
    if (last) mem.write(s.gpa + s.len - 1, Buffer.from([BlkStatus.OK]));
    written += s.len;
  });
  c.done(written);
}

function header(mem: GuestMemory, segs: readonly RingSeg[]): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  for (const s of segs) {
    if (s.write || n >= BLK_HEADER_SIZE) break;
    const take = Math.min(s.len, BLK_HEADER_SIZE - n);
    parts.push(mem.read(s.gpa, take));
    n += take;
  }
  return Buffer.concat(parts);
}

const crosses = (mem: GuestMemory, s: RingSeg): boolean => mem.boundaries().some((b) => s.gpa < b && s.gpa + s.len > b);

t.test('chain shapes per layout', async (tt) => {
  const mem = GuestMemory.create({ regions: [1 << 20, 1 << 20] });
  tt.teardown(() => mem.close());
  const { fe, chains } = fakeFrontend(mem);
  const d = new BlkDriver(fe);
  const data = Buffer.alloc(4096, 0x5a);
  const shapes: Record<Layout, { write: [number, boolean][]; read: [number, boolean][] } | undefined> = {
    '3desc': {
      write: [
        [16, false],
        [4096, false],
        [1, true],
      ],
      read: [
        [16, false],
        [4096, true],
        [1, true],
      ],
    },
    indirect: {
      write: [
        [16, false],
        [4096, false],
        [1, true],
      ],
      read: [
        [16, false],
        [4096, true],
        [1, true],
      ],
    },
    '2desc': {
      write: [
        [16 + 4096, false],
        [1, true],
      ],
      read: [
        [16, false],
        [4097, true],
      ],
    },
    'split-header': {
      write: [
        [8, false],
        [8, false],
        [4096, false],
        [1, true],
      ],
      read: [
        [8, false],
        [8, false],
        [4096, true],
        [1, true],
      ],
    },
    fragmented: undefined,
  };
  for (const [layout, want] of Object.entries(shapes) as [Layout, (typeof shapes)[Layout]][]) {
    const wp = d.write(0, 77, data, { layout });
    const wc = chains.shift()!;
    tt.equal(wc.indirect, layout === 'indirect', `${layout}: indirect flag`);
    const hdr = header(mem, wc.segs);
    tt.same([hdr.readUInt32LE(0), hdr.readBigUInt64LE(8)], [BlkType.OUT, 77n], `${layout}: header type and sector`);
    const payload = Buffer.concat(wc.segs.filter((s) => !s.write).map((s) => mem.read(s.gpa, s.len))).subarray(16);
    tt.ok(payload.equals(data), `${layout}: data in driver-readable buffers`);
    if (want)
      tt.same(
        wc.segs.map((s) => [s.len, s.write]),
        want.write,
        `${layout}: write chain`,
      );
    else {
      tt.ok(wc.segs.length > 6, `fragmented write: ${wc.segs.length} descriptors`);
      tt.ok(
        wc.segs.some((s) => crosses(mem, s)),
        'fragmented write: a descriptor crosses the region boundary',
      );
      tt.ok(new Set(wc.segs.map((s) => s.len)).size > 3, 'fragmented write: varied sizes');
    }
    complete(mem, wc, 0);
    tt.same(await wp, { status: BlkStatus.OK, usedLen: 1, data: Buffer.alloc(0) });

    const rp = d.read(0, 99, 4096, { layout });
    const rc = chains.shift()!;
    if (want)
      tt.same(
        rc.segs.map((s) => [s.len, s.write]),
        want.read,
        `${layout}: read chain`,
      );
    else
      tt.equal(
        rc.segs.filter((s) => s.write).reduce((a, s) => a + s.len, 0),
        4097,
        'fragmented read: data + status writable',
      );
    complete(mem, rc, 0xc3);
    const r = await rp;
    tt.same([r.status, r.usedLen], [BlkStatus.OK, 4097]);
    tt.ok(r.data.equals(Buffer.alloc(4096, 0xc3)), `${layout}: read data gathered`);
  }
  tt.equal(mem.allocated, 0, 'every buffer released');
});

t.test('straddle, raw segments, header/status overrides, batches', async (tt) => {
  const mem = GuestMemory.create({ regions: [1 << 20, 1 << 20] });
  tt.teardown(() => mem.close());
  const { fe, chains, flushes } = fakeFrontend(mem);
  const d = new BlkDriver(fe);
  const p = d.read(0, 0, 8192, { straddle: true });
  const c = chains.shift()!;
  tt.ok(crosses(mem, c.segs[1]!), 'data buffer straddles');
  complete(mem, c, 1);
  await p;

  const raw = d.raw(
    1,
    BlkType.IN,
    5,
    [
      { len: 100, write: true },
      { len: 412, write: true },
    ],
    { headerLen: 15, statusLen: 0, ioprio: 3 },
  );
  const rc = chains.shift()!;
  tt.same(
    rc.segs.map((s) => [s.len, s.write]),
    [
      [15, false],
      [100, true],
      [412, true],
    ],
  );
  tt.equal(rc.q, 1);
  tt.equal(mem.read(rc.segs[0]!.gpa + 4, 4).readUInt32LE(0), 3, 'ioprio');
  rc.done(0);
  tt.equal((await raw).status, 0xff, 'no status descriptor: status reads as unwritten');

  const before = flushes();
  const batch = d.submitBatch([
    { q: 0, type: BlkType.FLUSH, sector: 0 },
    { q: 0, type: BlkType.GET_ID, sector: 0, len: 20 },
    { q: 1, type: BlkType.IN, sector: 0, len: 512 },
  ]);
  tt.equal(flushes() - before, 2, 'one flush per queue touched');
  for (const x of chains.splice(0)) complete(mem, x, 0x41);
  const res = await Promise.all(batch);
  tt.same(
    res.map((r) => r.data.length),
    [0, 20, 512],
  );
  tt.equal(mem.allocated, 0);
});

t.test('parseBlkConfig', async (tt) => {
  const b = Buffer.alloc(60);
  b.writeBigUInt64LE(131072n, 0);
  b.writeUInt32LE(126, 12);
  b.writeUInt32LE(4096, 20);
  b.writeUInt8(1, 32);
  b.writeUInt16LE(4, 34);
  b.writeUInt8(1, 56);
  const c = parseBlkConfig(b);
  tt.same([c.capacity, c.segMax, c.blkSize, c.writeback, c.numQueues, c.writeZeroesMayUnmap], [131072n, 126, 4096, 1, 4, 1]);
  tt.throws(() => parseBlkConfig(Buffer.alloc(59)), /60 bytes/);
});
