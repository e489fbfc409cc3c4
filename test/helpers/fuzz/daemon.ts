// A daemon for the long-running integration tools (message fuzzer, churn):
// like harness.startDaemon, but the caller picks the addon build, and a
// daemon that had to be killed (it hung) is not also reported as a failed
// exit at teardown.

import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, startVublk, tmpDir } from '../vublk-process';
import type { Daemon } from '../../integration/harness';
import { SECTOR_SIZE } from '../../../src/frontend/blk-driver';

export interface ToolDaemon extends Daemon {
  /** SIGKILLs a hung daemon; teardown then only cleans up. */
  kill(): Promise<void>;
  pid: number;
}

export async function startToolDaemon(
  t: Test,
  opts: { asan: boolean; imageBytes: number; queues: number; nodeArgs?: string[] },
): Promise<ToolDaemon> {
  const dir = tmpDir('vublk-tool-');
  const image = makeImage(dir, opts.imageBytes);
  const socket = path.join(dir, 'vublk.sock');
  const v = await startVublk(['--disk', image, '--socket', socket, '--queues', String(opts.queues)], {
    asan: opts.asan,
    nodeArgs: opts.nodeArgs,
  }).catch((err: unknown) => {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  let killed = false;
  let stopped: Promise<void> | undefined;
  const d: ToolDaemon = {
    v,
    dir,
    image,
    disk: image,
    socket,
    imageBytes: opts.imageBytes,
    capacitySectors: opts.imageBytes / SECTOR_SIZE,
    pid: v.child.pid!, // spawned
    stop() {
      stopped ??= (async () => {
        let r: Awaited<ReturnType<typeof v.stop>>;
        try {
          r = await v.stop('SIGTERM');
        } catch (err) {
          if (killed) return; // its sanitizer report was reported already
          throw err;
        }
        if (!killed && r.code !== 0) throw new Error(`vublk exited with ${r.code ?? r.signal}; stderr tail:\n${r.stderr.slice(-4000)}`);
      })();
      return stopped;
    },
    async kill() {
      killed = true;
      if (v.child.exitCode === null && v.child.signalCode === null) v.child.kill('SIGKILL');
      await d.stop().catch(() => undefined);
    },
  };
  t.teardown(async () => {
    try {
      await d.stop();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  return d;
}
