// Latency histogram for `vublk bench`: log-linear buckets (16 per power of two,
// so any percentile is within 1/16 of the true value) over 1 ns .. ~1100 s, fixed memory.

/** Sub-buckets per power of two; a recorded value is known to within 1/SUB of itself. */
const SUB_BITS = 4;
const SUB = 1 << SUB_BITS;
/** Powers of two covered: values up to 2^40 ns (about 18 minutes). */
const MAGNITUDES = 41;

export class LatencyHistogram {
  private readonly counts = new Float64Array(MAGNITUDES * SUB);
  count = 0;
  min = Infinity;
  max = 0;
  private sum = 0;

  /** Records one latency in nanoseconds (values below 1 ns count as 1 ns). */
  record(ns: number): void {
    const v = Math.max(1, Math.round(ns));
    this.counts[bucketOf(v)]!++;
    this.count++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** Adds another histogram's counts to this one (per-queue histograms into a total). */
  merge(o: LatencyHistogram): void {
    for (let i = 0; i < this.counts.length; i++) this.counts[i]! += o.counts[i]!;
    this.count += o.count;
    this.sum += o.sum;
    this.min = Math.min(this.min, o.min);
    this.max = Math.max(this.max, o.max);
  }

  mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  /** The value at percentile p (0..100), as the midpoint of its bucket, clamped to [min, max]. */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) {
        const [lo, hi] = bucketRange(i);
        return Math.min(this.max, Math.max(this.min, (lo + hi) / 2));
      }
    }
    return this.max;
  }

  /** Non-empty buckets in order: [low ns, high ns) and count. */
  buckets(): { lo: number; hi: number; count: number }[] {
    const out: { lo: number; hi: number; count: number }[] = [];
    for (let i = 0; i < this.counts.length; i++) {
      const c = this.counts[i]!;
      if (c === 0) continue;
      const [lo, hi] = bucketRange(i);
      out.push({ lo, hi, count: c });
    }
    return out;
  }
}

/** Bucket index of v >= 1: values below SUB get one bucket each, then SUB per power of two. */
function bucketOf(v: number): number {
  if (v < SUB) return v;
  const mag = Math.min(MAGNITUDES - 1, Math.floor(Math.log2(v)));
  const sub = Math.min(SUB - 1, Math.floor((v / 2 ** mag - 1) * SUB));
  return (mag - SUB_BITS + 1) * SUB + sub;
}

function bucketRange(i: number): [number, number] {
  if (i < SUB) return [i, i + 1];
  const mag = Math.floor(i / SUB) + SUB_BITS - 1;
  const sub = i % SUB;
  const base = 2 ** mag;
  return [base + (sub * base) / SUB, base + ((sub + 1) * base) / SUB];
}
