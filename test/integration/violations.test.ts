// A frontend that breaks a rule of the vhost-user protocol or of the split
// ring is disconnected, and only it: the daemon logs one warn line naming
// the rule, closes that connection, keeps listening, and serves the next
// frontend, which does I/O. The cases share one daemon (so each also shows
// that it survived all before it); cases needing other options get their
// own. Last, fds sent with rejected messages are neither leaked nor closed
// twice (22 connect/violate/disconnect cycles, strace watching close(2)).

import t, { type Test } from 'tap';
import { native } from '../../src/native/binding';
import { encodeConfigPayload, encodeMessage, encodeU64Payload, encodeVringStatePayload } from '../../src/vhost-user/encode';
import {
  encodeMemRegPayload,
  encodeMemTablePayload,
  encodeVringAddrPayload,
  encodeVringFilePayload,
  type WireRegion,
} from '../../src/frontend/encode';
import { Flags, ProtocolFeature, Request, featureBit } from '../../src/vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/virtio/constants';
import { BlkDriver, BlkStatus, BlkType } from '../../src/frontend/blk-driver';
import { TestFrontend } from '../frontend/test-frontend';
import { VirtioFeature } from '../../src/frontend/features';
import { type SetupOptions } from '../../src/frontend/setup-options';
import { GuestMemory } from '../../src/frontend/guest-memory';
import { DescFlags, DESC_SIZE } from '../../src/frontend/split-ring';
import {
  connIdSince,
  expectServes,
  expectViolation,
  fdCount,
  guestMappings,
  logSince,
  rawToken,
  startDaemon,
  stracePath,
  traceCloses,
  waitConnClosed,
  type Daemon,
  type DaemonOptions,
  VIOLATION_LINE,
} from './harness';

const QSIZE = 128;
const MiB = 1 << 20;

/** A memfd of `size` bytes owned by the test (closed at teardown). */
function memfd(t: Test, size: number): number {
  const fd = native.memfdCreate('vublk-int-violation', size);
  t.teardown(() => native.closeFd(fd));
  return fd;
}

/**
 * The cases share one daemon (cases that need other options get their own):
 * each case also shows that the daemon outlived every case before it. Its
 * log is read per case from a mark, so each case sees only its own lines.
 */
let shared: Promise<Daemon> | undefined;
function sharedDaemon(): Promise<Daemon> {
  shared ??= startDaemon(t, { imageBytes: 16 * MiB });
  return shared;
}

/**
 * One case: the shared daemon (or a fresh one with `daemon` options), a
 * frontend (set up as given, or bare), `act` breaks a rule; the frontend
 * sees EOF, the daemon logs one warn line matching `rule` for that
 * connection, and then serves a fresh frontend.
 */
function violationCase(
  name: string,
  rule: RegExp,
  setup: SetupOptions | false,
  act: (fe: TestFrontend, t: Test, d: Daemon) => void | Promise<void>,
  daemon?: DaemonOptions,
): void {
  t.test(name, async (t) => {
    const d = daemon === undefined ? await sharedDaemon() : await startDaemon(t, { imageBytes: 16 * MiB, ...daemon });
    const mark = d.v.stderr().length;
    const fe = await TestFrontend.connect(d.socket);
    t.teardown(() => fe.close());
    // Small guest RAM (two 4 MiB regions): each connection maps (and may pin) all of it.
    if (setup !== false) await fe.setup({ memory: { regions: [4 * MiB, 4 * MiB] }, ...setup });
    const conn = await connIdSince(d, mark);
    if (setup !== false) {
      // The connection works before the rule is broken.
      const drv = new BlkDriver(fe);
      t.equal((await drv.flush(0)).status, BlkStatus.OK, 'the frontend is served before the violation');
    }
    await act(fe, t, d);
    await expectViolation(t, d, fe, mark, conn, rule);
    await expectServes(t, d);
  });
}

/** A 16-byte request header in guest memory; returns its gpa. */
function header(fe: TestFrontend, type: number, sector = 0): number {
  const mem = fe.mem!; // set up
  const g = mem.alloc(16, 16);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  mem.write(g, h);
  return g;
}

function buffer(fe: TestFrontend, len: number, align = 512): number {
  return fe.mem!.alloc(len, align); // set up
}

