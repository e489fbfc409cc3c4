// splitChain plays against a model guest: a request is laid out in a random
// descriptor layout (header cut anywhere, header sharing a segment with the
// data, status sharing one with the data, zero-length segments, random
// contiguity across random buffers), and the result is compared byte for byte
// with where the model put each byte.

import t from 'tap';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { BlkRequest } from '../../src/blk/request';
import { splitChain } from '../../src/blk/split-chain';
import { SEG_FLAG_WRITE, SEG_STRIDE, IOV_STRIDE } from '../../src/blk/shared-arrays';

interface Reporter {
  pass(message: string): void;
  fail(message: string): void;
}

/** Run a property; a counterexample (shrunk by fast-check) fails the tap test with its report. */
function holds<Ts extends [unknown, ...unknown[]]>(t: Reporter, prop: fc.IRawProperty<Ts>, params: fc.Parameters<Ts>): void {
  try {
    fc.assert(prop, params);
    t.pass('property holds');
  } catch (err) {
    t.fail(err instanceof Error ? err.message : String(err));
  }
}

const T_IN = 0;
const T_OUT = 1;
const T_FLUSH = 4;
const T_GET_ID = 8;
const T_GET_LIFETIME = 10;
const T_DISCARD = 11;
const T_WRITE_ZEROES = 13;
const T_SECURE_ERASE = 14;

/** Independent of src: which side of the chain carries the data. */
function modelDirection(type: number): 'read' | 'write' | 'none' {
  if (type === T_IN || type === T_GET_ID || type === T_GET_LIFETIME) return 'write';
  if (type === T_OUT || type === T_DISCARD || type === T_WRITE_ZEROES || type === T_SECURE_ERASE) return 'read';
  return 'none';
}

function encodeHeader(type: number, ioprio: number, sector: bigint): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setUint32(4, ioprio, true);
  v.setBigUint64(8, sector, true);
  return b;
}

interface Seg {
  buf: number;
  off: number;
  len: number;
  write: boolean;
}

interface Placement {
  contig: boolean;
  buf: number;
  off: number;
}

/** Cut a stream of `total` bytes at `cuts` (sentinels: -1 = `mark`, -2 = end). */
function pieces(total: number, cuts: readonly number[], mark: number): Array<[number, number]> {
  const points = cuts.map((c) => (c === -1 ? Math.min(mark, total) : c === -2 ? total : c % (total + 1)));
  points.sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  let prev = 0;
  for (const p of [...points, total]) {
    out.push([prev, p]);
    prev = p;
  }
  return out; // includes zero-length pieces for repeated/0/end cuts
}

interface Layout {
  segs: Seg[];
  /** Per stream byte: [buf, addr]. */
  readAddr: Array<[number, number]>;
  writeAddr: Array<[number, number]>;
}

function layOut(
  readLen: number,
  writeLen: number,
  readCuts: readonly number[],
  writeCuts: readonly number[],
  placements: readonly Placement[],
  writeMark: number,
): Layout {
  const segs: Seg[] = [];
  const readAddr: Array<[number, number]> = [];
  const writeAddr: Array<[number, number]> = [];
  let k = 0;
  let prevBuf = -1;
  let prevEnd = 0;
  const place = (a: number, b: number, write: boolean): void => {
    const p = placements[k++ % placements.length] as Placement;
    const buf = p.contig && prevBuf >= 0 ? prevBuf : p.buf;
    const off = p.contig && prevBuf >= 0 ? prevEnd : p.off;
    segs.push({ buf, off, len: b - a, write });
    const addrs = write ? writeAddr : readAddr;
    for (let i = 0; i < b - a; i++) addrs.push([buf, off + i]);
    prevBuf = buf;
    prevEnd = off + (b - a);
  };
  for (const [a, b] of pieces(readLen, readCuts, 16)) place(a, b, false);
  for (const [a, b] of pieces(writeLen, writeCuts, writeMark)) place(a, b, true);
  return { segs, readAddr, writeAddr };
}

