// A started ring's size and addresses are fixed until GET_VRING_BASE stops
// it (issue #7, finding 1). The daemon checked the ring's pointers against
// guest memory for the size it had when the ring started; a SET_VRING_NUM
// (or SET_VRING_ADDR) on the running ring would make it index past them.
// The attack, reproduced with a hand-placed ring: a 4-entry ring whose used
// ring ends at the very end of a memory region, then SET_VRING_NUM 1024 and
// 1023 valid chains made available: the daemon pops them, writes
// avail_event and used entries up to 8 KiB past the region's mapping. Now
// both messages are protocol violations on a started ring.

import t, { type Test } from 'tap';
import { native } from '../../src/native/binding';
import { encodeU64Payload, encodeVringStatePayload } from '../../src/vhost-user/encode';
import { encodeMemTablePayload, encodeVringAddrPayload, encodeVringFilePayload } from '../../src/frontend/encode';
import { ProtocolFeature, Request, featureBit } from '../../src/vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/virtio/constants';
import { BlkDriver, BlkStatus, BlkType } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { VirtioFeature } from '../../src/frontend/features';
import { GuestMemory } from '../../src/frontend/guest-memory';
import { DescFlags } from '../../src/frontend/split-ring';
import { connIdSince, expectServes, expectViolation, pattern, startDaemon, until, type Daemon } from './harness';

const MiB = 1 << 20;
const REGION = 4 * MiB;
const DESC = 0x10000; // room for a 1024-entry table
const AVAIL = 0x20000; // room for a 1024-entry avail ring
const USED4 = REGION - 40; // a 4-entry used ring (38 bytes, 4-aligned) ends 2 bytes before region 0 does
const HEADER = 0x30000;
const STATUS = 0x30100;

interface HandRing {
  fe: Frontend;
  mem: GuestMemory;
  kick: number;
  conn: number;
  mark: number;
}

/**
 * The QEMU start-up sequence by hand, with queue 0 of `num` entries placed
 * at DESC / AVAIL / USED4, EVENT_IDX negotiated (so popping writes
 * avail_event at the used ring's end). Returns once one FLUSH went through.
 */
async function handRing(t: Test, d: Daemon, num: number): Promise<HandRing> {
  const mark = d.v.stderr().length;
  const fe = await Frontend.connect(d.socket);
  t.teardown(() => fe.close());
  const conn = await connIdSince(d, mark);
  const offered = await fe.getU64(Request.GET_FEATURES);
  await fe.getU64(Request.GET_PROTOCOL_FEATURES);
  fe.protocolFeatures = featureBit(ProtocolFeature.REPLY_ACK);
  fe.send(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(fe.protocolFeatures));
  await fe.command(Request.SET_OWNER, undefined, [], true);
  const want = [VirtioFeature.VERSION_1, VirtioFeature.RING_EVENT_IDX, VirtioFeature.BLK_FLUSH].reduce((m, b) => m | featureBit(b), 0n);
  await fe.command(Request.SET_FEATURES, encodeU64Payload((offered & want) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES)), [], true);
  const mem = GuestMemory.create({ regions: [REGION, REGION] });
  t.teardown(() => mem.close());
  await fe.command(
    Request.SET_MEM_TABLE,
    encodeMemTablePayload(mem.regions),
    mem.regions.map((r) => r.fd),
    true,
  );
  await fe.command(Request.SET_VRING_NUM, encodeVringStatePayload(0, num), [], true);
  await fe.command(Request.SET_VRING_BASE, encodeVringStatePayload(0, 0), [], true);
  await fe.command(Request.SET_VRING_ADDR, encodeVringAddrPayload(addrs(mem)), [], true);
  const kick = native.eventfdCreate();
  const call = native.eventfdCreate();
  t.teardown(() => {
    native.closeFd(kick);
    native.closeFd(call);
  });
  await fe.command(Request.SET_VRING_KICK, encodeVringFilePayload(0, false), [kick], true);
  await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(0, false), [call], true);
  await fe.command(Request.SET_VRING_ENABLE, encodeVringStatePayload(0, 1), [], true);

  // Descriptor 1 is the status byte; every other descriptor a FLUSH header chained to it.
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(BlkType.FLUSH, 0);
  mem.write(HEADER, hdr);
  for (let i = 0; i < 1024; i++)
    writeDesc(
      mem,
      i,
      i === 1 ? { addr: STATUS, len: 1, flags: DescFlags.WRITE, next: 0 } : { addr: HEADER, len: 16, flags: DescFlags.NEXT, next: 1 },
    );
  // One FLUSH on the 4-entry ring: the ring works.
  mem.write(AVAIL + 4, u16(0));
  mem.write(AVAIL + 2, u16(1));
  native.eventfdWrite(kick, 1);
  t.ok(await until(() => mem.read(USED4 + 2, 2).readUInt16LE(0) === 1), 'a FLUSH completes on the 4-entry ring');
  return { fe, mem, kick, conn, mark };
}