/** Makes head available on queue 0 (avail idx store) and kicks. */
function publish(fe: TestFrontend, ...heads: number[]): void {
  const ring = fe.queue(0).ring;
  for (const h of heads) ring.pushAvail(h, rawToken());
  ring.publish();
  fe.kick(0);
}

const ring = (fe: TestFrontend) => fe.queue(0).ring;

// ---------------------------------------------------------------- messages

violationCase('header with version 0 in its flags', /GET_FEATURES header version 0, expected 1/, false, (fe) => {
  fe.sendRaw(encodeMessage(Request.GET_FEATURES, 0));
});

violationCase('header with version 2 in its flags', /header version 2, expected 1/, false, (fe) => {
  fe.sendRaw(encodeMessage(Request.GET_FEATURES, 2));
});

violationCase('request with the REPLY flag set', /GET_FEATURES request has flags 0x5/, false, (fe) => {
  fe.sendRaw(encodeMessage(Request.GET_FEATURES, Flags.VERSION | Flags.REPLY));
});

violationCase('SET_VRING_NUM with a 4-byte payload', /SET_VRING_NUM payload is 4 bytes, expected 8/, false, (fe) => {
  fe.send(Request.SET_VRING_NUM, Buffer.alloc(4));
});

violationCase('GET_FEATURES with an 8-byte payload', /GET_FEATURES payload is 8 bytes, expected 0/, false, (fe) => {
  fe.send(Request.GET_FEATURES, Buffer.alloc(8));
});

violationCase('SET_MEM_TABLE with 2 regions and 1 fd', /SET_MEM_TABLE carries 1 fds for 2 regions/, false, (fe, t) => {
  const fd = memfd(t, 2 * MiB);
  const regions: WireRegion[] = [
    { gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 },
    { gpa: MiB, size: MiB, uva: 0x7f0000100000, mmapOffset: MiB },
  ];
  fe.send(Request.SET_MEM_TABLE, encodeMemTablePayload(regions), [fd]);
});

violationCase('SET_MEM_TABLE with 1 region and 2 fds', /SET_MEM_TABLE carries 2 fds for 1 regions/, false, (fe, t) => {
  const fd = memfd(t, MiB);
  fe.send(Request.SET_MEM_TABLE, encodeMemTablePayload([{ gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 }]), [fd, fd]);
});

violationCase(
  'SET_MEM_TABLE region with mmap_offset + size beyond its fd',
  /SET_MEM_TABLE region 0: memory region mmap_offset \+ size is beyond the end of its fd/,
  false,
  (fe, t) => {
    const fd = memfd(t, MiB);
    fe.send(Request.SET_MEM_TABLE, encodeMemTablePayload([{ gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 4096 }]), [fd]);
  },
);

violationCase(
  'ADD_MEM_REG region larger than its fd',
  /ADD_MEM_REG: memory region mmap_offset \+ size is beyond the end of its fd/,
  { queues: 1 },
  async (fe, t) => {
    const fd = memfd(t, MiB);
    const p = Buffer.alloc(40);
    p.writeBigUInt64LE(0x1000_0000n, 8); // gpa: above the frontend's RAM
    p.writeBigUInt64LE(2n * BigInt(MiB), 16);
    p.writeBigUInt64LE(0x7e00_0000_0000n, 24);
    p.writeBigUInt64LE(0n, 32);
    fe.send(Request.ADD_MEM_REG, p, [fd]);
  },
);

violationCase('SET_MEM_TABLE region whose gpa + size wraps 2^64', /SET_MEM_TABLE region 0 gpa\+size wraps past 2\^64/, false, (fe, t) => {
  const fd = memfd(t, 2 * MiB);
  fe.send(Request.SET_MEM_TABLE, encodeMemTablePayload([{ gpa: 2n ** 64n - 4096n, size: 2 * MiB, uva: 0x7f0000000000, mmapOffset: 0 }]), [
    fd,
  ]);
});

violationCase('SET_VRING_NUM that is not a power of two', /SET_VRING_NUM 100 is not a power of two/, false, (fe) => {
  fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 100));
});

violationCase(
  'SET_VRING_NUM larger than --queue-size',
  /SET_VRING_NUM 512 asks for a 512-entry ring, over the limit of 256 set by --queue-size \(raise --queue-size to 512, or lower the frontend's queue-size\)/,
  false,
  (fe) => {
    fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 512));
  },
  { queueSize: 256 },
);