/** segs table with `before` garbage segments, then the chain, then 2 garbage segments. */
function segTable(segs: readonly Seg[], before: number): Float64Array {
  const table = new Float64Array((before + segs.length + 2) * SEG_STRIDE).fill(77);
  segs.forEach((s, i) => {
    const j = (before + i) * SEG_STRIDE;
    table[j] = s.buf;
    table[j + 1] = s.off;
    table[j + 2] = s.len;
    table[j + 3] = s.write ? SEG_FLAG_WRITE : 0;
  });
  return table;
}

function expandIovs(req: BlkRequest): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < req.iovCount; i++) {
    const buf = req.iovs[i * IOV_STRIDE] as number;
    const off = req.iovs[i * IOV_STRIDE + 1] as number;
    const len = req.iovs[i * IOV_STRIDE + 2] as number;
    for (let b = 0; b < len; b++) out.push([buf, off + b]);
  }
  return out;
}

function runs(addrs: ReadonlyArray<[number, number]>): number {
  let n = 0;
  for (let i = 0; i < addrs.length; i++) {
    const cur = addrs[i] as [number, number];
    const prev = addrs[i - 1];
    if (prev === undefined || prev[0] !== cur[0] || prev[1] + 1 !== cur[1]) n++;
  }
  return n;
}

const cutArb = fc.oneof({ weight: 4, arbitrary: fc.nat(100000) }, { weight: 1, arbitrary: fc.constantFrom(-1, -2, 0) });

const sectorArb = fc.oneof(
  fc.bigInt({ min: 0n, max: 1n << 24n }),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  fc.constantFrom(0n, (1n << 53n) - 1n, 1n << 53n, (1n << 64n) - 1n),
);

const requestArb = fc.record({
  type: fc.constantFrom(T_IN, T_OUT, T_FLUSH, T_GET_ID, T_GET_LIFETIME, T_DISCARD, T_WRITE_ZEROES, T_SECURE_ERASE, 2, 7, 0xffffffff),
  ioprio: fc.nat(0xffffffff),
  sector: sectorArb,
  dataLen: fc.oneof(fc.nat(64), fc.nat(3000), fc.constantFrom(512, 1024, 4096)),
  extra: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(40) }),
  readCuts: fc.array(cutArb, { maxLength: 10 }),
  writeCuts: fc.array(cutArb, { maxLength: 10 }),
  placements: fc.array(
    fc.record({
      contig: fc.boolean(),
      buf: fc.nat(3),
      off: fc.oneof(fc.nat(1 << 16), fc.nat(Number.MAX_SAFE_INTEGER - (1 << 20))),
    }),
    { minLength: 1, maxLength: 24 },
  ),
  before: fc.nat(4),
  headerSlot: fc.nat(4),
  capacity: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.constant(64)),
});

