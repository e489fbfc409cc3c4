// The request handler keeps its own copy of the shared-array contract
// (src/blk/shared-arrays.ts: it must not import the addon, its tests run
// without it). This checks, once at start-up, that every number of that
// contract agrees with the addon's, so a change on one side only fails loudly
// instead of corrupting batches.

import { native } from './binding';
import * as a from '../blk/shared-arrays';
import { MAX_QUEUES } from '../blk/features';
import { IOV_MAX } from '../virtio/constants';

/** [name, JS value, native value] for every number both sides must share. */
export function layoutPairs(c: typeof native.constants = native.constants): Array<[string, number, number]> {
  return [
    ['CHAIN_STRIDE', a.CHAIN_STRIDE, c.CHAIN_STRIDE],
    ['HEADER_BYTES', a.HEADER_BYTES, c.HEADER_BYTES],
    ['SEG_STRIDE', a.SEG_STRIDE, c.SEG_STRIDE],
    ['SEG_WRITE', a.SEG_FLAG_WRITE, c.SEG_WRITE],
    ['OP_STRIDE', a.OP_STRIDE, c.OP_STRIDE],
    ['IOV_STRIDE', a.IOV_STRIDE, c.IOV_STRIDE],
    ['CQE_STRIDE', a.CQE_STRIDE, c.CQE_STRIDE],
    ['USED_STRIDE', a.USED_STRIDE, c.USED_STRIDE],
    ['COPY_STRIDE', a.COPY_STRIDE, c.COPY_STRIDE],
    ['OP_READV', a.OP_READV, c.OP_READV],
    ['OP_WRITEV', a.OP_WRITEV, c.OP_WRITEV],
    ['OP_FSYNC', a.OP_FSYNC, c.OP_FSYNC],
    ['OP_FALLOCATE', a.OP_FALLOCATE, c.OP_FALLOCATE],
    ['OP_BLKDISCARD', a.OP_BLKDISCARD, c.OP_BLKDISCARD],
    ['FALLOC_PUNCH', a.FALLOC_PUNCH, c.FALLOC_PUNCH],
    ['FALLOC_ZERO', a.FALLOC_ZERO, c.FALLOC_ZERO],
    ['OP_FLAG_FIXED', a.OP_FLAG_FIXED, c.OP_FLAG_FIXED],
    ['OP_FLAG_DSYNC', a.OP_FLAG_DSYNC, c.OP_FLAG_DSYNC],
    ['BOUNCE_BUF_ID', a.BOUNCE_BUF_ID, c.BOUNCE_BUF_ID],
    ['ZERO_BUF_ID', a.ZERO_BUF_ID, c.ZERO_BUF_ID],
    ['ZERO_BYTES', a.ZERO_BYTES, c.ZERO_BYTES],
    ['FIXED_CHUNK', a.FIXED_CHUNK, c.FIXED_CHUNK],
    ['MAX_REQUEST_IOVS', a.MAX_REQUEST_IOVS, c.MAX_CHAIN_SEGS],
    ['IOV_MAX', IOV_MAX, c.IOV_MAX],
    ['MAX_QUEUES', MAX_QUEUES, c.MAX_QUEUES],
  ];
}

export function checkNativeLayout(c: typeof native.constants = native.constants): void {
  const wrong = layoutPairs(c)
    .filter(([, js, nat]) => js !== nat)
    .map(([n, js, nat]) => `${n} (js ${js}, native ${nat})`);
  if (wrong.length > 0) throw new Error(`the addon's shared-array layout differs from src/blk/shared-arrays.ts: ${wrong.join(', ')}`);
}
