// A frontend that shrinks a memory region's file after SET_MEM_TABLE /
// ADD_MEM_REG (ftruncate on the memfd, or on a /dev/shm or hugetlbfs file)
// turns every touch of the lost pages into SIGBUS. The daemon's own touches
// (ring and header reads in pop, indirect tables, status bytes and used
// entries in pushUsed, writeGuest, readGuest, bounce copies) must disconnect
// only that frontend, with one warn line naming the region; the daemon lives,
// drains on SIGTERM (teardown checks exit 0), and serves the next frontend.
//
// The guest RAM is two 4 MiB regions: the rings live in region 0 (setup
// allocates them first), and each case puts what the daemon must touch in
// region 1, which it then truncates to 0 bytes. From then on the test
// itself must not touch region 1 either.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { BlkDriver, BlkStatus, BlkType } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { type SetupOptions } from '../../src/frontend/setup-options';
import type { GuestMemoryOptions } from '../../src/frontend/guest-memory';
import { DescFlags, DESC_SIZE } from '../../src/frontend/split-ring';
import { asanEnabled, runsAsanAddon } from '../helpers/vublk-process';
import { hugePagesUnsupported, hugetlbfsDir } from '../helpers/hugetlbfs';
import {
  connIdSince,
  expectServes,
  expectViolation,
  logSince,
  pattern,
  rawToken,
  spinUntilPopped,
  startDaemon,
  until,
  waitConnClosed,
  WARN_LINE,
  type Daemon,
} from './harness';

const MiB = 1 << 20;
const SHRANK =
  /(queue \d+: )?guest memory region 1 shrank under its mapping: SIGBUS at offset 0x[0-9a-f]+ of \d+ bytes \(gpa 0x[0-9a-f]+\)/;
const SHRANK_ANYWHERE = /guest memory region 1 shrank under its mapping: SIGBUS at offset 0x[0-9a-f]+/;

let shared: Promise<Daemon> | undefined;
function sharedDaemon(): Promise<Daemon> {
  shared ??= startDaemon(t, { imageBytes: 16 * MiB }).then((d) => {
    // Under ASan, ASan's own SIGBUS handler is installed first; ours must still win for guest memory.
    if (asanEnabled()) t.ok(runsAsanAddon(d.v.child.pid!), 'the daemon runs the ASan addon'); // spawned
    return d;
  });
  return shared;
}

async function connected(t: Test, d: Daemon, setup: SetupOptions, memory: GuestMemoryOptions = {}) {
  const mark = d.v.stderr().length;
  const fe = await Frontend.connect(d.socket);
  t.teardown(() => fe.close());
  await fe.setup({ queues: 1, queueSize: 128, ...setup, memory: { regions: [4 * MiB, 4 * MiB], ...memory } });
  const conn = await connIdSince(d, mark);
  const r = fe.queue(0).ring;
  t.ok(r.usedGpa + r.size * 8 + 6 < fe.mem!.regions[1]!.gpa, 'the rings lie in region 0'); // set up
  t.equal((await new BlkDriver(fe).flush(0)).status, BlkStatus.OK, 'the frontend is served before the truncation');
  return { fe, mark, conn };
}

/** Truncates region 1's file to 0 bytes: every page of it is gone. */
function shrinkRegion1(fe: Frontend): void {
  fs.ftruncateSync(fe.mem!.regions[1]!.fd, 0); // set up
}

function header(fe: Frontend, type: number, region: number, sector = 0): number {
  const mem = fe.mem!;
  const g = mem.alloc(16, 16, { region });
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  mem.write(g, h);
  return g;
}

/** Writes a chain of descriptors [addr, len, writable] into the ring's table; returns its head. */
function chain(fe: Frontend, descs: [number, number, boolean][]): number {
  const r = fe.queue(0).ring;
  const ids = descs.map(() => r.takeDesc());
  descs.forEach(([addr, len, write], k) => {
    const last = k === descs.length - 1;
    r.writeDesc(ids[k]!, { addr, len, flags: (last ? 0 : DescFlags.NEXT) | (write ? DescFlags.WRITE : 0), next: last ? 0 : ids[k + 1]! });
  });
  return ids[0]!;
}

function publish(fe: Frontend, heads: number[], onUsed?: (len: number) => void): void {
  const r = fe.queue(0).ring;
  for (const h of heads) r.pushAvail(h, rawToken(onUsed));
  r.publish();
  fe.kick(0);
}

/**
 * One case: `arrange` writes chains (touching region 1 only before the
 * truncation) and returns their heads; region 1 is truncated; the heads are
 * made available and kicked; the frontend must be disconnected with one warn
 * line naming region 1, and a fresh frontend served.
 */
