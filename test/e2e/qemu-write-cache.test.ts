/**
 * The guest's write cache choice survives vublk restarts (QEMU e2e).
 *
 * QEMU (7.x) reads the backend's config space only when the device is
 * realized and caches it; SET_CONFIG is forwarded once, when the guest
 * changes the mode. So after `echo "write through" > /sys/block/vda/cache_type`, a
 * restarted vublk is never told again, while the guest keeps believing it:
 * vublk must restore the mode from its state file and honour it (writes
 * issued with RWF_DSYNC: the durableWrites counter).
 *
 * Boot 1 (chardev reconnect=1): the guest sets write-through, then vublk is
 * SIGKILLed and restarted, later SIGTERMed and restarted. The guest learns
 * that each restart is done from a token the host writes into the image
 * (it polls that sector with O_DIRECT reads), then checks its write_cache,
 * writes, and after the second restart unbinds and rebinds virtio_blk
 * (a re-probe reads the config space again, from QEMU's cache).
 * Boot 2: a new QEMU against the last vublk reads the config space from
 * vublk itself: the guest finds write-through without setting it.
 *
 * VUBLK_E2E_VERBOSE=1 streams guest/daemon output to stderr.
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { daemonLog, stopDaemon, waitForDaemonLine } from '../helpers/daemon';
import { startVublkBackend, vublkProblemLines } from '../helpers/guest/backends';
import { expectCleanStop, expectGuestPass, guestDisk, guestTest, runGuestWith, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { runGuest } from '../helpers/guest/run';
import { guestScriptPreamble } from '../helpers/guest/scripts';
import { e2eLog } from '../helpers/guest/verbose';
import { loggedCounters } from '../helpers/counters';

const IMAGE_BYTES = 64 * 1024 * 1024;
/** The sector the host writes its "restart done" tokens to (the guest's writes stay below it). */
const TOKEN_SECTOR = IMAGE_BYTES / 512 - 8;
/** 16 KiB O_DIRECT writes the guest issues after each restart (one request each). */
const GUEST_WRITES = 64;
const MARK = 'VUBLK-E2E-WCE';
const RECONNECT_WAIT_MS = 20000;
const GUEST_TIMEOUT_MS = 90 * 1000;
const log = e2eLog;
const RESTORED = /\bvublk: info: write cache mode restored from state file .*mode=write-through\b/;

/** Boot 1: set write-through, then after each host token check it, write, (the second time) rebind. */
function restartsScript(): string {
  return (
    guestScriptPreamble() +
    `M=${MARK}
# cache_type is virtio_blk's own attribute: writing it sends the config write
# to the device. queue/write_cache (the block layer's) follows it, but
# writing that one only changes what the kernel believes.
CT=/sys/block/vda/cache_type
WC=/sys/block/vda/queue/write_cache
expect_wc() {
  [ "$(cat $CT)" = "$1" ] || fail "$2: cache_type is '$(cat $CT)', expected '$1'"
  [ "$(cat $WC)" = "$1" ] || fail "$2: queue/write_cache is '$(cat $WC)', expected '$1'"
}
# wait_token N: until the host has written go-N at sector ${TOKEN_SECTOR} (read past the guest's cache)
wait_token() {
  i=0
  while [ "$(dd if=/dev/vda bs=512 skip=${TOKEN_SECTOR} count=1 iflag=direct 2>/dev/null | head -c 4)" != "go-$1" ]; do
    i=$((i + 1))
    [ $i -le 60 ] || fail "no token go-$1 from the host in 60 s"
    sleep 1
  done
}
write_some() {
  dd if=/dev/urandom of=/dev/vda bs=16k count=${GUEST_WRITES} seek=$(( $1 * ${GUEST_WRITES} )) oflag=direct conv=notrunc 2>/tmp/dd ||
    fail "writes after restart $1: $(tail -n1 /tmp/dd)"
}
expect_wc "write back" "at boot"
[ -w $CT ] || fail "$CT is not writable (CONFIG_WCE not negotiated?)"
echo "write through" > $CT || fail "cannot set write through"
expect_wc "write through" "after setting it"
echo "$M set" >&2
wait_token 1
expect_wc "write through" "after a SIGKILL restart"
write_some 1
echo "$M wrote 1" >&2
wait_token 2
expect_wc "write through" "after a SIGTERM restart"
write_some 2
dev=$(basename "$(readlink -f /sys/block/vda/device)")
echo "$dev" > /sys/bus/virtio/drivers/virtio_blk/unbind || fail "cannot unbind $dev"
echo "$dev" > /sys/bus/virtio/drivers/virtio_blk/bind || fail "cannot bind $dev"
i=0
while [ ! -e $WC ]; do i=$((i + 1)); [ $i -le 20 ] || fail "vda did not come back after rebinding $dev"; sleep 1; done
expect_wc "write through" "after rebinding virtio_blk"
echo "$M rebound $dev: $(cat $CT)" >&2
check_dmesg
exit 0
`
  );
}

/** Boot 2: nothing set by this guest; the mode comes from vublk. */
function freshBootScript(): string {
  return (
    guestScriptPreamble() +
    `CT=/sys/block/vda/cache_type
echo "${MARK} fresh boot: $(cat $CT)" >&2
[ "$(cat $CT)" = "write through" ] || fail "a new QEMU sees '$(cat $CT)'"
[ "$(cat /sys/block/vda/queue/write_cache)" = "write through" ] || fail "queue/write_cache is '$(cat /sys/block/vda/queue/write_cache)'"
exit 0
`
  );
}

