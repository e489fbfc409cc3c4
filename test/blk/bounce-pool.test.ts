import t from 'tap';
import fc from 'fast-check';
import { BouncePool, BOUNCE_GRANULE } from '../../src/blk/bounce-pool';

t.test('allocations never overlap, stay in the arena, and all space comes back', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ alloc: fc.boolean(), len: fc.integer({ min: 1, max: 40000 }), pick: fc.nat() }), {
        maxLength: 200,
      }),
      (steps) => {
        const size = 64 * BOUNCE_GRANULE;
        const pool = new BouncePool(size);
        const live: Array<[number, number]> = [];
        for (const s of steps) {
          if (s.alloc || live.length === 0) {
            const off = pool.alloc(s.len);
            if (off < 0) {
              // Refusal is only allowed when no free extent could hold it.
              const reserved = BouncePool.reserved(s.len);
              if (size - pool.inUse >= reserved && live.length === 0) return false;
              continue;
            }
            if (off % BOUNCE_GRANULE !== 0 || off + s.len > size) return false;
            for (const [o, l] of live) {
              if (off < o + BouncePool.reserved(l) && o < off + BouncePool.reserved(s.len)) return false;
            }
            live.push([off, s.len]);
          } else {
            const [o, l] = live.splice(s.pick % live.length, 1)[0]!;
            pool.release(o, l);
          }
        }
        for (const [o, l] of live) pool.release(o, l);
        // Fully coalesced again: the whole arena is one extent.
        return pool.inUse === 0 && pool.alloc(size) === 0;
      },
    ),
    { numRuns: 300 },
  );
  t.end();
});

t.test('double free is caught', (t) => {
  const pool = new BouncePool(4 * BOUNCE_GRANULE);
  const a = pool.alloc(100);
  pool.release(a, 100);
  t.throws(() => pool.release(a, 100), /double free/);
  t.end();
});

t.test('the size must be a multiple of the granule', (t) => {
  t.throws(() => new BouncePool(1000), /multiple of 4096/);
  t.end();
});