violationCase(
  'SET_VRING_NUM larger than any ring vublk serves',
  /SET_VRING_NUM 2048 asks for a 2048-entry ring; vublk serves at most 1024/,
  false,
  (fe) => {
    fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 2048));
  },
);

violationCase('SET_VRING_NUM 0', /SET_VRING_NUM 0 is not a power of two/, false, (fe) => {
  fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 0));
});

violationCase('SET_VRING_NUM for a queue index out of range', /SET_VRING_NUM names queue 1, but there are 1/, false, (fe) => {
  fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(1, 128));
});

violationCase(
  'SET_VRING_KICK (with an fd) for a queue index out of range',
  /SET_VRING_KICK names queue 7, but there are 1/,
  false,
  (fe, t) => {
    const efd = native.eventfdCreate();
    t.teardown(() => native.closeFd(efd));
    fe.send(Request.SET_VRING_KICK, encodeVringFilePayload(7, false), [efd]);
  },
);

// Bit 50 is reserved: no device offers it.
violationCase('SET_FEATURES acking a feature never offered', /SET_FEATURES acks features never offered: 0x4000000000000/, false, (fe) => {
  fe.send(Request.SET_FEATURES, encodeU64Payload((1n << 50n) | featureBit(VirtioFeature.VERSION_1)));
});

violationCase('SET_PROTOCOL_FEATURES acking a feature never offered', /SET_PROTOCOL_FEATURES acks features never offered/, false, (fe) => {
  fe.send(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(featureBit(ProtocolFeature.REPLY_ACK) | (1n << 40n)));
});

violationCase(
  'GET_CONFIG past the end of the config space',
  /GET_CONFIG offset 200 \+ size 100 exceeds the 256-byte config space/,
  false,
  (fe) => {
    fe.send(Request.GET_CONFIG, encodeConfigPayload(200, 0, Buffer.alloc(100)));
  },
);

violationCase(
  'REM_MEM_REG of a region that is not mapped (with an fd, as old frontends send)',
  /REM_MEM_REG names no mapped region/,
  { queues: 1 },
  (fe, t) => {
    const fd = memfd(t, MiB);
    fe.send(Request.REM_MEM_REG, encodeMemRegPayload({ gpa: 0x4000_0000, size: MiB, uva: 0x7e00_0000_0000, mmapOffset: 0 }), [fd]);
  },
);

violationCase('unknown request code', /unknown or unsupported request 30583/, false, (fe) => {
  fe.send(0x7777, Buffer.alloc(8));
});

violationCase(
  'SET_VRING_ADDR outside guest memory: accepted, then SET_VRING_KICK fails',
  /SET_VRING_KICK: queue 0: ring of size 128 does not lie in guest memory/,
  false,
  async (fe, t) => {
    // The QEMU sequence by hand, so the ring address can be wrong.
    const offered = await fe.getU64(Request.GET_FEATURES);
    await fe.getU64(Request.GET_PROTOCOL_FEATURES);
    fe.protocolFeatures = featureBit(ProtocolFeature.REPLY_ACK);
    fe.send(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(fe.protocolFeatures));
    await fe.command(Request.SET_OWNER, undefined, [], true);
    const features = offered & (featureBit(VirtioFeature.VERSION_1) | featureBit(VHOST_USER_F_PROTOCOL_FEATURES));
    await fe.command(Request.SET_FEATURES, encodeU64Payload(features), [], true);
    const mem = GuestMemory.create({ regions: [MiB] });
    t.teardown(() => mem.close());
    await fe.command(
      Request.SET_MEM_TABLE,
      encodeMemTablePayload(mem.regions),
      mem.regions.map((r) => r.fd),
      true,
    );
    await fe.command(Request.SET_VRING_NUM, encodeVringStatePayload(0, QSIZE), [], true);
    await fe.command(Request.SET_VRING_BASE, encodeVringStatePayload(0, 0), [], true);
    const outside = mem.regions[0]!.uva + 64 * MiB;
    await t.resolves(
      fe.command(
        Request.SET_VRING_ADDR,
        encodeVringAddrPayload({ index: 0, desc: outside, used: outside + 8192, avail: outside + 4096 }),
        [],
        true,
      ),
      'SET_VRING_ADDR itself is acked: the ring is checked when it starts',
    );
    const kick = native.eventfdCreate();
    t.teardown(() => native.closeFd(kick));
    fe.send(Request.SET_VRING_KICK, encodeVringFilePayload(0, false), [kick]);
  },
);

