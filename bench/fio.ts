// fio straight on the image, the baseline of bench/compare.ts: io_uring,
// O_DIRECT, registered buffers and file, no SQ thread, no device polling.
// Its IOPS, latency percentiles and CPU (usr + sys) come from fio's JSON.

import { execFile } from 'node:child_process';
import type { Sample } from './compare-table';

export interface FioJob {
  image: string;
  rw: string;
  bs: number;
  iodepth: number;
  /** One fio job per queue, as the queues of a backend. */
  jobs: number;
  runtime: number;
  /** Bytes of the image to range over. */
  size: number;
}

/** The command line (also printed in the report). */
export function fioArgs(j: FioJob): string[] {
  return [
    '--name=compare',
    `--filename=${j.image}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--fixedbufs',
    '--registerfiles',
    '--sqthread_poll=0',
    '--hipri=0',
    `--rw=${j.rw}`,
    `--bs=${j.bs}`,
    `--iodepth=${j.iodepth}`,
    `--numjobs=${j.jobs}`,
    '--thread',
    `--size=${j.size}`,
    `--runtime=${j.runtime}`,
    '--time_based',
    '--lat_percentiles=1',
    '--output-format=json',
  ];
}

interface FioDir {
  iops: number;
  total_ios: number;
  lat_ns?: { percentile?: Record<string, number> };
}

interface FioJobResult {
  usr_cpu: number;
  sys_cpu: number;
  job_runtime: number;
  error: number;
  read: FioDir;
  write: FioDir;
}

export function runFio(j: FioJob): Promise<Sample> {
  return new Promise((resolve, reject) => {
    execFile('fio', fioArgs(j), { maxBuffer: 64 << 20, timeout: (j.runtime + 60) * 1000 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`fio failed: ${err.message}\n${stderr}`));
        return;
      }
      try {
        resolve(parseFio(stdout));
      } catch (e) {
        reject(new Error(`fio output: ${(e as Error).message}`));
      }
    });
  });
}

/** IOPS, latency and CPU per I/O of a fio JSON report (every job summed; latency of the first job). */
export function parseFio(json: string): Sample {
  // fio may print notes before the JSON object.
  const report = JSON.parse(json.slice(json.indexOf('{'))) as { jobs?: FioJobResult[] };
  const jobs = report.jobs ?? [];
  if (jobs.length === 0) throw new Error('no jobs in the report');
  let iops = 0;
  let ios = 0;
  let cpuSeconds = 0;
  for (const job of jobs) {
    if (job.error) throw new Error(`job error ${job.error}`);
    iops += job.read.iops + job.write.iops;
    ios += job.read.total_ios + job.write.total_ios;
    cpuSeconds += ((job.usr_cpu + job.sys_cpu) / 100) * (job.job_runtime / 1000);
  }
  const first = jobs[0]!;
  const dir = first.read.total_ios >= first.write.total_ios ? first.read : first.write;
  const pct = (p: string): number => (dir.lat_ns?.percentile?.[p] ?? NaN) / 1000;
  return {
    iops,
    p50: pct('50.000000'),
    p99: pct('99.000000'),
    p999: pct('99.900000'),
    cpuUsPerIo: ios > 0 ? (cpuSeconds * 1e6) / ios : NaN,
  };
}
