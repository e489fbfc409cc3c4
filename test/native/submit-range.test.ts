// Native Session.submit refuses, before queueing anything, every op whose
// file range lies outside the disk (finding 10: a bug in src/ must never turn
// into I/O past the end of a block device or a KEEP_SIZE fallocate that
// allocates past the end of an image), and BLKDISCARD on a disk that is not
// a block device.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native, type Session } from '../../src/native/binding';
import {
  allocateArrays,
  OP_READV,
  OP_WRITEV,
  OP_FALLOCATE,
  OP_BLKDISCARD,
  FALLOC_ZERO,
} from '../../src/blk/shared-arrays';

const DISK = 1 << 20;

t.test('ops outside the disk are refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-range-'));
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(DISK, 0xaa));
  const fd = fs.openSync(file, 'r+');
  const arrays = allocateArrays(16);
  let completions = 0;
  const session: Session = new native.Session(1, 16, fd, 16, 1 << 20, arrays, {
    onChains() {},
    onCompletions: (n: number) => {
      completions += n;
    },
    onViolation() {},
  }, DISK, false);
  t.teardown(() => {
    session.destroy();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const mfd = native.memfdCreate('vublk-range', 1 << 20);
  session.addRegion(mfd, 0, 1 << 20, 0x7f0000000000, 0);

  const rw = (opcode: number, offset: number, len: number): void => {
    arrays.sqIovs.set([0, 0, len], 0);
    arrays.sqOps.set([opcode, 1, offset, 0, 1, 0], 0);
  };
  const falloc = (opcode: number, offset: number, len: number): void => {
    arrays.sqOps.set([opcode, 2, offset, len, opcode === OP_FALLOCATE ? FALLOC_ZERO : 0, 0], 0);
  };
  const cases: Array<[string, () => void]> = [
    ['read starting at the end', () => rw(OP_READV, DISK, 512)],
    ['read crossing the end', () => rw(OP_READV, DISK - 512, 1024)],
    ['write crossing the end', () => rw(OP_WRITEV, DISK - 4096, 8192)],
    ['write far past the end', () => rw(OP_WRITEV, 2 ** 52, 4096)],
    ['fallocate crossing the end', () => falloc(OP_FALLOCATE, DISK - 4096, 8192)],
    ['fallocate past the end', () => falloc(OP_FALLOCATE, DISK, 4096)],
  ];
  for (const [name, fill] of cases) {
    fill();
    t.throws(() => session.submit(1), { name: 'RangeError', message: /outside the disk/ }, name);
  }
  falloc(OP_BLKDISCARD, 0, 4096);
  t.throws(() => session.submit(1), { name: 'RangeError', message: /not a block device/ }, 'BLKDISCARD on a file');

  // A batch with one bad op queues none of it.
  arrays.sqIovs.set([0, 0, 512, 0, 512, 512], 0);
  arrays.sqOps.set([OP_WRITEV, 1, 0, 0, 1, 0, OP_WRITEV, 2, DISK, 1, 1, 0], 0);
  t.throws(() => session.submit(2), /outside the disk/, 'a bad second op refuses the batch');

  // In range, up to the last byte, is fine.
  rw(OP_READV, DISK - 4096, 4096);
  t.equal(session.submit(1), 1, 'read of the last 4 KiB is taken');
  falloc(OP_FALLOCATE, 0, DISK);
  t.equal(session.submit(1), 1, 'fallocate of the whole disk is taken');
  const until = Date.now() + 10_000;
  while (completions < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  t.equal(completions, 2, 'only the two ops in range ran');
  t.equal(fs.statSync(file).size, DISK, 'the image did not grow');
});