// ---------------------------------------------------------------- rings

// The case's warm-up FLUSH took avail idx to 1; 1 + 129 is one more than a full ring.
violationCase(
  'avail index moved by more than the queue size',
  /queue 0: Guest moved avail index from 1 to 130 \(queue size 128\)/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const { region, offset } = fe.mem!.locate(r.availGpa + 2);
    const idx = new Uint16Array(region.buffer);
    if (Atomics.load(idx, offset / 2) !== 1) throw new Error('expected avail idx 1 after the warm-up FLUSH');
    Atomics.store(idx, offset / 2, 1 + QSIZE + 1);
    fe.kick(0);
  },
);

violationCase(
  'avail index wrapping backwards (moved by 65535)',
  /queue 0: Guest moved avail index from 1 to 0 \(queue size 128\)/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const { region, offset } = fe.mem!.locate(r.availGpa + 2);
    Atomics.store(new Uint16Array(region.buffer), offset / 2, 0);
    fe.kick(0);
  },
);

violationCase(
  'head index >= queue size',
  /queue 0: Guest says index 200 is available \(queue size 128\)/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    publish(fe, 200);
  },
);

violationCase(
  'a ring rule broken on queue 1 of 2',
  /queue 1: Guest says index 128 is available \(queue size 128\)/,
  { queues: 2, queueSize: QSIZE },
  (fe) => {
    const r = fe.queue(1).ring;
    r.pushAvail(QSIZE, rawToken());
    r.publish();
    fe.kick(1);
  },
  { queues: 2 },
);

violationCase('a looped descriptor chain', /queue 0: Looped descriptor chain at head \d+/, { queues: 1, queueSize: QSIZE }, (fe) => {
  const r = ring(fe);
  const a = r.takeDesc();
  const b = r.takeDesc();
  const c = r.takeDesc();
  r.writeDesc(a, { addr: header(fe, BlkType.IN), len: 16, flags: DescFlags.NEXT, next: b });
  r.writeDesc(b, { addr: buffer(fe, 512), len: 512, flags: DescFlags.NEXT | DescFlags.WRITE, next: c });
  r.writeDesc(c, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.NEXT | DescFlags.WRITE, next: b });
  publish(fe, a);
});

violationCase(
  'a next index >= queue size',
  /queue 0: Guest says next index 300 \(table size 128\)/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.FLUSH), len: 16, flags: DescFlags.NEXT, next: 300 });
    publish(fe, a);
  },
);

