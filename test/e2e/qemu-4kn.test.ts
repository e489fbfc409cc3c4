/**
 * QEMU end-to-end tests on a real 4K-native host device (vublk only).
 *
 * The host disk is a loop device with 4096-byte logical sectors and direct I/O
 * to its backing file:
 *
 *   truncate -s 256M FILE
 *   losetup --find --show --sector-size 4096 --direct-io=on FILE   -> /dev/loopN
 *   vublk --disk /dev/loopN --logical-block-size 512 --queues 2
 *
 * so every guest request that is not 4 KiB aligned (the guest is told its
 * logical block is 512 bytes) has to go through vublk's alignment layer:
 * read-modify-write of partial host blocks, range locks between overlapping
 * requests, bounce buffers. The guest runs the same two workloads as
 * qemu-guest.test.ts:
 *
 *  - fio random writes of 512 B - 128 KiB at random 512-byte aligned offsets
 *    (iodepth 32, one job per vCPU/virtqueue) with crc32c verify, then a
 *    read-only re-verify after dropping caches;
 *  - mkfs.ext4, files of assorted sizes, checksums across a remount, e2fsck -fn.
 *
 * Checked for each boot: vublk's probe line (`host disk direct I/O
 * offsetAlign=4096 memAlign=512`), the guest sees logical block 512 and
 * physical block 4096 on /dev/vda, the guest script passes, vublk logs no
 * warn/error line and exits 0 on SIGTERM, and the per-queue counters vublk
 * logs when QEMU's connection closes show errors=0 — for fio also
 * rmwCycles > 0 (its 512-byte writes at odd offsets cannot be done without a
 * read-modify-write on a 4K device).
 *
 * The loop device is always detached in teardown (and, as a last resort, when
 * the test process exits).
 *
 * Needs root, losetup, qemu-system-x86_64 and the e2e guest; skipped without
 * them, except under CI (env CI set), where that is a failure.
 * VUBLK_E2E_VERBOSE=1 streams guest/vublk output to stderr. The backing file
 * goes to VUBLK_E2E_TMPDIR (default the OS tmpdir), which must support
 * O_DIRECT (not an old tmpfs).
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, loopPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { type RunGuestResult } from '../helpers/guest/run';
import { BLOCK_SIZES_MARKER, ext4Script, fioVerifyScript } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { COUNTER_KEYS, logFields, loggedCounters, type CounterKey, type LoggedCounters } from '../helpers/counters';

const QUEUES = 2;
const IMAGE_BYTES = 256 * 1024 * 1024;
const HOST_SECTOR = 4096;
const GUEST_LBS = 512;
/** fio: MiB per job (2 jobs on disjoint regions). */
const FIO_MIB_PER_JOB = 64;
const FIO_IODEPTH = 32;
const GUEST_TIMEOUT_MS = 4 * 60 * 1000;

// ----------------------------------------------------------------- boot ---

interface BootResult {
  res: RunGuestResult;
  output: string;
  counters: LoggedCounters[];
}

/**
 * Fresh sparse file -> 4K loop device (DIO) -> vublk (512-byte guest blocks)
 * -> one guest boot running `script`; checks everything that does not depend
 * on the workload. Returns the guest result and vublk's output.
 */
