/**
 * QEMU end-to-end tests: boot a real Linux guest (TCG) with a vhost-user-blk-pci
 * disk served by the selected backend, and run data-integrity workloads in it.
 *
 * Backend: VUBLK_E2E_BACKEND=vublk (default) | qsd (qemu-storage-daemon, to
 * check the harness and the guest scripts against a reference backend).
 * Every boot also requires the backend to exit 0 on SIGTERM, and vublk to log
 * no `vublk: warn:` / `vublk: error:` line (protocol violations, internal
 * errors, failed drains must not go unnoticed).
 * VUBLK_E2E_VERBOSE=1 streams guest/backend output to stderr.
 * Without the prerequisites (qemu-system-x86_64, tools to build the guest) the
 * test is skipped, except under CI (env CI set), where it fails.
 */
import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  createSparseImage,
  daemonLog,
  ensureGuest,
  ext4Script,
  findCommand,
  fioVerifyScript,
  guestPrerequisites,
  repoRoot,
  runGuest,
  startQsd,
  startVublk,
  stopDaemon,
  vublkProblemLines,
  type RunGuestResult,
} from '../helpers/qemu-guest';

const QUEUES = 2;
const IMAGE_BYTES = 256 * 1024 * 1024;
const GUEST_TIMEOUT_MS = 5 * 60 * 1000;
const BACKEND = (process.env.VUBLK_E2E_BACKEND || 'vublk').trim();
const VERBOSE = !!process.env.VUBLK_E2E_VERBOSE;
const log = VERBOSE ? (l: string): void => void process.stderr.write(`${l}\n`) : undefined;

// ------------------------------------------------------------- backend ---

