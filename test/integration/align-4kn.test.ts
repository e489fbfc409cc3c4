// A 512-byte guest on a real 4Kn host disk: a loop device with 4096-byte
// logical sectors and direct I/O (losetup --sector-size 4096 --direct-io=on)
// over a pre-filled 64 MiB file, served by one vublk with 512-byte logical
// blocks, two queues of 1024. Every case checks the data the guest reads
// back AND the device's bytes (read with O_DIRECT), against a model of the
// whole device, so a neighbour clobbered by a read-modify-write shows.
//
//   odd sectors       512-byte writes into 4 KiB blocks, neighbours intact
//   head and tail     unaligned reads/writes over many blocks, every layout
//   IOV_MAX collapse  1024-descriptor chains (1023 carry data) with > 1024
//                     memory segments at an unaligned sector
//   > IOV_MAX         chains whose middle alone has > 1024 segments (split),
//                     up to the 2048-segment chain limit, and one past it
//   same-block race   writes to different sectors of one 4 KiB block from
//                     two queues at once: no lost update
//
// Chain limits this file works to (native/shared-arrays.h, src/...):
// queue size <= 1024 (--queue-size, SET_VRING_NUM), a chain walks at most
// its table's size (ring: queue size; indirect table: kMaxChainDescs =
// 1024 entries), so a chain has at most 1024 descriptors and at most 1023
// of them carry data (header or status shares one with data). A chain may
// translate to at most kMaxChainSegs = 2048 memory segments (a descriptor
// crossing guest memory regions is several); a request holds at most 2048
// iovecs (MAX_REQUEST_IOVS). IOV_MAX = 1024; seg_max = min(qsize-2, 1022).

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { asanEnabled, runsAsanAddon, startVublk, teardownDaemon, tmpDir, warnLines, type VublkProcess } from '../helpers/vublk-process';
import { attachLoop, type LoopDevice } from '../helpers/loop-device';
import { total } from '../helpers/counters';
import type { Frontend } from '../../src/frontend/frontend';
import type { SetupOptions } from '../../src/frontend/setup-options';
import type { GuestMemory } from '../../src/frontend/guest-memory';
import { BlkStatus, LAYOUTS, SECTOR_SIZE, parseBlkConfig, type BlkRequest } from '../../src/frontend/blk-driver';
import { pattern } from './harness';
import { prng } from '../helpers/prng';
import {
  PiecePlacer,
  buildRawRequest,
  closeAndCount,
  countersNow,
  firstDiff,
  openSession,
  readDirect,
  requirements,
  reservePages,
  runRaw,
  waitFor,
  type Piece,
} from './align-helpers';

const DISK_BYTES = 64 << 20;
const SECTORS = DISK_BYTES / SECTOR_SIZE;
const HOST_BLOCK = 4096;
const SPB = HOST_BLOCK / SECTOR_SIZE; // guest sectors per host block
const QUEUES = 2;
const QUEUE_SIZE = 1024;
const IOV_MAX = 1024;
const SEED = Number(process.env.VUBLK_TEST_SEED ?? Date.now() % 1_000_000);

const skip = requirements({ root: true, commands: ['losetup', 'blockdev', 'dd'] });

