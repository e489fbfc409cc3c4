// vublk on an RBD image against qemu-storage-daemon's rbd driver, on the
// same image of a single-node test cluster (scripts/ceph-test-cluster.sh),
// alternated round by round: 4k randread and randwrite at QD32 through
// `vublk bench` (the in-repo frontend), the backends' CPU per I/O by pid.
// Only one backend runs at a time: a writer holds the image's exclusive lock.
// A benchmark, not a test.
//
//   node dist/bench/compare-rbd.js [--rounds 3] [--runtime 10] [--image-mib 512] [--wait poll|irq] [--json]

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WaitMode } from '../src/bench/run-bench';
import { benchSample } from './bench-sample';
import type { RwMode } from '../src/bench/queue-load';
import { startVublk } from '../test/helpers/vublk-process';
import { QSD } from '../test/helpers/qsd';
import { startDaemon, stopDaemon } from '../test/helpers/daemon';
import { qemuOptValue } from '../test/helpers/qemu-opt';
import { median, type Sample } from './compare-table';

const SCRIPT = path.join(__dirname, '..', '..', 'scripts', 'ceph-test-cluster.sh');
const IMAGE = 'bench';

interface Options {
  rounds: number;
  runtime: number;
  imageMiB: number;
  wait: WaitMode;
  json: boolean;
}

function parseArgs(argv: readonly string[]): Options {
  const o: Options = { rounds: 3, runtime: 10, imageMiB: 512, wait: 'poll', json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    if (a === '--rounds') o.rounds = Number(v());
    else if (a === '--runtime') o.runtime = Number(v());
    else if (a === '--image-mib') o.imageMiB = Number(v());
    else if (a === '--wait') o.wait = v() as WaitMode;
    else if (a === '--json') o.json = true;
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

type Rbd = 'vublk' | 'qsd';

async function start(b: Rbd, conf: string, socket: string): Promise<{ pid: number; command: string; stop(): Promise<unknown> }> {
  if (b === 'vublk') {
    const args = ['--disk', `rbd:rbd/${IMAGE}`, '--ceph-conf', conf, '--socket', socket, '--state-file', 'none'];
    const v = await startVublk(args, { timeoutMs: 30_000 });
    return { pid: v.child.pid!, command: `vublk ${args.join(' ')}`, stop: () => v.stop() };
  }
  // cache.direct=on: QEMU turns librbd's cache off, as vublk does.
  const args = [
    '--blockdev',
    `driver=rbd,node-name=rbd0,pool=rbd,image=${IMAGE},conf=${qemuOptValue(conf)},cache.direct=on`,
    '--export',
    `type=vhost-user-blk,id=exp0,node-name=rbd0,addr.type=unix,addr.path=${qemuOptValue(socket)},writable=on,num-queues=1`,
  ];
  const child = await startDaemon(QSD, args, { socket, readyTimeoutMs: 30_000 });
  return { pid: child.pid!, command: `${QSD} ${args.join(' ')}`, stop: () => stopDaemon(child, { timeoutMs: 15_000 }) };
}

async function runOne(b: Rbd, rw: RwMode, o: Options, conf: string, dir: string, commands: Map<string, string>): Promise<Sample> {
  const socket = path.join(dir, `${b}.sock`);
  const s = await start(b, conf, socket);
  commands.set(b, s.command);
  try {
    return await benchSample({
      socket,
      rw,
      bs: 4096,
      iodepth: 32,
      queues: 1,
      runtime: o.runtime,
      segments: 1,
      wait: o.wait,
      rwmixread: 50,
      size: o.imageMiB << 20,
      backendPid: s.pid,
    });
  } finally {
    await s.stop();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-rbd-bench-'));
  const cluster = path.join(dir, 'cluster');
  const conf = path.join(cluster, 'ceph.conf');
  const rows: RwMode[] = ['randread', 'randwrite'];
  const samples = new Map<string, Sample[]>();
  const commands = new Map<string, string>();
  try {
    execFileSync('bash', [SCRIPT, 'start', cluster], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 120_000 });
    execFileSync('rbd', ['--conf', conf, 'create', '--size', `${o.imageMiB}M`, `rbd/${IMAGE}`]);
    // Written whole first, so that reads reach data on the OSD.
    execFileSync(
      'rbd',
      ['--conf', conf, 'bench', '--io-type', 'write', '--io-size', '4M', '--io-total', `${o.imageMiB}M`, `rbd/${IMAGE}`],
      {
        stdio: 'ignore',
      },
    );
    for (let round = 0; round < o.rounds; round++) {
      for (const rw of rows) {
        const order: Rbd[] = round % 2 === 0 ? ['vublk', 'qsd'] : ['qsd', 'vublk'];
        for (const b of order) {
          const s = await runOne(b, rw, o, conf, dir, commands);
          const key = `${rw} ${b}`;
          samples.set(key, [...(samples.get(key) ?? []), s]);
          process.stderr.write(
            `round ${round + 1}/${o.rounds} ${rw} ${b}: ${Math.round(s.iops)} IOPS, p50 ${s.p50.toFixed(0)} us, CPU ${s.cpuUsPerIo.toFixed(1)} us/IO\n`,
          );
        }
      }
    }
  } finally {
    try {
      execFileSync('bash', [SCRIPT, 'stop', cluster], { stdio: 'ignore' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const med = (rw: RwMode, b: Rbd, f: (s: Sample) => number) => median((samples.get(`${rw} ${b}`) ?? []).map(f));
  const out = [
    `| 4k QD32, wait ${o.wait} | vublk IOPS | qsd IOPS | vublk / qsd IOPS | p50 vublk / qsd (us) | CPU per I/O vublk / qsd (us) |`,
    '|---|---|---|---|---|---|',
  ];
  for (const rw of rows) {
    const [vi, qi] = [med(rw, 'vublk', (s) => s.iops), med(rw, 'qsd', (s) => s.iops)];
    const p50 = `${med(rw, 'vublk', (s) => s.p50).toFixed(0)} / ${med(rw, 'qsd', (s) => s.p50).toFixed(0)}`;
    const cpu = `${med(rw, 'vublk', (s) => s.cpuUsPerIo).toFixed(1)} / ${med(rw, 'qsd', (s) => s.cpuUsPerIo).toFixed(1)}`;
    out.push(`| ${rw} | ${Math.round(vi)} | ${Math.round(qi)} | ${(vi / qi).toFixed(2)} | ${p50} | ${cpu} |`);
  }
  out.push(
    '',
    `${os.cpus().length} CPUs, ${o.rounds} rounds of ${o.runtime} s per backend and row, medians; image ${o.imageMiB} MiB, pool size 1, one OSD`,
  );
  for (const [b, c] of commands) out.push(`${b}: ${c}`);
  process.stdout.write(out.join('\n') + '\n');
  if (o.json) process.stdout.write(JSON.stringify(Object.fromEntries(samples), null, 1) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`compare-rbd: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
