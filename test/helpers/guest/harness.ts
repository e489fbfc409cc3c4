// The frame of an e2e test file: guestTest() (prerequisites, guest build), the
// disk under test, one guest boot against a backend, and the checks every boot shares.
import type { Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { daemonLog, outputDrained, stopDaemon, waitForDaemonLine, type Exit } from '../daemon';
import { attachLoop, sysBlock, type LoopDevice } from '../loop-device';
import { vublkProblemLines } from './backends';
import { ensureGuest } from './image';
import { testWithPrerequisites, type Prerequisites } from './prerequisites';
import { runGuest, type RunGuestOptions, type RunGuestResult } from './run';
import { e2eLog } from './verbose';

/** The last n lines of s (diagnostics of a failed assertion). */
export function tail(s: string, n = 60): string {
  return s.split('\n').slice(-n).join('\n');
}

/**
 * A file's QEMU e2e test (see testWithPrerequisites): builds or reuses the
 * guest (ensureGuest), then runs fn. Plain `node file.test.js` gives the
 * whole file tap's 30 s default: it gets fileTimeoutMs (the tap runner's own
 * limit comes from package.json "tap.timeout").
 */
export function guestTest(
  t: Test,
  opts: { prereq: Prerequisites; ciWhat: string; name: string; skipName: string; timeoutMs: number; fileTimeoutMs: number },
  fn: (tt: Test) => Promise<void>,
): void {
  if (opts.prereq.ok) t.setTimeout(opts.fileTimeoutMs);
  void testWithPrerequisites(
    t,
    opts.prereq,
    opts.ciWhat,
    opts.name,
    { timeout: opts.timeoutMs },
    async (tt) => {
      const t0 = Date.now();
      await ensureGuest(e2eLog ? { log: e2eLog } : {});
      tt.comment(`guest ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      await fn(tt);
      tt.comment(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    },
    opts.skipName,
  );
}

/** Create a sparse raw image of `bytes`. */
export async function createSparseImage(file: string, bytes: number): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

export interface GuestDisk {
  dir: string;
  /** The sparse image file. */
  image: string;
  /** Where the backend is to listen. */
  socket: string;
  /** With loop4k: the 4K-native direct-I/O loop device over the image. */
  loop: LoopDevice | undefined;
  /** What the backend serves: the loop device, else the image. */
  disk: string;
}

/**
 * A sparse image of imageBytes (named imageName, default disk.img) in a fresh
 * directory under VUBLK_E2E_TMPDIR (default the OS tmpdir; the backend opens
 * it with O_DIRECT, so it must be a file system that supports that, not
 * tmpfs). With loop4k, behind a loop device with 4096-byte logical sectors
 * and direct I/O, which must really have both (comments its sysfs limits).
 * One teardown undoes it all, in this order: the backend daemon() (if still
 * running), the loop device, the directory.
 */
export async function guestDisk(
  tt: Test,
  opts: {
    prefix: string;
    imageBytes: number;
    imageName?: string;
    loop4k?: boolean;
    what?: string;
    daemon?: () => ChildProcess | undefined;
  },
): Promise<GuestDisk> {
  const dir = await fsp.mkdtemp(path.join(process.env.VUBLK_E2E_TMPDIR ?? os.tmpdir(), opts.prefix));
  const image = path.join(dir, opts.imageName ?? 'disk.img');
  let loop: LoopDevice | undefined;
  tt.teardown(async () => {
    const child = opts.daemon?.();
    if (child !== undefined) await stopDaemon(child, { timeoutMs: 10000 });
    if (loop !== undefined) {
      try {
        loop.detach({ delayMs: 250 });
        tt.comment(`teardown: ${loop.dev} detached`);
      } catch (err) {
        tt.comment(`teardown: ${loop.dev} NOT detached: ${(err as Error).message}`);
      }
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });
  await createSparseImage(image, opts.imageBytes);
  if (opts.loop4k) {
    loop = attachLoop(image, 4096);
    const dev = loop.dev;
    const lbs = sysBlock(dev, 'queue/logical_block_size');
    const dio = sysBlock(dev, 'loop/dio');
    const attrs = ['physical_block_size', 'dma_alignment', 'discard_max_bytes', 'discard_granularity'];
    tt.comment(
      `${opts.what !== undefined ? `${opts.what}: ` : ''}${dev} -> ${image}: logical_block_size=${lbs} dio=${dio} ` +
        attrs.map((a) => `${a}=${sysBlock(dev, `queue/${a}`)}`).join(' '),
    );
    // The host setup itself must be what the test is about.
    if (lbs !== '4096' || dio !== '1') {
      throw new Error(
        `${dev} is not a 4K-native direct-I/O loop device (logical_block_size=${lbs}, dio=${dio}); ` +
          `is ${dir} on a file system with O_DIRECT support? (set VUBLK_E2E_TMPDIR)`,
      );
    }
  }
  return { dir, image, socket: path.join(dir, 'vhost.sock'), loop, disk: loop?.dev ?? image };
}

export interface GuestRun {
  res: RunGuestResult;
  /** How the backend exited when stopped with SIGTERM after the guest. */
  stopped: Exit;
  /** Everything the backend printed (see daemonLog), its output drained. */
  output: string;
  /** runGuestWith(..., waitForClose = true) was asked to wait for closedLine. */
  waitedForClose: boolean;
  /** vublk's "frontend connection closed" line after QEMU went (undefined if none came). */
  closedLine: string | undefined;
}

/**
 * One guest boot (runGuest) against the running backend `daemon` (`name` in
 * messages). If the backend exits during the run the guest's I/O would hang
 * until the timeout: QEMU is stopped early then. With waitForClose, waits
 * (10 s at most) for vublk to notice by itself that QEMU is gone (and log its
 * counters). Then always stops the backend (SIGTERM, SIGKILL after 10 s) and
 * lets its output drain.
 */
export async function runGuestWith(daemon: ChildProcess, name: string, opts: RunGuestOptions, waitForClose = false): Promise<GuestRun> {
  const ac = new AbortController();
  const onExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    ac.abort(new Error(`${name} exited during the run (code ${code}, signal ${sig})`));
  daemon.once('exit', onExit);
  let res: RunGuestResult;
  let closedLine: string | undefined;
  let stopped: Exit;
  try {
    res = await runGuest({ ...opts, signal: ac.signal });
    if (waitForClose) closedLine = await waitForDaemonLine(daemon, /\bvublk: info: frontend connection closed\b/, 10000);
  } finally {
    daemon.off('exit', onExit);
    stopped = await stopDaemon(daemon, { signal: 'SIGTERM', timeoutMs: 10000 });
    await outputDrained(daemon);
  }
  return { res, stopped, output: daemonLog(daemon), waitedForClose: waitForClose, closedLine };
}

/** The guest reported PASS (`message`); on failure with the guest's and the backend's last lines. */
export function expectGuestPass(tt: Test, run: { res: RunGuestResult; output: string }, message: string): void {
  const { res } = run;
  tt.ok(res.passed, message, {
    result: res.result,
    exitCode: res.exitCode,
    signal: res.signal,
    timedOut: res.timedOut,
    backendDied: res.aborted,
    guestOutput: tail(res.output),
    backendOutput: tail(run.output, 30),
  });
}

/**
 * The backend `name` noticed by itself that QEMU went (if the run waited for
 * that), exited 0 on SIGTERM (it drains, cleans up, exits) and, if it is
 * vublk, logged no warn/error line.
 */
export function expectCleanStop(tt: Test, name: string, run: GuestRun): void {
  const backendOutput = tail(run.output, 30);
  if (run.waitedForClose) {
    tt.ok(run.closedLine !== undefined, `${name} noticed the frontend connection close by itself`, { backendOutput });
  }
  tt.same(run.stopped, { code: 0, signal: null }, `${name} exits 0 on SIGTERM`, { backendOutput });
  if (name === 'vublk') tt.same(vublkProblemLines(run.output), [], 'vublk logged no warn/error line', { backendOutput });
}
