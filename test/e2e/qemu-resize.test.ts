/**
 * Online resize and image locking with QEMU (e2e).
 *
 * The guest reads /sys/block/vda/size and says so; while QEMU runs, the host
 * checks that a second vublk and qemu-io (a writer) are refused on the same
 * image, then grows the image with truncate and nothing else (no SIGHUP):
 * vublk's poll notices, sends CONFIG_CHANGE_MSG, QEMU re-reads the config
 * space and interrupts the guest. The guest must see the new size within a
 * few seconds, then writes and reads back at the new end with no kernel
 * error; vublk logs no warn or error line.
 *
 * VUBLK_E2E_VERBOSE=1 streams guest/daemon output to stderr.
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { daemonLog } from '../helpers/daemon';
import { findCommand } from '../helpers/find-command';
import { startVublkBackend } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { guestScriptPreamble } from '../helpers/guest/scripts';
import { e2eLog } from '../helpers/guest/verbose';
import { vublkBin } from '../helpers/vublk-process';

const MIB = 1024 * 1024;
const OLD_BYTES = 64 * MIB;
const NEW_BYTES = 96 * MIB;
const MARK = 'VUBLK-E2E-RESIZE';
/** How long the guest waits for the new size (vublk polls every 2 s; TCG is slow). */
const GUEST_WAIT_S = 30;
const GUEST_TIMEOUT_MS = 3 * 60 * 1000;
const log = e2eLog;

function resizeScript(): string {
  const oldSectors = OLD_BYTES / 512;
  const newSectors = NEW_BYTES / 512;
  return (
    guestScriptPreamble({ expectSizeBytes: OLD_BYTES }) +
    `M=${MARK}
echo "$M ready size=$(cat /sys/block/vda/size)" >&2
i=0
while [ "$(cat /sys/block/vda/size)" -eq ${oldSectors} ]; do
  i=$((i + 1))
  [ $i -le ${GUEST_WAIT_S * 10} ] || fail "/sys/block/vda/size still ${oldSectors} after ${GUEST_WAIT_S} s"
  sleep 0.1
done
size=$(cat /sys/block/vda/size)
echo "$M grown size=$size after $((i / 10)).$((i % 10)) s" >&2
[ "$size" -eq ${newSectors} ] || fail "size is $size, expected ${newSectors}"
# 64 KiB at the very end of the grown disk, past the old end.
dd if=/dev/urandom of=/tmp/pat bs=64k count=1 2>/dev/null || fail "no pattern"
run "write at the new end" dd if=/tmp/pat of=/dev/vda bs=64k seek=$(( ${newSectors} / 128 - 1 )) count=1 oflag=direct conv=notrunc
run "read it back" dd if=/dev/vda of=/tmp/back bs=64k skip=$(( ${newSectors} / 128 - 1 )) count=1 iflag=direct
cmp /tmp/pat /tmp/back || fail "data read back at the new end differs"
# Past the end: the kernel refuses (size is what the guest believes).
dd if=/dev/vda of=/dev/null bs=512 skip=${newSectors} count=1 iflag=direct 2>/dev/null
check_dmesg
echo "$M done" >&2
exit 0
`
  );
}

/** The host's checks while QEMU runs: a second vublk and qemu-io must be refused. */
function lockChecks(tt: Test, image: string, dir: string): void {
  const second = spawnSync(process.execPath, [vublkBin, '--disk', image, '--socket', path.join(dir, 'second.sock')], {
    encoding: 'utf8',
    timeout: 20000,
  });
  tt.equal(second.status, 1, 'a second vublk on the image exits 1 while QEMU runs');
  tt.match(second.stderr, /image .* is locked by another process/, `and says why: ${second.stderr.trim()}`);
  if (findCommand('qemu-io') !== null) {
    const io = spawnSync('qemu-io', ['-c', 'write 0 512', '-f', 'raw', image], { encoding: 'utf8', timeout: 20000 });
    tt.not(io.status, 0, `qemu-io write is refused: ${`${io.stdout}${io.stderr}`.trim()}`);
  }
  if (findCommand('qemu-img') !== null) {
    const rs = spawnSync('qemu-img', ['resize', '-f', 'raw', image, '128M'], { encoding: 'utf8', timeout: 20000 });
    tt.not(rs.status, 0, `qemu-img resize is refused: ${`${rs.stdout}${rs.stderr}`.trim()}`);
  }
}

async function run(tt: Test): Promise<void> {
  let daemon: ChildProcess | undefined;
  const { dir, image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-resize-', imageBytes: OLD_BYTES, daemon: () => daemon });
  daemon = await startVublkBackend({ image, socket, queues: 1, ...(log ? { log: (l: string) => log(`[vublk] ${l}`) } : {}) });
  let grownAt = 0;
  let grownSeen = 0;
  const g = await runGuestWith(daemon, 'vublk', {
    socket,
    queues: 1,
    script: resizeScript(),
    timeoutMs: GUEST_TIMEOUT_MS,
    log: (l) => {
      log?.(l);
      if (l.includes(`${MARK} ready`)) {
        lockChecks(tt, image, dir);
        fs.truncateSync(image, NEW_BYTES);
        grownAt = Date.now();
      } else if (l.includes(`${MARK} grown`) && grownSeen === 0) {
        grownSeen = Date.now();
      }
    },
  });
  expectGuestPass(tt, g, 'the guest saw its disk grow and used the new end without error');
  expectCleanStop(tt, 'vublk', g);
  tt.ok(grownAt > 0 && grownSeen > 0, `the guest saw the new size ${((grownSeen - grownAt) / 1000).toFixed(1)} s after the truncate`);
  tt.match(
    g.output,
    new RegExp(`vublk: info: capacity changed .*trigger=poll .*oldSectors=${OLD_BYTES / 512} newSectors=${NEW_BYTES / 512}`),
    'vublk logged the change',
    {
      log: tail(daemonLog(daemon), 20),
    },
  );
  tt.equal(fs.statSync(image).size, NEW_BYTES, 'the image kept its new size');
}

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, vublkPrerequisites),
    ciWhat: 'QEMU e2e',
    name: 'qemu resize e2e: the guest sees its disk grow; other users of the image are refused',
    skipName: 'qemu resize e2e',
    timeoutMs: 4 * 60 * 1000,
    fileTimeoutMs: 5 * 60 * 1000,
  },
  run,
);
