import t from 'tap';
import { GuestMemory } from '../../src/frontend/guest-memory';
import { DESC_SIZE, DescFlags, SplitRing, vringNeedEvent, type RingSeg } from '../../src/frontend/split-ring';

/** A device that reads the rings straight from guest memory, as a back-end does. */
class FakeDevice {
  lastAvail = 0;
  usedIdx = 0;
  constructor(
    private readonly mem: GuestMemory,
    private readonly ring: SplitRing<unknown>,
  ) {}

  private u16(gpa: number): number {
    return this.mem.read(gpa, 2).readUInt16LE(0);
  }

  private desc(gpa: number): { addr: number; len: number; flags: number; next: number } {
    const b = this.mem.read(gpa, DESC_SIZE);
    return { addr: Number(b.readBigUInt64LE(0)), len: b.readUInt32LE(8), flags: b.readUInt16LE(12), next: b.readUInt16LE(14) };
  }

  /** Pops every available chain: [head, segs, viaIndirect]. */
  pop(): { head: number; segs: RingSeg[]; indirect: boolean }[] {
    const n = this.ring.size;
    const availIdx = this.u16(this.ring.availGpa + 2);
    const out = [];
    while (this.lastAvail !== availIdx) {
      const head = this.u16(this.ring.availGpa + 4 + 2 * (this.lastAvail % n));
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
      let d = this.desc(this.ring.descGpa + head * DESC_SIZE);
      let table = this.ring.descGpa;
      let indirect = false;
      if (d.flags & DescFlags.INDIRECT) {
        indirect = true;
        table = d.addr;
        d = this.desc(table);
      }
      const segs: RingSeg[] = [];
      for (let ttl = 0; ttl < 64; ttl++) {
        segs.push({ gpa: d.addr, len: d.len, write: (d.flags & DescFlags.WRITE) !== 0 });
        if (!(d.flags & DescFlags.NEXT)) break;
        d = this.desc(table + d.next * DESC_SIZE);
      }
      out.push({ head, segs, indirect });
    }
    return out;
  }

  /** Returns head with len; says whether the driver wants a notification. */
  push(head: number, len: number): boolean {
    const n = this.ring.size;
    const at = this.ring.usedGpa + 4 + 8 * (this.usedIdx % n);
    const e = Buffer.alloc(8);
    e.writeUInt32LE(head, 0);
    e.writeUInt32LE(len, 4);
    this.mem.write(at, e);
    const old = this.usedIdx;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    const idx = Buffer.alloc(2);
    idx.writeUInt16LE(this.usedIdx, 0);
    this.mem.write(this.ring.usedGpa + 2, idx);
    if (!this.ring.eventIdx) return true;
    return vringNeedEvent(this.u16(this.ring.availGpa + 4 + 2 * n), this.usedIdx, old);
  }

  setAvailEvent(v: number): void {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v, 0);
    this.mem.write(this.ring.usedGpa + 4 + 8 * this.ring.size, b);
  }
}

function setup(size: number, eventIdx: boolean): { mem: GuestMemory; ring: SplitRing<string>; dev: FakeDevice } {
  const mem = GuestMemory.create({ regions: [1 << 20, 1 << 20] });
  const ring = new SplitRing<string>(mem, { size, eventIdx });
  return { mem, ring, dev: new FakeDevice(mem, ring as SplitRing<unknown>) };
}

t.test('vring_need_event', async (tt) => {
  tt.ok(vringNeedEvent(0, 1, 0));
  tt.notOk(vringNeedEvent(0, 2, 1));
  tt.ok(vringNeedEvent(1, 2, 1));
  tt.ok(vringNeedEvent(5, 10, 0), 'event inside the published range');
  tt.notOk(vringNeedEvent(10, 10, 0), 'event not yet reached');
  tt.ok(vringNeedEvent(0xffff, 0, 0xfffe), 'across the 16-bit wrap');
});

