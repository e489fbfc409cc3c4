import t from 'tap';
import { native } from '../../src/native/binding';
import { GuestMemory } from '../../src/frontend/guest-memory';

const MIB = 1 << 20;

t.test('regions back to back, gpa translation, reads and writes across the boundary', async (tt) => {
  const mem = GuestMemory.create({ regions: [MIB, 2 * MIB], base: 0x10_0000 });
  tt.teardown(() => mem.close());
  tt.same(
    mem.regions.map((r) => [r.gpa, r.size, r.mmapOffset]),
    [
      [0x10_0000, MIB, 0],
      [0x20_0000, 2 * MIB, 0],
    ],
  );
  tt.not(mem.regions[0]!.uva, mem.regions[1]!.uva);
  tt.same(mem.boundaries(), [0x20_0000]);
  tt.equal(mem.totalSize, 3 * MIB);
  tt.equal(mem.gpaToUva(0x20_0010), mem.regions[1]!.uva + 0x10);
  tt.throws(() => mem.locate(0x0f_ffff), /not in guest memory/);
  tt.throws(() => mem.locate(0x40_0000), /not in guest memory/);
  tt.throws(() => mem.locateWithin(0x20_0000 - 4, 8), /crosses the end of region 0/);

  const data = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  mem.write(0x20_0000 - 40, data);
  tt.ok(mem.read(0x20_0000 - 40, 100).equals(data), 'round trip across the boundary');
  tt.same([...mem.regions[0]!.bytes.subarray(MIB - 40, MIB)], [...data.subarray(0, 40)], 'first part at the end of region 0');
  tt.same([...mem.regions[1]!.bytes.subarray(0, 60)], [...data.subarray(40)], 'rest at the start of region 1');
});

t.test('what the back-end maps is what JS sees (fd + mmap offset)', async (tt) => {
  for (const fdLayout of ['separate', 'shared-fd'] as const) {
    const mem = GuestMemory.create({ regions: [MIB, MIB], fdLayout, leadIn: 64 * 1024 });
    tt.teardown(() => mem.close());
    if (fdLayout === 'shared-fd') {
      tt.equal(mem.regions[0]!.fd, mem.regions[1]!.fd, 'one memfd');
      tt.same(
        mem.regions.map((r) => r.mmapOffset),
        [64 * 1024, 64 * 1024 + MIB + 64 * 1024],
      );
    } else {
      tt.not(mem.regions[0]!.fd, mem.regions[1]!.fd);
      tt.same(
        mem.regions.map((r) => r.mmapOffset),
        [64 * 1024, 64 * 1024],
      );
    }
    mem.write(mem.regions[1]!.gpa + 5, Buffer.from('hello'));
    // Map the same fd at the advertised offset, as a back-end would.
    const r = mem.regions[1]!;
    const other = new Uint8Array(native.mapShared(r.fd, r.size, r.mmapOffset));
    tt.equal(Buffer.from(other.subarray(5, 10)).toString(), 'hello', `${fdLayout}: a second mapping sees the bytes`);
  }
});

t.test('allocator: alignment, regions, straddling, release and coalescing', async (tt) => {
  const mem = GuestMemory.create({ regions: [64 * 1024, 64 * 1024] });
  tt.teardown(() => mem.close());
  const a = mem.alloc(10, 1);
  const b = mem.alloc(100, 512);
  tt.equal(b % 512, 0);
  tt.ok(b >= a + 10);
  const s = mem.alloc(4096, 512, { straddle: true });
  const c = mem.alloc(16, 16, { region: 1 });
  tt.ok(c >= 64 * 1024, 'placed in region 1');
  tt.ok(s < 64 * 1024 && s + 4096 > 64 * 1024, 'straddles the boundary');
  tt.equal(s % 512, 0);
  const tiny = (() => {
    mem.release(s);
    return mem.alloc(3, 512, { straddle: true });
  })();
  tt.ok(tiny < 64 * 1024 && tiny + 3 > 64 * 1024, 'a 3-byte buffer straddles too (alignment lowered)');
  tt.throws(() => mem.alloc(3, 1, { straddle: true }), /straddling a region boundary/, 'the boundary is taken');
  // Plain allocations never cross the boundary by accident.
  const big = mem.alloc(40 * 1024, 8);
  tt.ok(big + 40 * 1024 <= 64 * 1024 || big >= 64 * 1024);
  for (const g of [a, b, c, tiny, big]) mem.release(g);
  tt.equal(mem.allocated, 0);
  tt.throws(() => mem.release(a), /not allocated/);
  const whole = mem.alloc(64 * 1024, 4096);
  tt.equal(whole, 0, 'free space coalesced back');
  tt.throws(() => mem.alloc(128 * 1024), /exhausted/);
  tt.throws(() => mem.alloc(8, 3), /power-of-two/);
});

t.test('options are validated', async (tt) => {
  tt.throws(() => GuestMemory.create({ regions: [1000] }), /positive multiple of 4096/);
  tt.throws(() => GuestMemory.create({ regions: [] }), /at least one region/);
  const gapped = GuestMemory.create({ regions: [4096, 4096], gap: 4096 });
  tt.teardown(() => gapped.close());
  tt.same(gapped.boundaries(), [], 'regions with a hole have no shared boundary');
  tt.throws(() => gapped.locate(4096), /not in guest memory/);
});
