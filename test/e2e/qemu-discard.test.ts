/**
 * QEMU end-to-end test of DISCARD and WRITE_ZEROES (vublk only).
 *
 * vublk serves a sparse image file with 2 queues to a TCG guest, twice:
 *
 *  - "sparse image file": vublk --disk FILE (FILE on the OS tmpdir or
 *    VUBLK_E2E_TMPDIR, which must support O_DIRECT and hole punching). There
 *    vublk's offsetAlign is usually 512, so every range below is whole host
 *    sectors for it;
 *  - "4K-native loop device": FILE behind `losetup --sector-size 4096
 *    --direct-io=on`, vublk --disk /dev/loopN --logical-block-size 512, so the
 *    odd ranges are partial host blocks: WRITE_ZEROES has to zero them by
 *    read-modify-write and DISCARD has to leave them alone. Needs root and
 *    losetup (skipped without, failed under CI).
 *
 * The guest script (discardScript() below, busybox sh):
 *
 *  1. prints /dev/vda's queue/discard_max_bytes, discard_granularity and
 *     write_zeroes_max_bytes (LIMITS_MARKER line; all must be non-zero);
 *  2. fills two regions with random data (dd oflag=direct) and keeps a copy
 *     of each in tmpfs (the model), then runs util-linux `blkdiscard -z`
 *     (WRITE_ZEROES) and `blkdiscard` (DISCARD) over odd ranges (offsets and
 *     lengths multiples of 512, mostly not of 4096: partial blocks at either
 *     end, a range inside one 4 KiB block, >1 MiB ranges, a single sector,
 *     the start and the very end of the device). After each one: a zeroed
 *     range reads back as zeroes (O_DIRECT), the 8 KiB windows either side
 *     have the sha256 they had before, and the whole region equals the model
 *     (for a DISCARD, whatever the range reads back as is taken into the
 *     model: its contents are unspecified, only the neighbours must not
 *     change);
 *  3. mkfs.ext4 (which discards the whole device), writes files (random data),
 *     deletes some, syncs, prints BEFORE_TRIM_MARKER and waits 2 s,
 *     `fstrim -v` (must report > 0 bytes trimmed), checksums, umount, remount
 *     with -o discard, compares, deletes interleaved files (online discard of
 *     many separate extents: multi-range DISCARD requests), compares the rest
 *     again, umount, `e2fsck -fn` exits 0;
 *  4. any failing command or kernel I/O error in dmesg fails it.
 *
 * Host side, per variant: the guest passes and checked every range; the limits
 * it saw are the ones vublk derives from the host (src/disk/discard-probe.ts:
 * granularity from st_blksize or the device's sysfs limits, at least the
 * probed offsetAlign; max = MAX_ZERO_SEGMENT_BYTES rounded down); vublk logs
 * no warn/error line, its per-queue counters show errors=0 (and, on the 4K
 * device, rmwCycles > 0), it notices QEMU's disconnect and exits 0 on SIGTERM;
 * the image file's allocated bytes (st_blocks * 512) after the run are below
 * those sampled when the guest printed BEFORE_TRIM_MARKER, by at least half
 * the bytes of the files deleted before fstrim (fstrim really deallocated
 * space on the host; a smaller drop can come from ext4's own zeroing alone).
 *
 * Skipped without qemu-system-x86_64 / the e2e guest / a built vublk, except
 * under CI (env CI set), where that is a failure. VUBLK_E2E_VERBOSE=1 streams
 * guest/vublk output to stderr.
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith, tail, type GuestRun } from '../helpers/guest/harness';
import {
  allPrerequisites,
  guestPrerequisites,
  loopPrerequisites,
  testWithPrerequisites,
  vublkPrerequisites,
} from '../helpers/guest/prerequisites';
import { guestScriptPreamble } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { sysBlockNumber } from '../helpers/loop-device';
import { logFields as fields, loggedCounters } from '../helpers/counters';

const QUEUES = 2;
const IMAGE_BYTES = 256 * 1024 * 1024;
const GUEST_TIMEOUT_MS = 3 * 60 * 1000;

/** Guest line: `VUBLK-E2E-DISCARD-LIMITS discard_max_bytes=N discard_granularity=N write_zeroes_max_bytes=N`. */
const LIMITS_MARKER = 'VUBLK-E2E-DISCARD-LIMITS';
/** Guest line after each checked range: `VUBLK-E2E-RANGE zero|discard off=N len=N ok readback=...`. */
const RANGE_MARKER = 'VUBLK-E2E-RANGE';
/** Guest line printed (after sync) right before fstrim; the host samples the image's allocation then. */
const BEFORE_TRIM_MARKER = 'VUBLK-E2E-BEFORE-TRIM';
/** Guest line: `VUBLK-E2E-FSTRIM bytes=N`. */
const FSTRIM_MARKER = 'VUBLK-E2E-FSTRIM';

