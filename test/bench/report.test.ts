// The bench report: /proc stat parsing, CPU per I/O, the text lines and the SVG picture.
import t from 'tap';
import { cpuSecondsFromStat, processCpuSeconds } from '../../src/bench/process-cpu';
import { LatencyHistogram } from '../../src/bench/latency-histogram';
import { cpuUse, formatReport, summarize, type BenchResult } from '../../src/bench/report';
import { renderSvg } from '../../src/bench/svg';

t.test('utime + stime from a stat line whose command holds spaces and parentheses', (t) => {
  const line = '4242 (node (worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 11 0 1000 0 0';
  t.equal(cpuSecondsFromStat(line), 3.25);
  t.throws(() => cpuSecondsFromStat('garbage'), /no "\)"/);
  t.end();
});

t.test('our own CPU time is read and grows', (t) => {
  const before = processCpuSeconds(process.pid);
  const until = Date.now() + 120;
  let x = 0;
  while (Date.now() < until) x += Math.sqrt(x + 1);
  t.ok(x > 0);
  t.ok(processCpuSeconds(process.pid) > before, 'CPU seconds increased after a busy loop');
  t.end();
});

function result(): BenchResult {
  const h = new LatencyHistogram();
  for (let i = 1; i <= 1000; i++) h.record(i * 1000);
  return {
    socket: '/run/vublk/x.sock',
    rw: 'randread',
    bs: 4096,
    iodepth: 32,
    queues: 1,
    segments: 1,
    wait: 'poll',
    seconds: 2,
    ios: 1000,
    errors: 0,
    iops: 500,
    mibps: 1.95,
    latencyUs: summarize(h),
    timeline: [480, 520],
    kicks: 40,
    calls: 3,
    benchCpu: cpuUse(0.5, 1000),
    backendCpu: { pid: 7, ...cpuUse(0.25, 1000) },
  };
}

t.test('summary in microseconds, CPU per I/O, text report', (t) => {
  const r = result();
  t.equal(r.latencyUs.min, 1);
  t.equal(r.latencyUs.max, 1000);
  t.ok(Math.abs(r.latencyUs.p50 - 500) <= 500 / 16, `p50 ${r.latencyUs.p50}`);
  t.equal(r.benchCpu.usPerIo, 500);
  t.equal(r.backendCpu?.usPerIo, 250);
  t.same(cpuUse(1, 0), { seconds: 1, usPerIo: 0 }, 'no I/O: no per-I/O figure');
  const text = formatReport(r);
  t.match(text, /IOPS 500 {2}MiB\/s 1\.95/);
  t.match(text, /backend CPU \(pid 7\): 0\.25 s, 250 us per I\/O/);
  t.match(text, /kicks 40 {2}calls 3/);
  t.end();
});

t.test('the SVG holds one bar per bucket and one point per second', (t) => {
  const h = new LatencyHistogram();
  for (let i = 1; i <= 1000; i++) h.record(i * 1000);
  const svg = renderSvg(result(), h.buckets());
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.equal((svg.match(/<rect x=/g) ?? []).length, h.buckets().length);
  const pts = /<polyline[^>]* points="([^"]*)"/.exec(svg)?.[1]?.split(' ') ?? [];
  t.equal(pts.length, 2);
  t.end();
});