function shrinkCase(
  name: string,
  setup: SetupOptions,
  arrange: (fe: Frontend) => number[],
  memory: GuestMemoryOptions | ((t: Test) => GuestMemoryOptions) = {},
  skip: string | false = false,
): void {
  t.test(name, { skip }, async (t) => {
    const d = await sharedDaemon();
    const { fe, mark, conn } = await connected(t, d, setup, typeof memory === 'function' ? memory(t) : memory);
    const heads = arrange(fe);
    shrinkRegion1(fe);
    publish(fe, heads);
    await expectViolation(t, d, fe, mark, conn, SHRANK);
    await expectServes(t, d);
  });
}

// ------------------------------------------------- the daemon's own touches

shrinkCase('request header in a truncated region (pop copies the header)', {}, (fe) => [
  chain(fe, [
    [header(fe, BlkType.FLUSH, 1), 16, false],
    [fe.mem!.alloc(1, 1, { region: 0 }), 1, true],
  ]),
]);

shrinkCase('indirect table in a truncated region (pop walks the table)', { indirect: true }, (fe) => {
  const mem = fe.mem!;
  const r = fe.queue(0).ring;
  const table = mem.alloc(2 * DESC_SIZE, 16, { region: 1 });
  r.writeDescAt(table, { addr: header(fe, BlkType.FLUSH, 0), len: 16, flags: DescFlags.NEXT, next: 1 });
  r.writeDescAt(table + DESC_SIZE, { addr: mem.alloc(1, 1, { region: 0 }), len: 1, flags: DescFlags.WRITE, next: 0 });
  const head = r.takeDesc();
  r.writeDesc(head, { addr: table, len: 2 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
  return [head];
});

shrinkCase('status byte in a truncated region (pushUsed writes it)', {}, (fe) => [
  chain(fe, [
    [header(fe, BlkType.FLUSH, 0), 16, false],
    [fe.mem!.alloc(1, 1, { region: 1 }), 1, true],
  ]),
]);

shrinkCase('GET_ID buffer in a truncated region (writeGuest)', {}, (fe) => [
  chain(fe, [
    [header(fe, BlkType.GET_ID, 0), 16, false],
    [fe.mem!.alloc(20, 4, { region: 1 }), 20, true],
    [fe.mem!.alloc(1, 1, { region: 0 }), 1, true],
  ]),
]);

shrinkCase('DISCARD segment list in a truncated region (readGuest)', {}, (fe) => {
  const seg = fe.mem!.alloc(16, 16, { region: 1 });
  const s = Buffer.alloc(16);
  s.writeBigUInt64LE(8n, 0);
  s.writeUInt32LE(8, 8);
  fe.mem!.write(seg, s);
  return [
    chain(fe, [
      [header(fe, BlkType.DISCARD, 0), 16, false],
      [seg, 16, false],
      [fe.mem!.alloc(1, 1, { region: 0 }), 1, true],
    ]),
  ];
});

shrinkCase('header, data and status all in a truncated region', {}, (fe) => {
  // Whichever the daemon touches first names region 1.
  return [
    chain(fe, [
      [header(fe, BlkType.IN, 1), 16, false],
      [fe.mem!.alloc(4096, 4096, { region: 1 }), 4096, true],
      [fe.mem!.alloc(1, 1, { region: 1 }), 1, true],
    ]),
  ];
});

// ----------------------------------------------- requests in flight, bounces

/**
 * Reads and writes whose data lies in region 1, some at odd addresses (the
 * daemon bounces those through its own buffer and copies to or from guest
 * memory), status bytes in region 0. Region 1 is truncated once the daemon
 * has popped them all (round 0 races the pops): io_uring ops on the lost
 * pages fail (EFAULT) or, on pages pinned as fixed buffers, go to the
 * orphaned pages; bounce copies fault. Either each request completes (IOERR or OK) or the frontend
 * is disconnected with one warn line naming region 1; the daemon lives and
 * serves the next frontend.
 */
t.test('truncation while requests are in flight', async (t) => {
  const d = await sharedDaemon();
  for (let round = 0; round < 4; round++) {
    const { fe, mark, conn } = await connected(t, d, { eventIdx: true });
    const mem = fe.mem!;
    const heads: number[] = [];
    const statuses: number[] = [];
    for (let k = 0; k < 16; k++) {
      const write = k % 2 === 1;
      const odd = round % 2 === 0 && k % 4 >= 2; // odd rounds: no bounces, only io_uring on the lost pages
      const len = 8192;
      const buf = mem.alloc(len + 1, odd ? 1 : 4096, { region: 1 }) + (odd ? 1 : 0);
      if (write) mem.write(buf, pattern(len, k));
      const status = mem.alloc(1, 1, { region: 0 });
      statuses.push(status);
      heads.push(
        chain(fe, [
          [header(fe, write ? BlkType.OUT : BlkType.IN, 0, 64 + 16 * k), 16, false],
          [buf, len, !write],
          [status, 1, true],
        ]),
      );
    }
    let used = 0;
    publish(fe, heads, () => used++);
    if (round > 0) t.ok(spinUntilPopped(fe, 0, 16 + 1), 'the daemon popped every request'); // +1: the flush in connected()
    shrinkRegion1(fe);
    await until(() => !fe.isOpen || (fe.poll(0), used === heads.length), 10_000);
    // io_uring ops on lost pages fail with EFAULT: host I/O errors, IOERR.
    const warns = () => logSince(d, mark).filter((l) => WARN_LINE.test(l) && !/host I\/O error .*error=EFAULT/.test(l));
    if (fe.isOpen) {
      t.equal(used, heads.length, 'every request completed');
      const st = statuses.map((g) => mem.read(g, 1)[0]);
      t.ok(
        st.every((s) => s === BlkStatus.OK || s === BlkStatus.IOERR),
        `each with OK or IOERR: ${st.join(',')}`,
      );
      fe.close();
      await waitConnClosed(d, mark, conn);
      t.same(warns(), [], 'no warn line but EFAULT host I/O errors');
    } else {
      await waitConnClosed(d, mark, conn);
      const lines = warns();
      t.equal(lines.length, 1, `disconnected with exactly one warn line (but EFAULT host I/O errors):\n${lines.join('\n')}`);
      t.match(lines[0] ?? '', SHRANK_ANYWHERE, 'naming region 1');
    }
    t.notOk(
      logSince(d, mark).some((l) => /^vublk: error: /.test(l)),
      'no error-level line',
    );
    await expectServes(t, d);
  }
});

// ------------------------------------------------------ file-backed regions

const shm = fs.existsSync('/dev/shm') ? '/dev/shm' : undefined;

t.test('regions backed by /dev/shm files serve normal I/O', { skip: shm ? false : 'no /dev/shm' }, async (t) => {
  const d = await sharedDaemon();
  const { fe } = await connected(t, d, {}, { fileDir: shm });
  const drv = new BlkDriver(fe);
  for (const straddle of [false, true]) {
    const data = pattern(64 * 1024, straddle ? 7 : 3);
    const w = await drv.write(0, 2048, data, { straddle });
    const r = await drv.read(0, 2048, data.length, { straddle });
    t.ok(
      w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data),
      `write and read back${straddle ? ' across the region boundary' : ''}`,
    );
  }
});

shrinkCase(
  'a /dev/shm file region truncated under the ring',
  {},
  (fe) => [
    chain(fe, [
      [header(fe, BlkType.FLUSH, 1), 16, false],
      [fe.mem!.alloc(1, 1, { region: 0 }), 1, true],
    ]),
  ],
  { fileDir: shm ?? '/tmp' },
);

// hugetlbfs (QEMU's memory-backend-file on a hugetlbfs mount): served as
// usual, and a truncated file faults like any other. As root the test
// reserves the huge pages it needs (test/helpers/hugetlbfs.ts).
const HUGE_BYTES = 8 * MiB;
const noHuge = hugePagesUnsupported(HUGE_BYTES) ?? false;

t.test('regions backed by hugetlbfs files serve normal I/O', { skip: noHuge }, async (t) => {
  const d = await sharedDaemon();
  const { fe } = await connected(t, d, {}, { fileDir: hugetlbfsDir(t, HUGE_BYTES) });
  const drv = new BlkDriver(fe);
  const data = pattern(64 * 1024, 11);
  const w = await drv.write(0, 4096, data, { straddle: true });
  const r = await drv.read(0, 4096, data.length, { straddle: true });
  t.ok(w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data), 'write and read back across the region boundary');
});

shrinkCase(
  'a hugetlbfs file region truncated under the ring',
  {},
  (fe) => [
    chain(fe, [
      [header(fe, BlkType.FLUSH, 1), 16, false],
      [fe.mem!.alloc(1, 1, { region: 0 }), 1, true],
    ]),
  ],
  (t) => ({ fileDir: hugetlbfsDir(t, HUGE_BYTES) }),
  noHuge,
);

// Last: the handler vublk installed for SIGBUS leaves Node's signal handling
// alone. After every fault above, SIGTERM still drains and exits 0.
t.test('after the faults, SIGTERM still shuts the daemon down cleanly', async (t) => {
  const d = await sharedDaemon();
  await t.resolves(d.stop(), 'SIGTERM: exit 0');
  t.match(d.v.stderr(), /shutting down/, 'it logged the shutdown');
});