t.test('layout: ring parts aligned and placed in region 0', async (tt) => {
  const { mem, ring } = setup(256, false);
  tt.teardown(() => mem.close());
  tt.equal(ring.descGpa % 16, 0);
  tt.equal(ring.availGpa % 2, 0);
  tt.equal(ring.usedGpa % 4, 0);
  tt.ok(ring.usedGpa + 6 + 8 * 256 <= mem.regions[0]!.gpa + mem.regions[0]!.size);
  tt.throws(() => new SplitRing(mem, { size: 3, eventIdx: false }), /power-of-two/);
  tt.throws(() => new SplitRing(mem, { size: 65536, eventIdx: false }), /power-of-two/);
});

t.test('direct chain: descriptors, publish, used, free', async (tt) => {
  const { mem, ring, dev } = setup(8, false);
  tt.teardown(() => mem.close());
  const segs: RingSeg[] = [
    { gpa: 0x1000, len: 16, write: false },
    { gpa: 0x2000, len: 4096, write: true },
    { gpa: 0x3000, len: 1, write: true },
  ];
  const head = ring.add(segs, 'req1');
  tt.equal(ring.freeDescs, 5);
  tt.same(dev.pop(), [], 'nothing visible before publish');
  tt.equal(ring.pending, 1);
  tt.ok(ring.publish(), 'kick (no EVENT_IDX: always)');
  tt.notOk(ring.publish(), 'nothing new, no kick');
  const popped = dev.pop();
  tt.same(popped, [{ head, segs, indirect: false }]);
  dev.push(head, 4097);
  const got: unknown[] = [];
  tt.equal(
    ring.drainUsed((e) => got.push(e)),
    1,
  );
  tt.same(got, [{ head, len: 4097, token: 'req1' }]);
  tt.equal(ring.freeDescs, 8);
  tt.equal(ring.inFlight, 0);
});

t.test('indirect chain: one ring descriptor, table released on completion', async (tt) => {
  const { mem, ring, dev } = setup(8, false);
  tt.teardown(() => mem.close());
  const before = mem.allocated;
  const segs: RingSeg[] = [
    { gpa: 0x1000, len: 16, write: false },
    { gpa: 0x2000, len: 512, write: false },
    { gpa: 0x3000, len: 1, write: true },
  ];
  const head = ring.add(segs, 'ind', { indirect: true });
  tt.equal(ring.freeDescs, 7);
  tt.equal(mem.allocated, before + 3 * DESC_SIZE);
  ring.publish();
  tt.same(dev.pop(), [{ head, segs, indirect: true }]);
  dev.push(head, 1);
  ring.drainUsed(() => undefined);
  tt.equal(mem.allocated, before);
  tt.equal(ring.freeDescs, 8);
});

t.test('full ring, bad used head', async (tt) => {
  const { mem, ring, dev } = setup(4, false);
  tt.teardown(() => mem.close());
  ring.add(
    [
      { gpa: 0, len: 1, write: false },
      { gpa: 0, len: 1, write: false },
      { gpa: 0, len: 1, write: false },
    ],
    'a',
  );
  tt.notOk(ring.canAdd(2, false));
  tt.ok(ring.canAdd(5, true));
  tt.throws(
    () =>
      ring.add(
        [
          { gpa: 0, len: 1, write: false },
          { gpa: 0, len: 1, write: false },
        ],
        'b',
      ),
    /virtqueue full/,
  );
  ring.publish();
  dev.pop();
  dev.push(3, 0); // never handed out
  tt.throws(() => ring.drainUsed(() => undefined), /head 3, which is not in flight/);
});