t.test('random descriptor layouts split back into header, data and status', (t) => {
  let splitOk = 0;
  let overflowed = 0;
  holds(
    t,
    fc.property(requestArb, (r) => {
      const dir = modelDirection(r.type);
      const readData = dir === 'read' ? r.dataLen : 0;
      const writeData = dir === 'write' ? r.dataLen : 0;
      // Extra bytes on the side that carries no data must be ignored.
      const readLen = 16 + readData + (dir === 'read' ? 0 : r.extra);
      const writeLen = writeData + (dir === 'write' ? 0 : r.extra) + 1;
      const lay = layOut(readLen, writeLen, r.readCuts, r.writeCuts, r.placements, writeLen - 1);

      const headers = new Uint8Array((r.headerSlot + 2) * 16).fill(0xa5);
      headers.set(encodeHeader(r.type, r.ioprio, r.sector), r.headerSlot * 16);
      const req = new BlkRequest(r.capacity);
      const res = splitChain(segTable(lay.segs, r.before), r.before, lay.segs.length, headers, r.headerSlot * 16, 16, req);

      const expectedData = dir === 'read' ? lay.readAddr.slice(16) : dir === 'write' ? lay.writeAddr.slice(0, writeData) : [];
      const expectedRuns = runs(expectedData);
      if (expectedRuns > r.capacity) {
        overflowed++;
        assert.equal(res, `chain has ${expectedRuns} data segments, more than the ${r.capacity} this request can carry`);
        return;
      }
      assert.equal(res, null);
      if (res !== null) return;
      splitOk++;

      assert.equal(req.type, r.type);
      assert.equal(req.ioprio, r.ioprio);
      if (r.sector < 1n << 53n) {
        assert.equal(req.sector, Number(r.sector));
        assert.equal(req.sectorExact, true);
      } else {
        assert.equal(req.sector, Infinity);
        assert.equal(req.sectorExact, false);
      }

      assert.deepEqual(expandIovs(req), expectedData, 'data bytes are where the guest put them');
      assert.equal(req.dataLen, expectedData.length);
      assert.equal(req.iovCount, expectedRuns, 'one iovec per contiguous run');
      assert.ok(req.iovCount <= r.capacity);
      for (let i = 0; i < req.iovCount; i++) {
        assert.ok((req.iovs[i * IOV_STRIDE + 2] as number) > 0, 'no empty iovec');
        if (i > 0) {
          const contiguous =
            req.iovs[i * IOV_STRIDE] === req.iovs[(i - 1) * IOV_STRIDE] &&
            (req.iovs[(i - 1) * IOV_STRIDE + 1] as number) + (req.iovs[(i - 1) * IOV_STRIDE + 2] as number) ===
              req.iovs[i * IOV_STRIDE + 1];
          assert.ok(!contiguous, 'no contiguous neighbours left unmerged');
        }
      }

      const status = lay.writeAddr[writeLen - 1] as [number, number];
      assert.deepEqual([req.statusBufId, req.statusOffset], status, 'status is the last writable byte');
      assert.equal(req.writableLen, dir === 'write' ? r.dataLen + 1 : 1);
    }),
    { numRuns: 400 },
  );
  t.ok(splitOk > 50, `enough layouts split (${splitOk})`);
  t.ok(overflowed > 5, `enough layouts overflowed the capacity (${overflowed})`);
  t.end();
});

t.test('a readable part shorter than 16 bytes is a header violation', (t) => {
  holds(
    t,
    fc.property(
      fc.nat(15),
      fc.array(cutArb, { maxLength: 6 }),
      fc.array(fc.record({ contig: fc.boolean(), buf: fc.nat(3), off: fc.nat(1 << 16) }), {
        minLength: 1,
        maxLength: 8,
      }),
      (readLen, cuts, placements) => {
        const lay = layOut(readLen, 513, cuts, [], placements, 512);
        const headers = new Uint8Array(16);
        const res = splitChain(segTable(lay.segs, 0), 0, lay.segs.length, headers, 0, readLen, new BlkRequest(8));
        assert.equal(res, `request header is ${readLen} bytes, needs 16`);
      },
    ),
    { numRuns: 100 },
  );
  t.end();
});

t.test('a chain without a writable byte has no status', (t) => {
  holds(
    t,
    fc.property(fc.integer({ min: 16, max: 2000 }), fc.nat(3), fc.array(cutArb, { maxLength: 6 }), (readLen, zeroWritable, cuts) => {
      const lay = layOut(readLen, 0, cuts, [], [{ contig: false, buf: 1, off: 4096 }], 0);
      // Zero-length writable segments do not hold a status byte either.
      const segs = lay.segs.filter((s) => !s.write);
      for (let i = 0; i < zeroWritable; i++) segs.push({ buf: 0, off: 100, len: 0, write: true });
      const res = splitChain(segTable(segs, 0), 0, segs.length, encodeHeader(T_IN, 0, 0n), 0, 16, new BlkRequest(8));
      assert.equal(res, 'chain has no writable status byte');
    }),
    { numRuns: 100 },
  );
  t.end();
});

const garbageNumber = fc.oneof(
  fc.integer({ min: 0, max: 40 }),
  fc.integer({ min: -3, max: 5000 }),
  fc.double(),
  fc.constantFrom(NaN, Infinity, -Infinity, -0, 0.5, 2 ** 53, 2 ** 53 - 1, 2 ** 32, 2 ** 32 - 1),
);

