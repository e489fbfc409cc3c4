// What an idle disk costs: vublk serving a connected frontend that stopped
// doing I/O. A burst of 4k reads first (so the data-plane worker has been
// polling), then nothing for --idle seconds while the daemon's CPU time is
// sampled from /proc. A benchmark, not a test (test/integration/idle.test.ts
// checks the same with a generous bound).
//
//   node dist/bench/idle-cpu.js [--idle 10] [--queues 1] [--vublk-args '...']

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Frontend } from '../src/frontend/frontend';
import { BlkDriver } from '../src/frontend/blk-driver';
import { processCpuSeconds } from '../src/bench/process-cpu';
import { startVublk } from '../test/helpers/vublk-process';
import { stopDaemon } from '../test/helpers/daemon';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? (process.argv[i + 1] as string) : fallback;
}

async function main(): Promise<void> {
  const idleS = Number(arg('idle', '10'));
  const queues = Number(arg('queues', '1'));
  const extra = arg('vublk-args', '').split(/\s+/).filter(Boolean);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-idle-'));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(0));
  fs.truncateSync(image, 64 << 20);
  const socket = path.join(dir, 'vublk.sock');
  const args = ['--disk', image, '--socket', socket, '--queues', String(queues), '--state-file', 'none', ...extra];
  const v = await startVublk(args, { asan: false });
  const pid = v.child.pid as number;
  try {
    const fe = await Frontend.connect(socket);
    await fe.setup({ queues });
    const drv = new BlkDriver(fe);
    const burstEnd = Date.now() + 2000;
    let n = 0;
    while (Date.now() < burstEnd) {
      await Promise.all(Array.from({ length: 32 }, (_, i) => drv.read(i % queues, (i * 8) % 65536, 4096)));
      n += 32;
    }
    await new Promise((r) => setTimeout(r, 500));
    const before = processCpuSeconds(pid);
    await new Promise((r) => setTimeout(r, idleS * 1000));
    const used = processCpuSeconds(pid) - before;
    process.stdout.write(
      `vublk ${args.join(' ')}\n` +
        `burst: ${n} reads in 2 s; then idle ${idleS} s with the frontend connected: ` +
        `${used.toFixed(2)} s CPU = ${((used / idleS) * 100).toFixed(2)} % of a core\n`,
    );
    fe.close();
  } finally {
    await stopDaemon(v.child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`idle-cpu: ${(err as Error).message}\n`);
  process.exit(1);
});
