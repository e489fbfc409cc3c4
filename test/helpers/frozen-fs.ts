// A small ext4 file system on a loop device that a test can freeze
// (fsfreeze -f): while it is frozen, every write to a file on it blocks in
// the kernel until it is thawed, so an io_uring write to the disk image on
// it stays in flight for as long as the test wants (io_uring hands it to an
// io-wq worker that sleeps in sb_start_write, where no cancel reaches it).
// Reads still complete. Needs root, loop devices, mkfs.ext4 (e2fsprogs) and
// fsfreeze/mount (util-linux). Teardown thaws, unmounts and detaches; a
// process 'exit' hook thaws as a last resort, so a failing test never leaves
// a frozen file system behind.

import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loopUnsupported } from './loop-device';

export interface FrozenFs {
  /** Where the file system is mounted. */
  mnt: string;
  freeze(): void;
  /** Thaws (idempotent). */
  thaw(): void;
}

function run(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0 && !r.error, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}

const frozen = new Set<string>();
let exitHook = false;

/** Why a freezable file system cannot be made here, or undefined. */
export function frozenFsUnsupported(): string | undefined {
  const loop = loopUnsupported();
  if (loop !== undefined) return loop;
  for (const tool of ['mkfs.ext4', 'fsfreeze', 'mount', 'umount']) {
    if (!run('sh', ['-c', `command -v ${tool}`]).ok) return `${tool} is not installed`;
  }
  return undefined;
}

/** Makes, mounts (under dir) and returns a 64 MiB ext4 file system; teardown removes it. */
export function makeFreezableFs(t: Test, dir: string): FrozenFs {
  const img = path.join(dir, 'fs.img');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, 64 << 20);
  let r = run('mkfs.ext4', ['-q', '-F', img]);
  if (!r.ok) throw new Error(`mkfs.ext4 failed: ${r.out}`);
  r = run('losetup', ['--find', '--show', img]);
  const dev = /^\/dev\/loop\d+$/m.exec(r.out)?.[0];
  if (!r.ok || dev === undefined) throw new Error(`losetup failed: ${r.out}`);
  r = run('mount', [dev, mnt]);
  if (!r.ok) {
    run('losetup', ['--detach', dev]);
    throw new Error(`mount ${dev} failed: ${r.out}`);
  }
  const thaw = (): void => {
    if (!frozen.delete(mnt)) return;
    const u = run('fsfreeze', ['-u', mnt]);
    if (!u.ok) throw new Error(`fsfreeze -u ${mnt} failed: ${u.out}`);
  };
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const m of frozen) run('fsfreeze', ['-u', m]);
    });
  }
  t.teardown(() => {
    thaw();
    run('umount', ['-l', mnt]); // lazy: the daemon may still hold the image open
    run('losetup', ['--detach', dev]);
  });
  return {
    mnt,
    freeze() {
      const f = run('fsfreeze', ['-f', mnt]);
      if (!f.ok) throw new Error(`fsfreeze -f ${mnt} failed: ${f.out}`);
      frozen.add(mnt);
    },
    thaw,
  };
}