const wildInput = fc.record({
  nums: fc.array(garbageNumber, { maxLength: 48 }),
  firstSeg: fc.oneof(fc.integer({ min: -2, max: 14 }), fc.double()),
  segCount: fc.oneof(fc.integer({ min: -2, max: 14 }), fc.double()),
  headers: fc.uint8Array({ maxLength: 48 }),
  headerOffset: fc.oneof(fc.integer({ min: -2, max: 40 }), fc.double()),
  headerLen: fc.oneof(fc.integer({ min: -1, max: 17 }), fc.double()),
});

// Small sane numbers with sorted flags and one poisoned value now and then,
// so that both the accepting path and every rejection are reached.
const nearValidInput = fc
  .record({
    segs: fc.array(fc.tuple(fc.nat(3), fc.nat(64), fc.nat(40), fc.boolean()), { minLength: 1, maxLength: 10 }),
    poison: fc.option(fc.tuple(fc.nat(), garbageNumber), { freq: 3 }),
    headers: fc.uint8Array({ minLength: 16, maxLength: 32 }),
  })
  .map(({ segs, poison, headers }) => {
    const sorted = [...segs].sort((a, b) => Number(a[3]) - Number(b[3]));
    const nums = sorted.flatMap(([buf, off, len, w]) => [buf, off, len, w ? 1 : 0]);
    if (poison !== null) nums[poison[0] % nums.length] = poison[1];
    return { nums, firstSeg: 0, segCount: sorted.length, headers, headerOffset: 0, headerLen: 16 };
  });

t.test('garbage segment tables never throw', (t) => {
  let accepted = 0;
  holds(
    t,
    fc.property(
      fc.oneof(wildInput, nearValidInput),
      fc.integer({ min: 1, max: 6 }),
      ({ nums, firstSeg, segCount, headers, headerOffset, headerLen }, capacity) => {
        const segs = Float64Array.from(nums);
        const req = new BlkRequest(capacity);
        let res: string | null = 'threw';
        assert.doesNotThrow(() => {
          res = splitChain(segs, firstSeg, segCount, headers, headerOffset, headerLen, req);
        });
        assert.ok(res === null || (typeof res === 'string' && res.length > 0 && res !== 'threw'));
        if (res === null) {
          accepted++;
          assert.ok(req.iovCount <= capacity);
          let sum = 0;
          for (let i = 0; i < req.iovCount; i++) {
            const len = req.iovs[i * IOV_STRIDE + 2] as number;
            assert.ok(len > 0 && Number.isInteger(len), 'every iovec has a positive length');
            sum += len;
          }
          assert.equal(sum, req.dataLen);
          assert.ok(Number.isSafeInteger(req.statusOffset) && req.statusOffset >= 0);
        }
      },
    ),
    { numRuns: 3000 },
  );
  t.ok(accepted > 50, `some garbage tables were valid chains (${accepted})`);
  t.end();
});

// --- the layouts QEMU's qtest drives, one by one ---

function run(segs: Seg[], header: Uint8Array, capacity = 16): { res: string | null; req: BlkRequest } {
  const req = new BlkRequest(capacity);
  const res = splitChain(segTable(segs, 0), 0, segs.length, header, 0, Math.min(16, header.length), req);
  return { res, req };
}

function iovList(req: BlkRequest): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < req.iovCount; i++) out.push(Array.from(req.iovs.subarray(i * 3, i * 3 + 3)));
  return out;
}

t.test('3-descriptor read: header | data | status', (t) => {
  const { res, req } = run(
    [
      { buf: 0, off: 0, len: 16, write: false },
      { buf: 1, off: 4096, len: 1024, write: true },
      { buf: 0, off: 64, len: 1, write: true },
    ],
    encodeHeader(T_IN, 3, 77n),
  );
  t.equal(res, null);
  t.equal(req.type, T_IN);
  t.equal(req.ioprio, 3);
  t.equal(req.sector, 77);
  t.same(iovList(req), [[1, 4096, 1024]]);
  t.equal(req.dataLen, 1024);
  t.equal(req.statusBufId, 0);
  t.equal(req.statusOffset, 64);
  t.equal(req.writableLen, 1025);
  t.end();
});

