// One onChains batch can hold more chains than the queue has heads: a racing
// guest makes a head available again as soon as its request completes (the
// addon keeps popping while the avail index moves, up to BATCH_CHAINS). Every
// one of those chains must get its own used entry, in order, with its own
// status byte location; none may be dropped or replaced by a stale entry.

import t from 'tap';
import { BlkHandler } from '../../src/blk/blk-handler';
import { VIRTIO_BLK_S_UNSUPP } from '../../src/virtio/constants';
import {
  BATCH_CHAINS,
  CHAIN_STRIDE,
  USED_STRIDE,
  allocateArrays,
  type DataPlane,
  SEG_FLAG_WRITE,
  SEG_STRIDE,
} from '../../src/blk/shared-arrays';

/** Heads per queue: far fewer than a batch may carry. */
const QSIZE = 4;
/** A request type no device knows: it completes at once with UNSUPP. */
const T_UNKNOWN = 0x77;

interface Used {
  head: number;
  len: number;
  statusOffset: number;
  status: number;
}

t.test(`a batch of ${BATCH_CHAINS} chains on ${QSIZE} heads: every chain gets its used entry`, (t) => {
  const arrays = allocateArrays(QSIZE);
  const used: Used[] = [];
  const handler = new BlkHandler(arrays, {
    queues: 1,
    maxQueueSize: QSIZE,
    disk: { capacitySectors: 2048, readOnly: false, logicalBlockSize: 512 },
    serial: 'used',
    writeback: () => true,
    onViolation: (q, rule) => t.fail(`violation on queue ${q}: ${rule}`),
    bounceBytes: 1 << 20,
    rules: { offsetAlign: 512, memAlign: 512, lenAlign: 512 },
  });
  const plane: DataPlane = {
    submit: (n) => n,
    pushUsed: (_q, n) => {
      for (let i = 0; i < n; i++) {
        const k = i * USED_STRIDE;
        used.push({ head: arrays.used[k]!, len: arrays.used[k + 1]!, statusOffset: arrays.used[k + 3]!, status: arrays.used[k + 4]! });
      }
    },
    writeGuest: () => undefined,
    copy: () => undefined,
    readGuest: () => undefined,
  };
  handler.attach(plane);

  // The same QSIZE heads over and over; chain i's status byte sits at 4096 + i.
  const n = BATCH_CHAINS;
  const { chains, headers, segs } = arrays;
  for (let i = 0; i < n; i++) {
    const c = i * CHAIN_STRIDE;
    chains[c] = i % QSIZE;
    chains[c + 1] = 2 * i;
    chains[c + 2] = 2;
    chains[c + 3] = 16;
    segs.set([0, 64 * i, 16, 0], 2 * i * SEG_STRIDE);
    segs.set([0, 4096 + i, 1, SEG_FLAG_WRITE], (2 * i + 1) * SEG_STRIDE);
    new DataView(headers.buffer, headers.byteOffset + i * 16, 16).setUint32(0, T_UNKNOWN, true);
  }
  handler.onChains(0, n);

  t.equal(used.length, n, `${n} used entries published`);
  const wrong = used.findIndex(
    (u, i) => u.head !== i % QSIZE || u.statusOffset !== 4096 + i || u.status !== VIRTIO_BLK_S_UNSUPP || u.len !== 1,
  );
  t.equal(wrong, -1, wrong < 0 ? 'each in order, with its own status byte' : `entry ${wrong} is ${JSON.stringify(used[wrong])}`);
  t.equal(handler.inflight(), 0, 'nothing left in flight');
  t.end();
});
