// The one vublk launcher of the tests: runs the daemon as a child process the way
// users run it (node bin/vublk.js ...), for the integration, service and e2e tests.
// With VUBLK_TEST_ASAN=1 the child loads the AddressSanitizer build of the addon,
// and stop() fails on any ASan report.

import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot as findRepoRoot } from './repo-root';

export const repoRoot = findRepoRoot();
export const vublkBin = path.join(repoRoot, 'bin', 'vublk.js');

export interface VublkProcess {
  child: ChildProcess;
  socket: string;
  /** Everything the daemon wrote to stderr so far. */
  stderr(): string;
  stdout(): string;
  /** Resolves when a stderr line matches, rejects after timeoutMs. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGTERM (or the given signal) and wait for exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

export function asanEnabled(): boolean {
  return process.env.VUBLK_TEST_ASAN === '1';
}

/** The environment that makes a vublk child load the ASan build of the addon (VUBLK_TEST_ASAN=1). */
function asanEnv(): NodeJS.ProcessEnv {
  const lib = execFileSync('gcc', ['-print-file-name=libasan.so']).toString().trim();
  return {
    LD_PRELOAD: lib,
    VUBLK_NATIVE_BUILD: 'asan',
    // node itself leaks by design at exit; we look for memory errors.
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  };
}

/** Path of the ASan build of the addon (scripts/build-asan.sh writes it). */
export const asanAddonPath = path.join(repoRoot, 'build-asan', 'Release', 'vublk_native.node');

/** Whether the daemon process `pid` runs the ASan build of the addon. */
export function runsAsanAddon(pid: number): boolean {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  return maps.includes('libasan') && maps.includes('build-asan');
}

export function tmpDir(prefix = 'vublk-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A sparse raw image of `bytes` in dir. */
export function makeImage(dir: string, bytes = 64 * 1024 * 1024, name = 'disk.img'): string {
  const file = path.join(dir, name);
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, bytes);
  return file;
}

function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * VUBLK_TEST_WORKERS=N (read by the test helpers only) starts every daemon
 * with `--workers N` unless the test chose its own: the integration suite
 * runs in-thread (0) and on worker threads this way.
 */
export function withTestWorkers(args: string[]): string[] {
  const n = process.env.VUBLK_TEST_WORKERS;
  if (n === undefined || n === '' || args.some((a) => a === '--workers' || a.startsWith('--workers='))) return args;
  return [...args, '--workers', n];
}

/**
 * Starts vublk and waits until it serves (socket exists and the start line is
 * logged). With `wrapper`, through that command: `wrapper... node
 * bin/vublk.js args...`; it must exec node in the same process (setpriv and
 * prlimit do), so child.pid is vublk's pid and signals reach it. `ready`
 * matches the start-up line (default: the text format's "serving" line).
 * `env` is added to the environment; `fd3` is passed to the child as its
 * fd 3 (a listening socket for socket activation); `onSpawn` sees the child
 * before any of its output (to capture that too).
 */
export async function startVublk(
  args: string[],
  opts: {
    cwd?: string;
    socket?: string;
    timeoutMs?: number;
    wrapper?: string[];
    asan?: boolean;
    nodeArgs?: string[];
    ready?: RegExp;
    env?: NodeJS.ProcessEnv;
    fd3?: number;
    onSpawn?: (child: ChildProcess) => void;
  } = {},
): Promise<VublkProcess> {
  args = withTestWorkers(args);
  const socketIdx = args.indexOf('--socket');
  const socket = opts.socket ?? (socketIdx >= 0 ? path.resolve(opts.cwd ?? '.', args[socketIdx + 1] ?? '') : '');
  // opts.asan overrides VUBLK_TEST_ASAN (the fuzzer picks the ASan build itself when it exists).
  const env = { ...process.env, ...((opts.asan ?? asanEnabled()) ? asanEnv() : {}), ...opts.env };
  const [cmd, ...cmdArgs] = [...(opts.wrapper ?? []), process.execPath, ...(opts.nodeArgs ?? []), vublkBin, ...args] as [
    string,
    ...string[],
  ];
  const stdio = opts.fd3 === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', opts.fd3];
  const child = spawn(cmd, cmdArgs, { cwd: opts.cwd, env, stdio: stdio as ['ignore', 'pipe', 'pipe'] });
  opts.onSpawn?.(child);
  const via = opts.wrapper?.length ? ` (via ${opts.wrapper.join(' ')})` : '';
  let err = '';
  let out = '';
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void }> = [];
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    for (const w of [...waiters]) {
      const line = err.split('\n').find((l) => w.re.test(l));
      if (line !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const proc: VublkProcess = {
    child,
    socket,
    stderr: () => err,
    stdout: () => out,
    waitForLog(re, timeoutMs = 10000) {
      const line = err.split('\n').find((l) => re.test(l));
      if (line !== undefined) return Promise.resolve(line);
      return new Promise((resolve, reject) => {
        const w = { re, resolve };
        waiters.push(w);
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`vublk did not log ${re} within ${timeoutMs} ms; stderr:\n${err}`));
        }, timeoutMs);
        const orig = w.resolve;
        w.resolve = (l) => {
          clearTimeout(timer);
          orig(l);
        };
      });
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const r = await exited;
      if (/AddressSanitizer|UndefinedBehaviorSanitizer|runtime error:/.test(err)) {
        throw new Error(`sanitizer report from vublk:\n${err}`);
      }
      return { ...r, stderr: err };
    },
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 15000);
  await Promise.race([
    proc.waitForLog(opts.ready ?? /vublk: info: serving /, opts.timeoutMs ?? 15000),
    exited.then((r) => {
      throw new Error(`vublk${via} exited (${r.code ?? r.signal}) before serving; stderr:\n${err}`);
    }),
  ]);
  while (socket !== '' && !exists(socket)) {
    if (Date.now() > deadline) throw new Error(`socket ${socket} never appeared`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return proc;
}

/** Stops v (SIGTERM) and throws unless it exited 0 (and, with ASan, reported nothing). */
export async function stopCleanly(v: VublkProcess): Promise<void> {
  const r = await v.stop('SIGTERM');
  if (r.code !== 0) throw new Error(`vublk exited with ${r.code ?? r.signal}; stderr:\n${r.stderr}`);
}

/**
 * Teardown of a test whose daemon (started later, if at all) works in dir:
 * stops daemon() (it must exit 0, see stopCleanly), then runs `cleanup` and
 * removes dir even if that failed.
 */
export function teardownDaemon(t: Test, dir: string, daemon: () => VublkProcess | undefined, cleanup?: () => void): void {
  t.teardown(async () => {
    try {
      const v = daemon();
      if (v) await stopCleanly(v);
    } finally {
      try {
        cleanup?.();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  });
}

/** The daemon's `vublk: warn: ` / `vublk: error: ` lines after stderr offset `mark`. */
export function warnLines(v: VublkProcess, mark = 0): string[] {
  return v
    .stderr()
    .slice(mark)
    .split('\n')
    .filter((l) => /^vublk: (warn|error): /.test(l));
}

/** Runs vublk to completion (for start-up failures). */
export function runVublk(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [vublkBin, ...args], { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 15000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: out, stderr: err });
    });
  });
}