t.test('2-descriptor write: header and data in one segment, status alone', (t) => {
  const { res, req } = run(
    [
      { buf: 2, off: 100, len: 16 + 512, write: false },
      { buf: 2, off: 700, len: 1, write: true },
    ],
    encodeHeader(T_OUT, 0, 8n),
  );
  t.equal(res, null);
  t.same(iovList(req), [[2, 116, 512]]);
  t.equal(req.statusOffset, 700);
  t.equal(req.writableLen, 1);
  t.end();
});

t.test('2-descriptor read: data and status share the last segment', (t) => {
  const { res, req } = run(
    [
      { buf: 0, off: 0, len: 16, write: false },
      { buf: 3, off: 8192, len: 513, write: true },
    ],
    encodeHeader(T_IN, 0, 0n),
  );
  t.equal(res, null);
  t.same(iovList(req), [[3, 8192, 512]]);
  t.equal(req.statusBufId, 3);
  t.equal(req.statusOffset, 8192 + 512);
  t.end();
});

t.test('header split 8 + 8 and contiguous data segments merge', (t) => {
  const { res, req } = run(
    [
      { buf: 0, off: 0, len: 8, write: false },
      { buf: 5, off: 8, len: 8, write: false },
      { buf: 1, off: 0, len: 256, write: false },
      { buf: 1, off: 256, len: 0, write: false },
      { buf: 1, off: 256, len: 256, write: false },
      { buf: 2, off: 512, len: 512, write: false },
      { buf: 0, off: 40, len: 1, write: true },
    ],
    encodeHeader(T_OUT, 0, 1n),
  );
  t.equal(res, null);
  t.same(iovList(req), [
    [1, 0, 512],
    [2, 512, 512],
  ]);
  t.equal(req.dataLen, 1024);
  t.end();
});

t.test('flush has no data and ignores extra bytes', (t) => {
  const { res, req } = run(
    [
      { buf: 0, off: 0, len: 32, write: false },
      { buf: 0, off: 64, len: 8, write: true },
    ],
    encodeHeader(T_FLUSH, 0, 123n),
  );
  t.equal(res, null);
  t.equal(req.iovCount, 0);
  t.equal(req.dataLen, 0);
  t.equal(req.statusOffset, 71);
  t.equal(req.writableLen, 1);
  t.end();
});

t.test('sector precision boundary', (t) => {
  const seg = [
    { buf: 0, off: 0, len: 16, write: false },
    { buf: 0, off: 16, len: 1, write: true },
  ];
  let r = run(seg, encodeHeader(T_FLUSH, 0, (1n << 53n) - 1n));
  t.equal(r.req.sector, 2 ** 53 - 1);
  t.equal(r.req.sectorExact, true);
  r = run(seg, encodeHeader(T_FLUSH, 0, 1n << 53n));
  t.equal(r.req.sector, Infinity);
  t.equal(r.req.sectorExact, false);
  r = run(seg, encodeHeader(T_FLUSH, 0, 0x1_0000_0001n));
  t.equal(r.req.sector, 0x1_0000_0001, 'high word is used');
  t.end();
});