function addrs(mem: GuestMemory): { index: number; desc: number; used: number; avail: number } {
  return { index: 0, desc: mem.gpaToUva(DESC), used: mem.gpaToUva(USED4), avail: mem.gpaToUva(AVAIL) };
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v, 0);
  return b;
}

function writeDesc(mem: GuestMemory, i: number, d: { addr: number; len: number; flags: number; next: number }): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(d.addr), 0);
  b.writeUInt32LE(d.len, 8);
  b.writeUInt16LE(d.flags, 12);
  b.writeUInt16LE(d.next, 14);
  mem.write(DESC + 16 * i, b);
}

t.test('SET_VRING_NUM 1024 on a running 4-entry ring whose used ring ends at a region end', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB, queueSize: 1024 });
  const r = await handRing(t, d, 4);
  // The attack: grow the ring under the daemon, then make heads up to 1023
  // available (avail idx 1 + 1023) and kick.
  r.fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 1024));
  let idx = 1;
  for (let head = 0; head < 1024; head++) {
    if (head === 1) continue;
    r.mem.write(AVAIL + 4 + 2 * (idx % 1024), u16(head));
    idx++;
  }
  r.mem.write(AVAIL + 2, u16(idx & 0xffff));
  native.eventfdWrite(r.kick, 1);
  // SET_VRING_NUM is sent without waiting for a reply, so a data-plane worker
  // that polls the ring can see the moved avail index before the main thread
  // reads the message: either rule may be the one that disconnects, and
  // neither lets the used ring grow past the region.
  await expectViolation(
    t,
    d,
    r.fe,
    r.mark,
    r.conn,
    /SET_VRING_NUM on a running ring|Guest moved avail index from 1 to 1024 \(queue size 4\)/,
  );
  await expectServes(t, d);
  await t.resolves(d.stop(), 'exit 0 on SIGTERM (and no sanitizer report under ASan)');
});

t.test('SET_VRING_ADDR on a running ring', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB });
  const r = await handRing(t, d, 4);
  r.fe.send(Request.SET_VRING_ADDR, encodeVringAddrPayload(addrs(r.mem)));
  await expectViolation(t, d, r.fe, r.mark, r.conn, /SET_VRING_ADDR on a running ring/);
  await expectServes(t, d);
});

t.test('SET_VRING_NUM and SET_VRING_ADDR on a ring stopped by GET_VRING_BASE are accepted', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB });
  const r = await handRing(t, d, 4);
  t.equal(await r.fe.getVringBase(0), 1, 'GET_VRING_BASE stops the ring at avail idx 1');
  await t.resolves(r.fe.command(Request.SET_VRING_NUM, encodeVringStatePayload(0, 4), [], true), 'SET_VRING_NUM acked');
  await t.resolves(r.fe.command(Request.SET_VRING_ADDR, encodeVringAddrPayload(addrs(r.mem)), [], true), 'SET_VRING_ADDR acked');
  await t.resolves(r.fe.command(Request.SET_VRING_BASE, encodeVringStatePayload(0, 1), [], true), 'SET_VRING_BASE acked');
  await t.resolves(r.fe.command(Request.SET_VRING_KICK, encodeVringFilePayload(0, false), [r.kick], true), 'SET_VRING_KICK restarts it');
  r.mem.write(AVAIL + 4 + 2, u16(2));
  r.mem.write(AVAIL + 2, u16(2));
  native.eventfdWrite(r.kick, 1);
  t.ok(await until(() => r.mem.read(USED4 + 2, 2).readUInt16LE(0) === 2), 'the restarted ring serves a FLUSH');
});

t.test('by default every ring size QEMU allows is served: 1024 entries, wrapped', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB });
  const fe = await Frontend.connect(d.socket);
  t.teardown(() => fe.close());
  await fe.setup({ queues: 1, queueSize: 1024, memory: { regions: [8 * MiB, 8 * MiB] } });
  const drv = new BlkDriver(fe);
  const data = pattern(4096, 7);
  t.equal((await drv.write(0, 8, data)).status, BlkStatus.OK, 'a write on the 1024-entry ring');
  // 1100 more requests take the ring's indices past 1024.
  for (let batch = 0; batch < 11; batch++) {
    const rs = await Promise.all(Array.from({ length: 100 }, () => drv.flush(0)));
    if (!rs.every((r) => r.status === BlkStatus.OK)) t.fail(`batch ${batch}: a FLUSH failed`);
  }
  const r = await drv.read(0, 8, data.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(data), 'and the data reads back after the indices wrapped');
});
