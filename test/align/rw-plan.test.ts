// The alignment plan of one read/write (src/align/rw-plan.ts) against an
// independent reference: where every byte of the host vector must come from
// (seed 512b-on-4k-emulation), when padding may collapse pieces and how many
// (seed iov-max-padding-collapse), and where a too-long middle may be split.
//
// The reference here never calls planRw's helpers: guest byte k of a request
// is located with prefix sums over the iovec list, O_DIRECT validity is
// checked element by element, and split feasibility by a reachability search.

import t, { type Test } from 'tap';
import fc from 'fast-check';
import { ELEM, RwPlan, buildVector, cutPieces, planRw, splitPoints, type HostRules } from '../../src/align/rw-plan';
// Reference: guest bytes [from, to) of an iovec list as maximal per-iovec runs.
import { cut as refCut } from '../blk/blk-rig';

const IOV_MAX = 1024;
const BOUNCE = 1024;

type Iov = [bufId: number, off: number, len: number];

function iovArray(list: readonly Iov[]): Float64Array {
  const a = new Float64Array(Math.max(1, list.length) * ELEM);
  list.forEach(([b, o, l], i) => {
    a[i * ELEM] = b;
    a[i * ELEM + 1] = o;
    a[i * ELEM + 2] = l;
  });
  return a;
}

function elems(a: Float64Array, n: number): Iov[] {
  const out: Iov[] = [];
  for (let i = 0; i < n; i++) out.push([a[i * ELEM] as number, a[i * ELEM + 1] as number, a[i * ELEM + 2] as number]);
  return out;
}

interface Case {
  rules: HostRules;
  pos: number;
  iovs: Iov[];
  write: boolean;
  phases: number[];
}

function plan(c: Case, mutate?: (p: RwPlan) => void): { plan: RwPlan; vec: Float64Array; n: number; len: number } {
  const len = c.iovs.reduce((s, v) => s + v[2], 0);
  const p = new RwPlan(c.iovs.length);
  planRw(p, c.pos, len, c.write, iovArray(c.iovs), c.iovs.length, c.rules, (b) => c.phases[b] ?? 0);
  mutate?.(p);
  const vec = new Float64Array((c.iovs.length + 2) * ELEM);
  const n = buildVector(p, BOUNCE, BASE, c.rules.offsetAlign, vec);
  return { plan: p, vec, n, len };
}

/** Bounce base offset the vectors are built at (any granule-aligned offset). */
const BASE = 3 * 4096;

/**
 * Every invariant of a plan + vector, from the spec alone. Returns a list of
 * violations (empty when the plan is right).
 */
