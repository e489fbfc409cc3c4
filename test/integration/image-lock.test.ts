// Image locking against real processes: vublk takes QEMU's image locks, so
// a second vublk, qemu-io and qemu-img writing the image are refused while it
// runs; --read-only vublks share; a reader and a writer do not; everything
// works again once vublk has exited; --no-image-lock opts out.

import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/native/binding';
import { makeImage, runVublk, startVublk, stopCleanly, teardownDaemon, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import { BLK_PERM_CONSISTENT_READ, BLK_PERM_WRITE, LOCK_PERM_BASE, LOCK_SHARED_BASE } from '../../src/disk/image-lock';

function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

const noQemuIo = hasTool('qemu-io') && hasTool('qemu-img') ? false : 'qemu-io/qemu-img not installed';

function run(cmd: string, args: string[]): { code: number | null; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A directory with a fresh 16 MiB image; the vublks started in it are stopped at teardown. */
function setup(t: Test): {
  dir: string;
  image: string;
  daemons: VublkProcess[];
  start(name: string, extra?: string[]): Promise<VublkProcess>;
} {
  const dir = tmpDir('vublk-lock-');
  const image = makeImage(dir, 16 << 20);
  const daemons: VublkProcess[] = [];
  // Registered first, so it runs last: after the daemons below have stopped.
  teardownDaemon(t, dir, () => undefined);
  t.teardown(async () => {
    for (const v of daemons) await stopCleanly(v);
  });
  return {
    dir,
    image,
    daemons,
    async start(name, extra = []) {
      const v = await startVublk(['--disk', image, '--socket', path.join(dir, `${name}.sock`), ...extra]);
      daemons.push(v);
      return v;
    },
  };
}

/** Starts vublk expecting it to be refused; returns its stderr. */
async function refused(t: Test, dir: string, image: string, name: string, extra: string[] = []): Promise<string> {
  const r = await runVublk(['--disk', image, '--socket', path.join(dir, `${name}.sock`), ...extra]);
  t.equal(r.code, 1, `vublk ${extra.join(' ')} exits 1`);
  return r.stderr;
}

t.test('the lock bytes are QEMU 7.2 file-posix bytes', (t) => {
  t.equal(LOCK_PERM_BASE + Math.log2(BLK_PERM_CONSISTENT_READ), 100);
  t.equal(LOCK_SHARED_BASE + Math.log2(BLK_PERM_WRITE), 201);
  t.end();
});

t.test('a second read-write vublk is refused with a clear message; after exit it starts', async (t) => {
  const s = setup(t);
  const first = await s.start('a');
  const err = await refused(t, s.dir, s.image, 'b');
  t.match(
    err,
    `vublk: error: image ${s.image} is locked by another process (QEMU, qemu-img, qemu-storage-daemon or vublk)`,
    'names the image',
  );
  t.match(err, /"write" permission/, 'and the conflicting permission');
  t.match(err, /--no-image-lock/, 'and the way out');
  await stopCleanly(s.daemons.splice(0, 1)[0] ?? first);
  await s.start('c');
  t.pass('a vublk starts once the first has exited');
});

t.test('--read-only vublks share; a writer and a reader exclude each other', async (t) => {
  const s = setup(t);
  await s.start('r1', ['--read-only']);
  await s.start('r2', ['--read-only']);
  t.pass('two --read-only vublks run on the same image');
  const err = await refused(t, s.dir, s.image, 'w');
  t.match(err, /holds the "write" permission|does not share the "write" permission/, 'a writer is refused while readers run');
  for (const v of s.daemons.splice(0)) await stopCleanly(v);
  await s.start('w2');
  const rerr = await refused(t, s.dir, s.image, 'r3', ['--read-only']);
  t.match(rerr, /holds the "write" permission, which vublk does not share/, 'a reader is refused while a writer runs');
});

t.test('qemu-io and qemu-img writing are refused while vublk runs; info -U works; all work after exit', { skip: noQemuIo }, async (t) => {
  const s = setup(t);
  await s.start('a');
  const io = run('qemu-io', ['-c', 'write 0 512', '-f', 'raw', s.image]);
  t.not(io.code, 0, 'qemu-io write refused');
  t.match(io.out, /Failed to get "write" lock/, `qemu-io says why: ${io.out.trim()}`);
  const resize = run('qemu-img', ['resize', '-f', 'raw', s.image, '32M']);
  t.not(resize.code, 0, `qemu-img resize refused: ${resize.out.trim()}`);
  const src = makeImage(s.dir, 1 << 20, 'src.img');
  const convert = run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, s.image]);
  t.not(convert.code, 0, `qemu-img convert onto the image refused: ${convert.out.trim()}`);
  if (hasTool('qemu-system-x86_64')) {
    // Stays up (and is killed at the timeout) if it gets the image.
    // The permissions are taken when the device attaches (-S: no guest runs).
    const q = run('qemu-system-x86_64', [
      '-machine',
      'pc,accel=tcg',
      '-nodefaults',
      '-display',
      'none',
      '-monitor',
      'none',
      '-S',
      '-drive',
      `file=${s.image},format=raw,if=none,id=d0`,
      '-device',
      'virtio-blk-pci,drive=d0',
    ]);
    t.equal(q.code, 1, 'QEMU with -drive file=IMG exits 1');
    t.match(q.out, /Failed to get "write" lock/, `QEMU says why: ${q.out.trim()}`);
  }
  const info = run('qemu-img', ['info', '-U', '-f', 'raw', s.image]);
  t.equal(info.code, 0, 'qemu-img info -U still works');
  const readOnly = run('qemu-io', ['-r', '-U', '-c', 'read 0 512', '-f', 'raw', s.image]);
  t.equal(readOnly.code, 0, 'a shared read (qemu-io -r -U) works');

  for (const v of s.daemons.splice(0)) await stopCleanly(v);
  t.equal(run('qemu-io', ['-c', 'write 0 512', '-f', 'raw', s.image]).code, 0, 'qemu-io write works after vublk exited');
  t.equal(run('qemu-img', ['resize', '-f', 'raw', s.image, '32M']).code, 0, 'qemu-img resize works after vublk exited');
});

