// Finds a host command on PATH (and the sbin directories): how tests decide
// whether QEMU, losetup, fio and friends are there.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Absolute path of `cmd` on PATH (or null). */
export function findCommand(cmd: string): string | null {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).concat(['/usr/sbin', '/sbin']);
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  return null;
}
