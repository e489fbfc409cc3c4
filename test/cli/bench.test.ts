// `vublk bench` against real backends over real sockets: what it reports,
// that writes land where it says, the SVG, the backend's CPU, the stall
// timeout, and the exit status and message of each way it can fail.

import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { makeImage, runVublk, startVublk, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import { Qsd, qsdMissingReason } from '../helpers/qsd';
import { runBench, type BenchOptions } from '../../src/bench/run-bench';
import type { BenchResult } from '../../src/bench/report';

const IMAGE_BYTES = 64 << 20;

async function bench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runVublk(['bench', ...args], { timeoutMs: 30000 });
}

async function benchJson(t: Test, args: string[]): Promise<BenchResult> {
  const r = await bench([...args, '--json']);
  t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr.trim()})`);
  return JSON.parse(r.stdout) as BenchResult;
}

/** What every successful run must satisfy. */
function checkResult(t: Test, r: BenchResult): void {
  t.ok(r.ios > 0, 'I/Os completed');
  t.equal(r.errors, 0, 'no failed requests');
  t.equal(
    r.timeline.reduce((a, b) => a + b, 0),
    r.ios,
    'the per-second counts add up to the I/Os',
  );
  t.ok(r.iops > 0 && Math.abs(r.iops - r.ios / r.seconds) <= 1 + r.iops * 0.002, 'IOPS is I/Os over seconds');
  t.ok(Math.abs(r.mibps - (r.iops * r.bs) / 2 ** 20) < 0.2 + r.mibps * 0.01, 'MiB/s follows from IOPS and bs');
  const l = r.latencyUs;
  t.ok(l.min > 0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, 'latency percentiles in order');
  t.ok(r.benchCpu.seconds > 0, "the bench's own CPU is measured");
}

let vublk: VublkProcess;
let image: string;
const dir = tmpDir('vublk-bench-test-');

t.before(async () => {
  image = makeImage(dir, IMAGE_BYTES);
  vublk = await startVublk(['--disk', image, '--socket', path.join(dir, 'v.sock'), '--queues', '2', '--state-file', 'none']);
});
t.teardown(async () => {
  await vublk.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('randread, polling: JSON with the fields, the backend CPU and an SVG', async (t) => {
  const svg = path.join(dir, 'randread.svg');
  const r = await benchJson(t, ['--socket', vublk.socket, '--runtime', '1', '--backend-pid', String(vublk.child.pid), '--svg', svg]);
  checkResult(t, r);
  t.match(r, { rw: 'randread', bs: 4096, iodepth: 32, queues: 1, segments: 1, wait: 'poll' });
  t.ok(r.seconds >= 1 && r.seconds < 3, 'ran about the runtime');
  t.ok(r.kicks > 0, 'kicked');
  // A polling driver asks for no notifications. vublk still sends one now
  // and then (1 to 3 a run, seen with EVENT_IDX); without the request it
  // would send one per batch, thousands.
  t.ok(r.calls < r.ios / 1000, `the backend sent almost no call notifications (${r.calls} for ${r.ios} I/Os)`);
  t.equal(r.backendCpu?.pid, vublk.child.pid);
  t.ok(r.backendCpu!.seconds > 0 && r.backendCpu!.usPerIo > 0, 'backend CPU per I/O');
  const text = fs.readFileSync(svg, 'utf8');
  t.match(text, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(text, /<\/svg>\n$/);
  t.match(text, /class="latency-histogram"[\s\S]*<rect [^>]*fill="#3a6ea5"/, 'histogram bars');
  t.match(text, /class="iops-timeline"[\s\S]*<polyline /, 'IOPS line');
  t.notMatch(text, /NaN|undefined|Infinity/);
});

t.test('the text report names IOPS, latency percentiles and CPU', async (t) => {
  const r = await bench(['--socket', vublk.socket, '--runtime', '0.5', '--iodepth', '1', '--wait', 'irq']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /randread bs=4096 iodepth=1 queues=1 segments=1 wait=irq/);
  t.match(r.stdout, /IOPS [\d,]+ {2}MiB\/s [\d.]+/);
  t.match(r.stdout, /p50 [\d.]+ {2}p99 [\d.]+ {2}p99\.9 [\d.]+/);
  t.match(r.stdout, /bench CPU: [\d.]+ s, [\d.]+ us per I\/O/);
});

t.test('randwrite on 2 queues with interrupts: every written sector carries its own LBA', async (t) => {
  const r = await benchJson(t, [
    '--socket',
    vublk.socket,
    '--rw',
    'randwrite',
    '--queues',
    '2',
    '--iodepth',
    '8',
    '--wait',
    'irq',
    '--runtime',
    '1',
    '--size',
    '4M',
  ]);
  checkResult(t, r);
  t.ok(r.calls > 0, 'with --wait irq the backend notifies');
  const data = fs.readFileSync(image);
  let written = 0;
  const tags = new Set<number>();
  let wrong = 0;
  for (let s = 0; s < IMAGE_BYTES / 512; s++) {
    const at = s * 512;
    if (data.subarray(at, at + 512).every((b) => b === 0)) continue;
    written++;
    if (Number(data.readBigUInt64LE(at)) !== s) wrong++;
    tags.add(data.readUInt32LE(at + 8));
    if (s >= (4 << 20) / 512) wrong++;
  }
  t.ok(written > 0, `${written} sectors written`);
  t.equal(wrong, 0, 'each sector starts with its LBA, and nothing was written past --size');
  t.equal(tags.size, 1, 'one run tag');
  // Read back through the frontend, sequentially, in 4 descriptors per request.
  const back = await benchJson(t, ['--socket', vublk.socket, '--rw', 'read', '--bs', '16k', '--segments', '4', '--runtime', '0.5']);
  checkResult(t, back);
  t.match(back, { rw: 'read', bs: 16384, segments: 4 });
});

t.test('randrw with --rwmixread', async (t) => {
  const r = await benchJson(t, ['--socket', vublk.socket, '--rw', 'randrw', '--rwmixread', '70', '--runtime', '0.5', '--size', '8M']);
  checkResult(t, r);
});

t.test('a backend that stops answering fails the run naming the queue', async (t) => {
  for (const wait of ['poll', 'irq'] as const) {
    const o: BenchOptions = {
      socket: vublk.socket,
      rw: 'randread',
      bs: 4096,
      iodepth: 4,
      queues: 1,
      runtime: 5,
      segments: 1,
      wait,
      rwmixread: 100,
      stallMs: 400,
    };
    const pid = vublk.child.pid!;
    const pause = setTimeout(() => process.kill(pid, 'SIGSTOP'), 300);
    try {
      await t.rejects(runBench(o), /queue 0: no completion for 0\.4 s with \d+ requests in flight/, wait);
    } finally {
      clearTimeout(pause);
      process.kill(pid, 'SIGCONT');
    }
  }
});

t.test('usage errors exit 2 with a message', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /--socket PATH is required/],
    [['--socket', 'x', '--rw', 'trim'], /--rw expects one of randread, randwrite, read, write, randrw, got "trim"/],
    [['--socket', 'x', '--bs', '1000'], /--bs expects a multiple of 512/],
    [['--socket', 'x', '--bs', '4k', '--segments', '3'], /--segments 3 does not divide --bs 4096/],
    [['--socket', 'x', '--iodepth', '512'], /needs 1536 descriptors; a ring holds at most 1024/],
    [['--socket', 'x', '--wait', 'spin'], /--wait expects poll or irq/],
    [['--socket', 'x', '--runtime', '0'], /--runtime expects seconds/],
    [['--socket', 'x', '--rwmixread', '101'], /--rwmixread expects an integer between 0 and 100/],
    [['--socket', 'x', '--bogus'], /unknown argument "--bogus"/],
  ];
  for (const [args, re] of cases) {
    const r = await bench(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, re);
    t.match(r.stderr, /^vublk: error: /);
  }
  const help = await bench(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /^usage: vublk bench --socket PATH/);
});

t.test('runtime errors exit 1 naming the problem', async (t) => {
  const missing = path.join(dir, 'missing.sock');
  let r = await bench(['--socket', missing]);
  t.equal(r.code, 1);
  t.match(r.stderr, `no socket at ${missing}`);

  // A socket file whose listener is gone: nobody listens on it.
  const dead = path.join(dir, 'dead.sock');
  spawnSync(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(dead)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
  t.ok(fs.statSync(dead).isSocket());
  r = await bench(['--socket', dead]);
  t.equal(r.code, 1);
  t.match(r.stderr, `cannot connect to ${dead}`);

  // A socket that speaks something else: it hangs up on the first message.
  const other = path.join(dir, 'other.sock');
  const server = net.createServer((c) => {
    c.on('error', () => {}); // the bench may hang up first
    c.end('HTTP/1.1 400 Bad Request\r\n\r\n');
  });
  await new Promise<void>((res) => server.listen(other, res));
  try {
    r = await bench(['--socket', other]);
  } finally {
    server.close();
  }
  t.equal(r.code, 1);
  t.match(r.stderr, `${other}: vhost-user-blk set-up failed`);

  r = await bench(['--socket', vublk.socket, '--bs', '128M']);
  t.equal(r.code, 2, 'a bs over 64M is a usage error');
  r = await bench(['--socket', vublk.socket, '--size', '2k']);
  t.equal(r.code, 1);
  t.match(r.stderr, /smaller than one 4096-byte block/);
});

t.test('a write to a read-only device is refused before any I/O', async (t) => {
  const roImage = makeImage(dir, 16 << 20, 'ro.img');
  const ro = await startVublk(['--disk', roImage, '--socket', path.join(dir, 'ro.sock'), '--read-only', '--state-file', 'none']);
  try {
    const r = await bench(['--socket', ro.socket, '--rw', 'write', '--runtime', '0.5']);
    t.equal(r.code, 1);
    t.match(r.stderr, /the device is read-only \(VIRTIO_BLK_F_RO\): --rw write writes/);
    const ok = await benchJson(t, ['--socket', ro.socket, '--rw', 'randread', '--runtime', '0.5']);
    checkResult(t, ok);
  } finally {
    await ro.stop();
  }
});

const noQsd = qsdMissingReason();
t.test('against qemu-storage-daemon', { skip: noQsd ?? false }, async (t) => {
  const q = await Qsd.start({ size: 64 << 20, queues: 1, aio: 'io_uring' });
  try {
    const r = await benchJson(t, ['--socket', q.socket, '--runtime', '0.5', '--rw', 'randrw', '--iodepth', '16']);
    checkResult(t, r);
  } finally {
    await q.stop();
  }
});