t.test('512-byte guest on a 4Kn loop device', { skip }, async (t) => {
  t.comment(`seed ${SEED} (set VUBLK_TEST_SEED to repeat)`);
  const dir = tmpDir('vublk-4kn-');
  const file = path.join(dir, 'disk.img');
  const socket = path.join(dir, 'vublk.sock');
  /** What the device must hold, byte for byte. */
  const model = pattern(DISK_BYTES, SEED);
  fs.writeFileSync(file, model);
  let loop: LoopDevice | undefined;
  let v: VublkProcess | undefined;
  teardownDaemon(
    t,
    dir,
    () => v,
    () => loop?.detach(),
  );
  loop = attachLoop(file, HOST_BLOCK);
  const dev = loop.dev;
  t.comment(`${dev} over ${file}`);
  v = await startVublk([
    '--disk',
    dev,
    '--socket',
    socket,
    '--logical-block-size',
    '512',
    '--queues',
    String(QUEUES),
    '--queue-size',
    String(QUEUE_SIZE),
  ]);
  const daemon = v;

  /** Device bytes [off, off+len) (O_DIRECT) equal the model. */
  const expectDevice = (t: Test, off: number, len: number, what: string): void => {
    const lo = Math.max(0, off);
    const hi = Math.min(DISK_BYTES, off + len);
    const got = readDirect(dev, lo, hi - lo);
    const i = firstDiff(got, model.subarray(lo, hi));
    t.ok(
      i < 0,
      `${what}: device bytes [${lo}, ${hi}) match${i < 0 ? '' : ` (first difference at byte ${lo + i}, sector ${Math.floor((lo + i) / 512)})`}`,
    );
  };
  /** The device around a guest range: the host blocks it touches and one more on each side. */
  const expectAround = (t: Test, sector: number, len: number, what: string): void => {
    const start = Math.floor((sector * SECTOR_SIZE) / HOST_BLOCK) * HOST_BLOCK - HOST_BLOCK;
    const end = Math.ceil((sector * SECTOR_SIZE + len) / HOST_BLOCK) * HOST_BLOCK + HOST_BLOCK;
    expectDevice(t, start, end - start, what);
  };
  const wrote = (sector: number, data: Uint8Array): void => {
    model.set(data, sector * SECTOR_SIZE);
  };
  const modelAt = (sector: number, len: number): Buffer => model.subarray(sector * SECTOR_SIZE, sector * SECTOR_SIZE + len);

  /** A fresh frontend connection (the daemon serves one at a time); returns its conn id. */
  const session = (t: Test, setup: SetupOptions) => openSession(t, daemon, socket, setup, { timeoutMs: 20000 });
  const noErrorsLogged = (t: Test, mark: number): void => {
    t.same(warnLines(daemon, mark), [], 'the daemon logged no warning or error');
  };

  t.test('start-up: the daemon found the 4Kn rules and tells the guest 512/4096', async (t) => {
    const line = await daemon.waitForLog(/^vublk: info: host disk direct I\/O /);
    t.match(line, / offsetAlign=4096 /, `offsetAlign=4096: ${line}`);
    t.match(line, / memAlign=512 /, 'memAlign=512 (the loop device takes 512-aligned memory)');
    t.match(line, / physicalBlock=4096 /, 'physicalBlock=4096');
    if (asanEnabled()) t.ok(runsAsanAddon(daemon.child.pid!), 'the daemon runs the ASan addon'); // spawned
    const { fe } = await session(t, { queues: QUEUES });
    const cfg = parseBlkConfig(fe.config!); // CONFIG is negotiated
    t.equal(cfg.capacity, BigInt(SECTORS), 'capacity in 512-byte sectors');
    t.equal(cfg.blkSize, 512, 'blk_size 512');
    t.equal(cfg.physicalBlockExp, 3, 'physical_block_exp 3: 4096-byte physical blocks');
  });

  t.test('512-byte writes at odd sectors leave the rest of their 4 KiB block intact', async (t) => {
    const { fe, drv, conn, mark } = await session(t, { queues: QUEUES });
    const sectors = [1, 3, 7, 9, 4095, 4097, 65535, 65537, 100003, SECTORS - SPB + 1, SECTORS - 1];
    let n = 0;
    for (const sector of sectors) {
      const q = n++ % QUEUES;
      const data = pattern(SECTOR_SIZE, SEED + sector);
      const w = await drv.write(q, sector, data);
      t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `write 512 B at sector ${sector} (q${q}): OK`);
      wrote(sector, data);
      expectAround(t, sector, SECTOR_SIZE, `after the write at sector ${sector}`);
      const r = await drv.read(q, sector, SECTOR_SIZE);
      t.ok(r.status === BlkStatus.OK && r.data.equals(data), `read 512 B at sector ${sector} returns the write`);
      const block = Math.floor(sector / SPB) * SPB;
      const rb = await drv.read(q, block, HOST_BLOCK, { layout: 'indirect' });
      t.ok(
        rb.status === BlkStatus.OK && rb.data.equals(modelAt(block, HOST_BLOCK)),
        `read of the whole 4 KiB block at sector ${block}: the write and its untouched neighbours`,
      );
    }
    // Sectors 1, 3 and 7 share block 0: all three writes are still there.
    expectDevice(t, 0, 2 * HOST_BLOCK, 'blocks 0-1 after three writes into block 0 and one into block 1');
    const cs = await closeAndCount(daemon, fe, conn, QUEUES);
    const c = total(cs);
    t.ok(c.rmwCycles >= sectors.length, `every 512-byte write was a read-modify-write (rmwCycles=${c.rmwCycles})`);
    t.equal(c.errors, 0, 'no request failed');
    noErrorsLogged(t, mark);
  });

  t.test('unaligned head and tail spanning many blocks, every layout', async (t) => {
    const { fe, drv, conn, mark } = await session(t, { queues: QUEUES });
    const rand = prng(SEED ^ 0x4b4e);
    // [sector offset in its block, length in sectors]: head and tail in one block,
    // head+tail with no middle, and longer ones with head, middle and tail.
    const shapes: [number, number][] = [
      [1, 6],
      [7, 2],
      [5, 9],
      [3, 17],
      [1, 63],
      [6, 130],
      [2, 255],
    ];
    const region = { lo: 16 << 20, hi: 48 << 20 }; // bytes of the disk this test uses
    const pick = (lenSectors: number, off: number): number => {
      const blocks = (region.hi - region.lo) / HOST_BLOCK - Math.ceil(lenSectors / SPB) - 2;
      return region.lo / SECTOR_SIZE + Math.floor(rand() * blocks) * SPB + off;
    };
    for (const layout of LAYOUTS) {
      let q = 0;
      for (const [off, lenSectors] of shapes) {
        q = (q + 1) % QUEUES;
        const len = lenSectors * SECTOR_SIZE;
        // A read of bytes nobody wrote yet (the pre-filled pattern).
        const rs = pick(lenSectors, off);
        const r0 = await drv.read(q, rs, len, { layout });
        t.ok(
          r0.status === BlkStatus.OK && r0.usedLen === len + 1 && r0.data.equals(modelAt(rs, len)),
          `${layout}: read ${lenSectors} sectors at ${rs} (offset ${off} in its block) returns the device bytes`,
        );
        const sector = pick(lenSectors, off);
        const data = pattern(len, sector ^ SEED);
        const w = await drv.write(q, sector, data, { layout });
        t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `${layout}: write ${lenSectors} sectors at ${sector}: OK`);
        wrote(sector, data);
        expectAround(t, sector, len, `${layout}: ${lenSectors} sectors at ${sector}`);
        const r = await drv.read(q, sector, len, { layout });
        t.ok(r.status === BlkStatus.OK && r.data.equals(data), `${layout}: reading it back through the same layout`);
        const r2 = await drv.read(1 - q, sector - 1, len + 2 * SECTOR_SIZE, { layout: '3desc' });
        t.ok(
          r2.status === BlkStatus.OK && r2.data.equals(modelAt(sector - 1, len + 2 * SECTOR_SIZE)),
          `${layout}: a 3desc read one sector wider on each side`,
        );
      }
    }
    const c = total(await closeAndCount(daemon, fe, conn, QUEUES));
    t.ok(c.rmwCycles >= LAYOUTS.length * shapes.length, `writes were read-modify-writes (rmwCycles=${c.rmwCycles})`);
    t.ok(c.bytesBounced > 0, `head and tail blocks were bounced (bytesBounced=${c.bytesBounced})`);
    t.equal(c.errors, 0, 'no request failed');
    noErrorsLogged(t, mark);
  });

  // ---------------------------------------------------------------- long chains

  /** Guest memory for long chains: region 0 for rings and buffers, then PAGES one-page regions. */
  const PAGES = 256;
  const longChainSetup: SetupOptions = {
    queues: QUEUES,
    queueSize: QUEUE_SIZE,
    indirect: true,
    memory: { regions: [16 << 20, ...new Array<number>(PAGES).fill(4096)] },
  };
  const longSession = async (t: Test) => {
    const s = await session(t, longChainSetup);
    const mem = s.fe.mem!; // set up
    t.equal(mem.regions.length, PAGES + 1, `${PAGES + 1} guest memory regions (ADD_MEM_REG)`);
    const pagesBase = reservePages(mem, 1, PAGES);
    const placer = new PiecePlacer(mem, pagesBase, PAGES, 8 << 20);
    return { ...s, mem, placer };
  };

  /**
   * How the host sees a request of these data segments at byte pos: a head
   * and/or tail host block partly the guest's, and the segments (iovecs)
   * wholly or partly in between, which go to the disk as they are.
   */
  const hostShape = (segLens: number[], pos: number) => {
    const len = segLens.reduce((a, b) => a + b, 0);
    const end = pos + len;
    const aStart = Math.floor(pos / HOST_BLOCK) * HOST_BLOCK;
    const aEnd = Math.ceil(end / HOST_BLOCK) * HOST_BLOCK;
    const head = pos !== aStart;
    const tail = end !== aEnd && !(head && aEnd - aStart === HOST_BLOCK);
    const midStart = head ? aStart + HOST_BLOCK : pos;
    const midEnd = tail ? aEnd - HOST_BLOCK : end;
    let mid = 0;
    let at = pos;
    for (const l of segLens) {
      if (Math.max(at, midStart) < Math.min(at + l, midEnd)) mid++;
      at += l;
    }
    return { head, tail, mid, vector: mid + (head ? 1 : 0) + (tail ? 1 : 0) };
  };
  /** Lengths of the memory segments the daemon sees for these pieces (split at region boundaries). */
  const segLensOf = (mem: GuestMemory, pieces: readonly Piece[]): number[] => {
    const out: number[] = [];
    for (const p of pieces) {
      let at = p.gpa;
      const end = p.gpa + p.len;
      while (at < end) {
        const { region, offset } = mem.locate(at);
        const n = Math.min(end - at, region.size - offset);
        out.push(n);
        at += n;
      }
    }
    return out;
  };

  /**
   * 1023 data pieces: 512-byte ones, except `multi` two-page pieces (each two
   * memory segments) spread through the middle.
   */
  const mixedPieces = (placer: PiecePlacer, multi: number): Piece[] => {
    const pieces: Piece[] = [];
    const every = Math.floor(1023 / (multi + 1));
    for (let i = 0; i < 1023; i++) {
      const isMulti = multi > 0 && i > 0 && i % every === 0 && i / every <= multi;
      pieces.push(isMulti ? placer.pages(2) : placer.plain(SECTOR_SIZE));
    }
    return pieces;
  };

  /** Writes then reads back `pieces`-shaped requests; checks device and data. */
  const writeAndRead = async (
    t: Test,
    fe: Frontend,
    mem: GuestMemory,
    q: number,
    sector: number,
    pieces: Piece[],
    readPieces: Piece[],
    indirect: boolean,
    what: string,
  ) => {
    const len = pieces.reduce((a, p) => a + p.len, 0);
    const data = pattern(len, sector + 77);
    const wreq = buildRawRequest(mem, 1, sector, pieces, { payload: data, mergeHeader: true });
    t.equal(wreq.segs.length, 1024, `${what}: the write chain has 1024 descriptors, 1023 of them carrying data`);
    const w = await runRaw(fe, q, wreq, { indirect });
    t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `${what}: write of ${len} bytes at sector ${sector}: OK`);
    wrote(sector, data);
    expectAround(t, sector, len, `${what}: after the write`);
    const rreq = buildRawRequest(mem, 0, sector, readPieces, { mergeStatus: true });
    t.equal(rreq.segs.length, 1024, `${what}: the read chain has 1024 descriptors, 1023 of them carrying data`);
    const r = await runRaw(fe, q, rreq, { indirect });
    t.same([r.status, r.usedLen], [BlkStatus.OK, len + 1], `${what}: read back: OK, used.len = data + 1`);
    const i = firstDiff(r.data, data);
    t.ok(i < 0, `${what}: read back returns the write${i < 0 ? '' : ` (first difference at data byte ${i})`}`);
  };

  t.test('1024-descriptor chains at an unaligned sector: IOV_MAX collapse', async (t) => {
    const { fe, mem, placer, conn, mark } = await longSession(t);
    // 1023 data pieces, 8 of them two pages (two segments each): 1031 data
    // segments. At a sector 5 into its block the head block takes 3 of them
    // and the tail block 4: 1024 in the middle, 1026 iovecs in all.
    const MULTI = 8;
    let k = 0;
    for (const [q, indirect] of [
      [0, true],
      [1, false],
    ] as const) {
      const sector = (1000 + 600 * k++) * SPB + 5;
      const pieces = mixedPieces(placer, MULTI);
      const readPieces = mixedPieces(placer, MULTI);
      const segs = segLensOf(mem, pieces);
      t.equal(segs.length, 1023 + MULTI, `the data is ${1023 + MULTI} memory segments`);
      const shape = hostShape(segs, sector * SECTOR_SIZE);
      t.ok(
        shape.head && shape.tail && shape.mid <= IOV_MAX && shape.vector > IOV_MAX,
        `the chain needs a collapse: head + ${shape.mid} middle segments + tail = ${shape.vector} > IOV_MAX`,
      );
      t.ok(segLensOf(mem, readPieces).length === segs.length, 'the read chain has the same shape');
      await writeAndRead(t, fe, mem, q, sector, pieces, readPieces, indirect, `${indirect ? 'indirect table' : 'direct chain'} (q${q})`);
    }
    const c = total(await closeAndCount(daemon, fe, conn, QUEUES));
    t.ok(c.iovCollapses > 0, `counters show iovCollapses > 0 (${c.iovCollapses})`);
    t.ok(c.rmwCycles > 0, `and read-modify-writes for the partial blocks (${c.rmwCycles})`);
    t.equal(c.errors, 0, 'no request failed');
    noErrorsLogged(t, mark);
  });

  t.test('chains with more segments than IOV_MAX (and seg_max) are split into several host ops', async (t) => {
    const { fe, mem, placer, conn, mark } = await longSession(t);
    // 1023 data pieces, 120 of them two pages: 1143 segments, the middle
    // alone more than IOV_MAX. Reads too: the read chain is shaped the same.
    const MULTI = 120;
    let k = 0;
    for (const [q, indirect] of [
      [0, true],
      [1, false],
    ] as const) {
      const sector = (3000 + 600 * k++) * SPB + 3;
      placer.rewind();
      const pieces = mixedPieces(placer, MULTI);
      placer.rewind(); // the read reuses the pages once the write is done
      const readPieces = mixedPieces(placer, MULTI);
      const segs = segLensOf(mem, pieces);
      t.equal(segs.length, 1023 + MULTI, `the data is ${1023 + MULTI} memory segments`);
      const shape = hostShape(segs, sector * SECTOR_SIZE);
      t.ok(shape.mid > IOV_MAX, `the middle alone has ${shape.mid} > IOV_MAX segments`);
      await writeAndRead(t, fe, mem, q, sector, pieces, readPieces, indirect, `${indirect ? 'indirect table' : 'direct chain'} (q${q})`);
    }
    const c = total(await closeAndCount(daemon, fe, conn, QUEUES));
    t.ok(c.ioSplits >= 4, `counters show ioSplits for each of the four requests (${c.ioSplits})`);
    t.equal(c.errors, 0, 'no request failed');
    noErrorsLogged(t, mark);
  });

  t.test('the 2048-segment chain limit: 2048 served, 2049 refused', async (t) => {
    const { fe, mem, placer, conn, mark } = await longSession(t);
    // Header + 127 sixteen-page pieces (aliasing the same 256 pages: legal for
    // a write) + 14 plain pieces + status = 1 + 2032 + 14 + 1 = 2048 segments.
    const limitPieces = (plainFirst: number): Piece[] => {
      const pieces: Piece[] = [];
      for (let i = 0; i < plainFirst; i++) pieces.push(placer.plain(SECTOR_SIZE));
      for (let i = 0; i < 127; i++) pieces.push(placer.pages(16, true));
      for (let i = plainFirst; i < 14; i++) pieces.push(placer.plain(SECTOR_SIZE));
      return pieces;
    };
    const write = async (sector: number, pieces: Piece[], what: string) => {
      const segs = segLensOf(mem, pieces);
      t.equal(segs.length + 2, 2048, `${what}: the chain is 2048 memory segments with header and status`);
      const len = segs.reduce((a, b) => a + b, 0);
      const req = buildRawRequest(mem, 1, sector, pieces, { payload: pattern(len, sector) });
      // Aliased pieces hold what was written last: the device must get exactly the guest's bytes.
      const want = Buffer.concat(pieces.map((p) => mem.read(p.gpa, p.len)));
      const before = total(await countersNow(daemon, conn, QUEUES));
      const w = await runRaw(fe, 0, req, { indirect: true });
      t.same([w.status, w.usedLen], [BlkStatus.OK, 1], `${what}: write of ${len} bytes at sector ${sector}: OK`);
      wrote(sector, want);
      expectAround(t, sector, len, `${what}: after the write`);
      const after = total(await countersNow(daemon, conn, QUEUES));
      return { len, ioSplits: after.ioSplits - before.ioSplits, bytesBounced: after.bytesBounced - before.bytesBounced };
    };

    // Sector 1 into its block, 7 plain pieces first: the head block takes
    // exactly them, so every page piece starts on a host block and the
    // 2000-odd middle segments can be cut into IOV_MAX-sized host ops.
    const a = await write(5000 * SPB + 1, limitPieces(7), 'aligned cuts');
    t.ok(a.ioSplits >= 1, `it was split into several host ops (ioSplits +${a.ioSplits})`);
    t.ok(a.bytesBounced <= 2 * HOST_BLOCK, `only the head and tail blocks were bounced (+${a.bytesBounced} bytes)`);

    // The page pieces first: the head block cuts 512 bytes off the first one,
    // every later segment boundary is 512 past a host block, and there is no
    // aligned place to cut the vector: the middle goes through a bounce buffer.
    placer.rewind();
    const b = await write(7100 * SPB + 1, limitPieces(0), 'no aligned cut');
    t.equal(b.ioSplits, 0, 'not split');
    t.ok(b.bytesBounced >= b.len - 2 * HOST_BLOCK, `the middle was bounced instead (+${b.bytesBounced} bytes of ${b.len})`);
    noErrorsLogged(t, mark);

    // One more segment is past the limit: a protocol violation, the daemon drops the connection.
    placer.rewind();
    const over = limitPieces(7).concat([placer.plain(SECTOR_SIZE)]);
    t.equal(segLensOf(mem, over).length + 2, 2049, 'a chain of 2049 memory segments');
    const overLen = over.reduce((x, p) => x + p.len, 0);
    const mark2 = daemon.stderr().length;
    const req2 = buildRawRequest(mem, 1, 9200 * SPB + 1, over, { payload: pattern(overLen, 2049) });
    fe.submit(0, req2.segs, { indirect: true }).catch(() => undefined);
    await t.resolves(fe.waitClosed(10000), 'the daemon closes the connection');
    const closed = await waitFor(() => new RegExp(`frontend connection closed conn=${conn}( |$)`).test(daemon.stderr()), 10000);
    t.ok(closed, 'and logs that it closed');
    const warns = daemon
      .stderr()
      .slice(mark2)
      .split('\n')
      .filter((l) => /^vublk: warn: /.test(l));
    t.equal(warns.length, 1, 'one warning');
    t.match(
      warns[0] ?? '',
      /protocol violation conn=\d+ rule=.*more than 2048 memory segments/,
      `naming the 2048-segment limit: ${warns[0] ?? '(none)'}`,
    );
    expectAround(t, 9200 * SPB + 1, overLen, 'the refused write changed nothing');
  });

  t.test('concurrent writes to one 4 KiB block from two queues: no lost update', async (t) => {
    const { fe, drv, conn, mark } = await session(t, { queues: QUEUES, queueSize: 256 });
    const rand = prng(SEED ^ 0x5a5a);
    const ROUNDS = 24;
    const BLOCKS = 6;
    const firstBlock = (52 << 20) / HOST_BLOCK;
    for (let round = 0; round < ROUNDS; round++) {
      // Six distinct blocks (two of them neighbours), eight 512-byte writes each.
      const blocks = new Set<number>();
      const b0 = firstBlock + Math.floor(rand() * 1000);
      blocks.add(b0).add(b0 + 1);
      while (blocks.size < BLOCKS) blocks.add(firstBlock + Math.floor(rand() * 1000));
      const reqs: BlkRequest[] = [];
      const writes: { sector: number; data: Buffer }[] = [];
      for (const b of blocks) {
        const order = [0, 1, 2, 3, 4, 5, 6, 7].sort(() => rand() - 0.5);
        for (const s of order) {
          const sector = b * SPB + s;
          const data = pattern(SECTOR_SIZE, round * 100003 + sector);
          // Neighbouring sectors of one block go to different queues.
          reqs.push({ q: s % 2, type: 1, sector, data });
          writes.push({ sector, data });
        }
      }
      // Every request is queued before either queue is published or kicked.
      const results = await Promise.all(drv.submitBatch(reqs));
      const bad = results.filter((r) => r.status !== BlkStatus.OK).length;
      if (bad > 0) t.fail(`round ${round}: ${bad} writes failed`);
      for (const w of writes) wrote(w.sector, w.data);
      for (const b of blocks) {
        const got = readDirect(dev, b * HOST_BLOCK, HOST_BLOCK);
        const i = firstDiff(got, model.subarray(b * HOST_BLOCK, (b + 1) * HOST_BLOCK));
        if (i >= 0)
          t.fail(`round ${round}: block ${b} lost an update: sector ${b * SPB + Math.floor(i / SECTOR_SIZE)} differs from its write`);
      }
    }
    t.pass(`${ROUNDS} rounds of ${BLOCKS * SPB} concurrent writes: every sector holds its write`);
    const r = await drv.read(0, firstBlock * SPB, 1001 * HOST_BLOCK);
    t.ok(
      r.status === BlkStatus.OK && r.data.equals(model.subarray(firstBlock * HOST_BLOCK, (firstBlock + 1001) * HOST_BLOCK)),
      'a read of the whole area returns every write',
    );
    expectDevice(t, firstBlock * HOST_BLOCK - HOST_BLOCK, 1002 * HOST_BLOCK, 'the device holds every write and nothing else changed');
    const cs = await closeAndCount(daemon, fe, conn, QUEUES);
    const c = total(cs);
    t.ok(
      cs.every((x) => x.requests > 0),
      'both queues served requests',
    );
    t.ok(c.rmwCycles >= ROUNDS * BLOCKS * SPB, `every write was a read-modify-write (rmwCycles=${c.rmwCycles})`);
    t.ok(c.overlapWaits > 0, `writes waited for overlapping ones (overlapWaits=${c.overlapWaits})`);
    t.equal(c.errors, 0, 'no request failed');
    noErrorsLogged(t, mark);
  });

  t.test('the whole device and its backing file match the model at the end', async (t) => {
    // Both read with O_DIRECT: the loop device, and the file under it.
    const CHUNK = 8 << 20;
    for (let off = 0; off < DISK_BYTES; off += CHUNK) expectDevice(t, off, CHUNK, `loop device at ${off >> 20} MiB`);
    for (let off = 0; off < DISK_BYTES; off += CHUNK) {
      const i = firstDiff(readDirect(file, off, CHUNK), model.subarray(off, off + CHUNK));
      t.ok(i < 0, `backing file at ${off >> 20} MiB matches${i < 0 ? '' : ` (first difference at byte ${off + i})`}`);
    }
  });
});
