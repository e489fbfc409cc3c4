// The daemon's per-queue counters lines, logged when a frontend connection
// closes (reason=closed) and on SIGUSR1 (reason=SIGUSR1):
//
//   vublk: info: counters conn=N queue=Q reason=R bytesBounced=N rmwCycles=N ...
//
// parseCounters()/countersOf() read them strictly (integration tests: a
// missing counter throws); loggedCounters() keeps whatever a line has, for
// tests that assert on each field themselves (QEMU e2e tests).

export const COUNTER_KEYS = [
  'bytesBounced',
  'rmwCycles',
  'overlapWaits',
  'iovCollapses',
  'ioSplits',
  'fixedOps',
  'plainOps',
  'durableWrites',
  'requests',
  'errors',
  'resubmitted',
] as const;

export type CounterKey = (typeof COUNTER_KEYS)[number];

export interface Counters extends Record<CounterKey, number> {
  conn: number;
  queue: number;
  reason: string;
}

export const COUNTERS_LINE = /^vublk: info: counters conn=(\d+) queue=(\d+) reason=(\S+)(.*)$/;

/** Parses one counters line (throws if a counter is missing). */
export function parseCounters(line: string): Counters {
  const m = COUNTERS_LINE.exec(line);
  if (!m) throw new Error(`not a counters line: ${line}`);
  const c: Record<string, number | string> = { conn: Number(m[1]), queue: Number(m[2]), reason: m[3]! };
  for (const k of COUNTER_KEYS) {
    const v = new RegExp(` ${k}=(\\d+)(?: |$)`).exec(m[4]!);
    if (!v) throw new Error(`counters line has no ${k}: ${line}`);
    c[k] = Number(v[1]);
  }
  return c as unknown as Counters;
}

/** Counters lines of connection conn with this reason in the log (one per queue, in log order). */
export function countersOf(stderr: string, conn: number, reason: string): Counters[] {
  return stderr
    .split('\n')
    .filter((l) => COUNTERS_LINE.test(l))
    .map(parseCounters)
    .filter((c) => c.conn === conn && c.reason === reason);
}

/** Sum over queues. */
export function total(cs: readonly Counters[]): Record<CounterKey, number> {
  const t = Object.fromEntries(COUNTER_KEYS.map((k) => [k, 0])) as Record<CounterKey, number>;
  for (const c of cs) for (const k of COUNTER_KEYS) t[k] += c[k];
  return t;
}

/** key=value fields of a `vublk: <level>: <message> k=v ...` line or a guest marker line (bare values only). */
export function logFields(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of line.matchAll(/\b([A-Za-z][A-Za-z0-9_]*)=([^\s"]+)/g)) out[m[1] as string] = m[2] as string;
  return out;
}

/** A counters line as logged, nothing required of it. */
export interface LoggedCounters {
  line: string;
  /** Every key=value field of the line, as text. */
  fields: Record<string, string>;
  conn: string;
  queue: number;
  /** The counters that are there as whole numbers. */
  values: Partial<Record<CounterKey, number>>;
}

/** The daemon's `counters ... reason=<reason>` lines in a log (e.g. reason closed: logged when a frontend connection closes). */
export function loggedCounters(output: string, reason: string): LoggedCounters[] {
  const hasReason = new RegExp(`\\breason=${reason}\\b`);
  return output
    .split('\n')
    .filter((l) => /\bvublk: info: counters\b/.test(l) && hasReason.test(l))
    .map((line) => {
      const f = logFields(line);
      const values: LoggedCounters['values'] = {};
      for (const k of COUNTER_KEYS) if (f[k] !== undefined && /^\d+$/.test(f[k])) values[k] = Number(f[k]);
      return { line, fields: f, conn: f.conn ?? '?', queue: Number(f.queue ?? NaN), values };
    });
}