violationCase('a nested indirect table', /queue 0: nested indirect descriptor/, { queues: 1, queueSize: QSIZE, indirect: true }, (fe) => {
  const r = ring(fe);
  const mem = fe.mem!;
  const inner = mem.alloc(2 * DESC_SIZE, 16);
  r.writeDescAt(inner, { addr: buffer(fe, 512), len: 512, flags: DescFlags.NEXT | DescFlags.WRITE, next: 1 });
  r.writeDescAt(inner + DESC_SIZE, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
  const outer = mem.alloc(2 * DESC_SIZE, 16);
  r.writeDescAt(outer, { addr: header(fe, BlkType.IN), len: 16, flags: DescFlags.NEXT, next: 1 });
  r.writeDescAt(outer + DESC_SIZE, { addr: inner, len: 2 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
  const head = r.takeDesc();
  r.writeDesc(head, { addr: outer, len: 2 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
  publish(fe, head);
});

violationCase(
  'an indirect table whose length is not a multiple of 16',
  /queue 0: indirect table length 24 is not a multiple of 16/,
  { queues: 1, queueSize: QSIZE, indirect: true },
  (fe) => {
    const r = ring(fe);
    const table = fe.mem!.alloc(2 * DESC_SIZE, 16);
    r.writeDescAt(table, { addr: header(fe, BlkType.FLUSH), len: 16, flags: DescFlags.NEXT, next: 1 });
    r.writeDescAt(table + DESC_SIZE, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
    const head = r.takeDesc();
    r.writeDesc(head, { addr: table, len: 24, flags: DescFlags.INDIRECT, next: 0 });
    publish(fe, head);
  },
);

violationCase(
  'an indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC',
  /queue 0: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC/,
  { queues: 1, queueSize: QSIZE, indirect: false },
  (fe) => {
    const r = ring(fe);
    const table = fe.mem!.alloc(2 * DESC_SIZE, 16);
    r.writeDescAt(table, { addr: header(fe, BlkType.FLUSH), len: 16, flags: DescFlags.NEXT, next: 1 });
    r.writeDescAt(table + DESC_SIZE, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
    const head = r.takeDesc();
    r.writeDesc(head, { addr: table, len: 2 * DESC_SIZE, flags: DescFlags.INDIRECT, next: 0 });
    publish(fe, head);
  },
);

violationCase(
  'a descriptor far outside guest memory',
  /queue 0: descriptor addr 0x1000000000 len 4096 is outside guest memory/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    const b = r.takeDesc();
    const c = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.IN), len: 16, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: 0x10_0000_0000, len: 4096, flags: DescFlags.NEXT | DescFlags.WRITE, next: c });
    r.writeDesc(c, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
    publish(fe, a);
  },
);

// Guest memory is two 4 MiB regions from gpa 0: it ends at 0x800000. The
// log names the descriptor as the guest wrote it (addr 0x7ff800), not the
// part of it that fell outside.
violationCase(
  'a descriptor whose end runs past the end of guest memory',
  /queue 0: descriptor addr 0x7ff800 len 4096 is outside guest memory/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const end = fe.mem!.regions.reduce((m, x) => Math.max(m, x.gpa + x.size), 0);
    if (end !== 0x800000) throw new Error(`guest memory ends at 0x${end.toString(16)}, expected 0x800000`);
    const a = r.takeDesc();
    const b = r.takeDesc();
    const c = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.OUT), len: 16, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: end - 2048, len: 4096, flags: DescFlags.NEXT, next: c });
    r.writeDesc(c, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
    publish(fe, a);
  },
);

violationCase(
  'a descriptor whose addr + len wraps 2^64',
  /queue 0: descriptor addr 0xfffffffffffff000 len 8192 wraps past 2\^64/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    const b = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.IN), len: 16, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: 0xfffffffffffff000n, len: 8192, flags: DescFlags.WRITE, next: 0 });
    publish(fe, a);
  },
);

violationCase(
  'a readable descriptor after a writable one',
  /queue 0: readable descriptor follows a writable one/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    const b = r.takeDesc();
    const c = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.IN), len: 16, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: buffer(fe, 512), len: 512, flags: DescFlags.NEXT | DescFlags.WRITE, next: c });
    r.writeDesc(c, { addr: buffer(fe, 1, 1), len: 1, flags: 0, next: 0 });
    publish(fe, a);
  },
);

violationCase(
  'a chain with no writable status byte',
  /queue 0: chain has no writable status byte/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    const b = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.OUT), len: 16, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: buffer(fe, 512), len: 512, flags: 0, next: 0 });
    publish(fe, a);
  },
);