t.test('EVENT_IDX: kicks follow avail_event; used_event follows what was drained', async (tt) => {
  const { mem, ring, dev } = setup(8, true);
  tt.teardown(() => mem.close());
  const one = (tok: string): number => ring.add([{ gpa: 0, len: 1, write: true }], tok);
  const h1 = one('1');
  tt.ok(ring.publish(), 'avail_event 0: first publish kicks');
  const h2 = one('2');
  tt.notOk(ring.publish(), 'device did not move avail_event: no kick');
  dev.setAvailEvent(2);
  one('3');
  tt.ok(ring.publish(), 'avail_event 2 crossed: kick');
  dev.pop();
  // The driver has asked (used_event 0) for a notification on the first used entry only.
  tt.ok(dev.push(h1, 1), 'first used entry notifies');
  tt.equal(
    ring.drainUsed(() => undefined),
    1,
  );
  tt.equal(mem.read(ring.availGpa + 4 + 2 * 8, 2).readUInt16LE(0), 1, 'used_event = last seen used idx');
  tt.ok(dev.push(h2, 1), 'the next one notifies again');
});

t.test('a polling driver asks for no notifications, and can ask again', async (tt) => {
  for (const eventIdx of [true, false]) {
    const { mem, ring, dev } = setup(8, eventIdx);
    const flags = (): number => mem.read(ring.availGpa, 2).readUInt16LE(0);
    ring.setInterrupts(false);
    let notified = 0;
    let flagged = 0;
    for (let i = 0; i < 600; i++) {
      // Many cycles, so used_event would be crossed if it were left behind.
      const h = ring.add([{ gpa: 0, len: 1, write: true }], String(i));
      ring.publish();
      dev.pop();
      if (dev.push(h, 1)) notified++;
      if (flags() === 1) flagged++;
      ring.drainUsed(() => undefined);
    }
    // Without EVENT_IDX the device is told by the flag, and push() does not look at it.
    if (eventIdx) tt.equal(notified, 0, 'no used entry asked for a notification (EVENT_IDX)');
    else tt.equal(flagged, 600, 'VRING_AVAIL_F_NO_INTERRUPT set throughout');
    ring.setInterrupts(true);
    if (!eventIdx) tt.equal(flags(), 0, 'notifications asked for again');
    const h = ring.add([{ gpa: 0, len: 1, write: true }], 'again');
    ring.publish();
    dev.pop();
    tt.ok(dev.push(h, 1), `the next used entry notifies (EVENT_IDX ${eventIdx})`);
    mem.close();
  }
});

t.test('16-bit index wrap-around over many cycles', async (tt) => {
  const { mem, ring, dev } = setup(4, true);
  tt.teardown(() => mem.close());
  let completed = 0;
  for (let i = 0; i < 70000; i++) {
    const h = ring.add(
      [
        { gpa: 0, len: 16, write: false },
        { gpa: 16, len: 1, write: true },
      ],
      `r${i}`,
    );
    ring.publish();
    dev.setAvailEvent((i + 1) & 0xffff);
    const [c] = dev.pop();
    if (!c || c.head !== h) {
      tt.fail(`cycle ${i}: device popped ${JSON.stringify(c)}`);
      return;
    }
    dev.push(h, 1);
    completed += ring.drainUsed((e) => {
      if (e.token !== `r${i}`) tt.fail(`cycle ${i}: token ${e.token}`);
    });
  }
  tt.equal(completed, 70000);
  tt.equal(ring.freeDescs, 4);
});

t.test('raw descriptors for malformed-chain tests', async (tt) => {
  const { mem, ring, dev } = setup(8, false);
  tt.teardown(() => mem.close());
  const a = ring.takeDesc();
  const b = ring.takeDesc();
  ring.writeDesc(a, { addr: 0x1000, len: 16, flags: DescFlags.NEXT, next: b });
  ring.writeDesc(b, { addr: 0x2000, len: 1, flags: DescFlags.NEXT, next: a }); // a loop
  ring.pushAvail(a, 'loop', [a, b]);
  ring.publish();
  const [c] = dev.pop();
  tt.equal(c!.segs.length, 64, 'the fake device stops at its ttl');
  tt.throws(() => ring.writeDesc(8, { addr: 0, len: 0, flags: 0, next: 0 }), /out of range/);
});
