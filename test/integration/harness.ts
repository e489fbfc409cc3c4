// Shared pieces of the integration suite: a real vublk daemon per test (or
// per file), the in-repo front-end playing QEMU and the guest driver, and
// checks on the image file and the daemon's log.
//
// Every daemon is started through startVublk, so VUBLK_TEST_ASAN=1 runs it
// with the AddressSanitizer addon and stop() fails on any sanitizer report.
// Teardown stops the daemon, checks it exited 0 and removes its directory.

import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { makeImage, startVublk, stopCleanly, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import { TestFrontend } from '../frontend/test-frontend';
import { Frontend } from '../../src/frontend/frontend';
import type { SetupOptions } from '../../src/frontend/setup-options';
import { BlkDriver, SECTOR_SIZE } from '../../src/frontend/blk-driver';
import type { RawDesc } from '../../src/frontend/split-ring';

export interface Daemon {
  v: VublkProcess;
  dir: string;
  image: string;
  /** What the daemon serves: the image, or the loop device in front of it (loopSectorSize). */
  disk: string;
  socket: string;
  imageBytes: number;
  capacitySectors: number;
  /** Stops the daemon (SIGTERM) and checks it exits 0; idempotent. */
  stop(): Promise<void>;
}

export interface DaemonOptions {
  /** Image size in bytes (default 32 MiB). */
  imageBytes?: number;
  queues?: number;
  queueSize?: number;
  readOnly?: boolean;
  serial?: string;
  /** Called with the image path before the daemon starts (to pre-fill it). */
  prepare?: (image: string) => void;
  extraArgs?: string[];
  /**
   * Serve the image through a loop block device with this logical sector
   * size (e.g. 4096: a 4K-native host disk). `image` stays the backing file,
   * which readImage() checks. Needs root and loop devices: see
   * loopUnsupported() (test/helpers/loop-device.ts).
   */
  loopSectorSize?: number;
  /** Serve this existing file (imageBytes long) instead of a fresh image in the daemon's directory. */
  diskFile?: string;
  /** Added to the daemon's environment (test hooks such as VUBLK_TEST_POLL_REARM_DELAY_MS). */
  env?: Record<string, string>;
}

/** Attaches file to a free loop device with the given sector size; teardown detaches it. */
function attachLoop(t: Test, file: string, sectorSize: number): string {
  const dev = execFileSync('losetup', ['--find', '--show', '--sector-size', String(sectorSize), file])
    .toString()
    .trim();
  t.teardown(() => {
    // With the device still open this only marks it for detach at last close.
    execFileSync('losetup', ['--detach', dev]);
  });
  return dev;
}

/** Starts a vublk daemon on a fresh sparse image; teardown stops it and checks exit 0. */
export async function startDaemon(t: Test, opts: DaemonOptions = {}): Promise<Daemon> {
  const dir = tmpDir('vublk-int-');
  const imageBytes = opts.imageBytes ?? 32 << 20;
  const image = opts.diskFile ?? makeImage(dir, imageBytes);
  opts.prepare?.(image);
  const socket = path.join(dir, 'vublk.sock');
  const disk = opts.loopSectorSize === undefined ? image : attachLoop(t, image, opts.loopSectorSize);
  const args = ['--disk', disk, '--socket', socket];
  if (opts.queues !== undefined) args.push('--queues', String(opts.queues));
  if (opts.queueSize !== undefined) args.push('--queue-size', String(opts.queueSize));
  if (opts.readOnly) args.push('--read-only');
  if (opts.serial !== undefined) args.push('--serial', opts.serial);
  args.push(...(opts.extraArgs ?? []));
  let v: VublkProcess;
  try {
    v = await startVublk(args, opts.env === undefined ? {} : { env: opts.env });
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let stopped: Promise<void> | undefined;
  const d: Daemon = {
    v,
    dir,
    image,
    disk,
    socket,
    imageBytes,
    capacitySectors: imageBytes / SECTOR_SIZE,
    stop() {
      stopped ??= stopCleanly(v);
      return stopped;
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

/** Connects a front-end, runs the QEMU start-up sequence; teardown closes it. */
export async function connect(
  t: Test,
  d: Daemon,
  setup: SetupOptions | false = {},
  opts: { timeoutMs?: number } = {},
): Promise<{ fe: TestFrontend; drv: BlkDriver }> {
  const fe = await TestFrontend.connect(d.socket, opts);
  t.teardown(() => fe.close());
  if (setup !== false) await fe.setup(setup);
  return { fe, drv: new BlkDriver(fe) };
}

/** Reads len bytes at offset from the image file (an ordinary buffered read). */
export function readImage(file: string, offset: number, len: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const out = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const n = fs.readSync(fd, out, done, len - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return out.subarray(0, done);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes bytes into the image file at offset (before the daemon starts, or to set up a pattern). */
export function writeImage(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** A recognisable, position-dependent pattern (differs per seed and per byte). */
export function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls cond every few ms until it holds or timeoutMs passes; returns whether it held. */
export async function until(cond: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}

export const WARN_LINE = /^vublk: warn: /;
export const VIOLATION_LINE = /^vublk: warn: disconnecting frontend: protocol violation conn=(\d+) rule=(.*)$/;

/** stderr lines the daemon wrote after `mark` (a length of stderr taken earlier). */
export function logSince(d: Daemon, mark: number): string[] {
  return d.v
    .stderr()
    .slice(mark)
    .split('\n')
    .filter((l) => l !== '');
}

/** The conn id of the first "frontend connected" line after mark. */
export async function connIdSince(d: Daemon, mark: number): Promise<number> {
  await until(() => logSince(d, mark).some((l) => /frontend connected conn=\d+/.test(l)), 5000);
  const line = logSince(d, mark).find((l) => /frontend connected conn=\d+/.test(l));
  if (line === undefined) throw new Error(`daemon logged no "frontend connected" line; stderr:\n${d.v.stderr()}`);
  return Number(/conn=(\d+)/.exec(line)![1]); // the regexp matched above
}

/** Waits until the daemon logs that connection conn closed (after mark). */
export async function waitConnClosed(d: Daemon, mark: number, conn: number, timeoutMs = 5000): Promise<string> {
  const re = new RegExp(`frontend connection closed conn=${conn}( |$)`);
  const ok = await until(() => logSince(d, mark).some((l) => re.test(l)), timeoutMs);
  if (!ok) throw new Error(`daemon did not log that conn ${conn} closed within ${timeoutMs} ms; stderr:\n${d.v.stderr()}`);
  return logSince(d, mark).find((l) => re.test(l))!; // found above
}

/**
 * The frontend was disconnected for breaking a rule: it saw EOF, and the
 * daemon logged exactly one warn line, the violation of conn naming `rule`,
 * then closed that connection (and nothing at error level).
 */
export async function expectViolation(t: Test, d: Daemon, fe: Frontend, mark: number, conn: number, rule: RegExp): Promise<void> {
  await t.resolves(fe.waitClosed(5000), 'the frontend sees EOF: the daemon closed the connection');
  await waitConnClosed(d, mark, conn);
  const lines = logSince(d, mark);
  const warns = lines.filter((l) => WARN_LINE.test(l));
  t.equal(warns.length, 1, `exactly one warn line:\n${warns.join('\n')}`);
  const m = VIOLATION_LINE.exec(warns[0] ?? '');
  t.ok(m, `it is a protocol-violation line: ${warns[0] ?? '(none)'}`);
  if (m) {
    t.equal(Number(m[1]), conn, 'for this connection');
    t.match(m[2]!, rule, `naming the rule (${rule})`);
  }
  t.notOk(
    lines.some((l) => /^vublk: error: /.test(l)),
    'no error-level line',
  );
}

/** Checks that the daemon is alive and serves a fresh frontend that does I/O; returns nothing. */
export async function expectServes(t: Test, d: Daemon, what = 'a fresh frontend is served and does I/O'): Promise<void> {
  t.equal(d.v.child.exitCode, null, 'the daemon is still running');
  const fe = await Frontend.connect(d.socket);
  try {
    await fe.setup({ queues: 1, memory: { regions: [4 << 20, 4 << 20] } });
    const drv = new BlkDriver(fe);
    const data = pattern(8192, Date.now() & 0xffff);
    const sector = 8 * 1000 + (Date.now() % 64) * 16;
    const w = await drv.write(0, sector, data);
    const r = await drv.read(0, sector, data.length);
    t.ok(w.status === 0 && r.status === 0 && r.data.equals(data), `${what} (write ${w.status}, read ${r.status})`);
    t.ok(readImage(d.image, sector * SECTOR_SIZE, data.length).equals(data), 'and the image holds what it wrote');
  } finally {
    fe.close();
  }
}

/** A token for raw ring entries: the used entry (if any) resolves it. */
export function rawToken(onUsed?: (len: number) => void): { resolve: (len: number) => void; reject: (err: Error) => void } {
  return { resolve: (len) => onUsed?.(len), reject: () => undefined };
}

/** Writes a raw descriptor into queue q's table. */
export function writeDesc(fe: Frontend, q: number, i: number, d: RawDesc): void {
  fe.queue(q).ring.writeDesc(i, d);
}

/** Number of open fds of a process (ls /proc/PID/fd). */
export function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** Lines of /proc/PID/maps that map one of the test front-end's memfds. */
export function guestMappings(pid: number): string[] {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.includes('memfd:vublk-test-ram') || l.includes('memfd:vublk-int-'));
}

/**
 * Busy-waits (synchronously, without yielding to the event loop) until the
 * daemon has popped `count` chains from queue q since the ring was set up,
 * which it tells by writing avail_event (EVENT_IDX must be negotiated): the
 * requests are then in the daemon's hands. Returns whether it saw that
 * within timeoutMs.
 */
export function spinUntilPopped(fe: Frontend, q: number, count: number, timeoutMs = 2000): boolean {
  const ring = fe.queue(q).ring;
  const { region, offset } = fe.mem!.locate(ring.usedGpa + 4 + 8 * ring.size); // setup() made the memory
  const u16 = new Uint16Array(region.buffer);
  const deadline = Date.now() + timeoutMs;
  while (Atomics.load(u16, offset / 2) !== (count & 0xffff)) {
    if (Date.now() > deadline) return false;
  }
  return true;
}

/** Path of strace, or undefined when it is not installed. */
export function stracePath(): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = `${dir}/strace`;
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Attaches strace to every thread of pid, tracing close(2), until the
 * returned stop() is called; stop() returns the trace lines.
 */
export async function traceCloses(pid: number, dir: string): Promise<{ stop(): Promise<string[]> }> {
  const strace = stracePath();
  if (strace === undefined) throw new Error('strace is not installed');
  const out = path.join(dir, `strace-${pid}-${Date.now()}.txt`);
  const child = spawn(strace, ['-f', '-e', 'trace=close', '-e', 'signal=none', '-p', String(pid), '-o', out], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  if (!(await until(() => /attached/.test(err), 5000))) {
    child.kill('SIGKILL');
    throw new Error(`strace did not attach to ${pid}: ${err}`);
  }
  await sleep(100); // every thread attached
  return {
    async stop() {
      child.kill('SIGINT');
      await exited;
      return fs
        .readFileSync(out, 'utf8')
        .split('\n')
        .filter((l) => l !== '');
    },
  };
}