violationCase(
  'a chain whose readable part is shorter than the header',
  /queue 0: request header is 8 bytes, needs 16/,
  { queues: 1, queueSize: QSIZE },
  (fe) => {
    const r = ring(fe);
    const a = r.takeDesc();
    const b = r.takeDesc();
    r.writeDesc(a, { addr: header(fe, BlkType.FLUSH), len: 8, flags: DescFlags.NEXT, next: b });
    r.writeDesc(b, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
    publish(fe, a);
  },
);

/** The same head published twice while the daemon holds it (a 128 KiB read keeps it in flight). */
function headTwice(fe: TestFrontend): void {
  const r = ring(fe);
  const a = r.takeDesc();
  const b = r.takeDesc();
  const c = r.takeDesc();
  r.writeDesc(a, { addr: header(fe, BlkType.IN, 64), len: 16, flags: DescFlags.NEXT, next: b });
  r.writeDesc(b, { addr: buffer(fe, 128 * 1024), len: 128 * 1024, flags: DescFlags.NEXT | DescFlags.WRITE, next: c });
  r.writeDesc(c, { addr: buffer(fe, 1, 1), len: 1, flags: DescFlags.WRITE, next: 0 });
  publish(fe, a, a);
}

// Without an inflight region the ring's own record catches it; with one, the region's inflight flag.
violationCase(
  'a chain head made available twice while in flight',
  /queue 0: Guest made chain head (\d+) available while it is in flight/,
  { queues: 1, queueSize: QSIZE, inflight: false },
  headTwice,
);
violationCase(
  'a chain head made available twice while in flight (inflight region)',
  /queue 0: Guest made head (\d+) available again while it is in flight/,
  { queues: 1, queueSize: QSIZE },
  headTwice,
);

// ---------------------------------------------------------------- fds

/** Connect, break a rule in one of several ways (all carrying fds), wait until the daemon closed the connection. */
async function violateOnce(t: Test, d: Daemon, kind: number): Promise<void> {
  const mark = d.v.stderr().length;
  const fe = await TestFrontend.connect(d.socket);
  try {
    const conn = await connIdSince(d, mark);
    const fds: number[] = [];
    const own = (fd: number) => (fds.push(fd), fd);
    try {
      switch (kind % 11) {
        case 0: // more fds than regions
          fe.send(Request.SET_MEM_TABLE, encodeMemTablePayload([{ gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 }]), [
            own(native.memfdCreate('vublk-int-a', MiB)),
            own(native.memfdCreate('vublk-int-b', MiB)),
          ]);
          break;
        case 1: // fewer fds than regions
          fe.send(
            Request.SET_MEM_TABLE,
            encodeMemTablePayload([
              { gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 },
              { gpa: MiB, size: MiB, uva: 0x7f0000100000, mmapOffset: 0 },
            ]),
            [own(native.memfdCreate('vublk-int-c', MiB))],
          );
          break;
        case 2: // a region beyond its fd: the second region fails after the first was mapped
          fe.send(
            Request.SET_MEM_TABLE,
            encodeMemTablePayload([
              { gpa: 0, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 },
              { gpa: MiB, size: 2 * MiB, uva: 0x7f0000100000, mmapOffset: 0 },
            ]),
            [own(native.memfdCreate('vublk-int-d', MiB)), own(native.memfdCreate('vublk-int-e', MiB))],
          );
          break;
        case 3: // gpa wraps
          fe.send(
            Request.SET_MEM_TABLE,
            encodeMemTablePayload([{ gpa: 2n ** 64n - 4096n, size: MiB, uva: 0x7f0000000000, mmapOffset: 0 }]),
            [own(native.memfdCreate('vublk-int-f', MiB))],
          );
          break;
        case 4: // unknown request with 3 fds
          fe.send(0x7777, Buffer.alloc(0), [
            own(native.eventfdCreate()),
            own(native.eventfdCreate()),
            own(native.memfdCreate('vublk-int-g', 4096)),
          ]);
          break;
        case 5: // bad version, fds attached to the header
          fe.sendRaw(encodeMessage(Request.SET_VRING_KICK, 0, encodeVringFilePayload(0, false)), [own(native.eventfdCreate())]);
          break;
        case 6: // queue out of range, with an fd
          fe.send(Request.SET_VRING_CALL, encodeVringFilePayload(9, false), [own(native.eventfdCreate())]);
          break;
        case 7: // an fd on a message that takes none
          fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(0, 100), [own(native.eventfdCreate())]);
          break;
        case 8: // REM_MEM_REG of nothing, with the fd old frontends attach
          fe.send(Request.REM_MEM_REG, encodeMemRegPayload({ gpa: 0x4000_0000, size: MiB, uva: 0x7e00_0000_0000, mmapOffset: 0 }), [
            own(native.memfdCreate('vublk-int-h', MiB)),
          ]);
          break;
        case 9: {
          // a set-up connection (memory by ADD_MEM_REG), then ADD_MEM_REG of a region larger than its fd
          await fe.setup({ queues: 1, memTable: 'add-mem-reg', memory: { regions: [4 * MiB, 4 * MiB] } });
          const p = Buffer.alloc(40);
          p.writeBigUInt64LE(0x1000_0000n, 8);
          p.writeBigUInt64LE(2n * BigInt(MiB), 16);
          p.writeBigUInt64LE(0x7e00_0000_0000n, 24);
          fe.send(Request.ADD_MEM_REG, p, [own(native.memfdCreate('vublk-int-i', MiB))]);
          break;
        }
        default: {
          // a fully set-up connection (memory, kick/call/err eventfds, back-end channel), then a ring violation
          await fe.setup({ queues: 1, memory: { regions: [4 * MiB, 4 * MiB] } });
          const drv = new BlkDriver(fe);
          t.equal((await drv.write(0, 0, Buffer.alloc(4096, 1))).status, BlkStatus.OK, `cycle ${kind}: I/O before the violation`);
          publish(fe, 999);
        }
      }
    } finally {
      for (const fd of fds) native.closeFd(fd);
    }
    await fe.waitClosed(5000);
    await waitConnClosed(d, mark, conn);
    const warns = logSince(d, mark).filter((l) => /^vublk: warn: disconnecting frontend: protocol violation/.test(l));
    t.equal(warns.length, 1, `cycle ${kind}: one violation logged: ${warns[0] ?? '(none)'}`);
  } finally {
    fe.close();
  }
}

