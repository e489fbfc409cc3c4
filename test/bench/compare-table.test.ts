// bench/compare.ts's arithmetic: fio's JSON read back, medians, the issue's
// ratios and the Markdown table.

import t from 'tap';
import { parseFio } from '../../bench/fio';
import { markdown, median, rowResult, type Sample } from '../../bench/compare-table';

const dir = (iops: number, ios: number, p50ns = 0) => ({
  iops,
  total_ios: ios,
  lat_ns: { percentile: { '50.000000': p50ns, '99.000000': 2 * p50ns, '99.900000': 3 * p50ns } },
});

t.test('parseFio sums the jobs and takes CPU from usr + sys over the runtime', async (t) => {
  const report = {
    jobs: [
      { usr_cpu: 10, sys_cpu: 40, job_runtime: 2000, error: 0, read: dir(1000, 2000, 50_000), write: dir(0, 0) },
      { usr_cpu: 5, sys_cpu: 45, job_runtime: 2000, error: 0, read: dir(1000, 2000, 70_000), write: dir(0, 0) },
    ],
  };
  // fio prints notes before its JSON on some set-ups.
  const s = parseFio(`note: both iodepth >= 1 and synchronous I/O engine\n${JSON.stringify(report)}`);
  t.equal(s.iops, 2000);
  t.equal(s.p50, 50, 'latency of the first job, in us');
  t.equal(s.p999, 150);
  // (0.5 * 2 s) * 2 jobs = 2 CPU seconds over 4000 I/Os.
  t.equal(s.cpuUsPerIo, 500);
  t.throws(() => parseFio(JSON.stringify({ jobs: [] })), /no jobs/);
  t.throws(() => parseFio(JSON.stringify({ jobs: [{ ...report.jobs[0], error: 5 }] })), /job error 5/);
});

t.test('medians and the ratios of the issue table', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 2, 3]), 2.5);
  t.ok(Number.isNaN(median([])));
  const s = (iops: number, cpu: number, p50 = 80): Sample => ({ iops, p50, p99: 2 * p50, p999: 3 * p50, cpuUsPerIo: cpu });
  const r = rowResult('randread-4k-qd1', 'randread 4k QD1 (p50 latency)', {
    vublk: [s(90, 5, 70), s(100, 6, 72), s(110, 7, 74)],
    qsd: [s(50, 9, 90), s(100, 10, 91)],
    fio: [s(200, 4, 60)],
  });
  t.equal(r.medians.vublk?.iops, 100);
  t.equal(r.medians.qsd?.iops, 75);
  t.equal(r.ratios.vublkQsdIops, 100 / 75);
  t.equal(r.ratios.vublkFioIops, 0.5);
  t.equal(r.ratios.cpuVublkFio, 1.5);
  t.equal(r.ratios.cpuQsdFio, 9.5 / 4);
  const md = markdown([r], ['note']);
  t.match(md, '| randread 4k QD1 (p50 latency) | 1.33 (72 us vs 91 us) | 0.50 | 1.50 | 2.38 |');
  t.match(md, '| randread 4k QD1 (p50 latency) | qsd | 75 | 91 us | 181 us | 272 us | 9.50 us |');
  t.match(md, /\n\nnote\n$/);
  const missing = rowResult('x', 'x', { vublk: [s(1, 1)], qsd: [], fio: [] });
  t.match(markdown([missing]), '| x | - | - | - | - |', 'a backend without samples shows -');
});
