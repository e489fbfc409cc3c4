// The request handler keeps its own copy of the shared-array layout (it must
// not import the addon: its tests run without it). This checks, once at
// start-up, that the copy and the addon agree, so a change on one side only
// fails loudly instead of corrupting batches.

import { native } from './binding';
import * as h from '../blk/blk-handler';
import { SEG_STRIDE, SEG_FLAG_WRITE } from '../blk/split-chain';

export function checkNativeLayout(): void {
  const c = native.constants;
  const pairs: Array<[string, number, number]> = [
    ['CHAIN_STRIDE', h.CHAIN_STRIDE, c.CHAIN_STRIDE],
    ['SEG_STRIDE', SEG_STRIDE, c.SEG_STRIDE],
    ['SEG_WRITE', SEG_FLAG_WRITE, c.SEG_WRITE],
    ['OP_STRIDE', h.OP_STRIDE, c.OP_STRIDE],
    ['IOV_STRIDE', h.SQ_IOV_STRIDE, c.IOV_STRIDE],
    ['CQE_STRIDE', h.CQE_STRIDE, c.CQE_STRIDE],
    ['USED_STRIDE', h.USED_STRIDE, c.USED_STRIDE],
    ['COPY_STRIDE', h.COPY_STRIDE, c.COPY_STRIDE],
    ['OP_READV', h.OP_READV, c.OP_READV],
    ['OP_WRITEV', h.OP_WRITEV, c.OP_WRITEV],
    ['OP_FSYNC', h.OP_FSYNC, c.OP_FSYNC],
    ['OP_FALLOCATE', h.OP_FALLOCATE, c.OP_FALLOCATE],
    ['OP_BLKDISCARD', h.OP_BLKDISCARD, c.OP_BLKDISCARD],
    ['FALLOC_PUNCH', h.FALLOC_PUNCH, c.FALLOC_PUNCH],
    ['FALLOC_ZERO', h.FALLOC_ZERO, c.FALLOC_ZERO],
    ['OP_FLAG_FIXED', h.OP_FLAG_FIXED, c.OP_FLAG_FIXED],
    ['OP_FLAG_DSYNC', h.OP_FLAG_DSYNC, c.OP_FLAG_DSYNC],
    ['BOUNCE_BUF_ID', h.BOUNCE_BUF_ID, c.BOUNCE_BUF_ID],
    ['ZERO_BUF_ID', h.ZERO_BUF_ID, c.ZERO_BUF_ID],
    ['ZERO_BYTES', h.ZERO_BYTES, c.ZERO_BYTES],
  ];
  const wrong = pairs.filter(([, js, nat]) => js !== nat).map(([n, js, nat]) => `${n} (js ${js}, native ${nat})`);
  if (wrong.length > 0) throw new Error(`the addon's shared-array layout differs from src/blk: ${wrong.join(', ')}`);
}
