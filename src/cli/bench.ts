// `vublk bench --socket PATH ...`: the in-repo frontend as a load generator
// against any vhost-user-blk socket (vublk, qemu-storage-daemon, SPDK).
// Exit status: 0 done, 1 the run failed (or requests failed), 2 bad usage.

import fs from 'node:fs';
import { UsageError } from '../errors';
import { parseInteger, parseSize } from './options';
import { parseSubcommandArgs } from './subcommand-args';
import { RW_MODES, type RwMode } from '../bench/queue-load';
import { MAX_RING, ringSizeFor, runBench, type BenchOptions } from '../bench/run-bench';
import { formatReport } from '../bench/report';
import { renderSvg } from '../bench/svg';

export interface BenchRequest extends BenchOptions {
  json: boolean;
  svg: string | undefined;
}

const USAGE = `usage: vublk bench --socket PATH [--rw randread|randwrite|read|write|randrw] [--bs 4k]
                  [--iodepth 32] [--queues 1] [--runtime 10] [--segments 1] [--wait poll|irq]
                  [--size BYTES] [--rwmixread 50] [--backend-pid PID] [--json] [--svg FILE]

Connects to a vhost-user-blk backend as QEMU would, keeps --iodepth requests of --bs
bytes in flight on each of --queues queues for --runtime seconds, and reports IOPS,
MiB/s, latency percentiles and CPU per I/O (its own; the backend's with --backend-pid).
--wait poll busy-polls the used rings (default); irq sleeps on the call eventfds.
--segments splits each request's data into that many descriptors. --size limits the
I/O to the first BYTES of the device. Writes carry random data, each 512-byte sector
starting with its LBA: they overwrite the device. --json prints the result as JSON;
--svg FILE draws the latency histogram and IOPS per second.
`;

const VALUE_OPTIONS = [
  '--socket',
  '--rw',
  '--bs',
  '--iodepth',
  '--queues',
  '--runtime',
  '--segments',
  '--wait',
  '--size',
  '--rwmixread',
  '--backend-pid',
  '--svg',
];

export function parseBenchArgs(argv: readonly string[]): BenchRequest | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  const { values, flags } = parseSubcommandArgs('bench', argv, VALUE_OPTIONS, ['--json']);
  const json = flags.has('--json');
  const get = (k: string, dflt: string): string => values.get(`--${k}`) ?? dflt;
  const int = (k: string, dflt: number, min: number, max: number): number =>
    parseInteger(k, get(k, String(dflt)), min, max, `an integer between ${min} and ${max}`);

  const socket = values.get('--socket');
  if (socket === undefined || socket === '') throw new UsageError('bench: --socket PATH is required');
  const rw = get('rw', 'randread');
  if (!(RW_MODES as readonly string[]).includes(rw)) {
    throw new UsageError(`--rw expects one of ${RW_MODES.join(', ')}, got ${JSON.stringify(rw)}`);
  }
  const wait = get('wait', 'poll');
  if (wait !== 'poll' && wait !== 'irq') throw new UsageError(`--wait expects poll or irq, got ${JSON.stringify(wait)}`);
  const bs = parseSize('bs', get('bs', '4k'));
  if (bs < 512 || bs > 64 << 20 || bs % 512 !== 0) throw new UsageError(`--bs expects a multiple of 512 up to 64M, got ${bs}`);
  const iodepth = int('iodepth', 32, 1, MAX_RING);
  const segments = int('segments', 1, 1, MAX_RING);
  if (bs % segments !== 0) throw new UsageError(`--segments ${segments} does not divide --bs ${bs}`);
  if (ringSizeFor(iodepth, segments) > MAX_RING) {
    throw new UsageError(
      `--iodepth ${iodepth} with --segments ${segments} needs ${iodepth * (segments + 2)} descriptors; a ring holds at most ${MAX_RING}`,
    );
  }
  const runtimeRaw = get('runtime', '10');
  const runtime = /^[0-9]+(\.[0-9]+)?$/.test(runtimeRaw) ? Number(runtimeRaw) : NaN;
  if (!(runtime > 0 && runtime <= 86400))
    throw new UsageError(`--runtime expects seconds between 0 and 86400, got ${JSON.stringify(runtimeRaw)}`);
  const req: BenchRequest = {
    socket,
    rw: rw as RwMode,
    bs,
    iodepth,
    queues: int('queues', 1, 1, 64),
    runtime,
    segments,
    wait,
    rwmixread: int('rwmixread', 50, 0, 100),
    json,
    svg: values.get('--svg'),
  };
  if (values.has('--size')) req.size = parseSize('size', values.get('--size')!);
  if (values.has('--backend-pid')) req.backendPid = int('backend-pid', 0, 1, 2 ** 22);
  return req;
}

/** `vublk bench ...`: resolves to the exit status. */
export async function benchMain(argv: readonly string[]): Promise<number> {
  let req: BenchRequest | 'help';
  try {
    req = parseBenchArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`vublk: error: ${err.message}\n`);
    return 2;
  }
  if (req === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  try {
    const run = await runBench(req);
    if (req.svg !== undefined) fs.writeFileSync(req.svg, renderSvg(run.result, run.buckets));
    process.stdout.write(req.json ? JSON.stringify(run.result) + '\n' : formatReport(run.result));
    if (run.result.errors > 0) {
      process.stderr.write(`vublk: error: bench: ${run.result.errors} of ${run.result.ios} requests failed\n`);
      return 1;
    }
    return 0;
  } catch (err) {
    process.stderr.write(`vublk: error: bench: ${(err as Error).message}\n`);
    return 1;
  }
}
