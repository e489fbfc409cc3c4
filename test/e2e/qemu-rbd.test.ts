/**
 * QEMU end-to-end on an RBD-backed vublk disk: a real Linux guest (TCG) with a
 * vhost-user-blk-pci disk whose blocks live in an image of a real single-node
 * Ceph cluster (scripts/ceph-test-cluster.sh), served by vublk through librbd.
 *
 * - fio random-size writes with crc32c verify, then a read-back verify;
 * - ext4 mkfs/write/remount/checksum and `e2fsck -fn`;
 * - the cluster's only OSD stopped for 10 s while the guest's fio writes, then
 *   started again: librbd holds the requests, fio completes and verifies, and
 *   the guest sees no I/O error.
 * Each boot also checks that vublk exits 0 on SIGTERM and logs no warn/error
 * line, and the data is read back through `rbd export`, not only through vublk.
 * Without QEMU or the Ceph packages the test is skipped, except under CI.
 */
import t, { type Test } from 'tap';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestTest, runGuestWith, type GuestRun } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { ext4Script, fioVerifyScript } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { cephUnsupported, createImage, exportImage, osdStart, osdStop, startCephCluster, type CephCluster } from '../helpers/ceph-cluster';
import type { RunGuestOptions } from '../helpers/guest/run';
import fs from 'node:fs';
import path from 'node:path';

const QUEUES = 2;
const IMAGE_MIB = 256;
const GUEST_TIMEOUT_MS = 5 * 60 * 1000;
const OUTAGE_MS = 10_000;

/** vublk on rbd/IMAGE of the cluster, then one guest boot running `script`. */
async function bootOnRbd(tt: Test, c: CephCluster, image: string, script: string, guestLog?: (line: string) => void): Promise<GuestRun> {
  createImage(c, image, `${IMAGE_MIB}M`);
  const dir = fs.mkdtempSync('/tmp/vublk-e2e-rbd-');
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'vhost.sock');
  const child = await startVublkBackend({
    image: `rbd:rbd/${image}`,
    socket,
    queues: QUEUES,
    extraArgs: ['--ceph-conf', c.conf],
    ...(log ? { log } : {}),
  });
  const opts: RunGuestOptions = { socket, queues: QUEUES, script, timeoutMs: GUEST_TIMEOUT_MS };
  const both = [log, guestLog].filter((f): f is (line: string) => void => f !== undefined);
  if (both.length > 0) opts.log = (line) => both.forEach((f) => f(line));
  const run = await runGuestWith(child, 'vublk', opts);
  tt.comment(`guest ${run.res.result ?? '(no result line)'} in ${(run.res.durationMs / 1000).toFixed(1)} s`);
  expectGuestPass(tt, run, 'guest reports PASS');
  expectCleanStop(tt, 'vublk', run);
  tt.match(run.output, /\bvublk: info: serving\b.*\brbd:rbd\//, 'vublk served the RBD image');
  return run;
}

/** The image as the cluster holds it is not all zeroes: the guest's writes reached the OSD. */
function expectWritten(tt: Test, c: CephCluster, image: string): void {
  const data = exportImage(c, image);
  tt.equal(data.length, IMAGE_MIB << 20, `rbd export reads the whole ${IMAGE_MIB} MiB image`);
  tt.ok(
    data.some((b) => b !== 0),
    'and finds the data the guest wrote',
  );
}

const fio = fioVerifyScript({ expectQueues: QUEUES, expectSizeBytes: IMAGE_MIB << 20, sizeMiB: 96 });

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, vublkPrerequisites, () => {
      const why = cephUnsupported();
      return why ? { ok: false, reason: why } : { ok: true };
    }),
    ciWhat: 'QEMU e2e on RBD',
    name: `qemu guest e2e on an RBD image (${QUEUES} queues)`,
    skipName: 'qemu guest e2e on RBD',
    timeoutMs: 20 * 60 * 1000,
    fileTimeoutMs: 25 * 60 * 1000,
  },
  async (tt) => {
    const c = startCephCluster(tt);

    await tt.test('fio random-size writes with crc32c verify + read-back verify', async (st) => {
      await bootOnRbd(st, c, 'e2e-fio', fio);
      expectWritten(st, c, 'e2e-fio');
    });

    await tt.test('ext4 mkfs/write/remount/checksum/e2fsck', async (st) => {
      await bootOnRbd(st, c, 'e2e-ext4', ext4Script({ expectQueues: QUEUES, expectSizeBytes: IMAGE_MIB << 20 }));
      expectWritten(st, c, 'e2e-ext4');
    });

    await tt.test(`the OSD stopped for ${OUTAGE_MS / 1000} s under the guest's fio`, async (st) => {
      // Timeline from the guest console: the write phase starts, the OSD is
      // stopped a moment later (requests in flight and queued), started again
      // after OUTAGE_MS; the read-back phase must begin only after the stop,
      // or the outage did not hit the writes.
      const at: { writes?: number; stopped?: number; started?: number; readBack?: number } = {};
      let outage: Promise<void> | undefined;
      let osdDown = false;
      st.teardown(() => {
        if (osdDown) osdStart(c);
      });
      const onLine = (line: string): void => {
        if (at.writes === undefined && /vublk-test: fio write \+ verify:/.test(line)) {
          at.writes = Date.now();
          outage = (async () => {
            await sleep(1500);
            osdStop(c);
            osdDown = true;
            at.stopped = Date.now();
            await sleep(OUTAGE_MS);
            osdStart(c);
            osdDown = false;
            at.started = Date.now();
          })();
        }
        if (at.readBack === undefined && /vublk-test: fio read-back verify:/.test(line)) at.readBack = Date.now();
      };
      await bootOnRbd(st, c, 'e2e-outage', fio, onLine);
      await outage;
      st.ok(at.stopped !== undefined && at.started !== undefined, 'the OSD was stopped and started again during the run');
      st.ok(
        at.readBack !== undefined && at.stopped !== undefined && at.readBack > at.stopped,
        "the OSD stopped while the guest's fio was still writing",
        { timeline: at },
      );
      st.ok(
        at.readBack !== undefined && at.started !== undefined && at.readBack >= at.started,
        'the writes waited for the OSD: the read-back began after it was back',
        { timeline: at },
      );
      expectWritten(st, c, 'e2e-outage');
    });
  },
);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