function violations(c: Case, mutate?: (p: RwPlan) => void): string[] {
  const out: string[] = [];
  const A = c.rules.offsetAlign;
  const M = c.rules.memAlign;
  const L = c.rules.lenAlign;
  const { plan: p, vec, n, len } = plan(c, mutate);
  const pos = c.pos;
  const end = pos + len;
  const phase = (b: number): number => c.phases[b] ?? 0;
  const aStart = Math.floor(pos / A) * A;
  const aEnd = Math.ceil(end / A) * A;
  const singleBlock = aEnd - aStart === A;
  const expHead = pos % A !== 0;
  const expTail = end % A !== 0 && !(expHead && singleBlock);
  if (p.aStart !== aStart || p.aEnd !== aEnd) out.push(`range [${p.aStart}, ${p.aEnd}) != [${aStart}, ${aEnd})`);
  if (p.head !== expHead) out.push(`head ${p.head} != ${expHead}`);
  if (p.tail !== expTail) out.push(`tail ${p.tail} != ${expTail}`);

  // Middle in file offsets and its pieces, by the reference.
  const midStart = expHead ? aStart + A : pos;
  let midEnd = expTail ? aEnd - A : end;
  if (midEnd < midStart) midEnd = midStart;
  const mid = refCut(c.iovs, midStart - pos, midEnd - pos);
  const misaligned = mid.some(([b, o, l]) => (phase(b) + o) % M !== 0 || l % L !== 0);
  if (p.midBounce !== misaligned) out.push(`midBounce ${p.midBounce} but a misaligned middle piece: ${misaligned}`);
  const midCount = misaligned ? (midEnd > midStart ? 1 : 0) : mid.length;
  const total = midCount + (expHead ? 1 : 0) + (expTail ? 1 : 0);
  const expCollapse = total > IOV_MAX && midCount <= IOV_MAX ? total - IOV_MAX + 1 : 0;
  const expSplit = total > IOV_MAX && midCount > IOV_MAX;
  if (p.collapse !== expCollapse) out.push(`collapse ${p.collapse} != ${expCollapse} (total ${total})`);
  if (p.split !== expSplit) out.push(`split ${p.split} != ${expSplit}`);
  const expBounced = expHead || expTail || (misaligned && midEnd > midStart) || expCollapse > 0;
  if (p.bounceLen > 0 !== expBounced) out.push(`bounceLen ${p.bounceLen} but bouncing expected: ${expBounced}`);
  if (p.rmw !== (c.write && (expHead || expTail))) out.push(`rmw ${p.rmw}`);

  // The vector: file order from aStart, exactly [aStart, aEnd).
  const v = elems(vec, n);
  const sum = v.reduce((s, e) => s + e[2], 0);
  if (sum !== aEnd - aStart) out.push(`vector covers ${sum} bytes, not aEnd-aStart ${aEnd - aStart}`);
  if (!expSplit && n > IOV_MAX) out.push(`vector has ${n} elements > IOV_MAX`);
  if (expCollapse > 0 && n !== IOV_MAX) out.push(`collapsed vector has ${n} elements, not exactly IOV_MAX`);
  const bounceRanges: Array<[number, number, string]> = [];
  let f = aStart;
  let collapsedSeen = 0;
  for (let i = 0; i < v.length; i++) {
    const [b, o, l] = v[i] as Iov;
    const where = `element ${i} (${b}, ${o}, ${l}) at file ${f}`;
    if (l <= 0) out.push(`${where}: empty element`);
    if (b === BOUNCE) {
      // A bounce element: head block, tail block, middle bounce or collapse buffer.
      const rel = o - BASE;
      if (rel < 0 || rel + l > p.bounceLen) out.push(`${where}: outside the request's bounce allocation [0, ${p.bounceLen})`);
      if (o % M !== 0 || l % M !== 0) out.push(`${where}: bounce element not ${M}-aligned`);
      let kind = '';
      if (expHead && i === 0) {
        kind = 'head';
        if (l !== A || f !== aStart) out.push(`${where}: head block must be ${A} bytes at aStart`);
      } else if (expTail && i === v.length - 1) {
        kind = 'tail';
        if (l !== A || f !== aEnd - A) out.push(`${where}: tail block must be ${A} bytes at aEnd-A`);
      } else if (misaligned) {
        kind = 'mid';
        if (f !== midStart || l !== midEnd - midStart) out.push(`${where}: middle bounce must cover [midStart, midEnd)`);
      } else if (expCollapse > 0 && i === (expHead ? 1 : 0)) {
        kind = 'collapse';
        collapsedSeen++;
        const want = mid.slice(0, expCollapse).reduce((s, e) => s + e[2], 0);
        if (f !== midStart || l !== want)
          out.push(`${where}: collapse buffer must be the first ${expCollapse} pieces (${want} bytes) at midStart`);
      } else {
        out.push(`${where}: unexpected bounce element`);
      }
      bounceRanges.push([rel, rel + l, kind]);
    } else {
      // Guest memory: must be exactly guest bytes [f-pos, f-pos+l) inside one iovec.
      const k = f - pos;
      const src = refCut(c.iovs, k, k + l);
      if (k < 0 || k + l > len || src.length !== 1 || src[0]?.[0] !== b || src[0]?.[1] !== o) {
        out.push(`${where}: is not guest bytes [${k}, ${k + l}) = ${JSON.stringify(src)}`);
      }
      if (f < midStart || f + l > midEnd) out.push(`${where}: guest memory outside the middle [${midStart}, ${midEnd})`);
      if ((phase(b) + o) % M !== 0 || l % L !== 0) out.push(`${where}: guest element violates memAlign ${M} / lenAlign ${L}`);
      if (misaligned) out.push(`${where}: guest element although the middle is bounced`);
    }
    f += l;
  }
  if (expCollapse > 0 && collapsedSeen !== 1) out.push(`collapse buffer not right after the head`);
  bounceRanges.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < bounceRanges.length; i++) {
    const a = bounceRanges[i - 1] as [number, number, string];
    const bb = bounceRanges[i] as [number, number, string];
    if (bb[0] < a[1]) out.push(`bounce ${a[2]} and ${bb[2]} overlap`);
  }
  // The guest-memory elements, in order, are exactly the uncollapsed middle pieces.
  if (!misaligned) {
    const guest = v.filter((e) => e[0] !== BOUNCE);
    const want = mid.slice(expCollapse);
    if (JSON.stringify(guest) !== JSON.stringify(want)) out.push(`zero-copy pieces differ from the middle's pieces`);
  }

  // Splitting: each op <= IOV_MAX elements, starting A-aligned; or no cut exists at all.
  if (expSplit) {
    const cuts: number[] = [];
    const ops = splitPoints(vec, n, aStart, A, cuts);
    const feasible = splitFeasible(v, aStart, A);
    if (ops === 0) {
      if (feasible) out.push(`splitPoints found no cut, but an A-aligned split exists`);
    } else {
      let off = aStart;
      for (let o = 0; o < ops; o++) {
        const from = cuts[o] as number;
        const to = o + 1 < ops ? (cuts[o + 1] as number) : n;
        if (to - from > IOV_MAX || to <= from) out.push(`op ${o} has ${to - from} elements`);
        if (off % A !== 0) out.push(`op ${o} starts at unaligned file offset ${off}`);
        for (let i = from; i < to; i++) off += (v[i] as Iov)[2];
        if (off % A !== 0) out.push(`op ${o} ends at unaligned file offset ${off}`);
      }
      if (cuts[0] !== 0 || off !== aEnd) out.push(`ops do not cover the vector`);
    }
  }
  return out;
}