interface Backend {
  name: string;
  child: ChildProcess;
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

/** The one place that decides which vhost-user-blk backend serves the guest. */
async function startBackend(image: string, socket: string, queues: number): Promise<Backend> {
  let child: ChildProcess;
  switch (BACKEND) {
    case 'qsd':
      child = await startQsd({ image, socket, queues, ...(log ? { log } : {}) });
      break;
    case 'vublk':
      // node bin/vublk.js --disk IMG --socket SOCK --queues N
      child = await startVublk({ image, socket, queues, ...(log ? { log } : {}) });
      break;
    default:
      throw new Error(`VUBLK_E2E_BACKEND must be qsd or vublk, got '${BACKEND}'`);
  }
  return {
    name: BACKEND,
    child,
    stop: () => stopDaemon(child, { signal: 'SIGTERM', timeoutMs: 10000 }),
    output: () => daemonLog(child),
  };
}

function backendPrerequisites(): { ok: boolean; reason?: string } {
  if (BACKEND === 'qsd') {
    return findCommand('qemu-storage-daemon')
      ? { ok: true }
      : { ok: false, reason: 'qemu-storage-daemon not found (apt-get install qemu-utils)' };
  }
  if (BACKEND === 'vublk') {
    const bin = path.join(repoRoot(), 'bin', 'vublk.js');
    return fs.existsSync(bin) ? { ok: true } : { ok: false, reason: `${bin} not found` };
  }
  return { ok: false, reason: `unknown VUBLK_E2E_BACKEND '${BACKEND}'` };
}

// ------------------------------------------------------------- helpers ---

/** The bits of a tap subtest that bootWith() uses. */
interface SubTest {
  teardown(fn: () => unknown): void;
  comment(...args: unknown[]): void;
  ok(value: unknown, message: string, extra: Record<string, unknown>): boolean;
  same(found: unknown, wanted: unknown, message: string, extra: Record<string, unknown>): boolean;
}

function tail(s: string, n = 60): string {
  return s.split('\n').slice(-n).join('\n');
}

/**
 * Fresh sparse image + backend + one guest boot running `script`.
 * Returns the guest result (no assertions) plus the backend's captured output.
 */
async function bootWith(
  tt: SubTest,
  script: string,
  imageBytes = IMAGE_BYTES,
): Promise<{ res: RunGuestResult; backendName: string; backendOutput: string }> {
  let stopped: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  // O_DIRECT needs a real filesystem (not tmpfs); override with VUBLK_E2E_TMPDIR.
  const dir = await fsp.mkdtemp(path.join(process.env.VUBLK_E2E_TMPDIR ?? os.tmpdir(), 'vublk-e2e-'));
  tt.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.img');
  const socket = path.join(dir, 'vhost.sock');
  await createSparseImage(image, imageBytes);

  const backend = await startBackend(image, socket, QUEUES);
  // If the backend dies, the guest's I/O would hang until the timeout: stop early.
  const ac = new AbortController();
  const onBackendExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    ac.abort(new Error(`backend ${backend.name} exited during the run (code ${code}, signal ${sig})`));
  backend.child.once('exit', onBackendExit);
  let res: RunGuestResult;
  try {
    res = await runGuest({
      socket,
      queues: QUEUES,
      script,
      timeoutMs: GUEST_TIMEOUT_MS,
      signal: ac.signal,
      ...(log ? { log } : {}),
    });
  } finally {
    backend.child.off('exit', onBackendExit);
    stopped = await backend.stop();
    tt.comment(`${backend.name} stopped (code ${stopped.code}, signal ${stopped.signal})`);
  }
  tt.comment(`guest ${res.result ?? '(no result line)'} in ${(res.durationMs / 1000).toFixed(1)} s`);
  checkBackendClean(tt, backend.name, stopped, backend.output());
  return { res, backendName: backend.name, backendOutput: backend.output() };
}

/** The backend exited 0 on SIGTERM (it drains, cleans up, exits) and vublk logged no warn/error line. */
function checkBackendClean(
  tt: SubTest,
  name: string,
  stopped: { code: number | null; signal: NodeJS.Signals | null },
  output: string,
): void {
  tt.same(stopped, { code: 0, signal: null }, `${name} exits 0 on SIGTERM`, { backendOutput: tail(output, 30) });
  if (name === 'vublk') {
    tt.same(vublkProblemLines(output), [], 'vublk logged no warn/error line', { backendOutput: tail(output, 30) });
  }
}

async function expectGuestPass(tt: SubTest, script: string): Promise<void> {
  const { res, backendName, backendOutput } = await bootWith(tt, script);
  tt.ok(res.passed, `guest reports PASS (backend ${backendName})`, {
    result: res.result,
    exitCode: res.exitCode,
    signal: res.signal,
    timedOut: res.timedOut,
    backendDied: res.aborted,
    guestOutput: tail(res.output),
    backendOutput: tail(backendOutput, 30),
  });
}

// --------------------------------------------------------------- tests ---

const prereq = ((): { ok: boolean; reason?: string } => {
  const g = guestPrerequisites();
  if (!g.ok) return g;
  return backendPrerequisites();
})();

if (!prereq.ok) {
  if (process.env.CI) {
    t.fail(`QEMU e2e prerequisites missing in CI: ${prereq.reason}`);
  } else {
    t.test('qemu guest e2e', { skip: prereq.reason ?? 'prerequisites missing' }, async () => {});
  }
} else {
  // Plain `node file.test.js` uses tap's 30 s default for the whole file; a cold
  // guest build plus three TCG boots needs more. (The tap runner's own limit
  // comes from package.json "tap.timeout".)
  t.setTimeout(25 * 60 * 1000);
  t.test(`qemu guest e2e (backend ${BACKEND}, ${QUEUES} queues)`, { timeout: 20 * 60 * 1000 }, async (tt) => {
    const t0 = Date.now();
    await ensureGuest(log ? { log } : {});
    tt.comment(`guest ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    await tt.test('fio random-size writes with crc32c verify + read-back verify', async (st) => {
      await expectGuestPass(st, fioVerifyScript({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }));
    });

    await tt.test('ext4 mkfs/write/remount/checksum/e2fsck', async (st) => {
      await expectGuestPass(st, ext4Script({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }));
    });

    // Harness self-check: a failing guest script must not be reported as a pass.
    await tt.test('harness reports a failing guest script as FAIL', async (st) => {
      const script = '#!/bin/sh\necho "deliberate failure" > /run/vublk-e2e-fail-reason\nexit 3\n';
      const { res } = await bootWith(st, script, 16 * 1024 * 1024);
      st.equal(res.passed, false, 'not passed');
      st.equal(res.result, 'FAIL deliberate failure', 'FAIL line carries the reason', { guestOutput: tail(res.output) });
      st.equal(res.timedOut, false, 'guest powered off by itself');
    });
  });
}