t.test('vublk is refused while qemu-io holds the image', { skip: noQemuIo }, async (t) => {
  const s = setup(t);
  // qemu-io keeps the image open while it waits for commands on stdin.
  const qio = spawn('qemu-io', ['-f', 'raw', s.image], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => {
    qio.kill('SIGKILL');
  });
  // Wait until it holds its "write" lock byte.
  const fd = fs.openSync(s.image, 'r');
  try {
    const deadline = Date.now() + 10_000;
    while (!native.ofdConflicts(fd, LOCK_PERM_BASE + 1, 1, 2) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  } finally {
    fs.closeSync(fd);
  }
  const err = await refused(t, s.dir, s.image, 'a');
  t.match(err, /locked by another process .*"write" permission/, 'vublk names the conflict');
  const ro = await refused(t, s.dir, s.image, 'b', ['--read-only']);
  t.match(ro, /holds the "write" permission/, 'a --read-only vublk too: qemu-io holds "write", which a reader does not share');
});

t.test('--no-image-lock: no locks taken, none checked', { skip: noQemuIo }, async (t) => {
  const s = setup(t);
  await s.start('a');
  await s.start('b', ['--no-image-lock']);
  t.pass('a second vublk with --no-image-lock starts next to a locking one');
  for (const v of s.daemons.splice(0)) await stopCleanly(v);
  await s.start('c', ['--no-image-lock']);
  t.equal(run('qemu-io', ['-c', 'write 0 512', '-f', 'raw', s.image]).code, 0, 'qemu-io writes next to a vublk with --no-image-lock');
});
