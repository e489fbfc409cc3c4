// One boot of the e2e guest under QEMU (TCG) with a vhost-user-blk-pci device on
// the backend's socket: runs /test.sh, captures the serial console, reports PASS/FAIL.
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { captureLines, hasExited, track } from '../daemon';
import { qemuOptValue } from '../qemu-opt';
import { ensureGuest, makeCpio } from './image';

export const RESULT_PREFIX = 'VUBLK-E2E-RESULT:';

export interface RunGuestOptions {
  /** vhost-user-blk unix socket of the backend (must already be listening). */
  socket: string;
  /** num-queues for vhost-user-blk-pci. */
  queues: number;
  /** queue-size for vhost-user-blk-pci (QEMU's default when unset: 128 or 256, by version). */
  queueSize?: number;
  /** Shell script run by the guest as /test.sh (exit 0 = pass). */
  script: string;
  /** Kill QEMU after this long (TCG boot alone takes ~5-10 s). */
  timeoutMs: number;
  /** Guest RAM (default 1024). */
  memMiB?: number;
  /**
   * Back guest RAM with a file in this directory (QEMU's memory-backend-file,
   * e.g. /dev/shm or a hugetlbfs mount) instead of a memfd.
   */
  memPath?: string;
  /** Guest vCPUs (default 2). */
  smp?: number;
  /** Receives every serial/QEMU output line. */
  log?: (line: string) => void;
  /** Extra QEMU arguments (e.g. more -device options). */
  extraQemuArgs?: string[];
  /** Kill QEMU early (e.g. when the backend dies and the guest would hang). */
  signal?: AbortSignal;
  /**
   * Reconnect the vhost-user chardev after the backend goes away:
   * `-chardev socket,...,reconnect=N` (true = 1 s). Default: no reconnect
   * (QEMU gives up on the device when the backend disconnects).
   */
  reconnect?: boolean | number;
}

export interface RunGuestResult {
  /** true iff the guest printed "VUBLK-E2E-RESULT: PASS" and QEMU exited by itself. */
  passed: boolean;
  /** Serial console + QEMU stderr, CRs/ANSI escapes stripped. */
  output: string;
  /** The text after "VUBLK-E2E-RESULT: " (e.g. "PASS", "FAIL fio ..."), if any. */
  result?: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Killed because `signal` fired. */
  aborted: boolean;
  durationMs: number;
}

export async function runGuest(opts: RunGuestOptions): Promise<RunGuestResult> {
  const { kernel, initramfs } = await ensureGuest(opts.log ? { log: opts.log } : {});
  const mem = opts.memMiB ?? 1024;
  const smp = opts.smp ?? 2;
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vublk-guest-run-'));
  try {
    // Linux unpacks concatenated initramfs archives, but a non-compressed cpio
    // that follows a compressed one is only recognised at a 4-byte aligned
    // offset ("invalid magic at start of compressed archive" otherwise), so
    // zero-pad the gzip part (zeros between archives are skipped).
    const base = await fsp.readFile(initramfs);
    const padLen = (512 - (base.length % 512)) % 512;
    const extra = makeCpio([{ name: 'test.sh', data: opts.script, mode: 0o755 }]);
    const initrd = path.join(tmp, 'initrd.img');
    await fsp.writeFile(initrd, Buffer.concat([base, Buffer.alloc(padLen), extra]));

    const reconnectSecs = opts.reconnect === true ? 1 : opts.reconnect === false ? 0 : Math.trunc(opts.reconnect ?? 0);
    const args = [
      '-accel',
      'tcg,thread=multi',
      '-cpu',
      'max',
      '-m',
      `${mem}M`,
      '-smp',
      String(smp),
      '-nographic',
      '-no-reboot',
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      'console=ttyS0 panic=-1 quiet',
      '-object',
      opts.memPath === undefined
        ? `memory-backend-memfd,id=mem,size=${mem}M,share=on`
        : `memory-backend-file,id=mem,size=${mem}M,mem-path=${qemuOptValue(opts.memPath)},share=on`,
      '-numa',
      'node,memdev=mem',
      '-chardev',
      `socket,id=c0,path=${qemuOptValue(opts.socket)}${reconnectSecs > 0 ? `,reconnect=${reconnectSecs}` : ''}`,
      '-device',
      `vhost-user-blk-pci,chardev=c0,num-queues=${opts.queues}${opts.queueSize !== undefined ? `,queue-size=${opts.queueSize}` : ''}`,
      ...(opts.extraQemuArgs ?? []),
    ];
    return await new Promise<RunGuestResult>((resolve, reject) => {
      const started = Date.now();
      const lines: string[] = [];
      const onLine = (l: string): void => {
        lines.push(l);
        opts.log?.(l);
      };
      const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      track(child);
      let timedOut = false;
      let aborted = false;
      const timer = setTimeout(() => {
        timedOut = true;
        onLine(`[harness] guest timed out after ${opts.timeoutMs} ms, killing QEMU`);
        child.kill('SIGKILL');
      }, opts.timeoutMs);
      const onAbort = (): void => {
        if (hasExited(child)) return;
        aborted = true;
        const why: unknown = opts.signal?.reason;
        onLine(`[harness] aborted (${why instanceof Error ? why.message : String(why)}), killing QEMU`);
        child.kill('SIGKILL');
      };
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
      const flush = captureLines(child, onLine);
      child.once('error', (e) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        reject(e);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        flush();
        const output = lines.join('\n');
        let result: string | undefined;
        for (const l of lines) {
          const i = l.indexOf(RESULT_PREFIX);
          if (i >= 0) result = l.slice(i + RESULT_PREFIX.length).trim();
        }
        resolve({
          passed: !timedOut && !aborted && code !== null && result === 'PASS',
          output,
          ...(result !== undefined ? { result } : {}),
          exitCode: code,
          signal,
          timedOut,
          aborted,
          durationMs: Date.now() - started,
        });
      });
    });
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