/** Can the vector be cut into runs of <= IOV_MAX elements ending at A-aligned offsets? */
function splitFeasible(v: readonly Iov[], start: number, A: number): boolean {
  const n = v.length;
  const aligned: boolean[] = new Array<boolean>(n + 1).fill(false);
  let p = start;
  aligned[0] = true;
  for (let i = 0; i < n; i++) {
    p += (v[i] as Iov)[2];
    aligned[i + 1] = p % A === 0;
  }
  const reach: boolean[] = new Array<boolean>(n + 1).fill(false);
  reach[0] = true;
  let lastReach = 0; // sliding window: any reachable index within IOV_MAX behind
  const reachIdx: number[] = [0];
  for (let j = 1; j <= n; j++) {
    while (reachIdx.length > 0 && (reachIdx[0] as number) < j - IOV_MAX) reachIdx.shift();
    if (aligned[j] && reachIdx.length > 0) {
      reach[j] = true;
      reachIdx.push(j);
      lastReach = j;
    }
  }
  return reach[n] === true && lastReach === n;
}

function check(t: Test, c: Case, what: string): void {
  const v = violations(c);
  t.same(v, [], what);
}

// ------------------------------------------------------------------- units

t.test('cutPieces cuts exactly the byte ranges and appends at index n', (t) => {
  const list: Iov[] = [
    [0, 100, 1000],
    [1, 0, 512],
    [0, 5000, 3000],
  ];
  const out = new Float64Array(10 * ELEM);
  out.fill(-7);
  const n = cutPieces(iovArray(list), 3, 500, 2000, out, 2);
  t.equal(n, 5, 'three pieces appended after the two already there');
  t.same(elems(out, 5).slice(2), [
    [0, 600, 500],
    [1, 0, 512],
    [0, 5000, 488],
  ]);
  t.same(
    elems(out, 2),
    [
      [-7, -7, -7],
      [-7, -7, -7],
    ],
    'entries before n untouched',
  );
  t.equal(cutPieces(iovArray(list), 3, 1000, 1000, out, 0), 0, 'empty range: no piece');
  t.equal(cutPieces(iovArray(list), 3, 1000, 1512, out, 0), 1, 'exact iovec');
  t.same(elems(out, 1), [[1, 0, 512]]);
  t.equal(cutPieces(iovArray(list), 3, 0, 4512, out, 0), 3, 'whole list');
  t.same(elems(out, 3), list);
  t.end();
});

