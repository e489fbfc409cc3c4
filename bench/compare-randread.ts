// vublk against qemu-storage-daemon, side by side in one run, on the same
// image, through the same in-repo frontend: 4 KiB random reads at QD 32.
// Rounds alternate between the back-ends so drift on a shared machine hits
// all of them; the result is each one's median IOPS and its ratio to qsd.
// Back-ends: vublk (fixed buffers), vublk-plain (--no-fixed-buffers), qsd.
//
//   node dist/bench/compare-randread.js [--seconds 5] [--rounds 3] [--qd 32] [--queues 1]
//        [--image PATH] [--image-mib 1024] [--backends vublk,vublk-plain,qsd] [--bs 4096]

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runRandRead } from './randread';
import { Qsd } from '../test/helpers/qsd';
import { startVublk } from '../test/helpers/vublk-process';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function main(): Promise<void> {
  const seconds = arg('seconds', 5);
  const rounds = arg('rounds', 3);
  const qd = arg('qd', 32);
  const queues = arg('queues', 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-bench-'));
  const given = process.argv.indexOf('--image');
  let image = given >= 0 ? (process.argv[given + 1] as string) : path.join(dir, 'bench.img');
  if (given < 0) {
    // Written data, not holes: a hole reads as zeros without touching the disk.
    const mib = arg('image-mib', 1024);
    execFileSync('dd', ['if=/dev/urandom', `of=${image}`, 'bs=1M', `count=${mib}`, 'oflag=direct', 'status=none']);
  }
  image = path.resolve(image);
  const bi = process.argv.indexOf('--backends');
  const backends = (bi >= 0 ? (process.argv[bi + 1] as string) : 'vublk,vublk-plain,qsd').split(',');
  const bs = arg('bs', 4096);
  const results: Record<string, number[]> = {};
  for (const b of backends) results[b] = [];
  for (let r = 0; r < rounds; r++) {
    for (const backend of backends) {
      const socket = path.join(dir, `${backend}.sock`);
      let stop: () => Promise<unknown>;
      if (backend === 'vublk' || backend === 'vublk-plain') {
        const extra = backend === 'vublk-plain' ? ['--no-fixed-buffers'] : [];
        const v = await startVublk(['--disk', image, '--socket', socket, '--queues', String(queues), ...extra]);
        stop = () => v.stop();
      } else if (backend === 'qsd') {
        const q = await Qsd.start({ image, queues, aio: 'io_uring' });
        fs.symlinkSync(q.socket, socket);
        stop = async () => {
          await q.stop();
          fs.unlinkSync(socket);
        };
      } else {
        throw new Error(`unknown backend ${backend}`);
      }
      try {
        const res = await runRandRead({ socket, seconds, qd, bs, queues });
        if (res.errors > 0) throw new Error(`${backend}: ${res.errors} requests failed`);
        results[backend]!.push(res.iops);
        process.stderr.write(`round ${r + 1} ${backend}: ${Math.round(res.iops)} IOPS (p99 ${res.latency_us.p99} us)\n`);
      } finally {
        await stop();
      }
    }
  }
  const medians: Record<string, number> = {};
  for (const b of backends) medians[b] = Math.round(median(results[b]!));
  const ratios: Record<string, number> = {};
  if (medians.qsd) for (const b of backends) ratios[`${b}/qsd`] = Number((medians[b]! / medians.qsd).toFixed(2));
  if (medians.vublk && medians['vublk-plain']) {
    ratios['vublk/vublk-plain'] = Number((medians.vublk / medians['vublk-plain']).toFixed(2));
  }
  process.stdout.write(
    JSON.stringify({ test: `${bs / 1024}k randread`, qd, queues, seconds, rounds, median_iops: medians, ratios, all: results }) + '\n',
  );
  if (given < 0) fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
