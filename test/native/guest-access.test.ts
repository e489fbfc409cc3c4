// The addon's guest-memory accessors called directly (no socket): bufIds are
// checked in full, and a region whose file shrank makes writeGuest,
// readGuest and copy report one violation instead of dying of SIGBUS. A
// SIGBUS that is not on guest memory still kills the process, as it would
// without vublk's handler.

import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, type Session } from '../../src/native/binding';
import { repoRoot, tmpDir } from '../helpers/vublk-process';
import { allocateArrays } from '../../src/blk/shared-arrays';

const REGION = 1 << 20;
const BOUNCE_BYTES = 1 << 20;

function rig(t: Test) {
  const dir = tmpDir('vublk-guest-access-');
  const disk = fs.openSync(path.join(dir, 'disk.img'), 'w+');
  fs.ftruncateSync(disk, 1 << 20);
  const violations: [number, string][] = [];
  const arrays = allocateArrays(64);
  const session: Session = new native.Session(1, 64, disk, 64, BOUNCE_BYTES, arrays, {
    onChains() {},
    onCompletions() {},
    onViolation: (q: number, m: string) => violations.push([q, m]),
  }, 1 << 20, false);
  const mfd = native.memfdCreate('vublk-test-guest', REGION);
  const view = new Uint8Array(native.mapShared(mfd, REGION, 0));
  t.equal(session.addRegion(fs.openSync(`/proc/self/fd/${mfd}`, 'r+'), 0, REGION, 0x7f0000000000, 0), 0, 'the region is bufId 0');
  t.teardown(() => {
    session.destroy();
    native.closeFd(mfd);
    fs.closeSync(disk);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { session, arrays, view, mfd, violations };
}

t.test('writeGuest checks the whole bufId: 2^32 does not alias region 0', (t) => {
  const { session, view } = rig(t);
  for (const bufId of [2 ** 32, 2 ** 32 + 1, 2 ** 40, 509, 1024]) {
    t.throws(() => session.writeGuest(bufId, 0, Buffer.from([0xaa, 0xbb])), /writeGuest: outside guest memory/, `bufId ${bufId} is refused`);
  }
  t.equal(view[0], 0, 'region 0 is untouched');
  t.equal(view[1], 0);
  session.writeGuest(0, 0, Buffer.from([0xaa, 0xbb]));
  t.same([view[0], view[1]], [0xaa, 0xbb], 'bufId 0 itself is written');
  t.end();
});

t.test('a region whose file shrank: writeGuest, readGuest and copy report one violation', (t) => {
  const { session, arrays, mfd, violations } = rig(t);
  fs.ftruncateSync(mfd, 4096); // the first page stays
  session.writeGuest(0, 0, Buffer.from([1, 2, 3]));
  t.same(violations, [], 'the page that is left still works');
  session.writeGuest(0, 8192, Buffer.from([1, 2, 3]));
  t.equal(violations.length, 1, 'writeGuest reported the fault');
  t.equal(violations[0]?.[0], -1, 'for no queue');
  t.match(violations[0]?.[1] ?? '', /^guest memory region 0 shrank under its mapping: SIGBUS at offset 0x200[0-2] of 1048576 bytes \(gpa 0x200[0-2]\)$/, 'naming region 0 and the offset');
  const dst = Buffer.alloc(16, 0xee);
  session.readGuest(0, 0, dst);
  t.ok(dst.every((b) => b === 0), 'after the fault readGuest touches no guest memory and zero-fills');
  const c = arrays.copies;
  c.set([0, 8192, native.constants.BOUNCE_BUF_ID, 0, 512]);
  session.copy(1);
  t.equal(violations.length, 1, 'copy after the fault is a no-op, and the fault was reported once');
  t.equal(session.submit(0), 0, 'submit takes nothing');
  t.end();
});

t.test('readGuest and copy on a lost page fault as well', (t) => {
  for (const how of ['readGuest', 'copy'] as const) {
    t.test(how, (t) => {
      const { session, arrays, mfd, violations } = rig(t);
      fs.ftruncateSync(mfd, 0);
      if (how === 'readGuest') session.readGuest(0, 4096, Buffer.alloc(8));
      else {
        arrays.copies.set([native.constants.BOUNCE_BUF_ID, 0, 0, 4096, 512]);
        session.copy(1);
      }
      t.equal(violations.length, 1, 'one violation');
      t.match(violations[0]?.[1] ?? '', /^guest memory region 0 shrank under its mapping: SIGBUS at offset 0x1000 /);
      t.end();
    });
  }
  t.end();
});

t.test('a SIGBUS outside guest memory still kills the process', (t) => {
  // The child maps a memfd itself (not guest memory of any session), loads
  // the addon (which installs the handler), truncates the memfd and touches it.
  const script = `
    const { native } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'native', 'binding.js'))});
    const fd = native.memfdCreate('x', 8192);
    const v = new Uint8Array(native.mapShared(fd, 8192, 0));
    require('node:fs').ftruncateSync(fd, 0);
    v[4096] = 1;
    console.log('survived');
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  t.notMatch(r.stdout, /survived/, 'the child did not go on');
  if (process.env.LD_PRELOAD?.includes('libasan')) {
    // Under ASan the handler before ours is ASan's: it reports and aborts.
    t.match(r.stderr, /AddressSanitizer: BUS/, 'ASan, the handler installed before ours, got the SIGBUS');
  } else {
    t.equal(r.signal, 'SIGBUS', `the child died of SIGBUS (status ${r.status}, stderr ${r.stderr.slice(0, 500)})`);
  }
  t.end();
});
