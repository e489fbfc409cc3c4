// A hugetlbfs mount with free huge pages, for tests that back guest memory
// with huge pages (QEMU's memory-backend-file on hugetlbfs). A host with
// none reserved gets them for the test when it runs as root: vm.nr_hugepages
// is raised by what the test needs (put back when the process exits) and a
// private hugetlbfs is mounted (unmounted at teardown).

import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir } from './vublk-process';

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
/** nr_hugepages before this process first raised it. */
let original: number | undefined;

function meminfo(): { free: number; pageBytes: number } {
  const m = fs.readFileSync('/proc/meminfo', 'utf8');
  return {
    free: Number(/HugePages_Free:\s+(\d+)/.exec(m)?.[1] ?? 0),
    pageBytes: Number(/Hugepagesize:\s+(\d+) kB/.exec(m)?.[1] ?? 0) * 1024,
  };
}

/** Why `bytes` of huge pages cannot be had here, or undefined. */
export function hugePagesUnsupported(bytes: number): string | undefined {
  const { free, pageBytes } = meminfo();
  if (pageBytes === 0) return 'the kernel has no huge pages';
  if (free * pageBytes >= bytes) return undefined;
  if (process.getuid?.() !== 0) return `fewer than ${bytes >> 20} MiB of free huge pages (vm.nr_hugepages), and not root to reserve them`;
  return undefined;
}

/**
 * A writable hugetlbfs directory with at least `bytes` of free huge pages.
 * Throws if the kernel cannot reserve them (memory too fragmented).
 */
export function hugetlbfsDir(t: Test, bytes: number): string {
  const { free, pageBytes } = meminfo();
  const dir = tmpDir('vublk-hugetlbfs-');
  const missing = Math.ceil(bytes / pageBytes) - free;
  if (missing > 0) {
    // Raised for the rest of this process and put back when it exits, not at
    // a test's teardown: the daemon may still map an earlier test's pages,
    // and lowering nr_hugepages under them would leave the next test short.
    const total = Number(fs.readFileSync(NR_HUGEPAGES, 'utf8'));
    if (original === undefined) {
      original = total;
      process.once('exit', () => fs.writeFileSync(NR_HUGEPAGES, String(original)));
    }
    fs.writeFileSync(NR_HUGEPAGES, String(total + missing));
    if (meminfo().free * pageBytes < bytes) throw new Error(`the kernel reserved fewer than ${bytes >> 20} MiB of huge pages`);
  }
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const r = spawnSync('mount', ['-t', 'hugetlbfs', 'none', mnt], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mount -t hugetlbfs failed: ${r.stderr}`);
  t.teardown(() => {
    spawnSync('umount', ['-l', mnt]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return mnt;
}
