import t from 'tap';
import fc from 'fast-check';
import { LockMode, RangeLock } from '../../src/align/range-lock';

t.test('RMW waits for overlapping writes and RMWs; disjoint ranges and reads do not wait', (t) => {
  const granted: number[] = [];
  const lock = new RangeLock((id) => granted.push(id));
  t.ok(lock.acquire(1, 0, 4096, LockMode.WRITE));
  t.ok(lock.acquire(2, 0, 4096, LockMode.WRITE), 'aligned writes share');
  t.notOk(lock.acquire(3, 0, 8192, LockMode.RMW), 'RMW waits for writes on its blocks');
  t.ok(lock.acquire(4, 8192, 12288, LockMode.RMW), 'disjoint RMW runs');
  t.ok(lock.acquire(5, 0, 8192, LockMode.READ), 'reads never wait');
  t.notOk(lock.acquire(6, 4096, 8192, LockMode.WRITE), 'a later write waits behind the earlier RMW');
  lock.release(1);
  t.same(granted, []);
  lock.release(2);
  t.same(granted, [3], 'RMW granted when the writes are done');
  lock.release(3);
  t.same(granted, [3, 6]);
  t.end();
});

t.test('property: no two conflicting requests ever hold overlapping ranges, and all are granted', (t) => {
  const req = fc.record({
    start: fc.integer({ min: 0, max: 15 }),
    blocks: fc.integer({ min: 1, max: 4 }),
    mode: fc.constantFrom(LockMode.READ, LockMode.WRITE, LockMode.RMW),
  });
  fc.assert(
    fc.property(fc.array(req, { maxLength: 40 }), fc.array(fc.nat(), { maxLength: 80 }), (reqs, picks) => {
      const holding = new Map<number, { s: number; e: number; m: LockMode }>();
      let pending = 0;
      const lock = new RangeLock((id) => grant(id));
      const grant = (id: number) => {
        const r = reqs[id]!;
        const me = { s: r.start, e: r.start + r.blocks, m: r.mode };
        for (const o of holding.values()) {
          const overlap = o.s < me.e && me.s < o.e;
          const clash = me.m === LockMode.RMW ? o.m !== LockMode.READ : me.m === LockMode.WRITE ? o.m === LockMode.RMW : false;
          if (overlap && clash) throw new Error('conflicting holders');
        }
        holding.set(id, me);
      };
      reqs.forEach((r, id) => {
        pending++;
        if (lock.acquire(id, r.start, r.start + r.blocks, r.mode)) grant(id);
      });
      let k = 0;
      while (holding.size > 0) {
        const ids = [...holding.keys()];
        const id = ids[(picks[k++ % Math.max(1, picks.length)] ?? 0) % ids.length]!;
        holding.delete(id);
        pending--;
        lock.release(id);
      }
      return pending === 0 && lock.size === 0;
    }),
    { numRuns: 300 },
  );
  t.end();
});
