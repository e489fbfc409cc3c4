// Loop block devices for tests: a file behind /dev/loopN with a chosen
// logical sector size and direct I/O to the file,
//
//   losetup --find --show --sector-size N --direct-io=on FILE
//
// (a 4Kn host disk with N = 4096), checked to have that sector size,
// detached in teardown and, as a last resort, when the test process exits.
// Used by the integration tests, test/blk/loop-4kn.test.ts and the QEMU
// e2e tests (guest/harness.ts guestDisk()).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface LoopDevice {
  /** /dev/loopN */
  dev: string;
  /** Backing file. */
  file: string;
  /** Size of the backing file. */
  bytes: number;
  /**
   * Detaches the device (idempotent). A just-closed device can be briefly
   * busy: retries `tries` times, `delayMs` apart (default 20 x 100 ms), then
   * throws losetup's complaint.
   */
  detach(opts?: { tries?: number; delayMs?: number }): void;
}

/** Loop devices attached by this process and not yet detached. */
const attached = new Set<string>();
let exitHook = false;

function losetup(args: string[]): { ok: boolean; stdout: string; stderr: string; status: number | null } {
  const r = spawnSync('losetup', args, { encoding: 'utf8', timeout: 30000 });
  return {
    ok: r.status === 0 && !r.error,
    stdout: (r.stdout ?? '').trim(),
    stderr: `${(r.stderr ?? '').trim()}${r.error ? ` (${r.error.message})` : ''}`,
    status: r.status,
  };
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function detachLoop(dev: string, tries: number, delayMs: number): void {
  if (!attached.has(dev)) return;
  for (let i = 0; ; i++) {
    const r = losetup(['--detach', dev]);
    if (r.ok) {
      attached.delete(dev);
      return;
    }
    if (i >= tries) throw new Error(`losetup --detach ${dev} failed (status ${r.status}): ${r.stderr || r.stdout}`);
    sleepSync(delayMs);
  }
}

/** Why loop devices of a chosen sector size cannot be made here (root, the loop module, losetup), or undefined. */
export function loopUnsupported(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (losetup)';
  if (!fs.existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop module not loaded?)';
  if (!losetup(['--version']).ok) return 'losetup is not installed (apt-get install mount)';
  return undefined;
}

/** /sys/block/<dev>/<rel> (e.g. queue/logical_block_size, loop/dio), or undefined if it cannot be read. */
export function sysBlock(dev: string, rel: string): string | undefined {
  try {
    return fs.readFileSync(path.join('/sys/block', path.basename(dev), rel), 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** /sys/block/<dev>/<rel> as a number (throws if it cannot be read). */
export function sysBlockNumber(dev: string, rel: string): number {
  return Number(fs.readFileSync(path.join('/sys/block', path.basename(dev), rel), 'utf8').trim());
}

/**
 * A loop device with `sectorSize`-byte logical sectors and direct I/O over
 * `file`, which must already hold its contents. Throws (leaving nothing
 * attached) if losetup fails or the device has another logical sector size.
 * Call detach() in teardown.
 */
export function attachLoop(file: string, sectorSize: number): LoopDevice {
  const args = ['--find', '--show', '--sector-size', String(sectorSize), '--direct-io=on', file];
  const r = losetup(args);
  // --show prints the device even when a later step (e.g. direct I/O) failed.
  const dev = /^\/dev\/loop\d+$/m.exec(r.stdout)?.[0];
  if (dev !== undefined) {
    attached.add(dev);
    if (!exitHook) {
      exitHook = true;
      // Last resort if a teardown never ran.
      process.once('exit', () => {
        for (const d of attached) losetup(['--detach', d]);
      });
    }
  }
  if (!r.ok || dev === undefined) {
    if (dev !== undefined && losetup(['--detach', dev]).ok) attached.delete(dev);
    throw new Error(`losetup ${args.join(' ')} failed (status ${r.status}): ${r.stderr || r.stdout}`);
  }
  const detach = (opts: { tries?: number; delayMs?: number } = {}): void => detachLoop(dev, opts.tries ?? 20, opts.delayMs ?? 100);
  const ss = sysBlock(dev, 'queue/logical_block_size');
  if (ss !== String(sectorSize)) {
    detach();
    throw new Error(`${dev} has ${ss}-byte logical sectors, not ${sectorSize}`);
  }
  return { dev, file, bytes: fs.statSync(file).size, detach };
}
