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
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { findCommand } from '../helpers/find-command';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith, tail, type GuestRun } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites, type Prerequisites } from '../helpers/guest/prerequisites';
import { ext4Script, fioVerifyScript } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { startQsd } from '../helpers/qsd';

const QUEUES = 2;
const IMAGE_BYTES = 256 * 1024 * 1024;
const GUEST_TIMEOUT_MS = 5 * 60 * 1000;
const BACKEND = (process.env.VUBLK_E2E_BACKEND || 'vublk').trim();

// ------------------------------------------------------------- backend ---

interface Backend {
  name: string;
  child: ChildProcess;
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
      child = await startVublkBackend({ image, socket, queues, ...(log ? { log } : {}) });
      break;
    default:
      throw new Error(`VUBLK_E2E_BACKEND must be qsd or vublk, got '${BACKEND}'`);
  }
  return { name: BACKEND, child };
}

function backendPrerequisites(): Prerequisites {
  if (BACKEND === 'qsd') {
    return findCommand('qemu-storage-daemon')
      ? { ok: true }
      : { ok: false, reason: 'qemu-storage-daemon not found (apt-get install qemu-utils)' };
  }
  if (BACKEND === 'vublk') return vublkPrerequisites();
  return { ok: false, reason: `unknown VUBLK_E2E_BACKEND '${BACKEND}'` };
}

// ------------------------------------------------------------- helpers ---

/**
 * Fresh sparse image + backend + one guest boot running `script`; checks
 * that the backend stopped cleanly. Returns the guest result (not checked)
 * plus the backend's captured output.
 */
async function bootWith(tt: Test, script: string, imageBytes = IMAGE_BYTES): Promise<GuestRun & { backendName: string }> {
  const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-', imageBytes });
  const backend = await startBackend(image, socket, QUEUES);
  const run = await runGuestWith(backend.child, `backend ${backend.name}`, {
    socket,
    queues: QUEUES,
    script,
    timeoutMs: GUEST_TIMEOUT_MS,
    ...(log ? { log } : {}),
  });
  tt.comment(`${backend.name} stopped (code ${run.stopped.code}, signal ${run.stopped.signal})`);
  tt.comment(`guest ${run.res.result ?? '(no result line)'} in ${(run.res.durationMs / 1000).toFixed(1)} s`);
  expectCleanStop(tt, backend.name, run);
  return { ...run, backendName: backend.name };
}

async function expectGuestPasses(tt: Test, script: string): Promise<void> {
  const run = await bootWith(tt, script);
  expectGuestPass(tt, run, `guest reports PASS (backend ${run.backendName})`);
  if (run.backendName === 'vublk') {
    tt.match(
      run.output,
      new RegExp(`data plane on worker threads conn=\\d+ workers=${QUEUES}\\b`),
      `vublk served the ${QUEUES} queues on ${QUEUES} worker threads`,
    );
  }
}

// --------------------------------------------------------------- tests ---

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, backendPrerequisites),
    ciWhat: 'QEMU e2e',
    name: `qemu guest e2e (backend ${BACKEND}, ${QUEUES} queues)`,
    skipName: 'qemu guest e2e',
    timeoutMs: 20 * 60 * 1000,
    // A cold guest build plus three TCG boots.
    fileTimeoutMs: 25 * 60 * 1000,
  },
  async (tt) => {
    await tt.test('fio random-size writes with crc32c verify + read-back verify', async (st) => {
      await expectGuestPasses(st, fioVerifyScript({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }));
    });

    await tt.test('ext4 mkfs/write/remount/checksum/e2fsck', async (st) => {
      await expectGuestPasses(st, ext4Script({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }));
    });

    // Harness self-check: a failing guest script must not be reported as a pass.
    await tt.test('harness reports a failing guest script as FAIL', async (st) => {
      const script = '#!/bin/sh\necho "deliberate failure" > /run/vublk-e2e-fail-reason\nexit 3\n';
      const { res } = await bootWith(st, script, 16 * 1024 * 1024);
      st.equal(res.passed, false, 'not passed');
      st.equal(res.result, 'FAIL deliberate failure', 'FAIL line carries the reason', { guestOutput: tail(res.output) });
      st.equal(res.timedOut, false, 'guest powered off by itself');
    });
  },
);