t.test('property: cutPieces equals the byte-walk reference', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(3), fc.nat(1 << 20), fc.integer({ min: 0, max: 5000 })), { minLength: 1, maxLength: 30 }),
      fc.nat(),
      fc.nat(),
      (list, a, b) => {
        const total = list.reduce((s, v) => s + v[2], 0);
        const from = a % (total + 1);
        const to = from + (b % (total - from + 1));
        const out = new Float64Array((list.length + 1) * ELEM);
        const n = cutPieces(iovArray(list), list.length, from, to, out, 0);
        const got = elems(out, n);
        const want = refCut(list, from, to);
        if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${JSON.stringify(got)} != ${JSON.stringify(want)}`);
        // byte count
        return got.reduce((s, v) => s + v[2], 0) === to - from;
      },
    ),
    { numRuns: 500 },
  );
  t.pass('cutPieces matches the reference');
  t.end();
});

const HOST_4KN: HostRules = { offsetAlign: 4096, memAlign: 512, lenAlign: 512 };
/** Linux 6.1 block devices: every segment's length must be a whole logical block. */
const HOST_4KN_61: HostRules = { offsetAlign: 4096, memAlign: 512, lenAlign: 4096 };

t.test('zero copy: 4K-aligned request with 4K- or 512-aligned iovecs on a 4Kn host bounces nothing', (t) => {
  for (const write of [false, true]) {
    const c4k: Case = {
      rules: HOST_4KN,
      pos: 8192,
      write,
      phases: [0, 0],
      iovs: [
        [0, 4096, 4096],
        [1, 65536, 8192],
        [0, 40960, 4096],
      ],
    };
    check(t, c4k, `4K iovecs (${write ? 'write' : 'read'})`);
    const p = plan(c4k);
    t.equal(p.plan.bounceLen, 0, 'bounceLen 0');
    t.notOk(p.plan.head || p.plan.tail || p.plan.midBounce || p.plan.rmw, 'no head, tail, middle bounce or RMW');
    t.same(elems(p.vec, p.n), c4k.iovs, 'the vector is the guest iovecs');
    const c512: Case = {
      rules: HOST_4KN,
      pos: 4096,
      write,
      phases: [0, 512],
      iovs: [
        [0, 512, 1536],
        [1, 1024, 512],
        [0, 3584, 2048],
      ],
    };
    check(t, c512, `512-aligned iovecs (${write ? 'write' : 'read'})`);
    t.equal(plan(c512).plan.bounceLen, 0, 'memAlign-aligned iovecs: bounceLen 0');
    // A region whose mmap phase is 512 and iovec offsets that compensate.
    const phased: Case = { rules: HOST_4KN, pos: 0, write, phases: [3584], iovs: [[0, 512, 4096]] };
    t.equal(plan(phased).plan.bounceLen, 0, 'phase 3584 + offset 512 is 4096-aligned');
  }
  t.end();
});

t.test('512-byte-aligned middle on A=4096/M=512: zero-copy middle, only head/tail bounced', (t) => {
  // pos 1536 .. 1536 + 3*4096 + 1024: head block [0,4096), middle [4096,12288), tail [12288,16384).
  const iovs: Iov[] = [
    [0, 0, 2560],
    [1, 512, 512],
    [0, 10240, 7680],
    [1, 8192, 2560],
  ];
  const c: Case = { rules: HOST_4KN, pos: 1536, write: true, phases: [0, 0], iovs };
  check(t, c, 'invariants');
  const { plan: p, vec, n } = plan(c);
  t.ok(p.head && p.tail, 'head and tail bounced');
  t.notOk(p.midBounce, 'middle not bounced');
  t.equal(p.bounceLen, 8192, 'only two bounce blocks');
  t.ok(p.rmw, 'an unaligned write is an RMW');
  t.same(elems(vec, n), [
    [BOUNCE, BASE + p.headOff, 4096],
    [1, 512, 512], // guest bytes [2560, 3072) = file [4096, 4608)
    [0, 10240, 7680], // guest bytes [3072, 10752) = file [4608, 12288)
    [BOUNCE, BASE + p.tailOff, 4096],
  ]);
  t.equal(p.headGuestEnd, 2560, 'head block holds guest bytes [0, 2560)');
  t.equal(p.tailGuestStart, 10752, 'tail block holds guest bytes [10752, len)');
  t.end();
});

t.test('an iovec misaligned to memAlign forces a middle bounce', (t) => {
  for (const [iovs, why] of [
    [[[0, 100, 4096]], 'address 100'],
    [
      [
        [0, 0, 1000],
        [0, 2000, 3096],
      ],
      'length 1000',
    ],
    [
      [
        [0, 0, 4096],
        [1, 256, 4096],
      ],
      'second iovec at 256',
    ],
  ] as Array<[Iov[], string]>) {
    const c: Case = { rules: HOST_4KN, pos: 0, write: false, phases: [0, 0], iovs };
    check(t, c, why);
    const p = plan(c).plan;
    t.ok(p.midBounce, `${why}: midBounce`);
    t.equal(p.bounceLen, Math.ceil(iovs.reduce((s, v) => s + v[2], 0) / 4096) * 4096, `${why}: the whole middle bounced`);
  }
  // A region phase can make an aligned offset misaligned.
  const c: Case = { rules: HOST_4KN, pos: 0, write: false, phases: [100], iovs: [[0, 0, 4096]] };
  t.ok(plan(c).plan.midBounce, 'region phase 100: offset 0 is misaligned');
  t.end();
});

/** n iovecs of `size` bytes in buffer 0, non-contiguous, M-aligned. */
function pages(n: number, size = 512, startBuf = 0): Iov[] {
  const out: Iov[] = [];
  for (let i = 0; i < n; i++) out.push([startBuf + (i % 2), i * 2 * Math.max(size, 4096), size]);
  return out;
}

t.test('collapse happens only when head/tail padding pushes the count past IOV_MAX', (t) => {
  const A = 4096;
  // One 512 B piece in the head block, `midPieces` 4 KiB pieces, one 512 B piece in the tail block.
  const exact = (head: boolean, midPieces: number, tail: boolean): Case => {
    const iovs: Iov[] = [];
    let k = 0;
    if (head) iovs.push([0, k++ * 8192, 512]);
    for (let i = 0; i < midPieces; i++) iovs.push([i % 2, k++ * 8192, 4096]);
    if (tail) iovs.push([1, k++ * 8192, 512]);
    return { rules: HOST_4KN, pos: head ? A - 512 : 0, write: true, phases: [0, 0], iovs };
  };
  const cases: Array<[boolean, number, boolean, number]> = [
    [true, 1024, true, 3],
    [true, 1023, true, 2],
    [true, 1022, true, 0],
    [true, 1024, false, 2],
    [false, 1024, true, 2],
    [true, 1023, false, 0],
    [false, 1024, false, 0],
  ];
  for (const [head, mid, tail, want] of cases) {
    const c = exact(head, mid, tail);
    const what = `head ${head}, ${mid} middle pieces, tail ${tail}`;
    check(t, c, what);
    const { plan: p, vec, n } = plan(c);
    t.equal(p.collapse, want, `${what}: collapses ${want} pieces`);
    t.ok(n <= IOV_MAX, `${what}: ${n} elements <= IOV_MAX`);
    if (want > 0) {
      t.equal(n, IOV_MAX, `${what}: exactly IOV_MAX after collapsing`);
      const v = elems(vec, n);
      if (head) t.same(v[0], [BOUNCE, BASE + p.headOff, A], 'head untouched');
      if (tail) t.same(v[n - 1], [BOUNCE, BASE + p.tailOff, A], 'tail untouched');
      t.same(v[head ? 1 : 0], [BOUNCE, BASE + p.midOff, want * 4096], 'collapse buffer right after the head');
      t.same(v[head ? 2 : 1], c.iovs[(head ? 1 : 0) + want], 'first uncollapsed piece follows');
    }
  }
  const split = exact(true, 1025, true);
  check(t, split, '1025 middle pieces');
  t.ok(plan(split).plan.split, '1025 middle pieces: split, not collapse');
  t.equal(plan(split).plan.collapse, 0);
  t.end();
});

t.test('a middle with more than IOV_MAX pieces gets A-aligned split points', (t) => {
  // 1500 pieces of 512 B, aligned request: a cut every 8 pieces is possible.
  const c: Case = { rules: HOST_4KN, pos: 1 << 20, write: false, phases: [0, 0], iovs: pages(1500) };
  check(t, c, 'invariants');
  const { plan: p, vec, n } = plan(c);
  t.ok(p.split, 'split');
  const cuts: number[] = [];
  const ops = splitPoints(vec, n, p.aStart, 4096, cuts);
  t.equal(ops, 2, 'two ops');
  t.same(cuts, [0, 1024], 'first op takes 1024 elements (128 blocks)');
  // With head and tail: cuts still land on block boundaries.
  const c2: Case = { rules: HOST_4KN, pos: (1 << 20) + 512, write: true, phases: [0, 0], iovs: pages(2047) };
  check(t, c2, 'head + tail + 2000-odd pieces');
  // No aligned cut at all: 512, then 4096-byte pieces (file offsets 512 + 4096k).
  const odd: Iov[] = [[0, 0, 512], ...pages(1100, 4096, 0).map(([b, o]) => [b, o + 8192, 4096] as Iov), [1, 1 << 24, 3584]];
  const c3: Case = { rules: HOST_4KN, pos: 0, write: false, phases: [0, 0], iovs: odd };
  check(t, c3, 'no aligned cut');
  const r3 = plan(c3);
  t.ok(r3.plan.split, 'split planned');
  t.equal(splitPoints(r3.vec, r3.n, 0, 4096, []), 0, 'splitPoints reports no aligned cut');
  t.end();
});

t.test('the checker itself rejects wrong plans (so the property can fail)', (t) => {
  const c: Case = {
    rules: HOST_4KN,
    pos: 4096 - 512,
    write: true,
    phases: [0, 0],
    iovs: pages(1026, 4096).map(([b, o]) => [b, o, 4096] as Iov),
  };
  t.same(violations(c), [], 'the real plan is clean');
  t.not(violations(c, (p) => (p.collapse -= 1)).length, 0, 'collapsing one piece too few is caught');
  t.not(violations(c, (p) => (p.tail = false)).length, 0, 'a dropped tail block is caught');
  const m: Case = { rules: HOST_4KN, pos: 0, write: false, phases: [0], iovs: [[0, 100, 4096]] };
  t.not(violations(m, (p) => (p.midBounce = false)).length, 0, 'a misaligned zero-copy piece is caught');
  t.end();
});

// ---------------------------------------------------------------- property

const arbRules = fc.constantFrom<HostRules>(
  { offsetAlign: 4096, memAlign: 512, lenAlign: 512 },
  { offsetAlign: 4096, memAlign: 512, lenAlign: 4096 },
  { offsetAlign: 4096, memAlign: 4096, lenAlign: 4096 },
  { offsetAlign: 512, memAlign: 512, lenAlign: 512 },
  { offsetAlign: 8192, memAlign: 512, lenAlign: 512 },
);

const arbLen = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 16 }).map((k) => k * 512) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 9000 }) },
);
const arbOff = fc.oneof({ weight: 8, arbitrary: fc.nat(4096).map((k) => k * 512) }, { weight: 1, arbitrary: fc.nat(1 << 21) });
const arbIov = fc.tuple(fc.nat(3), arbOff, arbLen);

/** Small lists, or long lists of small pieces (collapse and split territory). */
const arbIovs = fc.oneof(
  { weight: 4, arbitrary: fc.array(arbIov, { minLength: 1, maxLength: 24 }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 1010, max: 1040 }), fc.constantFrom(512, 1024, 4096), fc.nat(3), fc.boolean())
      .map(([count, size, buf, odd]) =>
        Array.from({ length: count }, (_, i): Iov => [buf, i * 2 * 4096 + (odd && i === 500 ? 100 : 0), size]),
      ),
  },
  {
    // Around the collapse boundary: 4 KiB pieces, so an unaligned start puts ~count pieces in the middle.
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 1020, max: 1028 }), fc.nat(3))
      .map(([count, buf]) => Array.from({ length: count }, (_, i): Iov => [buf, i * 3 * 4096, 4096])),
  },
  {
    weight: 1,
    arbitrary: fc.array(
      fc.tuple(
        fc.nat(3),
        fc.nat(1 << 12).map((k) => k * 512),
        fc.constantFrom(512, 1024, 1536, 4096),
      ),
      {
        minLength: 1020,
        maxLength: 2100,
      },
    ),
  },
);

const arbCase: fc.Arbitrary<Case> = fc
  .record({
    rules: arbRules,
    sector: fc.nat(1 << 16),
    iovs: arbIovs,
    write: fc.boolean(),
    phases: fc.array(
      fc.oneof(
        { weight: 4, arbitrary: fc.constant(0) },
        { weight: 2, arbitrary: fc.nat(7).map((k) => k * 512) },
        { weight: 1, arbitrary: fc.nat(4095) },
      ),
      { minLength: 4, maxLength: 4 },
    ),
  })
  .map(({ rules, sector, iovs, write, phases }) => {
    // The request length is a multiple of 512: pad the last iovec.
    const total = (iovs as Iov[]).reduce((s, v) => s + v[2], 0);
    const pad = (512 - (total % 512)) % 512;
    const last = iovs[iovs.length - 1] as Iov;
    const fixed = [...iovs.slice(0, -1), [last[0], last[1], last[2] + pad] as Iov];
    return { rules, pos: sector * 512, iovs: fixed, write, phases };
  });

t.test('property: vector invariants hold for random positions, lengths, iovec lists and phases', (t) => {
  const seen = { head: 0, tail: 0, midBounce: 0, collapse: 0, split: 0, zeroCopy: 0 };
  fc.assert(
    fc.property(arbCase, (c) => {
      const v = violations(c);
      if (v.length > 0) throw new Error(v.slice(0, 8).join('\n'));
      const p = plan(c).plan;
      if (p.head) seen.head++;
      if (p.tail) seen.tail++;
      if (p.midBounce) seen.midBounce++;
      if (p.collapse > 0) seen.collapse++;
      if (p.split) seen.split++;
      if (p.bounceLen === 0) seen.zeroCopy++;
    }),
    { numRuns: 600 },
  );
  t.ok(
    Object.values(seen).every((n) => n > 0),
    `every shape was generated: ${JSON.stringify(seen)}`,
  );
  t.end();
});

t.test('Linux 6.1 block-device rule (segment lengths in whole logical blocks): 512 B pieces bounce, 4 KiB pieces do not', (t) => {
  const small: Case = {
    rules: HOST_4KN_61,
    pos: 8192,
    write: false,
    phases: [0],
    iovs: [
      [0, 0, 512],
      [0, 8192, 3584],
    ],
  };
  t.ok(plan(small).plan.midBounce, '512-byte pieces force the middle through a bounce buffer');
  t.same(violations(small), [], 'and the plan is valid under the 6.1 rule');
  const pages: Case = {
    rules: HOST_4KN_61,
    pos: 8192,
    write: true,
    phases: [0],
    iovs: [
      [0, 0, 4096],
      [0, 65536, 4096],
    ],
  };
  t.equal(plan(pages).plan.bounceLen, 0, 'page-sized pieces stay zero-copy');
  t.end();
});
