// The daemon as users start it: start-up line, failures that exit non-zero
// with one line naming the problem, the default image, clean shutdown.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, runVublk, startVublk, tmpDir } from '../helpers/vublk-process';

t.test('serves a disk and logs one start-up line, SIGTERM removes the socket', async (t) => {
  const dir = tmpDir();
  const disk = makeImage(dir, 32 * 1024 * 1024);
  const sock = path.join(dir, 'v.sock');
  const v = await startVublk(['--disk', disk, '--socket', sock, '--queues', '2']);
  const line = await v.waitForLog(/serving/);
  t.match(line, new RegExp(`disk=${disk}`));
  t.match(line, /bytes=33554432/);
  t.match(line, /queues=2/);
  t.match(line, /features=\S*FLUSH\S*/);
  for (let i = 0; i < 100 && !v.stdout().includes('num-queues'); i++) await new Promise((r) => setTimeout(r, 20));
  t.match(v.stdout(), /vhost-user-blk-pci,chardev=vublk0,num-queues=2/, 'prints the QEMU command line');
  t.match(v.stdout(), /memory-backend-memfd,id=mem,size=1G,share=on/);
  t.ok(fs.existsSync(sock));
  const r = await v.stop('SIGTERM');
  t.equal(r.code, 0, 'exits 0 on SIGTERM');
  t.notOk(fs.existsSync(sock), 'socket removed');
});

t.test('with no --disk creates a sparse 1 GiB default image in the working directory', async (t) => {
  const dir = tmpDir();
  const v = await startVublk([], { cwd: dir, socket: path.join(dir, 'vublk.sock') });
  const st = fs.statSync(path.join(dir, 'vublk-disk.img'));
  t.equal(st.size, 1024 * 1024 * 1024);
  t.ok(st.blocks * 512 < 1024 * 1024, 'sparse');
  t.ok(fs.existsSync(path.join(dir, 'vublk.sock')));
  t.equal((await v.stop('SIGINT')).code, 0, 'exits 0 on SIGINT');
});

const failures: Array<[string, (dir: string) => string[], RegExp, number]> = [
  ['an unknown option', () => ['--bogus'], /vublk: error: .*--bogus/, 2],
  ['a bad --queues', (d) => ['--disk', makeImage(d), '--queues', 'x'], /--queues/, 2],
  ['a missing disk', (d) => ['--disk', path.join(d, 'nope.img'), '--socket', path.join(d, 's')], /nope\.img: no such file/, 1],
  ['a disk that is a directory', (d) => ['--disk', d, '--socket', path.join(d, 's')], /not a regular file or block device/, 1],
  [
    'a socket path that is not a socket',
    (d) => {
      fs.writeFileSync(path.join(d, 'file'), 'x');
      return ['--disk', makeImage(d), '--socket', path.join(d, 'file')];
    },
    /exists and is not a socket/,
    1,
  ],
];

for (const [what, args, re, code] of failures) {
  t.test(`exits ${code} with one line for ${what}`, async (t) => {
    const dir = tmpDir();
    const r = await runVublk(args(dir));
    t.equal(r.code, code);
    t.match(r.stderr, re);
    t.match(r.stderr.split('\n')[0], /^vublk: error: /, 'first line names the problem');
  });
}

t.test('a socket path in use by a running vublk is refused', async (t) => {
  const dir = tmpDir();
  const sock = path.join(dir, 'v.sock');
  const v = await startVublk(['--disk', makeImage(dir), '--socket', sock]);
  const r = await runVublk(['--disk', makeImage(dir, 1 << 20, 'b.img'), '--socket', sock]);
  t.equal(r.code, 1);
  t.match(r.stderr, /socket path .* is in use by another process/);
  t.ok(fs.existsSync(sock), 'the running daemon keeps its socket');
  await v.stop();
});

t.test('a stale socket file (nobody listening) is replaced', async (t) => {
  const dir = tmpDir();
  const sock = path.join(dir, 'v.sock');
  const first = await startVublk(['--disk', makeImage(dir), '--socket', sock]);
  await first.stop('SIGKILL'); // leaves the socket file behind
  t.ok(fs.existsSync(sock));
  const second = await startVublk(['--disk', makeImage(dir), '--socket', sock]);
  t.equal((await second.stop()).code, 0);
});
