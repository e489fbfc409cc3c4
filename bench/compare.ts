// vublk, qemu-storage-daemon and fio side by side, on the same image, in one
// run: the rows of issue 11's table. Each round runs every row on every
// backend, the order of the backends rotating from round to round, so drift
// on a shared machine hits all three; the report is each backend's median and
// the ratios of medians. vublk and qsd are driven by `vublk bench` (polling
// or interrupts, as the row says) with --backend-pid for their CPU; fio runs
// on the image itself (bench/fio.ts). A benchmark, not a test.
//
//   node dist/bench/compare.js [--rounds 3] [--runtime 10] [--rows ID,...]
//        [--image /var/tmp/vublk-bench.img] [--tmpfs-image /dev/shm/vublk-bench.img]
//        [--image-mib 1024] [--vublk-args '--workers 2 ...'] [--json] [--markdown]

import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WaitMode } from '../src/bench/run-bench';
import { benchSample } from './bench-sample';
import type { RwMode } from '../src/bench/queue-load';
import { startVublk } from '../test/helpers/vublk-process';
import { QSD, qsdArgs, startQsd } from '../test/helpers/qsd';
import { stopDaemon } from '../test/helpers/daemon';
import { fioArgs, runFio, type FioJob } from './fio';
import { BACKENDS, markdown, rowResult, type Backend, type RowResult, type Sample } from './compare-table';

interface Row {
  id: string;
  label: string;
  rw: RwMode;
  bs: number;
  iodepth: number;
  queues: number;
  wait: WaitMode;
  tmpfs: boolean;
}

const ROWS: readonly Row[] = [
  { id: 'randread-4k-qd32', label: 'randread 4k QD32', rw: 'randread', bs: 4096, iodepth: 32, queues: 1, wait: 'poll', tmpfs: false },
  {
    id: 'randread-4k-qd1',
    label: 'randread 4k QD1 (p50 latency)',
    rw: 'randread',
    bs: 4096,
    iodepth: 1,
    queues: 1,
    wait: 'poll',
    tmpfs: false,
  },
  { id: 'randwrite-4k-qd32', label: 'randwrite 4k QD32', rw: 'randwrite', bs: 4096, iodepth: 32, queues: 1, wait: 'poll', tmpfs: false },
  { id: 'read-128k-qd8', label: 'read 128k QD8', rw: 'read', bs: 128 << 10, iodepth: 8, queues: 1, wait: 'poll', tmpfs: false },
  {
    id: 'randread-4k-qd32-irq',
    label: 'randread 4k QD32, interrupts',
    rw: 'randread',
    bs: 4096,
    iodepth: 32,
    queues: 1,
    wait: 'irq',
    tmpfs: false,
  },
  {
    id: 'tmpfs-randread-4k-qd32',
    label: 'same, image on tmpfs (CPU-bound)',
    rw: 'randread',
    bs: 4096,
    iodepth: 32,
    queues: 1,
    wait: 'poll',
    tmpfs: true,
  },
  {
    id: 'tmpfs-randread-4k-qd32-irq',
    label: 'tmpfs, interrupts',
    rw: 'randread',
    bs: 4096,
    iodepth: 32,
    queues: 1,
    wait: 'irq',
    tmpfs: true,
  },
  {
    id: 'tmpfs-randread-4k-qd32-2q',
    label: 'tmpfs, 2 queues (QD32 each)',
    rw: 'randread',
    bs: 4096,
    iodepth: 32,
    queues: 2,
    wait: 'poll',
    tmpfs: true,
  },
];

interface CompareOptions {
  rounds: number;
  runtime: number;
  rows: Row[];
  image: string;
  tmpfsImage: string;
  imageBytes: number;
  vublkArgs: string[];
  json: boolean;
  markdown: boolean;
}

