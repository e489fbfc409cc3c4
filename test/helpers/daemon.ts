// Child processes a test starts (daemons, QEMU, the guest build): output captured
// line by line, readiness by socket, SIGTERM-then-SIGKILL stop, none left behind.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

export type Exit = { code: number | null; signal: NodeJS.Signals | null };

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

export function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Never leave QEMU / daemons behind if the test process dies.
    process.once('exit', () => {
      for (const c of liveChildren) {
        try {
          c.kill('SIGKILL');
        } catch {
          /* ignore */
        }
      }
    });
  }
}

export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Splits a byte stream into lines (CR and ANSI escapes stripped) for `onLine`. */
function lineSplitter(onLine: (line: string) => void): { push(chunk: Buffer): void; flush(): void } {
  let pending = '';
  return {
    push(chunk: Buffer) {
      pending += chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        onLine(cleanLine(pending.slice(0, nl)));
        pending = pending.slice(nl + 1);
      }
    },
    flush() {
      if (pending.length > 0) onLine(cleanLine(pending));
      pending = '';
    },
  };
}

/**
 * Feeds the child's stdout and stderr, line by line, to onLine; returns
 * flush() for the unterminated last lines (call it on 'close').
 */
export function captureLines(child: ChildProcess, onLine: (line: string) => void): () => void {
  const out = lineSplitter(onLine);
  const err = lineSplitter(onLine);
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  return () => {
    out.flush();
    err.flush();
  };
}

function cleanLine(s: string): string {
  // ANSI CSI sequences, ESC c (terminal reset) that SeaBIOS emits, and CRs.
  // eslint-disable-next-line no-control-regex -- the escapes to strip are control sequences
  return s.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc|\r/g, '');
}

const daemonOutput = new WeakMap<ChildProcess, string[]>();

/** stdout+stderr lines captured from a daemon started by startDaemon(). */
export function daemonLog(child: ChildProcess): string {
  return (daemonOutput.get(child) ?? []).join('\n');
}

/**
 * Resolves with the first captured daemon line matching `re` (including lines
 * already captured), or undefined after `timeoutMs` or when the daemon has
 * exited without printing one.
 */
export async function waitForDaemonLine(child: ChildProcess, re: RegExp, timeoutMs: number): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = (daemonOutput.get(child) ?? []).find((l) => re.test(l));
    if (hit !== undefined) return hit;
    if (hasExited(child) || Date.now() > deadline) {
      // One more look: the exit may have raced the last lines.
      await new Promise((r) => setTimeout(r, 50));
      return (daemonOutput.get(child) ?? []).find((l) => re.test(l));
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function isSocket(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isSocket();
  } catch {
    return false;
  }
}

export interface StartDaemonOptions {
  /** Unix socket the daemon creates; we wait for it to appear. */
  socket: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Default 15000. */
  readyTimeoutMs?: number;
  log?: (line: string) => void;
  /**
   * Default true: delete whatever is at `socket` first. false leaves a stale
   * socket (e.g. of a SIGKILLed daemon) for the daemon itself to deal with;
   * then give `readyLine`, since the stale socket already "exists".
   */
  removeStaleSocket?: boolean;
  /** Also wait for an output line matching this before calling the daemon ready. */
  readyLine?: RegExp;
}

/**
 * Tracks a daemon child (killed if the test process exits) and captures its
 * stdout+stderr lines for daemonLog() and waitForDaemonLine(), passing each
 * to `log` as `[name] line`; closed() tells whether its stdio has ended.
 */
export function watchDaemon(child: ChildProcess, name: string, log?: (line: string) => void): { lines: string[]; closed: () => boolean } {
  track(child);
  const lines: string[] = [];
  daemonOutput.set(child, lines);
  const onLine = (l: string): void => {
    lines.push(l);
    log?.(`[${name}] ${l}`);
  };
  const flush = captureLines(child, onLine);
  let closed = false;
  child.once('close', () => {
    flush();
    closed = true;
  });
  return { lines, closed: () => closed };
}

/** Spawn a daemon with captured stdio; resolve once `socket` exists as a socket. */
export async function startDaemon(cmd: string, args: string[], opts: StartDaemonOptions): Promise<ChildProcess> {
  if (opts.removeStaleSocket ?? true) await fsp.rm(opts.socket, { force: true });
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.env !== undefined ? { env: opts.env } : {}),
  });
  const name = path.basename(cmd);
  const { lines, closed } = watchDaemon(child, name, opts.log);
  let spawnError: Error | undefined;
  child.once('error', (e) => {
    spawnError = e;
  });
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15000);
  for (;;) {
    if (spawnError) throw new Error(`${cmd}: ${spawnError.message}`);
    if ((opts.readyLine === undefined || lines.some((l) => opts.readyLine!.test(l))) && (await isSocket(opts.socket))) {
      return child;
    }
    if (hasExited(child)) {
      // Let the stdio pipes drain so the error carries the daemon's message.
      if (!closed())
        await new Promise((r) => {
          child.once('close', r);
          setTimeout(r, 1000);
        });
      throw new Error(
        `${name} exited (code ${child.exitCode}, signal ${child.signalCode}) before creating ${opts.socket}:\n` +
          `${[cmd, ...args].join(' ')}\n${lines.join('\n')}`,
      );
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `${name} did not create ${opts.socket}${opts.readyLine ? ` (and print ${opts.readyLine})` : ''} ` +
          `within ${opts.readyTimeoutMs ?? 15000} ms:\n${lines.join('\n')}`,
      );
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Signal a daemon (SIGTERM by default), SIGKILL after `timeoutMs`; resolves with its exit status. */
export function stopDaemon(
  child: ChildProcess,
  opts: { signal?: NodeJS.Signals; timeoutMs?: number } = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (hasExited(child)) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 10000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
    child.kill(opts.signal ?? 'SIGTERM');
  });
}

/** Resolves once the daemon's stdout/stderr have ended (all its lines captured), or after `ms`. */
export async function outputDrained(child: ChildProcess, ms = 3000): Promise<void> {
  const ended = (s: NodeJS.ReadableStream | null): boolean => {
    const r = s as unknown as { readableEnded?: boolean; destroyed?: boolean } | null;
    return r === null || r.readableEnded === true || r.destroyed === true;
  };
  const deadline = Date.now() + ms;
  while (!(ended(child.stdout) && ended(child.stderr)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
}