t.test('violations name the rule', (t) => {
  const hdr = encodeHeader(T_IN, 0, 0n);
  t.equal(run([], hdr).res, 'request header is 0 bytes, needs 16');
  t.equal(
    run(
      [
        { buf: 0, off: 0, len: 12, write: false },
        { buf: 0, off: 16, len: 1, write: true },
      ],
      hdr,
    ).res,
    'request header is 12 bytes, needs 16',
  );
  t.equal(run([{ buf: 0, off: 0, len: 4096, write: false }], hdr).res, 'chain has no writable status byte');
  t.equal(
    run(
      [
        { buf: 0, off: 0, len: 16, write: false },
        { buf: 0, off: 16, len: 1, write: true },
        { buf: 0, off: 32, len: 1, write: false },
      ],
      hdr,
    ).res,
    'chain segment 2 is device-readable but follows a device-writable one',
  );
  const three = [
    { buf: 0, off: 0, len: 16, write: false },
    { buf: 1, off: 0, len: 512, write: true },
    { buf: 2, off: 0, len: 512, write: true },
    { buf: 3, off: 0, len: 512, write: true },
    { buf: 0, off: 16, len: 1, write: true },
  ];
  t.equal(run(three, hdr, 2).res, 'chain has 3 data segments, more than the 2 this request can carry');
  t.equal(run(three, hdr, 3).res, null);

  const req = new BlkRequest(4);
  const ok = segTable([{ buf: 0, off: 0, len: 17, write: false }], 0);
  t.equal(splitChain(ok, 0, 5, hdr, 0, 16, req), 'chain segments [0, 0 + 5) lie outside the segment table of 3');
  t.equal(splitChain(ok, -1, 1, hdr, 0, 16, req), 'chain segments [-1, -1 + 1) lie outside the segment table of 3');
  t.equal(splitChain(ok, 0, 1, hdr, 8, 16, req), 'request header copy [8, 8 + 16) lies outside the header table of 16 bytes');
  const segs = segTable(
    [
      { buf: 0, off: 0, len: 16, write: false },
      { buf: 0, off: 16, len: 1, write: true },
    ],
    0,
  );
  t.equal(splitChain(segs, 0, 2, hdr, 0, 12, req), 'request header copy holds 12 bytes, needs 16');
  segs[2] = 0.5;
  t.equal(splitChain(segs, 0, 2, hdr, 0, 16, req), 'chain segment 0 has an invalid length 0.5');
  segs[2] = 16;
  segs[1] = -4;
  t.equal(splitChain(segs, 0, 2, hdr, 0, 16, req), 'chain segment 0 has an invalid offset -4');
  segs[1] = 0;
  segs[0] = NaN;
  t.equal(splitChain(segs, 0, 2, hdr, 0, 16, req), 'chain segment 0 has an invalid buffer id NaN');
  segs[0] = 0;
  segs[5] = 2 ** 53 - 1;
  t.equal(splitChain(segs, 0, 2, hdr, 0, 16, req), `chain segment 1 ends past 2^53 (offset ${2 ** 53 - 1}, length 1)`);
  segs[5] = 16;
  segs[6] = 2 ** 32;
  t.equal(splitChain(segs, 0, 2, hdr, 0, 16, req), `chain segment 1 has an invalid length ${2 ** 32}`);
  t.end();
});

t.test('a slot is reusable: a second split forgets the first', (t) => {
  const req = new BlkRequest(8);
  const first = segTable(
    [
      { buf: 0, off: 0, len: 16, write: false },
      { buf: 1, off: 0, len: 512, write: true },
      { buf: 2, off: 0, len: 512, write: true },
      { buf: 0, off: 16, len: 1, write: true },
    ],
    0,
  );
  t.equal(splitChain(first, 0, 4, encodeHeader(T_IN, 0, 0n), 0, 16, req), null);
  t.equal(req.iovCount, 2);
  const second = segTable(
    [
      { buf: 0, off: 0, len: 16, write: false },
      { buf: 0, off: 16, len: 1, write: true },
    ],
    0,
  );
  t.equal(splitChain(second, 0, 2, encodeHeader(T_FLUSH, 0, 0n), 0, 16, req), null);
  t.equal(req.iovCount, 0);
  t.equal(req.dataLen, 0);
  t.equal(req.type, T_FLUSH);
  t.end();
});

t.test('BlkRequest capacity is validated', (t) => {
  t.throws(() => new BlkRequest(0), RangeError);
  t.throws(() => new BlkRequest(1.5), RangeError);
  t.equal(new BlkRequest(7).iovs.length, 21);
  t.end();
});