function writeToken(image: string, n: number): void {
  const fd = fs.openSync(image, 'r+');
  try {
    fs.writeSync(fd, Buffer.from(`go-${n}`), 0, 4, TOKEN_SECTOR * 512);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Durable writes in the counters vublk logged when its connection closed (all queues). */
function durableWrites(child: ChildProcess): number | undefined {
  const cs = loggedCounters(daemonLog(child), 'closed');
  if (cs.length === 0 || cs.some((c) => c.values.durableWrites === undefined)) return undefined;
  return cs.reduce((s, c) => s + (c.values.durableWrites ?? 0), 0);
}

async function run(tt: Test): Promise<void> {
  const gens: ChildProcess[] = [];
  const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-wce-', imageBytes: IMAGE_BYTES });
  tt.teardown(async () => {
    for (const g of gens) await stopDaemon(g, { signal: 'SIGKILL', timeoutMs: 1000 });
  });
  const stateFile = `${socket}.state`;
  const spawn = async (): Promise<ChildProcess> => {
    const n = gens.length + 1;
    const child = await startVublkBackend({
      image,
      socket,
      queues: 1,
      removeStaleSocket: false,
      ...(log ? { log: (l: string) => log(`[vublk#${n}] ${l}`) } : {}),
    });
    gens.push(child);
    return child;
  };
  const ac = new AbortController();
  const restart = async (n: number, signal: 'SIGKILL' | 'SIGTERM'): Promise<void> => {
    const cur = gens[gens.length - 1]!;
    const exit = await stopDaemon(cur, { signal, timeoutMs: 15000 });
    tt.same(
      exit,
      signal === 'SIGKILL' ? { code: null, signal: 'SIGKILL' } : { code: 0, signal: null },
      `vublk #${gens.length}: stopped with ${signal}`,
    );
    await new Promise((r) => setTimeout(r, 1000));
    const next = await spawn();
    const connected = await waitForDaemonLine(next, /\bvublk: info: frontend connected\b/, RECONNECT_WAIT_MS);
    if (connected === undefined) throw new Error(`QEMU did not reconnect to vublk #${gens.length} within ${RECONNECT_WAIT_MS} ms`);
    writeToken(image, n);
  };

  await spawn();
  let chain = Promise.resolve();
  let savedAtSet: unknown;
  const res = await runGuest({
    socket,
    queues: 1,
    script: restartsScript(),
    timeoutMs: GUEST_TIMEOUT_MS,
    reconnect: true,
    signal: ac.signal,
    log: (l) => {
      log?.(l);
      const step = l.includes(`${MARK} set`) ? 1 : l.includes(`${MARK} wrote 1`) ? 2 : 0;
      if (step === 0) return;
      if (step === 1) savedAtSet = fs.existsSync(stateFile) ? JSON.parse(fs.readFileSync(stateFile, 'utf8')) : undefined;
      chain = chain
        .then(() => restart(step, step === 1 ? 'SIGKILL' : 'SIGTERM'))
        .catch((e: unknown) => ac.abort(e instanceof Error ? e : new Error(String(e))));
    },
  });
  await chain;
  tt.ok(res.passed, 'boot 1: the guest kept write-through across a SIGKILL and a SIGTERM restart and a rebind', {
    result: res.result,
    timedOut: res.timedOut,
    aborted: res.aborted,
    guestOutput: tail(res.output),
  });
  tt.comment(res.output.split('\n').find((l) => l.includes(`${MARK} rebound`)) ?? '(no rebind line)');
  tt.match(savedAtSet, { version: 1, writeback: false }, 'the state file held write-through as soon as the guest set it');
  tt.equal(gens.length, 3, 'vublk ran three times');
  for (const [i, g] of gens.entries()) {
    if (i > 0) tt.match(daemonLog(g), RESTORED, `vublk #${i + 1}: logged write-through restored`);
  }
  // vublk #2's connection closed at its SIGTERM: its counters are logged.
  const dw2 = durableWrites(gens[1]!);
  tt.ok(dw2 !== undefined && dw2 >= GUEST_WRITES, `vublk #2 issued the guest's writes durable (durableWrites=${dw2})`, {
    log: tail(daemonLog(gens[1]!), 20),
  });

  // Boot 2: a new QEMU against vublk #3 (its connection to the first QEMU has closed).
  const third = gens[2]!;
  const closed = await waitForDaemonLine(third, /\bvublk: info: frontend connection closed\b/, 10000);
  tt.ok(closed, 'vublk #3 saw the first QEMU go');
  const dw3 = durableWrites(third);
  tt.ok(dw3 !== undefined && dw3 >= GUEST_WRITES, `vublk #3 issued the guest's writes durable (durableWrites=${dw3})`);
  const fresh = await runGuestWith(third, 'vublk', {
    socket,
    queues: 1,
    script: freshBootScript(),
    timeoutMs: GUEST_TIMEOUT_MS,
    ...(log ? { log } : {}),
  });
  expectGuestPass(tt, fresh, 'boot 2: a new QEMU reads write-through from vublk');
  expectCleanStop(tt, 'vublk', fresh);
  for (const [i, g] of gens.entries()) tt.same(vublkProblemLines(daemonLog(g)), [], `vublk #${i + 1}: logged no warn/error line`);
}

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, vublkPrerequisites),
    ciWhat: 'QEMU e2e',
    name: 'qemu write cache e2e: write-through survives vublk restarts',
    skipName: 'qemu write cache e2e',
    timeoutMs: 4 * 60 * 1000,
    fileTimeoutMs: 5 * 60 * 1000,
  },
  run,
);
