// parseSegments (src/blk/discard-zeroes.ts): the DISCARD / WRITE_ZEROES
// segment list, 16 bytes a segment {le64 sector, le32 num_sectors,
// le32 flags (bit 0 UNMAP)}, checked as a whole before anything runs.
//
// The contract tested here (VIRTIO 1.2 5.2.6.2 and the handler's needs):
//   - unknown flag bits, or UNMAP on a DISCARD         -> UNSUPP
//   - empty list, length not a multiple of 16,
//     more segments than maxSegments (or the list's capacity),
//     a segment past the capacity (overflow-safe, u64 sectors up to 2^64-1),
//     a segment longer than the command's max sectors   -> IOERR
//   - UNSUPP wins over IOERR when both occur in one list
//   - any failure leaves count = 0 (and next = 0): nothing may run
//   - success: count = n, next = 0, each segment's sector/sectors as sent,
//     unmap = 1 only for WRITE_ZEROES with UNMAP when mayUnmap.

import t, { type Test } from 'tap';
import fc from 'fast-check';
import { FLAG_UNMAP, SEGMENT_BYTES, SegmentList, parseSegments, segmentBytes } from '../../src/blk/discard-zeroes';
import type { SegmentLimits } from '../../src/blk/disk-view';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES } from '../../src/virtio/constants';

const DISCARD = VIRTIO_BLK_T_DISCARD;
const WZ = VIRTIO_BLK_T_WRITE_ZEROES;
const IOERR = VIRTIO_BLK_S_IOERR;
const UNSUPP = VIRTIO_BLK_S_UNSUPP;
const PROCEED = -1;
const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffff;

interface Seg {
  sector: bigint;
  sectors: number;
  flags: number;
}

const LIMITS: SegmentLimits = {
  capacitySectors: 65536,
  maxDiscardSectors: 8192,
  maxWriteZeroesSectors: 16384,
  maxSegments: 8,
  mayUnmap: true,
};

function seg(sector: number | bigint, sectors: number, flags = 0): Seg {
  return { sector: BigInt(sector), sectors, flags };
}

/** Encodes segs into list.raw (which must hold them) and returns the byte length. */
function encode(list: SegmentList, segs: readonly Seg[]): number {
  const view = new DataView(list.raw.buffer, list.raw.byteOffset, list.raw.byteLength);
  segs.forEach((s, i) => {
    view.setBigUint64(i * SEGMENT_BYTES, s.sector, true);
    view.setUint32(i * SEGMENT_BYTES + 8, s.sectors >>> 0, true);
    view.setUint32(i * SEGMENT_BYTES + 12, s.flags >>> 0, true);
  });
  return segs.length * SEGMENT_BYTES;
}

/** A list dirtied by an earlier successful parse, so a failure must visibly reset it. */
function dirtyList(capacity: number): SegmentList {
  const list = new SegmentList(capacity);
  list.count = capacity;
  list.next = 1;
  return list;
}

function parse(type: number, segs: readonly Seg[], limits: SegmentLimits = LIMITS, capacity = 64): { status: number; list: SegmentList } {
  const list = dirtyList(Math.max(capacity, segs.length));
  const len = encode(list, segs);
  const status = parseSegments(type, len, list, limits);
  return { status, list };
}

/** The contract, with exact (bigint) arithmetic. */
function model(type: number, segs: readonly Seg[], limits: SegmentLimits, listCapacity: number): number {
  if (segs.length === 0 || segs.length > limits.maxSegments || segs.length > listCapacity) return IOERR;
  const discard = type === DISCARD;
  const max = discard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors;
  const cap = BigInt(limits.capacitySectors);
  let ioerr = false;
  for (const s of segs) {
    if ((s.flags & ~FLAG_UNMAP) !== 0 || (discard && s.flags !== 0)) return UNSUPP;
    if (s.sectors > max || s.sector + BigInt(s.sectors) > cap) ioerr = true;
  }
  return ioerr ? IOERR : PROCEED;
}