// ------------------------------------------------------------ the guest ---

type RangeOp = { kind: 'zero' | 'discard'; off: number | string; len: number };

const KiB = 1024;
const MiB = 1024 * 1024;
/** Region A, [0, 8 MiB): random data, then zeroed / discarded ranges. */
const REGION_A_BYTES = 8 * MiB;
/** Region C: the last 1 MiB of the device. */
const REGION_C_BYTES = 1 * MiB;

/**
 * The ranges, in order. Offsets and lengths are multiples of 512; most are
 * not multiples of 4096 (the host block), so vublk has to zero partial
 * blocks itself (WRITE_ZEROES) or leave them alone (DISCARD). `off` may be
 * a shell expression (the end of the device is only known in the guest).
 */
const RANGE_OPS: RangeOp[] = [
  // WRITE_ZEROES in [0, 4 MiB)
  { kind: 'zero', off: 4608, len: 9728 }, //              partial head + aligned middle + partial tail
  { kind: 'zero', off: 20992, len: 1536 }, //             inside one 4 KiB block
  { kind: 'zero', off: 32768, len: 5120 }, //             aligned start, odd end
  { kind: 'zero', off: 45568, len: 3584 }, //             odd start, aligned end
  { kind: 'zero', off: 1 * MiB + 512, len: 1 * MiB + 1024 }, // > 1 MiB
  { kind: 'zero', off: 3 * MiB + 1536, len: 512 }, //     one sector
  { kind: 'zero', off: 0, len: 2560 }, //                 start of the device
  // DISCARD in [4 MiB, 8 MiB)
  { kind: 'discard', off: 4 * MiB + 4608, len: 9728 },
  { kind: 'discard', off: 4 * MiB + 20992, len: 1536 },
  { kind: 'discard', off: 5 * MiB + 512, len: 1 * MiB + 1024 },
  { kind: 'discard', off: 6 * MiB, len: 5120 },
  { kind: 'discard', off: 7 * MiB + 3584, len: 3584 },
  // The end of the device (region C)
  { kind: 'discard', off: '$((SIZE - 13824))', len: 13824 },
  { kind: 'zero', off: '$((SIZE - 4608))', len: 4608 },
  { kind: 'zero', off: '$((SIZE - 65536 - 2560))', len: 7680 },
];

/** ext4 phase: files kept, files deleted before fstrim. */
const KEEP_FILES: Array<[string, number]> = [
  ['k1.bin', 3 * MiB + 4097],
  ['k2.bin', 1 * MiB + 13],
  ['k3.bin', 200 * KiB + 511],
  ['k4.bin', 4096],
  ['k5.bin', 1],
];
const DELETE_FILES = 8;
const DELETE_FILE_BYTES = 2 * MiB;
/** Interleaved small files; the x ones are deleted with -o discard mounted. */
const INTERLEAVED = 24;
const INTERLEAVED_BYTES = 64 * KiB;