t.test('fds sent with rejected messages are not leaked: 22 connect/violate/disconnect cycles', async (t) => {
  const d = await startDaemon(t, { imageBytes: 16 * MiB });
  const pid = d.v.child.pid!; // spawned
  // Warm up: one cycle of every kind, so anything created once per daemon exists.
  for (let k = 0; k < 11; k++) await violateOnce(t, d, k);
  const before = fdCount(pid);
  t.same(guestMappings(pid), [], 'no guest memory mapped between connections');
  {
    // The count sees a connection's fds: a set-up frontend costs the daemon some.
    const mark = d.v.stderr().length;
    const fe = await TestFrontend.connect(d.socket);
    await fe.setup({ queues: 1, memory: { regions: [4 * MiB, 4 * MiB] } });
    t.ok(fdCount(pid) > before, `a set-up connection holds fds in the daemon (${fdCount(pid)} > ${before})`);
    t.ok(guestMappings(pid).length > 0, 'and maps guest memory');
    fe.close();
    await waitConnClosed(d, mark, await connIdSince(d, mark));
    t.equal(fdCount(pid), before, 'which it releases when the frontend leaves');
  }
  // strace (when installed) sees every close(2): a rejection path that closes an fd
  // it no longer owns shows as EBADF, or worse, closes an fd someone else just got.
  let trace: Awaited<ReturnType<typeof traceCloses>> | undefined;
  if (stracePath() === undefined) t.comment('strace is not installed: double closes not checked');
  else {
    try {
      trace = await traceCloses(pid, d.dir);
    } catch (err) {
      t.comment(`strace cannot attach here (${(err as Error).message}): double closes not checked`);
    }
  }
  for (let k = 0; k < 22; k++) await violateOnce(t, d, k);
  if (trace !== undefined) {
    const lines = await trace.stop();
    t.ok(
      lines.some((l) => /close\(\d+\)\s+= 0/.test(l)),
      `strace saw the daemon close fds (${lines.length} lines)`,
    );
    const ebadf = lines.filter((l) => /EBADF/.test(l));
    t.same(ebadf, [], 'no fd is closed twice (no close() fails with EBADF)');
  }
  const after = fdCount(pid);
  t.equal(after, before, `the daemon has as many fds open after 22 cycles as before (${before})`);
  t.same(guestMappings(pid), [], 'no guest memory left mapped after 22 cycles');
  const mark = d.v.stderr().length;
  await expectServes(t, d);
  await waitConnClosed(d, mark, await connIdSince(d, mark));
  t.equal(fdCount(pid), before, 'and after serving a normal frontend');
});

t.test('the daemon shared by the cases above still serves, then exits 0 on SIGTERM (and clean under ASan)', async (t) => {
  const d = await sharedDaemon();
  await expectServes(t, d);
  await t.resolves(d.stop(), 'exit 0, no sanitizer report');
  const warns = d.v
    .stderr()
    .split('\n')
    .filter((l) => /^vublk: warn: /.test(l));
  t.ok(
    warns.every((l) => VIOLATION_LINE.test(l)),
    'every warn line it wrote was a protocol violation',
  );
});
