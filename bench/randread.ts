// Random-read benchmark over the in-repo vhost-user front-end.
//
//   node dist/bench/randread.js --socket PATH [--seconds 10] [--qd 32] [--bs 4096]
//        [--queues 1] [--layout 3desc] [--no-event-idx] [--no-indirect]
//
// Keeps `qd` reads of `bs` bytes (at random bs-aligned offsets) outstanding on
// each queue for `seconds`, refilling completed slots in one batch per wake-up
// (one avail idx write and at most one kick per queue), then prints one line
// of JSON: {"iops", "mibps", "ios", "seconds", "latency_us": {p50, p99, max}, ...}.

import { Frontend } from '../src/frontend/frontend';
import { BlkDriver, BlkStatus, LAYOUTS, type Layout, parseBlkConfig, SECTOR_SIZE } from '../src/frontend/blk-driver';

export interface RandReadOptions {
  socket: string;
  seconds: number;
  /** Reads outstanding per queue. */
  qd: number;
  bs: number;
  queues: number;
  layout?: Layout;
  eventIdx?: boolean;
  indirect?: boolean;
  queueSize?: number;
}

export interface RandReadResult {
  iops: number;
  mibps: number;
  ios: number;
  errors: number;
  seconds: number;
  qd: number;
  bs: number;
  queues: number;
  layout: Layout;
  kicks: number;
  calls: number;
  latency_us: { p50: number; p99: number; max: number };
}

export async function runRandRead(o: RandReadOptions): Promise<RandReadResult> {
  const layout = o.layout ?? '3desc';
  const fe = await Frontend.connect(o.socket);
  try {
    const descsPerReq = layout === 'indirect' ? 1 : layout === 'fragmented' ? 16 : 3;
    const queueSize = o.queueSize ?? Math.max(128, 2 ** Math.ceil(Math.log2(o.qd * descsPerReq)));
    // Enough guest RAM for qd buffers per queue plus the rings.
    const ram = Math.max(16 << 20, 2 ** Math.ceil(Math.log2(o.qd * o.queues * (o.bs + 4096) * 2)));
    const setup: Parameters<Frontend['setup']>[0] = { queues: o.queues, queueSize, memory: { regions: [ram / 2, ram / 2] } };
    if (o.eventIdx !== undefined) setup.eventIdx = o.eventIdx;
    if (o.indirect !== undefined) setup.indirect = o.indirect;
    await fe.setup(setup);
    if (!fe.config) throw new Error('back-end did not negotiate CONFIG: capacity unknown');
    const capacity = Number(parseBlkConfig(fe.config).capacity) * SECTOR_SIZE;
    const blocks = Math.floor(capacity / o.bs);
    if (blocks < 1) throw new Error(`disk of ${capacity} bytes is smaller than one ${o.bs}-byte block`);
    const drv = new BlkDriver(fe);

    const latencies: number[] = [];
    let ios = 0;
    let errors = 0;
    let running = true;
    let outstanding = 0;
    const want = new Array<number>(o.queues).fill(o.qd);
    let refillScheduled = false;
    let done!: () => void;
    let fail!: (e: unknown) => void;
    const finished = new Promise<void>((res, rej) => {
      done = res;
      fail = rej;
    });

    const refill = (): void => {
      refillScheduled = false;
      if (!running) return;
      for (let q = 0; q < o.queues; q++) {
        const n = want[q]!;
        if (n === 0) continue;
        want[q] = 0;
        const reqs = [];
        for (let i = 0; i < n; i++) {
          const sector = (Math.floor(Math.random() * blocks) * o.bs) / SECTOR_SIZE;
          reqs.push({ q, type: 0, sector, len: o.bs, layout, align: 4096 });
        }
        const t0 = process.hrtime.bigint();
        outstanding += n;
        for (const p of drv.submitBatch(reqs)) {
          p.then(
            (r) => {
              outstanding--;
              latencies.push(Number(process.hrtime.bigint() - t0) / 1000);
              if (r.status === BlkStatus.OK) ios++;
              else errors++;
              want[q]!++;
              if (running && !refillScheduled) {
                refillScheduled = true;
                setImmediate(refill);
              }
              if (!running && outstanding === 0) done();
            },
            (e: unknown) => {
              running = false;
              fail(e);
            },
          );
        }
      }
    };

    const start = process.hrtime.bigint();
    refill();
    await new Promise((r) => setTimeout(r, o.seconds * 1000));
    running = false;
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    const iosAtStop = ios;
    if (outstanding > 0) await finished;

    latencies.sort((a, b) => a - b);
    const pct = (p: number): number => Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0);
    return {
      iops: Math.round(iosAtStop / elapsed),
      mibps: Math.round(((iosAtStop * o.bs) / elapsed / (1 << 20)) * 10) / 10,
      ios: iosAtStop,
      errors,
      seconds: Math.round(elapsed * 1000) / 1000,
      qd: o.qd,
      bs: o.bs,
      queues: o.queues,
      layout,
      kicks: fe.queues.reduce((a, q) => a + q.kicks, 0),
      calls: fe.queues.reduce((a, q) => a + q.calls, 0),
      latency_us: { p50: pct(50), p99: pct(99), max: Math.round(latencies[latencies.length - 1] ?? 0) },
    };
  } finally {
    fe.close();
  }
}

function parseArgs(argv: string[]): RandReadOptions {
  const o: RandReadOptions = { socket: '', seconds: 10, qd: 32, bs: 4096, queues: 1 };
  const int = (name: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min || n > max) {
      throw new Error(`Expected integer between ${min} and ${max} for --${name} but received ${JSON.stringify(v)}`);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1];
    switch (a) {
      case '--socket':
        if (!v) throw new Error('Expected a path for --socket');
        o.socket = v;
        i++;
        break;
      case '--seconds':
        o.seconds = int('seconds', v, 1, 3600);
        i++;
        break;
      case '--qd':
        o.qd = int('qd', v, 1, 1024);
        i++;
        break;
      case '--bs':
        o.bs = int('bs', v, 512, 1 << 20);
        if (o.bs % SECTOR_SIZE !== 0) throw new Error(`Expected --bs a multiple of 512 but received ${o.bs}`);
        i++;
        break;
      case '--queues':
        o.queues = int('queues', v, 1, 64);
        i++;
        break;
      case '--layout':
        if (!LAYOUTS.includes(v as Layout))
          throw new Error(`Expected --layout one of ${LAYOUTS.join(', ')} but received ${JSON.stringify(v)}`);
        o.layout = v as Layout;
        i++;
        break;
      case '--no-event-idx':
        o.eventIdx = false;
        break;
      case '--no-indirect':
        o.indirect = false;
        break;
      default:
        throw new Error(`Unknown option ${JSON.stringify(a)}`);
    }
  }
  if (!o.socket) throw new Error('--socket PATH is required');
  return o;
}

if (require.main === module) {
  let opts: RandReadOptions;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`randread: ${(err as Error).message}\n`);
    process.exit(2);
  }
  runRandRead(opts).then(
    (r) => process.stdout.write(`${JSON.stringify(r)}\n`),
    (err: unknown) => {
      process.stderr.write(`randread: ${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