function discardScript(): string {
  const ops = RANGE_OPS.map((o) => `range_op ${o.kind} "${o.off}" ${o.len}`).join('\n');
  const keep = KEEP_FILES.map(([n, b]) => `run "write ${n}" sh -c 'head -c ${b} /dev/urandom > /mnt/t/${n}'`).join('\n');
  return (
    guestScriptPreamble({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }) +
    `# ---- qemu-discard.test.ts
# Stricter than the preamble's: any failed request on vda ("<status> error,
# dev vda, ..." covers I/O, "operation not supported", "critical target"...).
check_dmesg() {
  if dmesg | grep -E 'error, dev vda|I/O error|blk_update_request|Buffer I/O|EXT4-fs (error|warning)|JBD2: .*error|virtio_blk.*(fail|error)' > /tmp/dmesg-errors; then
    cat /tmp/dmesg-errors >&2
    fail "kernel I/O errors in dmesg: $(head -n1 /tmp/dmesg-errors)"
  fi
}
# Full paths: busybox sh runs its own (smaller) blkdiscard/fstrim applets before PATH.
BLKDISCARD=/usr/sbin/blkdiscard; FSTRIM=/usr/sbin/fstrim
[ -x $BLKDISCARD ] && [ -x $FSTRIM ] || fail "util-linux blkdiscard/fstrim missing from the guest"
Q=/sys/block/vda/queue
DMAX=$(cat $Q/discard_max_bytes); DGRAN=$(cat $Q/discard_granularity); WZMAX=$(cat $Q/write_zeroes_max_bytes)
echo "${LIMITS_MARKER} discard_max_bytes=$DMAX discard_granularity=$DGRAN write_zeroes_max_bytes=$WZMAX" >&2
[ "$DMAX" -gt 0 ] || fail "discard_max_bytes is $DMAX (no DISCARD)"
[ "$DGRAN" -gt 0 ] || fail "discard_granularity is $DGRAN"
[ "$WZMAX" -gt 0 ] || fail "write_zeroes_max_bytes is $WZMAX (no WRITE_ZEROES)"

SIZE=$(( $(cat /sys/block/vda/size) * 512 ))
AB=0; AL=${REGION_A_BYTES}
CB=$(( SIZE - ${REGION_C_BYTES} )); CL=${REGION_C_BYTES}
W=8192

# rd OFF LEN FILE: LEN bytes at OFF of /dev/vda, O_DIRECT
rd() {
  dd if=/dev/vda of="$3" bs=65536 skip="$1" count="$2" iflag=direct,skip_bytes,count_bytes 2>/tmp/dd.err ||
    fail "read of $2 bytes at $1 failed: $(tail -n1 /tmp/dd.err)"
  [ "$(stat -c %s "$3")" -eq "$2" ] || fail "short read at $1: $(stat -c %s "$3") of $2 bytes"
}
# wr FILE OFF: FILE to /dev/vda at OFF, O_DIRECT
wr() {
  dd if="$1" of=/dev/vda bs=65536 seek="$2" oflag=direct,seek_bytes conv=notrunc 2>/tmp/dd.err ||
    fail "write of $1 at $2 failed: $(tail -n1 /tmp/dd.err)"
}
sum_of() { sha256sum < "$1" | cut -d' ' -f1; }
# first_diff A B: 1-based number of the first differing byte (cmp), and how many differ
diff_desc() { echo "first difference at byte $(cmp "$1" "$2" 2>&1 | sed -n 's/.*differ: [a-z]* \\([0-9]*\\).*/\\1/p') of the range, $(cmp -l "$1" "$2" 2>/dev/null | wc -l) bytes differ"; }
# region_of OFF END: sets RB RL RF (base, length, model file) of the region holding [OFF, END)
region_of() {
  if [ "$1" -ge $AB ] && [ "$2" -le $((AB + AL)) ]; then RB=$AB; RL=$AL; RF=/tmp/model.a
  elif [ "$1" -ge $CB ] && [ "$2" -le $((CB + CL)) ]; then RB=$CB; RL=$CL; RF=/tmp/model.c
  else fail "range [$1, $2) is outside the test regions"; fi
}
# check_region BASE LEN MODEL WHAT: the whole region reads back as the model
check_region() {
  rd "$1" "$2" /tmp/region
  cmp -s /tmp/region "$3" || fail "$4: region [$1, +$2) differs from the expected data: $(diff_desc /tmp/region "$3")"
}
# model_put FILE OFF: write FILE into the model at device offset OFF (RB/RF set)
model_put() { dd if="$1" of="$RF" bs=512 seek=$(( ($2 - RB) / 512 )) conv=notrunc 2>/dev/null || fail "model update"; }

# range_op zero|discard OFF LEN
range_op() {
  k=$1; o=$(( $2 )); l=$3; e=$((o + l))
  d="$k [$o, +$l)"
  region_of $o $e
  lo=$((o - W)); [ $lo -lt $RB ] && lo=$RB
  hi=$((e + W)); [ $hi -gt $((RB + RL)) ] && hi=$((RB + RL))
  sb=; sa=
  if [ $lo -lt $o ]; then rd $lo $((o - lo)) /tmp/w; sb=$(sum_of /tmp/w); fi
  if [ $hi -gt $e ]; then rd $e $((hi - e)) /tmp/w; sa=$(sum_of /tmp/w); fi
  if [ $k = zero ]; then
    run "$d" $BLKDISCARD -f -z -o $o -l $l /dev/vda
  else
    run "$d" $BLKDISCARD -f -o $o -l $l /dev/vda
  fi
  check_dmesg
  rd $o $l /tmp/got
  head -c $l /dev/zero > /tmp/zero
  dd if="$RF" of=/tmp/old bs=512 skip=$(( (o - RB) / 512 )) count=$((l / 512)) 2>/dev/null || fail "model read"
  if cmp -s /tmp/got /tmp/zero; then rb=zeroes
  elif cmp -s /tmp/got /tmp/old; then rb=unchanged
  elif [ -z "$(cmp -l /tmp/got /tmp/old 2>/dev/null | awk '$2 != 0' | head -n1)" ]; then rb=zeroes+unchanged
  else rb=OTHER
  fi
  if [ $k = zero ]; then
    [ $rb = zeroes ] || fail "$d: range does not read back as zeroes ($rb): $(diff_desc /tmp/got /tmp/zero)"
    model_put /tmp/zero $o
  else
    # What a discarded range reads back as is unspecified: take it into the model.
    model_put /tmp/got $o
  fi
  if [ -n "$sb" ]; then
    rd $lo $((o - lo)) /tmp/w
    [ "$(sum_of /tmp/w)" = "$sb" ] || fail "$d: window before it [$lo, $o) changed"
  fi
  if [ -n "$sa" ]; then
    rd $e $((hi - e)) /tmp/w
    [ "$(sum_of /tmp/w)" = "$sa" ] || fail "$d: window after it [$e, $hi) changed"
  fi
  check_region $RB $RL $RF "$d"
  echo "${RANGE_MARKER} $k off=$o len=$l ok readback=$rb" >&2
}

step "filling [0, +$AL) and [$CB, +$CL) with random data"
head -c $AL /dev/urandom > /tmp/model.a || fail "no pattern"
head -c $CL /dev/urandom > /tmp/model.c || fail "no pattern"
wr /tmp/model.a $AB
wr /tmp/model.c $CB
check_region $AB $AL /tmp/model.a "initial fill"
check_region $CB $CL /tmp/model.c "initial fill"
${ops}
check_dmesg
step "ranges ok"

# ---- ext4 + fstrim
mkdir -p /mnt/t
run "mkfs.ext4" mkfs.ext4 -F -q /dev/vda
run "mount" mount -t ext4 /dev/vda /mnt/t
${keep}
run "mkdir" mkdir -p /mnt/t/il
i=0
while [ $i -lt ${DELETE_FILES} ]; do
  head -c $(( ${DELETE_FILE_BYTES} + i * 4096 + 77 )) /dev/urandom > /mnt/t/d$i.bin || fail "write d$i.bin"
  i=$((i + 1))
done
i=0
while [ $i -lt ${INTERLEAVED} ]; do
  head -c ${INTERLEAVED_BYTES} /dev/urandom > /mnt/t/il/x$i || fail "write il/x$i"
  sync
  head -c ${INTERLEAVED_BYTES} /dev/urandom > /mnt/t/il/y$i || fail "write il/y$i"
  sync
  i=$((i + 1))
done
run "sync" sync
run "delete d*.bin" sh -c 'rm -f /mnt/t/d*.bin'
run "sync" sync
echo "${BEFORE_TRIM_MARKER} used_kib=$(df -k /mnt/t | awk 'NR == 2 { print $3 }')" >&2
# Give the host time to sample the image's allocation before anything is trimmed.
sleep 2
$FSTRIM -v /mnt/t > /tmp/fstrim.out 2>&1 || fail "fstrim -v /mnt/t (exit $?): $(cat /tmp/fstrim.out)"
cat /tmp/fstrim.out >&2
trimmed=$(sed -n 's/.*(\\([0-9][0-9]*\\) bytes) trimmed.*/\\1/p' /tmp/fstrim.out)
echo "${FSTRIM_MARKER} bytes=\${trimmed:-none}" >&2
[ -n "$trimmed" ] && [ "$trimmed" -gt 0 ] || fail "fstrim trimmed nothing: $(cat /tmp/fstrim.out)"
check_dmesg
(cd /mnt/t && find . -type f | sort | xargs sha256sum) > /tmp/sums || fail "sha256sum (before)"
step "$(wc -l < /tmp/sums) files, $(du -sk /mnt/t | cut -f1) KiB"
run "umount" umount /mnt/t
echo 3 > /proc/sys/vm/drop_caches
run "mount -o discard" mount -t ext4 -o discard /dev/vda /mnt/t
(cd /mnt/t && find . -type f | sort | xargs sha256sum) > /tmp/sums2 || fail "sha256sum (after remount)"
if ! cmp -s /tmp/sums /tmp/sums2; then
  diff /tmp/sums /tmp/sums2 >&2
  fail "checksums differ after remount: $(diff /tmp/sums /tmp/sums2 | grep '^[-+][0-9a-f]' | head -n1)"
fi
# Online discard of many small separate extents (merged into multi-range requests).
run "delete il/x*" sh -c 'rm -f /mnt/t/il/x*'
run "sync" sync
grep -v '/il/x' /tmp/sums > /tmp/sums-kept
echo 3 > /proc/sys/vm/drop_caches
(cd /mnt/t && find . -type f | sort | xargs sha256sum) > /tmp/sums3 || fail "sha256sum (after online discard)"
if ! cmp -s /tmp/sums-kept /tmp/sums3; then
  diff /tmp/sums-kept /tmp/sums3 >&2
  fail "checksums differ after online discard: $(diff /tmp/sums-kept /tmp/sums3 | grep '^[-+][0-9a-f]' | head -n1)"
fi
run "umount" umount /mnt/t
run "e2fsck -fn" e2fsck -fn /dev/vda
check_dmesg
step "discard/write-zeroes ok"
exit 0
`
  );
}