/** Checks the list after a parse against the segments and the status. */
function checkList(
  t: Test,
  type: number,
  segs: readonly Seg[],
  status: number,
  list: SegmentList,
  limits: SegmentLimits,
  what: string,
): void {
  t.equal(list.next, 0, `${what}: next = 0`);
  if (status !== PROCEED) {
    t.equal(list.count, 0, `${what}: a failed list has count 0 (nothing may run)`);
    return;
  }
  t.equal(list.count, segs.length, `${what}: count = number of segments`);
  segs.forEach((s, i) => {
    t.equal(list.sector[i], Number(s.sector), `${what}: segment ${i} sector`);
    t.equal(list.sectors[i], s.sectors, `${what}: segment ${i} sectors`);
    const want = type === WZ && (s.flags & FLAG_UNMAP) !== 0 && limits.mayUnmap ? 1 : 0;
    t.equal(list.unmap[i], want, `${what}: segment ${i} unmap ${want}`);
  });
}

t.test('a valid list: every segment recorded, count set, next 0', (t) => {
  const segs = [seg(0, 1), seg(7, 9), seg(65535, 1), seg(100, 8192)];
  for (const type of [DISCARD, WZ]) {
    const { status, list } = parse(type, segs);
    t.equal(status, PROCEED, `${type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES'}: proceeds`);
    checkList(t, type, segs, status, list, LIMITS, type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES');
    t.same(segmentBytes(list, 1), { pos: 7 * 512, len: 9 * 512 }, 'segmentBytes is in bytes');
    t.same(segmentBytes(list, 3), { pos: 100 * 512, len: 8192 * 512 }, 'segmentBytes of the longest segment');
  }
  t.end();
});

t.test('flags: each case', (t) => {
  const cases: [string, number, number, number][] = [
    ['DISCARD, flags 0', DISCARD, 0, PROCEED],
    ['DISCARD with UNMAP', DISCARD, FLAG_UNMAP, UNSUPP],
    ['DISCARD, unknown bit 1', DISCARD, 2, UNSUPP],
    ['DISCARD, unknown bit 31', DISCARD, 0x8000_0000, UNSUPP],
    ['DISCARD, every bit', DISCARD, U32_MAX, UNSUPP],
    ['WRITE_ZEROES, flags 0', WZ, 0, PROCEED],
    ['WRITE_ZEROES with UNMAP', WZ, FLAG_UNMAP, PROCEED],
    ['WRITE_ZEROES, unknown bit 1', WZ, 2, UNSUPP],
    ['WRITE_ZEROES, UNMAP + unknown bit 1', WZ, 3, UNSUPP],
    ['WRITE_ZEROES, unknown bit 31', WZ, 0x8000_0000, UNSUPP],
    ['WRITE_ZEROES, UNMAP + bit 31', WZ, 0x8000_0001, UNSUPP],
    ['WRITE_ZEROES, every bit', WZ, U32_MAX, UNSUPP],
  ];
  for (let b = 1; b < 32; b++)
    cases.push([`WRITE_ZEROES, unknown bit ${b}`, WZ, 2 ** b, UNSUPP], [`DISCARD, unknown bit ${b}`, DISCARD, 2 ** b, UNSUPP]);
  for (const [what, type, flags, want] of cases) {
    const segs = [seg(8, 8, flags)];
    const { status, list } = parse(type, segs);
    t.equal(status, want, `${what}: ${want === PROCEED ? 'proceeds' : want === UNSUPP ? 'UNSUPP' : 'IOERR'}`);
    checkList(t, type, segs, status, list, LIMITS, what);
  }
  // A bad flag in any position of a longer list fails the whole list.
  for (const type of [DISCARD, WZ]) {
    for (let at = 0; at < 4; at++) {
      const segs = [seg(0, 8), seg(16, 8), seg(32, 8), seg(48, 8)];
      segs[at] = seg(16 * at, 8, 4);
      const { status, list } = parse(type, segs);
      t.equal(status, UNSUPP, `${type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES'}: unknown flag in segment ${at} of 4: UNSUPP`);
      t.equal(list.count, 0, 'count 0');
    }
  }
  t.end();
});

t.test('the unmap bit is kept only for WRITE_ZEROES with UNMAP when mayUnmap', (t) => {
  const segs = [seg(0, 8, FLAG_UNMAP), seg(8, 1, 0), seg(9, 7, FLAG_UNMAP)];
  const on = parse(WZ, segs, { ...LIMITS, mayUnmap: true });
  t.equal(on.status, PROCEED);
  t.same(Array.from(on.list.unmap.subarray(0, 3)), [1, 0, 1], 'mayUnmap: unmap follows the flag');
  const off = parse(WZ, segs, { ...LIMITS, mayUnmap: false });
  t.equal(off.status, PROCEED, 'UNMAP is still a valid flag when the device may not unmap');
  t.same(Array.from(off.list.unmap.subarray(0, 3)), [0, 0, 0], 'no mayUnmap: never unmap');
  // The unmap array is reused per slot: a stale 1 must not survive a re-parse.
  const list = new SegmentList(4);
  encode(list, [seg(0, 8, FLAG_UNMAP)]);
  t.equal(parseSegments(WZ, 16, list, LIMITS), PROCEED);
  t.equal(list.unmap[0], 1);
  encode(list, [seg(0, 8, 0)]);
  t.equal(parseSegments(WZ, 16, list, LIMITS), PROCEED);
  t.equal(list.unmap[0], 0, 'a re-parse without UNMAP clears the slot');
  t.end();
});

t.test('list length: empty, not a multiple of 16, too many segments', (t) => {
  for (const type of [DISCARD, WZ]) {
    const name = type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES';
    for (const len of [0, 1, 8, 15, 17, 24, 31, 33, 16 * 3 + 1, 16 * 8 - 1]) {
      const list = dirtyList(16);
      encode(
        list,
        Array.from({ length: 8 }, (_, i) => seg(i * 8, 8)),
      );
      t.equal(parseSegments(type, len, list, LIMITS), IOERR, `${name}: ${len} bytes: IOERR`);
      t.equal(list.count, 0, `${name}: ${len} bytes: count 0`);
      t.equal(list.next, 0, `${name}: ${len} bytes: next 0`);
    }
    // Exactly maxSegments is fine; one more is not.
    const max = Array.from({ length: LIMITS.maxSegments }, (_, i) => seg(i * 16, 8));
    t.equal(parse(type, max).status, PROCEED, `${name}: maxSegments segments proceed`);
    const over = parse(type, [...max, seg(1000, 8)]);
    t.equal(over.status, IOERR, `${name}: maxSegments + 1: IOERR`);
    t.equal(over.list.count, 0, 'count 0');
    // The list's own capacity bounds it too (a slot made for fewer segments).
    const small = dirtyList(4);
    const len = encode(small, [seg(0, 1), seg(1, 1), seg(2, 1), seg(3, 1)]);
    t.equal(
      parseSegments(type, len + 16, small, { ...LIMITS, maxSegments: 64 }),
      IOERR,
      `${name}: more segments than the list holds: IOERR`,
    );
    t.equal(small.count, 0, 'count 0');
    t.equal(parseSegments(type, len, small, { ...LIMITS, maxSegments: 64 }), PROCEED, `${name}: as many as the list holds: proceeds`);
    // Only `len` bytes are read: garbage after them is not a segment.
    const tail = new SegmentList(4);
    encode(tail, [seg(0, 8), seg(U64_MAX, U32_MAX, U32_MAX)]);
    t.equal(parseSegments(type, 16, tail, LIMITS), PROCEED, `${name}: bytes past len are ignored`);
    t.equal(tail.count, 1);
  }
  t.end();
});

t.test('range: beyond capacity, overflow-safe, and max sectors', (t) => {
  const cap = LIMITS.capacitySectors;
  const cases: [string, Seg, number][] = [
    ['first sector', seg(0, 1), PROCEED],
    ['last sector', seg(cap - 1, 1), PROCEED],
    ['up to the end', seg(cap - 8, 8), PROCEED],
    ['empty segment at the end', seg(cap, 0), PROCEED],
    ['empty segment at 0', seg(0, 0), PROCEED],
    ['starts at the end', seg(cap, 1), IOERR],
    ['crosses the end by one', seg(cap - 1, 2), IOERR],
    ['empty segment past the end', seg(cap + 1, 0), IOERR],
    ['sector 2^32 (hi word set)', seg(2n ** 32n, 1), IOERR],
    ['sector 2^32 + 1, empty: hi word must not be dropped', seg(2n ** 32n + 1n, 0), IOERR],
    ['sector 2^53', seg(2n ** 53n, 0), IOERR],
    ['sector 2^53 + 1 (not a double)', seg(2n ** 53n + 1n, 1), IOERR],
    ['sector 2^63', seg(2n ** 63n, 1), IOERR],
    ['sector 2^64 - 1', seg(U64_MAX, 1), IOERR],
    ['sector 2^64 - 1, empty', seg(U64_MAX, 0), IOERR],
    ['sector + sectors wraps to 0 in u64', seg(2n ** 64n - 8n, 8), IOERR],
    ['sector + sectors wraps past 0 in u64', seg(2n ** 64n - 8n, 16), IOERR],
    ['num_sectors 2^32 - 1 at 0', seg(0, U32_MAX), IOERR],
    ['num_sectors 2^32 - 1 wraps u32 + sector', seg(1, U32_MAX), IOERR],
  ];
  for (const type of [DISCARD, WZ]) {
    const name = type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES';
    for (const [what, s, want] of cases) {
      const { status, list } = parse(type, [s]);
      t.equal(status, want, `${name}, ${what}: ${want === PROCEED ? 'proceeds' : 'IOERR'}`);
      checkList(t, type, [s], status, list, LIMITS, `${name}, ${what}`);
    }
    const max = type === DISCARD ? LIMITS.maxDiscardSectors : LIMITS.maxWriteZeroesSectors;
    t.equal(parse(type, [seg(0, max)]).status, PROCEED, `${name}: exactly max sectors proceeds`);
    const over = parse(type, [seg(0, max + 1)]);
    t.equal(over.status, IOERR, `${name}: max sectors + 1 (inside the disk): IOERR`);
    t.equal(over.list.count, 0, 'count 0');
    const none = parse(type, [seg(0, 1)], { ...LIMITS, maxDiscardSectors: 0, maxWriteZeroesSectors: 0 });
    t.equal(none.status, IOERR, `${name}: max sectors 0 (not offered): any sector is too many`);
  }
  // The two maxima are separate.
  t.equal(parse(DISCARD, [seg(0, 10000)]).status, IOERR, 'DISCARD takes its own max (8192), not WRITE_ZEROES (16384)');
  t.equal(parse(WZ, [seg(0, 10000)]).status, PROCEED, 'WRITE_ZEROES takes its own max');

  // At the top of the double range: capacity 2^53 - 1 sectors.
  const huge: SegmentLimits = { ...LIMITS, capacitySectors: 2 ** 53 - 1, maxDiscardSectors: U32_MAX, maxWriteZeroesSectors: U32_MAX };
  const top: [string, Seg, number][] = [
    ['last sector of a 2^53-1 sector disk', seg(2n ** 53n - 2n, 1), PROCEED],
    ['empty at its end', seg(2n ** 53n - 1n, 0), PROCEED],
    ['one past its end', seg(2n ** 53n - 1n, 1), IOERR],
    ['2^53, empty (rounds nowhere near)', seg(2n ** 53n, 0), IOERR],
    ['2^53 + 1, empty (rounds to 2^53 as a double)', seg(2n ** 53n + 1n, 0), IOERR],
    ['2^53 + 2, empty', seg(2n ** 53n + 2n, 0), IOERR],
    ['2^64 - 1, empty', seg(U64_MAX, 0), IOERR],
    ['2^53 - 2 + 2^32 - 1 sectors', seg(2n ** 53n - 2n, U32_MAX), IOERR],
  ];
  for (const [what, s, want] of top) t.equal(parse(WZ, [s], huge).status, want, `${what}: ${want === PROCEED ? 'proceeds' : 'IOERR'}`);
  t.end();
});

t.test('a bad segment anywhere fails the whole list with count 0', (t) => {
  const cap = LIMITS.capacitySectors;
  for (const type of [DISCARD, WZ]) {
    const name = type === DISCARD ? 'DISCARD' : 'WRITE_ZEROES';
    for (let at = 0; at < 5; at++) {
      const segs = [seg(0, 8), seg(100, 3), seg(200, 17), seg(cap - 8, 8), seg(5000, 1)];
      segs[at] = seg(cap, 1);
      const { status, list } = parse(type, segs);
      t.equal(status, IOERR, `${name}: segment ${at} of 5 beyond capacity: IOERR`);
      t.equal(list.count, 0, `${name}: segment ${at} of 5 beyond capacity: count 0`);
    }
    // UNSUPP wins over IOERR, whichever comes first.
    const a = parse(type, [seg(cap, 1), seg(0, 8, 2)]);
    t.equal(a.status, UNSUPP, `${name}: IOERR segment, then an unknown flag: UNSUPP`);
    t.equal(a.list.count, 0);
    const b = parse(type, [seg(0, 8, 2), seg(cap, 1)]);
    t.equal(b.status, UNSUPP, `${name}: unknown flag, then an IOERR segment: UNSUPP`);
    t.equal(b.list.count, 0);
  }
  t.end();
});

// ------------------------------------------------------------ properties

const limitsArb: fc.Arbitrary<SegmentLimits> = fc.record({
  capacitySectors: fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.constantFrom(0, 1, 8, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1)),
  maxDiscardSectors: fc.oneof(fc.integer({ min: 0, max: 1 << 16 }), fc.constantFrom(0, U32_MAX)),
  maxWriteZeroesSectors: fc.oneof(fc.integer({ min: 0, max: 1 << 16 }), fc.constantFrom(0, U32_MAX)),
  maxSegments: fc.integer({ min: 1, max: 12 }),
  mayUnmap: fc.boolean(),
});

