// Completion ids carry a slot generation (src/blk/completion-id.ts), and a
// failed submission fails only the ops the ring did not take (op-batch.ts).
// The handler runs here without the addon, against a recording data plane.

import t from 'tap';
import { BlkHandler } from '../../src/blk/blk-handler';
import { CompletionIds, OPS_PER_SLOT } from '../../src/blk/completion-id';
import {
  allocateArrays,
  CHAIN_STRIDE,
  CQE_STRIDE,
  OP_STRIDE,
  USED_STRIDE,
  type DataPlane,
  SEG_STRIDE,
  SEG_FLAG_WRITE,
} from '../../src/blk/shared-arrays';

const QSIZE = 256;
const T_IN = 0;

interface Rec {
  handler: BlkHandler;
  arrays: ReturnType<typeof allocateArrays>;
  /** userData of every op submitted, in order. */
  submitted: number[];
  /** [head, status] of every used entry pushed. */
  used: Array<[number, number]>;
  /** What the next submit does: take k ops, or throw with `taken`. */
  nextSubmit: ((n: number) => number) | undefined;
  fatal: string[];
}

function rig(): Rec {
  const arrays = allocateArrays(QSIZE);
  const r: Rec = { handler: undefined as unknown as BlkHandler, arrays, submitted: [], used: [], nextSubmit: undefined, fatal: [] };
  const plane: DataPlane = {
    submit: (n) => {
      const f = r.nextSubmit;
      r.nextSubmit = undefined;
      const taken = f ? f(n) : n;
      for (let k = 0; k < Math.min(n, taken); k++) r.submitted.push(arrays.sqOps[k * OP_STRIDE + 1] as number);
      return taken;
    },
    pushUsed: (_q, n) => {
      for (let i = 0; i < n; i++) r.used.push([arrays.used[i * USED_STRIDE] as number, arrays.used[i * USED_STRIDE + 4] as number]);
    },
    writeGuest: () => undefined,
    copy: () => undefined,
    readGuest: () => undefined,
  };
  r.handler = new BlkHandler(arrays, {
    queues: 2,
    maxQueueSize: QSIZE,
    disk: { capacitySectors: 2048, readOnly: false, logicalBlockSize: 512 },
    serial: 'gen',
    writeback: () => true,
    onViolation: (q, rule) => r.fatal.push(`violation q${q}: ${rule}`),
    bounceBytes: 1 << 20,
    rules: { offsetAlign: 512, memAlign: 512, lenAlign: 512 },
    onFatal: (m) => r.fatal.push(m),
  });
  r.handler.attach(plane);
  return r;
}

/** Pops one-sector reads on queue 0 with the given heads (one chain each). */
function reads(r: Rec, heads: number[], sector = 0): void {
  const { chains, headers, segs } = r.arrays;
  let s = 0;
  const put = (b: number, o: number, l: number, f: number): void => {
    segs.set([b, o, l, f], s * SEG_STRIDE);
    s++;
  };
  heads.forEach((head, i) => {
    const first = s;
    put(0, 16 * head, 16, 0);
    put(0, 8192 + 4096 * i, 512, SEG_FLAG_WRITE);
    put(0, 4096 + head, 1, SEG_FLAG_WRITE);
    chains.set([head, first, s - first, 16], i * CHAIN_STRIDE);
    const v = new DataView(headers.buffer, headers.byteOffset + i * 16, 16);
    v.setUint32(0, T_IN, true);
    v.setUint32(4, 0, true);
    v.setBigUint64(8, BigInt(sector + i), true);
  });
  r.handler.onChains(0, heads.length);
}

function complete(r: Rec, list: Array<[number, number]>): void {
  list.forEach(([ud, res], i) => {
    r.arrays.cqes[i * CQE_STRIDE] = ud;
    r.arrays.cqes[i * CQE_STRIDE + 1] = res;
  });
  r.handler.onCompletions(list.length);
}

t.test('a late completion is never taken for the slot next request', (t) => {
  const r = rig();
  reads(r, [3]);
  t.equal(r.submitted.length, 1, 'first request: one read op');
  const first = r.submitted[0] as number;
  complete(r, [[first, 512]]);
  t.same(r.used, [[3, 0]], 'first request completes OK');
  r.used.length = 0;

  reads(r, [3], 8); // the guest reuses head 3
  t.equal(r.submitted.length, 2, 'second request: one read op');
  const second = r.submitted[1] as number;
  t.not(second, first, 'the reused slot gets another completion id');

  // A duplicate (late) completion of the first request's op arrives.
  complete(r, [[first, 512]]);
  t.same(r.used, [], 'the stale completion does not complete the second request');
  t.equal(r.handler.inflight(), 1, 'the second request is still in flight');

  complete(r, [[second, 512]]);
  t.same(r.used, [[3, 0]], 'its own completion does');
  t.same(r.fatal, []);
  t.end();
});

t.test('a failed submission fails only the ops the ring did not take', (t) => {
  const r = rig();
  r.nextSubmit = (n) => {
    t.equal(n, 2, 'one batch of two reads');
    throw Object.assign(new Error('io_uring_submit failed: EOPNOTSUPP'), { taken: 1 });
  };
  reads(r, [5, 6]);
  t.equal(r.fatal.length, 1, 'the data plane reports the failure');
  t.same(r.used, [[6, 1]], 'the op not taken fails at once (IOERR)');
  t.equal(r.handler.inflight(), 1, 'the op the kernel took is still in flight');
  // Its completion (userData as pushed) arrives later and completes it.
  const taken = r.arrays.sqOps[1] as number;
  complete(r, [[taken, 512]]);
  t.same(
    r.used,
    [
      [6, 1],
      [5, 0],
    ],
    'the op the kernel took completes with its own result',
  );
  t.equal(r.handler.inflight(), 0);
  t.end();
});

t.test('completion ids stay below 2^53 and decode back', (t) => {
  const ids = new CompletionIds(64 * 1024);
  t.ok(ids.generations >= 2 ** 32, `generations per slot: ${ids.generations}`);
  const top = ids.encode(64 * 1024 - 1, ids.generations - 1, OPS_PER_SLOT - 1);
  t.ok(top < 2 ** 53, 'largest id is exact in a double');
  ids.decode(top);
  t.same([ids.slotId, ids.generation, ids.opIdx], [64 * 1024 - 1, ids.generations - 1, OPS_PER_SLOT - 1]);
  t.equal(ids.next(ids.generations - 1), 0, 'the generation wraps');
  t.end();
});
