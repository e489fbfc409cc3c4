// LatencyHistogram against exact percentiles of known samples (fast-check),
// merging, and the bucket list the SVG draws.
import t from 'tap';
import fc from 'fast-check';
import { LatencyHistogram } from '../../src/bench/latency-histogram';

function exactPercentile(sorted: number[], p: number): number {
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

t.test('percentiles are within 1/16 of the exact value', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 2e9 }), { minLength: 1, maxLength: 500 }),
      fc.constantFrom(0, 50, 90, 99, 99.9, 100),
      (vals, p) => {
        const h = new LatencyHistogram();
        for (const v of vals) h.record(v);
        const exact = exactPercentile(
          [...vals].sort((a, b) => a - b),
          p,
        );
        const got = h.percentile(p);
        return Math.abs(got - exact) <= exact / 16 + 1;
      },
    ),
  );
  t.end();
});

t.test('small values are exact; min, max, mean and count', (t) => {
  const h = new LatencyHistogram();
  for (const v of [3, 3, 5, 9]) h.record(v);
  t.equal(h.count, 4);
  t.equal(h.min, 3);
  t.equal(h.max, 9);
  t.equal(h.mean(), 5);
  t.equal(h.percentile(50), 3.5, 'the midpoint of the one-ns bucket of 3');
  t.equal(h.percentile(100), 9, 'clamped to max');
  t.same(
    h.buckets().map((b) => [b.lo, b.count]),
    [
      [3, 2],
      [5, 1],
      [9, 1],
    ],
  );
  t.end();
});

t.test('merge adds counts and extremes', (t) => {
  const a = new LatencyHistogram();
  const b = new LatencyHistogram();
  for (let i = 0; i < 100; i++) a.record(1000);
  for (let i = 0; i < 100; i++) b.record(100_000);
  a.merge(b);
  t.equal(a.count, 200);
  t.equal(a.min, 1000);
  t.equal(a.max, 100_000);
  t.ok(Math.abs(a.percentile(25) - 1000) <= 1000 / 16);
  t.ok(Math.abs(a.percentile(75) - 100_000) <= 100_000 / 16);
  t.end();
});

t.test('an empty histogram reports zeros', (t) => {
  const h = new LatencyHistogram();
  t.equal(h.percentile(99), 0);
  t.equal(h.mean(), 0);
  t.same(h.buckets(), []);
  t.end();
});