/** Segments biased to the edges: near the capacity, near 2^53 and 2^64, near the maxima. */
function segArb(l: SegmentLimits): fc.Arbitrary<Seg> {
  const cap = BigInt(l.capacitySectors);
  const near = (base: bigint, span: bigint): fc.Arbitrary<bigint> =>
    fc.bigInt({ min: -span, max: span }).map((d) => {
      const v = base + d;
      return v < 0n ? 0n : v > U64_MAX ? U64_MAX : v;
    });
  const sector = fc.oneof(
    { arbitrary: fc.bigInt({ min: 0n, max: cap }), weight: 4 },
    { arbitrary: near(cap, 4096n), weight: 4 },
    { arbitrary: near(2n ** 53n, 4n), weight: 1 },
    { arbitrary: near(U64_MAX, 2n ** 33n), weight: 1 },
    { arbitrary: fc.bigInt({ min: 0n, max: U64_MAX }), weight: 1 },
  );
  const maxes = [l.maxDiscardSectors, l.maxWriteZeroesSectors];
  const sectors = fc.oneof(
    { arbitrary: fc.integer({ min: 0, max: 64 }), weight: 4 },
    {
      arbitrary: fc.constantFrom(...maxes).chain((m) => fc.integer({ min: Math.max(0, m - 2), max: Math.min(U32_MAX, m + 2) })),
      weight: 2,
    },
    { arbitrary: fc.integer({ min: U32_MAX - 8, max: U32_MAX }), weight: 1 },
    { arbitrary: fc.nat({ max: U32_MAX }), weight: 1 },
  );
  const flags = fc.oneof(
    { arbitrary: fc.constant(0), weight: 6 },
    { arbitrary: fc.constant(FLAG_UNMAP), weight: 4 },
    { arbitrary: fc.integer({ min: 1, max: 31 }).map((b) => 2 ** b), weight: 1 },
    { arbitrary: fc.nat({ max: U32_MAX }), weight: 1 },
  );
  return fc.record({ sector, sectors, flags });
}