function parseArgs(argv: readonly string[]): CompareOptions {
  const o: CompareOptions = {
    rounds: 3,
    runtime: 10,
    rows: [...ROWS],
    image: '/var/tmp/vublk-bench.img',
    tmpfsImage: '/dev/shm/vublk-bench.img',
    imageBytes: 1 << 30,
    vublkArgs: [],
    json: false,
    markdown: false,
  };
  const num = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < min)
      throw new Error(`--${name} expects a number >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1];
    const value = (): string => {
      if (v === undefined) throw new Error(`${a} expects a value`);
      i++;
      return v;
    };
    if (a === '--rounds') o.rounds = Math.floor(num('rounds', value(), 1));
    else if (a === '--runtime') o.runtime = num('runtime', value(), 0.1);
    else if (a === '--image') o.image = path.resolve(value());
    else if (a === '--tmpfs-image') o.tmpfsImage = path.resolve(value());
    else if (a === '--image-mib') o.imageBytes = Math.floor(num('image-mib', value(), 16)) << 20;
    else if (a === '--vublk-args') o.vublkArgs = value().split(/\s+/).filter(Boolean);
    else if (a === '--json') o.json = true;
    else if (a === '--markdown') o.markdown = true;
    else if (a === '--rows') {
      const ids = value().split(',');
      const unknown = ids.filter((id) => !ROWS.some((r) => r.id === id));
      if (unknown.length > 0) throw new Error(`--rows: unknown ${unknown.join(', ')}; rows are ${ROWS.map((r) => r.id).join(', ')}`);
      o.rows = ROWS.filter((r) => ids.includes(r.id));
    } else throw new Error(`unknown argument ${JSON.stringify(a)}`);
  }
  return o;
}

/** An image of `bytes` with every block written (a hole reads as zeroes without touching the disk). Returns whether it made one. */
function ensureImage(file: string, bytes: number, direct: boolean): boolean {
  try {
    const st = fs.statSync(file);
    if (st.size === bytes && st.blocks * 512 >= bytes) return false;
  } catch {
    // made below
  }
  process.stderr.write(`writing ${bytes >> 20} MiB of random data to ${file}\n`);
  const args = ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${bytes >> 20}`, 'status=none', 'conv=fsync'];
  if (direct) args.push('oflag=direct');
  execFileSync('dd', args);
  return true;
}

interface Started {
  pid: number;
  socket: string;
  command: string;
  stop(): Promise<unknown>;
}

async function startBackend(b: 'vublk' | 'qsd', row: Row, image: string, dir: string, vublkArgs: string[]): Promise<Started> {
  const socket = path.join(dir, `${b}.sock`);
  if (b === 'vublk') {
    const args = ['--disk', image, '--socket', socket, '--queues', String(row.queues), '--state-file', 'none', ...vublkArgs];
    const v = await startVublk(args);
    return { pid: v.child.pid!, socket, command: `vublk ${args.join(' ')}`, stop: () => v.stop() };
  }
  const opts = { image, socket, queues: row.queues, aio: 'io_uring' as const, direct: true };
  const child: ChildProcess = await startQsd(opts);
  return { pid: child.pid!, socket, command: `${QSD} ${qsdArgs(opts).join(' ')}`, stop: () => stopDaemon(child, { timeoutMs: 5000 }) };
}

function benchCommand(row: Row, socket: string, runtime: number, size: number): string {
  return `vublk bench --socket ${socket} --rw ${row.rw} --bs ${row.bs} --iodepth ${row.iodepth} --queues ${row.queues} --runtime ${runtime} --wait ${row.wait} --size ${size} --backend-pid PID`;
}

