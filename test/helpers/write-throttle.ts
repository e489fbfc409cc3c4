// Slow block-device writes for tests that need I/O to stay in flight for a
// while (a drain that lasts): a cgroup-v1 blkio throttle rule on one loop
// device the test attached, so nothing else on the host is slowed down.
//
//   echo "MAJ:MIN BPS" > /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device
//
// The rule is removed (BPS 0) in teardown.

import type { Test } from 'tap';
import fs from 'node:fs';

const RULES = '/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device';

/** Why writes cannot be throttled here, or undefined if they can. */
export function throttleUnsupported(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (blkio throttle)';
  try {
    fs.accessSync(RULES, fs.constants.W_OK);
  } catch {
    return `no writable ${RULES} (cgroup v1 blkio throttling)`;
  }
  return undefined;
}

/** "MAJ:MIN" of a block device node. */
function devNumber(dev: string): string {
  const rdev = fs.statSync(dev).rdev;
  const major = (rdev >> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  return `${major}:${minor}`;
}

/**
 * Limits writes to block device `dev` to `bytesPerSecond` until teardown (or,
 * should teardown not run, until this process exits: a later loop device
 * with the same number must not inherit the rule).
 */
export function throttleWrites(t: Test, dev: string, bytesPerSecond: number): void {
  const id = devNumber(dev);
  const lift = (): void => {
    process.removeListener('exit', lift);
    fs.writeFileSync(RULES, `${id} 0\n`);
  };
  fs.writeFileSync(RULES, `${id} ${bytesPerSecond}\n`);
  process.on('exit', lift);
  t.teardown(lift);
}