// ------------------------------------------------------------ host side ---

function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

function fmtMiB(n: number | undefined): string {
  return n === undefined ? '?' : `${(n / MiB).toFixed(2)} MiB`;
}

// ------------------------------------------------------ host variants ---

/** What vublk serves: the sparse file itself, or a 4K-native loop device over it. */
type HostKind = 'file' | 'loop4k';

async function run(tt: Test, kind: HostKind): Promise<void> {
  // Loaded here, not at the top: it loads the native addon.
  const { MAX_ZERO_SEGMENT_BYTES } = await import('../../src/disk/discard-probe');
  let vublk: ChildProcess | undefined;
  const host = await guestDisk(tt, {
    prefix: 'vublk-e2e-discard-',
    imageBytes: IMAGE_BYTES,
    loop4k: kind === 'loop4k',
    daemon: () => vublk,
  });
  const { image, socket } = host;
  const dev = host.loop?.dev;
  const startAlloc = allocatedBytes(image);
  // On the 4K device the guest still has 512-byte blocks.
  const extraArgs = kind === 'loop4k' ? ['--logical-block-size', '512'] : [];
  vublk = await startVublkBackend({ image: host.disk, socket, queues: QUEUES, extraArgs, ...(log ? { log } : {}) });

  // Allocation of the image: at the guest's BEFORE_TRIM_MARKER, and the peak of 100 ms samples.
  let atMarker: number | undefined;
  let peak = startAlloc;
  const sample = (): number => {
    const n = allocatedBytes(image);
    if (n > peak) peak = n;
    return n;
  };
  const poll = setInterval(sample, 100);
  const onLine = (l: string): void => {
    if (atMarker === undefined && l.includes(BEFORE_TRIM_MARKER)) atMarker = sample();
    log?.(l);
  };

  let boot: GuestRun;
  try {
    boot = await runGuestWith(
      vublk,
      'vublk',
      { socket, queues: QUEUES, script: discardScript(), timeoutMs: GUEST_TIMEOUT_MS, log: onLine },
      true,
    );
  } finally {
    clearInterval(poll);
  }
  const { res, output, stopped } = boot;
  const afterAlloc = allocatedBytes(image);
  const guestLines = res.output.split('\n');
  tt.comment(
    `guest ${res.result ?? '(no result line)'} in ${(res.durationMs / 1000).toFixed(1)} s; ` +
      `vublk stopped (code ${stopped.code}, signal ${stopped.signal})`,
  );

  expectGuestPass(tt, boot, 'guest PASS');

  // --- the limits the guest saw, against what vublk derives from the host
  const probe = output.split('\n').find((l) => /\bvublk: info: host disk direct I\/O\b/.test(l));
  const offsetAlign = Number(fields(probe ?? '').offsetAlign);
  tt.ok(Number.isSafeInteger(offsetAlign) && offsetAlign >= 512, 'vublk logged its probe (offsetAlign)', { probe });
  // As src/disk/discard-probe.ts derives them: files from st_blksize, block devices from sysfs.
  const roundDown = (n: number, unit: number): number => Math.floor(n / unit) * unit;
  const maxSeg = roundDown(MAX_ZERO_SEGMENT_BYTES, offsetAlign);
  let hostBasis: string;
  let wantGran: number;
  let wantDiscardMax: number;
  if (dev === undefined) {
    const blksize = fs.statSync(image).blksize;
    hostBasis = `st_blksize ${blksize}, offsetAlign ${offsetAlign}`;
    wantGran = Math.min(Math.max(blksize, offsetAlign), MiB);
    wantDiscardMax = roundDown(maxSeg, wantGran);
  } else {
    const hostMax = sysBlockNumber(dev, 'queue/discard_max_bytes');
    const hostGran = sysBlockNumber(dev, 'queue/discard_granularity');
    hostBasis = `${dev} discard_max_bytes ${hostMax} discard_granularity ${hostGran}, offsetAlign ${offsetAlign}`;
    wantGran = Math.max(hostGran, offsetAlign);
    wantDiscardMax = roundDown(Math.min(hostMax, maxSeg), wantGran);
  }
  const want = {
    discard_max_bytes: wantDiscardMax,
    discard_granularity: wantGran,
    write_zeroes_max_bytes: maxSeg,
  };
  const limitsLine = guestLines.find((l) => l.includes(LIMITS_MARKER));
  if (limitsLine !== undefined) tt.comment(`guest: ${limitsLine.trim()}`);
  const lf = fields(limitsLine ?? '');
  const got = {
    discard_max_bytes: Number(lf.discard_max_bytes ?? NaN),
    discard_granularity: Number(lf.discard_granularity ?? NaN),
    write_zeroes_max_bytes: Number(lf.write_zeroes_max_bytes ?? NaN),
  };
  tt.ok(limitsLine !== undefined, `guest printed ${LIMITS_MARKER}`, { guestOutput: tail(res.output, 30) });
  for (const [k, v] of Object.entries(got)) tt.ok(v > 0, `guest ${k} is non-zero (${v})`, { line: limitsLine });
  tt.same(got, want, `guest limits are the host-derived ones (${hostBasis})`, {
    line: limitsLine,
    probe,
  });

  // --- every range was checked
  const rangeLines = guestLines.filter((l) => l.includes(RANGE_MARKER));
  for (const l of rangeLines) tt.comment(`guest: ${l.trim()}`);
  tt.equal(rangeLines.length, RANGE_OPS.length, `guest checked all ${RANGE_OPS.length} ranges`, {
    guestOutput: tail(res.output, 30),
  });

  // --- fstrim, and what it did on the host
  const trimLine = guestLines.find((l) => l.includes(FSTRIM_MARKER));
  const trimmed = Number(fields(trimLine ?? '').bytes ?? NaN);
  tt.ok(trimmed > 0, `fstrim reported bytes trimmed > 0 (${trimLine?.trim() ?? 'no line'})`, { guestOutput: tail(res.output, 30) });
  const deletedBytes = DELETE_FILES * DELETE_FILE_BYTES;
  tt.comment(
    `image allocation: start ${fmtMiB(startAlloc)}, at ${BEFORE_TRIM_MARKER} ${fmtMiB(atMarker)}, ` +
      `peak ${fmtMiB(peak)}, after the run ${fmtMiB(afterAlloc)}; files deleted before fstrim ${fmtMiB(deletedBytes)}`,
  );
  tt.ok(atMarker !== undefined, `host sampled the image at the guest's ${BEFORE_TRIM_MARKER}`, {
    guestOutput: tail(res.output, 30),
  });
  if (atMarker !== undefined) {
    tt.ok(afterAlloc < atMarker, `image allocation after the run (${fmtMiB(afterAlloc)}) < before fstrim (${fmtMiB(atMarker)})`);
    tt.ok(
      atMarker - afterAlloc >= deletedBytes / 2,
      `fstrim deallocated at least half the deleted files' ${fmtMiB(deletedBytes)} on the host ` + `(${fmtMiB(atMarker - afterAlloc)})`,
    );
  }

  // --- vublk
  expectCleanStop(tt, 'vublk', boot);
  const counters = loggedCounters(output, 'closed');
  for (const c of counters) tt.comment(c.line.trim());
  tt.equal(counters.length, QUEUES, `one counters reason=closed line per queue (${QUEUES})`, { backendOutput: tail(output, 30) });
  for (const c of counters) {
    tt.equal(c.fields.errors, '0', `queue ${c.fields.queue}: errors=0`, { line: c.line });
  }
  if (kind === 'loop4k') {
    // Partial 4 KiB host blocks (WRITE_ZEROES heads/tails, 512-byte writes) need read-modify-write.
    const rmw = counters.reduce((n, c) => n + Number(c.fields.rmwCycles ?? NaN), 0);
    tt.ok(rmw > 0, `vublk did read-modify-write cycles on the 4K device (rmwCycles ${rmw})`, { lines: counters.map((c) => c.line) });
  }
}

// --------------------------------------------------------------- tests ---

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, () => vublkPrerequisites({ built: true })),
    ciWhat: 'QEMU discard e2e',
    name: `qemu discard/write-zeroes e2e (vublk, ${QUEUES} queues)`,
    skipName: 'qemu discard/write-zeroes e2e',
    timeoutMs: 15 * 60 * 1000,
    fileTimeoutMs: 20 * 60 * 1000,
  },
  async (tt) => {
    await tt.test('sparse image file', async (st) => {
      await run(st, 'file');
    });

    // The same on a host whose blocks are 4 KiB, so the odd ranges are partial
    // host blocks for vublk too (on the file above, offsetAlign is usually 512).
    await testWithPrerequisites(
      tt,
      loopPrerequisites(),
      '4K loop device variant:',
      '4K-native loop device over a sparse file (--logical-block-size 512)',
      {},
      async (st) => {
        await run(st, 'loop4k');
      },
    );
  },
);
