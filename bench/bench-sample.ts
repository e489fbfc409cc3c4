// One `vublk bench` run against a backend's socket, as a comparison sample:
// IOPS, latency percentiles and the backend's CPU per I/O. A run with any
// failed request is no sample.

import { runBench, type BenchOptions } from '../src/bench/run-bench';
import type { Sample } from './compare-table';

export async function benchSample(o: BenchOptions): Promise<Sample> {
  const { result } = await runBench(o);
  if (result.errors > 0) throw new Error(`${result.errors} of ${result.ios} requests failed`);
  const l = result.latencyUs;
  return { iops: result.iops, p50: l.p50, p99: l.p99, p999: l.p999, cpuUsPerIo: result.backendCpu?.usPerIo ?? NaN };
}
