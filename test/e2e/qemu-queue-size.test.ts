/**
 * QEMU end-to-end test of the largest ring QEMU allows: vhost-user-blk-pci
 * with queue-size=1024 against vublk with its default --queue-size (every
 * size QEMU allows is served). The guest (TCG) runs a short fio random write
 * + crc32c verify + read-back verify, deep enough to keep its block layer's
 * queue full (Linux virtio-blk caps that at 256 by default, printed as the
 * "queue depth" line), so the ring's indices wrap its 1024 entries many times.
 * vublk must log no warn/error line (a refused SET_VRING_NUM would be one),
 * notice QEMU leave and exit 0 on SIGTERM.
 *
 * Skipped without qemu-system-x86_64 / the e2e guest / a built vublk, except
 * under CI. VUBLK_E2E_VERBOSE=1 streams guest/vublk output to stderr.
 */
import t from 'tap';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { fioVerifyScript } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';

const QUEUE_SIZE = 1024;
const IMAGE_BYTES = 64 * 1024 * 1024;
const GUEST_TIMEOUT_MS = 3 * 60 * 1000;

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, () => vublkPrerequisites({ built: true })),
    ciWhat: 'QEMU e2e',
    name: `qemu guest with queue-size=${QUEUE_SIZE} (vublk defaults)`,
    skipName: 'qemu guest with queue-size=1024',
    timeoutMs: 10 * 60 * 1000,
    fileTimeoutMs: 15 * 60 * 1000,
  },
  async (tt) => {
    const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-qsize-', imageBytes: IMAGE_BYTES });
    const vublk = await startVublkBackend({ image, socket, queues: 1, ...(log ? { log } : {}) });
    const fio = fioVerifyScript({
      expectQueues: 1,
      expectSizeBytes: IMAGE_BYTES,
      sizeMiB: 16,
      numjobs: 2,
      iodepth: 256,
      bsrange: '512-16k',
    });
    // Say what the guest's block layer made of the ring (its queue depth follows the ring size).
    const script = fio.replace('FIO_OPTS=', 'step "queue depth: $(cat /sys/block/vda/queue/nr_requests)"\nFIO_OPTS=');
    const run = await runGuestWith(
      vublk,
      'vublk',
      { socket, queues: 1, queueSize: QUEUE_SIZE, memMiB: 512, script, timeoutMs: GUEST_TIMEOUT_MS, ...(log ? { log } : {}) },
      true,
    );
    tt.comment(`guest ${run.res.result ?? '(no result line)'} in ${(run.res.durationMs / 1000).toFixed(1)} s`);
    const depth = /queue depth: (\d+)/.exec(run.res.output);
    tt.comment(`guest queue depth: ${depth?.[1] ?? '(not printed)'}`);
    expectGuestPass(tt, run, `the guest passes fio verify on a ${QUEUE_SIZE}-entry ring`);
    expectCleanStop(tt, 'vublk', run);
  },
);
