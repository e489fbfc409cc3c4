// vublk as the backend of an e2e guest: started through the one vublk launcher
// (vublk-process.ts) with its output captured for daemonLog(), and its restarts.
import type { ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import { watchDaemon } from '../daemon';
import { repoRoot } from '../repo-root';
import { startVublk as startVublkProcess } from '../vublk-process';
import { e2eLog } from './verbose';

/**
 * vublk's `vublk: warn: ...` / `vublk: error: ...` lines (a protocol violation,
 * an internal error, a failed drain...). A clean run has none.
 */
export function vublkProblemLines(log: string): string[] {
  return log.split('\n').filter((l) => /\bvublk: (warn|error):/.test(l));
}

export interface VublkOptions {
  image: string;
  socket: string;
  queues: number;
  extraArgs?: string[];
  log?: (line: string) => void;
  /**
   * Default true. false leaves a stale socket (of a killed vublk) in place, so
   * vublk's own stale-socket check is exercised.
   */
  removeStaleSocket?: boolean;
}

/**
 * Starts `node bin/vublk.js --disk IMG --socket SOCK --queues N --workers N` from the repo
 * root, without the ASan build whatever VUBLK_TEST_ASAN says; resolves once
 * it serves on the socket. Stop it with stopDaemon().
 */
export async function startVublkBackend(opts: VublkOptions): Promise<ChildProcess> {
  if (opts.removeStaleSocket ?? true) await fsp.rm(opts.socket, { force: true });
  const extra = opts.extraArgs ?? [];
  // One data-plane worker per queue whatever the machine's core count (the default caps it there).
  const workers = extra.some((a) => a.startsWith('--workers')) ? [] : ['--workers', String(opts.queues)];
  const v = await startVublkProcess(
    ['--disk', opts.image, '--socket', opts.socket, '--queues', String(opts.queues), ...workers, ...extra],
    {
      cwd: repoRoot(),
      socket: opts.socket,
      asan: false,
      ready: /\bvublk: info: serving\b/,
      onSpawn: (child) => void watchDaemon(child, 'node', opts.log),
    },
  );
  return v.child;
}

/** One of the vublk processes that replace each other on one image and socket in a restart test. */
export interface VublkGeneration {
  /** 1 for the first vublk of the run, then 2, 3... */
  n: number;
  child: ChildProcess;
  /** Stops treating its exit as a failure: call before stopping it on purpose. */
  expectExit(): void;
}

/**
 * Starts vublk #n on image and socket, over the stale socket a killed one
 * left (vublk must replace it itself); onUnexpectedExit gets an error if it
 * exits before expectExit() (a dead backend leaves the guest hanging).
 * VUBLK_E2E_VERBOSE=1 streams its output tagged [vublk#n].
 */
export async function startVublkGeneration(o: {
  image: string;
  socket: string;
  queues: number;
  n: number;
  onUnexpectedExit: (err: Error) => void;
}): Promise<VublkGeneration> {
  const child = await startVublkBackend({
    image: o.image,
    socket: o.socket,
    queues: o.queues,
    removeStaleSocket: false,
    ...(e2eLog ? { log: (l: string) => e2eLog?.(`[vublk#${o.n}] ${l}`) } : {}),
  });
  const onExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    o.onUnexpectedExit(new Error(`vublk #${o.n} exited on its own (code ${code}, signal ${sig})`));
  child.once('exit', onExit);
  return { n: o.n, child, expectExit: () => void child.off('exit', onExit) };
}