const caseArb = limitsArb.chain((limits) =>
  fc.record({
    limits: fc.constant(limits),
    type: fc.constantFrom(DISCARD, WZ),
    segs: fc.array(segArb(limits), { minLength: 0, maxLength: limits.maxSegments + 2 }),
    listCapacity: fc.integer({ min: 1, max: 16 }),
  }),
);

t.test('property: status, count and contents match the exact model', (t) => {
  fc.assert(
    fc.property(caseArb, ({ limits, type, segs, listCapacity }) => {
      // Encode into a scratch list that holds them all, then hand the parser a
      // list of listCapacity segments holding what fits: it must refuse a
      // longer list by its count, before reading past its buffer.
      const scratch = new SegmentList(Math.max(1, segs.length));
      const len = encode(scratch, segs);
      const target = dirtyList(listCapacity);
      target.raw.set(scratch.raw.subarray(0, Math.min(len, target.raw.length)));
      const status = parseSegments(type, len, target, limits);
      const sentCount = segs.length;
      const want = model(type, segs, limits, listCapacity);
      if (status !== want) return false;
      if (target.next !== 0) return false;
      if (status !== PROCEED) return target.count === 0;
      if (target.count !== sentCount) return false;
      for (let i = 0; i < sentCount; i++) {
        const s = segs[i]!; // i < sentCount <= segs.length
        if (target.sector[i] !== Number(s.sector) || target.sectors[i] !== s.sectors) return false;
        const unmap = type === WZ && (s.flags & FLAG_UNMAP) !== 0 && limits.mayUnmap ? 1 : 0;
        if (target.unmap[i] !== unmap) return false;
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  t.pass('3000 random lists agree with the model');
  t.end();
});

t.test('property: any length that is not a positive multiple of 16 is IOERR with count 0', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 16 * 16 }), fc.constantFrom(DISCARD, WZ), (len, type) => {
      fc.pre(len === 0 || len % SEGMENT_BYTES !== 0);
      const list = dirtyList(16);
      encode(
        list,
        Array.from({ length: 16 }, (_, i) => seg(i, 1)),
      );
      return parseSegments(type, len, list, { ...LIMITS, maxSegments: 16 }) === IOERR && list.count === 0 && list.next === 0;
    }),
    { numRuns: 500 },
  );
  t.pass('every such length is refused');
  t.end();
});

t.test('property: a parse after a failure, and a failure after a success, never leak state', (t) => {
  fc.assert(
    fc.property(caseArb, caseArb, (a, b) => {
      const list = new SegmentList(16);
      for (const c of [a, b]) {
        if (c.segs.length > 16) continue;
        list.raw.fill(0xa5);
        const len = encode(list, c.segs);
        const status = parseSegments(c.type, len, list, c.limits);
        if (status !== model(c.type, c.segs, c.limits, 16)) return false;
        if (list.next !== 0) return false;
        if (status !== PROCEED && list.count !== 0) return false;
        if (status === PROCEED && list.count !== c.segs.length) return false;
      }
      return true;
    }),
    { numRuns: 1000 },
  );
  t.pass('1000 pairs of parses on one reused list');
  t.end();
});