async function boot4kn(tt: Test, what: string, script: string): Promise<BootResult> {
  let vublk: ChildProcess | undefined;
  const disk = await guestDisk(tt, {
    prefix: 'vublk-e2e-4kn-',
    imageName: 'backing.img',
    imageBytes: IMAGE_BYTES,
    loop4k: true,
    what,
    daemon: () => vublk,
  });
  vublk = await startVublkBackend({
    image: disk.disk,
    socket: disk.socket,
    queues: QUEUES,
    extraArgs: ['--logical-block-size', String(GUEST_LBS)],
    ...(log ? { log } : {}),
  });
  const run = await runGuestWith(
    vublk,
    'vublk',
    { socket: disk.socket, queues: QUEUES, script, timeoutMs: GUEST_TIMEOUT_MS, ...(log ? { log } : {}) },
    true,
  );
  const { res, output, stopped } = run;
  tt.comment(
    `${what}: guest ${res.result ?? '(no result line)'} in ${(res.durationMs / 1000).toFixed(1)} s; ` +
      `vublk stopped (code ${stopped.code}, signal ${stopped.signal})`,
  );

  // vublk's probe of the host device.
  const probe = output.split('\n').find((l) => /\bvublk: info: host disk direct I\/O\b/.test(l));
  if (probe !== undefined) tt.comment(`${what}: ${probe}`);
  tt.match(probe ?? '', /\bhost disk direct I\/O offsetAlign=4096 memAlign=512\b/, 'vublk probed offsetAlign=4096 memAlign=512', {
    backendOutput: tail(output, 30),
  });

  // What the guest saw.
  const bsLine = res.output.split('\n').find((l) => l.includes(BLOCK_SIZES_MARKER));
  if (bsLine !== undefined) tt.comment(`${what}: guest: ${bsLine.trim()}`);
  const bs = logFields(bsLine ?? '');
  tt.same(
    { logical: bs.logical, physical: bs.physical },
    { logical: String(GUEST_LBS), physical: String(HOST_SECTOR) },
    `guest /dev/vda: logical_block_size ${GUEST_LBS}, physical_block_size ${HOST_SECTOR}`,
    { line: bsLine, guestOutput: tail(res.output, 30) },
  );

  expectGuestPass(tt, run, `guest ${what} PASS`);
  expectCleanStop(tt, 'vublk', run);

  // Per-queue counters of the (only) connection.
  const counters = loggedCounters(output, 'closed');
  for (const c of counters) tt.comment(`${what}: ${c.line.trim()}`);
  tt.same(
    counters.map((c) => c.queue).sort((a, b) => a - b),
    Array.from({ length: QUEUES }, (_, q) => q),
    `one counters reason=closed line per queue (${QUEUES})`,
    { backendOutput: tail(output, 30) },
  );
  tt.equal(new Set(counters.map((c) => c.conn)).size, 1, 'counters lines of one connection', { lines: counters.map((c) => c.line) });
  for (const c of counters) {
    tt.same(
      COUNTER_KEYS.filter((k) => c.values[k] === undefined),
      [],
      `queue ${c.queue}: every counter present`,
      { line: c.line },
    );
    tt.equal(c.values.errors, 0, `queue ${c.queue}: errors=0`, { line: c.line });
  }
  tt.ok(sum(counters, 'requests') > 0, 'vublk completed requests', { lines: counters.map((c) => c.line) });
  return { res, output, counters };
}

function sum(cs: LoggedCounters[], k: CounterKey): number {
  return cs.reduce((a, c) => a + (c.values[k] ?? 0), 0);
}

// ---------------------------------------------------------------- tests ---

const prereq = allPrerequisites(guestPrerequisites, loopPrerequisites, vublkPrerequisites);
const common = {
  expectQueues: QUEUES,
  expectSizeBytes: IMAGE_BYTES,
  expectLogicalBlockSize: GUEST_LBS,
  expectPhysicalBlockSize: HOST_SECTOR,
};

guestTest(
  t,
  {
    prereq,
    ciWhat: 'QEMU 4K-native e2e',
    name: `qemu guest, 512-byte blocks on a 4K-native loop device (${QUEUES} queues)`,
    skipName: 'qemu guest on a 4K-native host device',
    timeoutMs: 15 * 60 * 1000,
    fileTimeoutMs: 20 * 60 * 1000,
  },
  async (tt) => {
    await tt.test('fio 512-128k random writes at 512-byte offsets, crc32c verify', async (st) => {
      const script = fioVerifyScript({
        ...common,
        sizeMiB: FIO_MIB_PER_JOB,
        numjobs: QUEUES,
        iodepth: FIO_IODEPTH,
        bsrange: '512-128k',
        blockalign: 512,
      });
      const { counters } = await boot4kn(st, 'fio', script);
      st.ok(sum(counters, 'rmwCycles') > 0, 'fio run needed read-modify-write cycles (rmwCycles > 0)', {
        lines: counters.map((c) => c.line),
      });
    });

    await tt.test('ext4 mkfs/write/remount/checksum/e2fsck', async (st) => {
      await boot4kn(st, 'ext4', ext4Script(common));
    });
  },
);
