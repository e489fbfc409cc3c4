// What an e2e test needs on the host (QEMU, the guest or the tools to build it,
// a built vublk, loop devices), and the skip-or-fail-under-CI rule when it is missing.
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { findCommand } from '../find-command';
import { loopUnsupported } from '../loop-device';
import { repoRoot } from '../repo-root';
import { buildGuestScriptPath, guestCacheWarm } from './image';

export type Prerequisites = { ok: boolean; reason?: string };

/** Can we boot the e2e guest here? Root is not required (TCG, no /dev/kvm,
 *  apt-get download + dpkg-deb -x work unprivileged). */
export function guestPrerequisites(): Prerequisites {
  if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (platform ${process.platform})` };
  if (!findCommand('qemu-system-x86_64')) {
    return { ok: false, reason: 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)' };
  }
  if (!fs.existsSync(buildGuestScriptPath())) {
    return { ok: false, reason: `missing ${buildGuestScriptPath()}` };
  }
  if (!findCommand('bash')) return { ok: false, reason: 'bash not found' };
  if (guestCacheWarm()) return { ok: true };
  // The initramfs is made of the host's own binaries, so the host must be x86_64.
  if (process.arch !== 'x64') {
    return { ok: false, reason: `building the guest needs an x86_64 host (arch ${process.arch})` };
  }
  const missing: string[] = [];
  const need: Array<[string, string]> = [
    ['apt-get', 'apt'],
    ['apt-cache', 'apt'],
    ['dpkg-deb', 'dpkg'],
    ['cpio', 'cpio'],
    ['gzip', 'gzip'],
    ['ldd', 'libc-bin'],
    ['busybox', 'busybox-static'],
    ['fio', 'fio'],
    ['mke2fs', 'e2fsprogs'],
    ['e2fsck', 'e2fsprogs'],
    ['blkdiscard', 'util-linux'],
    ['fstrim', 'util-linux'],
  ];
  for (const [cmd, pkg] of need) if (!findCommand(cmd)) missing.push(`${cmd} (${pkg})`);
  if (missing.length > 0) {
    return { ok: false, reason: `guest not cached and cannot build it; missing: ${missing.join(', ')}` };
  }
  return { ok: true };
}

/** vublk can be started: bin/vublk.js exists (with `built`, its compiled entry point too). */
export function vublkPrerequisites(opts: { built?: boolean } = {}): Prerequisites {
  const root = repoRoot();
  const files = [path.join(root, 'bin', 'vublk.js'), ...(opts.built ? [path.join(root, 'dist', 'src', 'cli', 'main.js')] : [])];
  for (const f of files) {
    if (!fs.existsSync(f)) return { ok: false, reason: `${f} not found${opts.built ? ' (npm run build)' : ''}` };
  }
  return { ok: true };
}

/** Loop devices with a chosen sector size can be made here (root, losetup, the loop module). */
export function loopPrerequisites(): Prerequisites {
  const reason = loopUnsupported();
  return reason === undefined ? { ok: true } : { ok: false, reason };
}

/** The first of these prerequisites that is missing, else ok. */
export function allPrerequisites(...checks: Array<() => Prerequisites>): Prerequisites {
  for (const check of checks) {
    const p = check();
    if (!p.ok) return p;
  }
  return { ok: true };
}

/**
 * t.test(name, extra, fn) when the prerequisites are there. Without them the
 * test is skipped (named skipName) with the reason, except under CI (env CI
 * set), where that is a failure: "<ciWhat> prerequisites missing in CI: <reason>".
 */
export function testWithPrerequisites(
  t: Test,
  prereq: Prerequisites,
  ciWhat: string,
  name: string,
  extra: { timeout?: number },
  fn: (tt: Test) => Promise<void>,
  skipName = name,
): Promise<unknown> {
  if (prereq.ok) return t.test(name, extra, fn);
  if (process.env.CI) {
    t.fail(`${ciWhat} prerequisites missing in CI: ${prereq.reason}`);
    return Promise.resolve();
  }
  return t.test(skipName, { skip: prereq.reason ?? 'prerequisites missing' }, async () => {});
}
