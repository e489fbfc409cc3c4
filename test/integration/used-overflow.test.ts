// A racing guest re-offers chain heads as fast as the daemon completes them:
// on a 4-entry ring it keeps the avail index at "what the daemon popped + 4"
// (it reads avail_event, EVENT_IDX). Every chain is an unknown request type
// that completes at once (UNSUPP), which frees its head. Every used entry the
// daemon publishes must be a real one (len 1, the status byte, and a head of
// the ring), nothing may be written at region 0 offset 0 (where a stale
// entry's status byte would go), and the daemon serves the next frontend.
//
// One batch holds more chains than the ring has heads only when the guest
// moves the avail index between the addon's avail_event store and its
// re-check (a fence apart), or while the daemon is preempted right there.
// That window is too narrow to hit on demand: this test did not reproduce
// the overflow before the fix. test/blk/used-batch.test.ts hands the
// handler such a batch directly and does.

import t from 'tap';
import { native } from '../../src/native/binding';
import { DescFlags, DESC_SIZE } from '../../src/frontend/split-ring';
import { BlkStatus } from '../../src/frontend/blk-driver';
import { connect, pattern, startDaemon, waitConnClosed, writeDesc } from './harness';

const QSIZE = 4;
const T_UNKNOWN = 0x77;
/** How long the guest races (a workload length, not a pass criterion). */
const RACE_MS = 1500;

t.test('a guest that re-offers heads within one batch gets a real used entry for every chain', async (t) => {
  const d = await startDaemon(t, { queueSize: QSIZE });
  const { fe } = await connect(t, d, { queueSize: QSIZE, eventIdx: true, indirect: true, memory: { regions: [4 << 20] } });
  const mem = fe.mem!; // set up
  const ring = fe.queue(0).ring;

  // Head h: an indirect table of a 16-byte header and a status byte.
  for (let h = 0; h < QSIZE; h++) {
    const hdr = mem.alloc(16, 16);
    const header = Buffer.alloc(16);
    header.writeUInt32LE(T_UNKNOWN, 0);
    mem.write(hdr, header);
    const status = mem.alloc(1, 1);
    const table = mem.alloc(2 * DESC_SIZE, 16);
    const tab = Buffer.alloc(2 * DESC_SIZE);
    tab.writeBigUInt64LE(BigInt(hdr), 0);
    tab.writeUInt32LE(16, 8);
    tab.writeUInt16LE(DescFlags.NEXT, 12);
    tab.writeUInt16LE(1, 14);
    tab.writeBigUInt64LE(BigInt(status), 16);
    tab.writeUInt32LE(1, 24);
    tab.writeUInt16LE(DescFlags.WRITE, 28);
    mem.write(table, tab);
    writeDesc(fe, 0, h, { addr: table, len: 2 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
  }
  // Stale entries point their status byte at region 0 offset 0, where the
  // descriptor table starts: descriptor 0 must come through unchanged.
  const desc0 = mem.read(ring.descGpa, DESC_SIZE);
  t.not(desc0[0], 0, 'descriptor 0 starts with a non-zero byte (a stray status 0 would show)');
  // Avail slot i always names head i: only the index moves.
  const avail = mem.locate(ring.availGpa);
  const used = mem.locate(ring.usedGpa);
  const a16 = new Uint16Array(avail.region.buffer);
  const u16 = new Uint16Array(used.region.buffer);
  const u32 = new Uint32Array(used.region.buffer);
  for (let i = 0; i < QSIZE; i++) Atomics.store(a16, (avail.offset + 4 + 2 * i) / 2, i);
  const availIdx = (avail.offset + 2) / 2;
  const availEvent = (used.offset + 4 + 8 * QSIZE) / 2;
  const usedIdx = (used.offset + 2) / 2;
  const kickFd = fe.queue(0).kickFd;

  let offered = 0;
  let seen = 0;
  let bad = 0;
  let firstBad = '';
  let lastUsed = 0;
  let idle = 0;
  const end = Date.now() + RACE_MS;
  // A synchronous loop: the daemon runs in its own process.
  while (Date.now() < end) {
    const want = (Atomics.load(u16, availEvent) + QSIZE) & 0xffff;
    if (want !== offered) {
      offered = want;
      Atomics.store(a16, availIdx, want);
      idle = 0;
    }
    if (++idle % 4096 === 1) native.eventfdWrite(kickFd, 1); // the daemon may have gone idle
    const u = Atomics.load(u16, usedIdx);
    while (lastUsed !== u) {
      const e = used.offset + 4 + 8 * (lastUsed % QSIZE);
      const id = Atomics.load(u32, e / 4);
      const len = Atomics.load(u32, e / 4 + 1);
      if ((len !== 1 || id >= QSIZE) && bad++ === 0) firstBad = `used entry ${lastUsed}: id ${id} len ${len}`;
      lastUsed = (lastUsed + 1) & 0xffff;
      seen++;
    }
  }
  t.ok(seen > 10 * QSIZE, `the guest saw ${seen} used entries`);
  t.equal(bad, 0, bad === 0 ? 'each had len 1 and a real head' : `${bad} stale entries, first: ${firstBad}`);
  t.same(mem.read(ring.descGpa, DESC_SIZE), desc0, 'descriptor 0 (region 0, offset 0) was not written');
  const mark = d.v.stderr().length;
  fe.close();
  await waitConnClosed(d, mark, 1);
  // The next frontend (a 4-entry ring too: the daemon serves at most that) does I/O.
  const next = await connect(t, d, { queueSize: QSIZE, memory: { regions: [4 << 20] } });
  const data = pattern(4096, 9);
  const w = await next.drv.write(0, 64, data);
  const r = await next.drv.read(0, 64, data.length);
  t.ok(w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data), 'the daemon serves the next frontend');
});