async function runOne(b: Backend, row: Row, o: CompareOptions, dir: string, commands: Map<string, string>): Promise<Sample> {
  const image = row.tmpfs ? o.tmpfsImage : o.image;
  if (b === 'fio') {
    const job: FioJob = { image, rw: row.rw, bs: row.bs, iodepth: row.iodepth, jobs: row.queues, runtime: o.runtime, size: o.imageBytes };
    commands.set(`${row.id} fio`, `fio ${fioArgs(job).join(' ')}`);
    return runFio(job);
  }
  const s = await startBackend(b, row, image, dir, o.vublkArgs);
  commands.set(`${row.id} ${b}`, s.command);
  commands.set(`${row.id} ${b} bench`, benchCommand(row, s.socket, o.runtime, o.imageBytes));
  try {
    return await benchSample({
      socket: s.socket,
      rw: row.rw,
      bs: row.bs,
      iodepth: row.iodepth,
      queues: row.queues,
      runtime: o.runtime,
      segments: 1,
      wait: row.wait,
      rwmixread: 50,
      size: o.imageBytes,
      backendPid: s.pid,
    });
  } finally {
    await s.stop();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const madeImage = o.rows.some((r) => !r.tmpfs) && ensureImage(o.image, o.imageBytes, true);
  const madeTmpfs = o.rows.some((r) => r.tmpfs) && ensureImage(o.tmpfsImage, o.imageBytes, false);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-compare-'));
  const samples = new Map<string, Record<Backend, Sample[]>>(o.rows.map((r) => [r.id, { vublk: [], qsd: [], fio: [] }]));
  const commands = new Map<string, string>();
  const failures: string[] = [];
  try {
    for (let round = 0; round < o.rounds; round++) {
      for (const row of o.rows) {
        const order = BACKENDS.map((_, k) => BACKENDS[(k + round) % BACKENDS.length]!);
        for (const b of order) {
          try {
            const s = await runOne(b, row, o, dir, commands);
            samples.get(row.id)![b].push(s);
            process.stderr.write(
              `round ${round + 1}/${o.rounds} ${row.id} ${b}: ${Math.round(s.iops)} IOPS, p50 ${s.p50.toFixed(1)} us, p99 ${s.p99.toFixed(1)} us, CPU ${s.cpuUsPerIo.toFixed(2)} us/IO\n`,
            );
          } catch (err) {
            const msg = `round ${round + 1} ${row.id} ${b}: ${(err as Error).message}`;
            failures.push(msg);
            process.stderr.write(`FAILED ${msg}\n`);
          }
        }
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    if (madeTmpfs) fs.rmSync(o.tmpfsImage, { force: true });
  }
  const rows: RowResult[] = o.rows.map((r) => rowResult(r.id, r.label, samples.get(r.id)!));
  const extra: string[] = [];
  const one = rows.find((r) => r.id === 'tmpfs-randread-4k-qd32')?.medians.vublk;
  const two = rows.find((r) => r.id === 'tmpfs-randread-4k-qd32-2q')?.medians.vublk;
  if (one && two) extra.push(`vublk on tmpfs, 2 queues / 1 queue IOPS: ${(two.iops / one.iops).toFixed(2)}`);
  const setting = `${os.cpus().length} CPUs, ${o.rounds} rounds of ${o.runtime} s per backend and row, image ${o.image}${madeImage ? ' (written for this run)' : ''}`;
  extra.push(setting, ...failures.map((f) => `FAILED ${f}`));
  if (o.json) {
    process.stdout.write(JSON.stringify({ setting, rows, commands: Object.fromEntries(commands), failures }, null, 1) + '\n');
  }
  if (o.markdown || !o.json) {
    const first = o.rows[0]!.id;
    const cmds = [...commands].filter(([k]) => k.startsWith(`${first} `)).map(([k, v]) => `- ${k}: \`${v}\``);
    process.stdout.write(
      markdown(rows, [
        ...extra,
        '',
        `Commands of row ${first} (the other rows change rw, bs, iodepth, queues, wait and the image):`,
        ...cmds,
      ]),
    );
  }
  if (failures.length > 0) process.exitCode = 1;
}

main().catch((err: unknown) => {
  process.stderr.write(`compare: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
