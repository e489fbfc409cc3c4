/**
 * QEMU end-to-end test of guest RAM that is not a memfd: QEMU's
 * memory-backend-file on /dev/shm and on a hugetlbfs mount. Those files
 * cannot be sealed against shrinking, so vublk guards its own touches of
 * guest memory with SIGBUS recovery points instead of requiring seals
 * (docs/theory-of-operation.md, "Guest memory faults"); this shows such
 * guests keep working with QEMU itself: boot, short fio write + crc32c
 * verify + read-back verify, no warn/error line from vublk, exit 0 on SIGTERM.
 * As root, the hugetlbfs case reserves the huge pages it needs.
 *
 * Skipped without qemu-system-x86_64 / the e2e guest / a built vublk, except
 * under CI. VUBLK_E2E_VERBOSE=1 streams guest/vublk output to stderr.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { fioVerifyScript } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { hugePagesUnsupported, hugetlbfsDir } from '../helpers/hugetlbfs';

const IMAGE_BYTES = 64 * 1024 * 1024;
const MEM_MIB = 512;
const GUEST_TIMEOUT_MS = 3 * 60 * 1000;

function backendCase(what: string, memPath: (tt: Test) => string, unsupported: () => string | undefined): void {
  guestTest(
    t,
    {
      prereq: allPrerequisites(
        guestPrerequisites,
        () => vublkPrerequisites({ built: true }),
        () => {
          const why = unsupported();
          return why === undefined ? { ok: true } : { ok: false, reason: why };
        },
      ),
      ciWhat: 'QEMU e2e',
      name: `qemu guest with memory-backend-file on ${what}`,
      skipName: `qemu guest with memory-backend-file on ${what}`,
      timeoutMs: 10 * 60 * 1000,
      fileTimeoutMs: 20 * 60 * 1000,
    },
    async (tt) => {
      const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-membackend-', imageBytes: IMAGE_BYTES });
      const vublk = await startVublkBackend({ image, socket, queues: 1, ...(log ? { log } : {}) });
      const script = fioVerifyScript({
        expectQueues: 1,
        expectSizeBytes: IMAGE_BYTES,
        sizeMiB: 16,
        numjobs: 2,
        iodepth: 32,
        bsrange: '512-64k',
      });
      const run = await runGuestWith(
        vublk,
        'vublk',
        { socket, queues: 1, memMiB: MEM_MIB, memPath: memPath(tt), script, timeoutMs: GUEST_TIMEOUT_MS, ...(log ? { log } : {}) },
        true,
      );
      tt.comment(`guest ${run.res.result ?? '(no result line)'} in ${(run.res.durationMs / 1000).toFixed(1)} s`);
      expectGuestPass(tt, run, `the guest passes fio verify with its RAM on ${what}`);
      expectCleanStop(tt, 'vublk', run);
    },
  );
}

backendCase(
  '/dev/shm',
  (tt) => {
    const dir = fs.mkdtempSync(path.join('/dev/shm', 'vublk-e2e-shm-'));
    tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    return dir;
  },
  () => (fs.existsSync('/dev/shm') ? undefined : 'no /dev/shm'),
);

backendCase(
  'hugetlbfs',
  (tt) => hugetlbfsDir(tt, MEM_MIB * 1024 * 1024),
  () => hugePagesUnsupported(MEM_MIB * 1024 * 1024),
);
