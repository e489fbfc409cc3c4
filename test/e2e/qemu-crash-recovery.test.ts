/**
 * Crash recovery end to end with QEMU (issue 8): vublk killed under fio.
 *
 * The guest (2 vCPUs, 2 virtqueues, chardev reconnect=1) runs fio randwrite
 * with crc32c verify (4k-128k, iodepth 32, one job per vCPU pinned to it on
 * its own region) for RUNTIME_S seconds. Meanwhile the host kills vublk at
 * random moments (seeded, VUBLK_TEST_SEED repeats a run; each time once its
 * io_uring has an operation in flight) at least MIN_KILLS times and starts
 * a new one on the same image and socket; QEMU reconnects and hands it the
 * same inflight region. Then fio must exit 0, a separate
 * read-only verify pass over both regions must be clean, the guest's dmesg
 * must show no I/O or ring error, and no vublk may log a warn/error line.
 *
 *  - SIGKILL: nothing is drained; the requests vublk had popped and not yet
 *    completed exist only in the inflight region. The new vublk resubmits
 *    them: the sum of `resubmitted` in the counters lines over the run must
 *    be > 0. Without the region QEMU only restarts each ring at its used
 *    index: that re-offers the popped requests when they were completed in
 *    order (the usual case here, so the guest mostly survives and the test
 *    fails on the count); a request popped before a later completed one is
 *    lost (the guest's I/O hangs: the fio watchdog says so) and the later
 *    one returned twice (the guest's ring breaks: dmesg).
 *  - SIGTERM: vublk drains and exits 0; resubmitted may be 0.
 *
 * How fio's verify sees a failure: every 4 KiB of every write carries a
 * header (its own offset, length, the write's seed, crc32c of the data).
 * verify_backlog re-reads each write soon after it completed (wrong or stale
 * data, torn or misplaced 4 KiB pieces); the final pass reads both regions
 * whole (they are prefilled, so every 4 KiB must hold a valid header of its
 * own offset). A replayed write writes the same data to the same sectors,
 * so it is invisible to both, as it must be.
 *
 * The counters of a vublk about to be killed are read with SIGUSR1 first
 * (a SIGKILLed vublk logs nothing); the last one logs them at disconnect.
 * VUBLK_E2E_VERBOSE=1 streams guest and daemon output to stderr.
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { daemonLog, isSocket, stopDaemon, waitForDaemonLine, type Exit } from '../helpers/daemon';
import { startVublkGeneration, vublkProblemLines, type VublkGeneration } from '../helpers/guest/backends';
import { guestDisk, guestTest, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { runGuest, type RunGuestResult } from '../helpers/guest/run';
import { guestScriptPreamble } from '../helpers/guest/scripts';
import { e2eLog as log } from '../helpers/guest/verbose';
import { untilUringBusy } from '../helpers/uring-inflight';
import { loggedCounters } from '../helpers/counters';
import { prng } from '../helpers/prng';

const QUEUES = 2;
const MiB = 1024 * 1024;
/** Per fio job (one per vCPU and queue). */
const REGION_MIB = 32;
const IMAGE_BYTES = QUEUES * REGION_MIB * MiB;
const RUNTIME_S = 60;
const MIN_KILLS = 5;
/** Not more than this many: the guest must also get work done between them. */
const MAX_KILLS = 8;
/** A vublk is killed this long (uniform, ms) after QEMU connected to it... */
const ALIVE_MS: [number, number] = [2000, 7000];
/** ...once its io_uring has an operation in flight (waiting at most this long)... */
const BUSY_WAIT_MS = 3000;
/** ...and the next one starts this long (uniform, ms) after it exited. */
const DOWN_MS: [number, number] = [100, 1500];
/** QEMU retries every second (reconnect=1): give up on it after this long. */
const RECONNECT_WAIT_MS = 20000;
/** fio must end this long after it started, or the guest's I/O hangs. */
const FIO_DEADLINE_MS = (RUNTIME_S + 90) * 1000;
const GUEST_TIMEOUT_MS = 5 * 60 * 1000;
const SEED = Number(process.env.VUBLK_TEST_SEED ?? Date.now() % 1_000_000);

/** Guest progress lines: `VUBLK-E2E-CRASH run | verify | done`. */
const MARK = 'VUBLK-E2E-CRASH';

// ------------------------------------------------------------ the guest ---

/**
 * Prefill both regions, fio randwrite + verify_backlog for RUNTIME_S (the
 * host kills vublk meanwhile), then a read-only verify of both regions.
 */
function crashFioScript(fioSeed: number): string {
  const common = [
    '--filename=/dev/vda',
    '--ioengine=libaio',
    '--direct=1',
    '--iodepth=32',
    `--size=${REGION_MIB}M`,
    '--verify=crc32c',
    // A header in every 4 KiB, whatever the write's size: the final pass can
    // read the regions with any block size.
    '--verify_interval=4k',
    '--verify_fatal=1',
    '--verify_dump=1',
    '--exitall_on_error=1',
    '--group_reporting=1',
  ].join(' ');
  // One job per vCPU, pinned: blk-mq maps one virtqueue per CPU, so both are used.
  const jobs: string[] = [];
  for (let i = 0; i < QUEUES; i++) jobs.push(`--name=q${i} --offset=${i * REGION_MIB}M --cpus_allowed=${i}`);
  const run = [
    '--rw=randwrite',
    '--bsrange=4k-128k',
    '--blockalign=4k',
    '--randrepeat=1',
    `--randseed=${fioSeed}`,
    // Never two writes in flight on the same blocks (fio's random map is
    // reset each time a job wraps around its region).
    '--serialize_overlap=1',
    '--time_based=1',
    `--runtime=${RUNTIME_S}`,
    '--verify_backlog=256',
  ].join(' ');
  return (
    guestScriptPreamble({ expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }) +
    `COMMON="${common}"
JOBS="${jobs.join(' ')}"
[ "$(nproc)" -ge ${QUEUES} ] || fail "guest has $(nproc) CPUs, wants ${QUEUES}"
# fio_checked DESC LOG: fail unless fio (already run, exit code in $rc) exited 0 and LOG has no verify error.
fio_checked() {
  cat "$2" >&2
  [ "$rc" -eq 0 ] || fail "$1: fio exit $rc: $(grep -m1 -E 'verify|err=' "$2")"
  ! grep -qiE 'verify: |bad (magic|header)|verify failed' "$2" || fail "$1: $(grep -m1 -iE 'verify: |bad (magic|header)|verify failed' "$2")"
}
ring_dmesg() {
  ! dmesg | grep -E 'is not a head|virtio.*(broken|error)' > /tmp/dmesg-ring || fail "virtio ring error in dmesg: $(head -n1 /tmp/dmesg-ring)"
}
# shellcheck disable=SC2086
run "prefill" fio $COMMON --rw=write --bs=128k --do_verify=0 $JOBS --output=/tmp/fio-prefill.log
echo "${MARK} run" >&2
# shellcheck disable=SC2086
fio $COMMON ${run} $JOBS --output=/tmp/fio-run.log; rc=$?
echo "${MARK} verify" >&2
fio_checked "randwrite+verify under restarts" /tmp/fio-run.log
check_dmesg
ring_dmesg
echo 3 > /proc/sys/vm/drop_caches
# shellcheck disable=SC2086
fio $COMMON --rw=read --bs=128k $JOBS --output=/tmp/fio-verify.log; rc=$?
fio_checked "read-back verify" /tmp/fio-verify.log
check_dmesg
ring_dmesg
echo "${MARK} done" >&2
exit 0
`
  );
}

// ------------------------------------------------------------- the host ---

type Kill = 'SIGKILL' | 'SIGTERM';

/** One vublk process of a run. */
interface Generation extends VublkGeneration {
  /** Generations after the first: when QEMU connected (ms after it was ready), if it did. */
  reconnectMs?: number | undefined;
  /** Set when the test stopped it while fio ran. */
  killed?: { aliveMs: number; inflight: number | undefined; busyWaitMs: number; exit: Exit; socketLeft: boolean };
  /** Exit of the last generation, stopped with SIGTERM after the guest ended. */
  finalExit?: Exit;
}

interface Outcome {
  res: RunGuestResult;
  gens: Generation[];
  /** Why the host stopped the run early (a restart failed, fio hung), if it did. */
  error: Error | undefined;
  fioMs: number | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Sends SIGUSR1 and waits (briefly) for the counters lines it makes the daemon log. */
async function snapshotCounters(child: ChildProcess): Promise<void> {
  const before = loggedCounters(daemonLog(child), 'SIGUSR1').length;
  child.kill('SIGUSR1');
  const deadline = Date.now() + 2000;
  while (loggedCounters(daemonLog(child), 'SIGUSR1').length < before + QUEUES && Date.now() < deadline) await sleep(20);
}

/**
 * One guest boot running crashFioScript(); while fio runs, the current
 * vublk is killed with `kill` at random moments and replaced.
 */
async function runWithKills(tt: Test, kill: Kill, seed: number): Promise<Outcome> {
  const rand = prng(seed);
  const between = ([lo, hi]: [number, number]): number => Math.round(lo + rand() * (hi - lo));
  const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-crash-', imageBytes: IMAGE_BYTES });

  const gens: Generation[] = [];
  tt.teardown(async () => {
    for (const g of gens) await stopDaemon(g.child, { signal: 'SIGKILL', timeoutMs: 1000 });
  });
  const ac = new AbortController();
  let error: Error | undefined;
  const stopRun = (e: Error): void => {
    error ??= e;
    ac.abort(error);
  };
  const spawnGeneration = async (): Promise<Generation> => {
    const g = await startVublkGeneration({ image, socket, queues: QUEUES, n: gens.length + 1, onUnexpectedExit: stopRun });
    gens.push(g);
    return g;
  };
  await spawnGeneration();

  let fioRunning = false;
  let fioStarted = 0;
  let fioMs: number | undefined;
  let fioWatchdog: NodeJS.Timeout | undefined;
  const killLoop = async (): Promise<void> => {
    while (fioRunning && gens.length <= MAX_KILLS && error === undefined) {
      const cur = gens[gens.length - 1]!;
      const aliveMs = between(ALIVE_MS);
      await sleep(aliveMs);
      if (!fioRunning) return;
      await snapshotCounters(cur.child);
      // The guest is slow (TCG) and the host disk fast: most of the time no
      // request is in flight. Wait for one, so each kill leaves work behind.
      const busy = await untilUringBusy(cur.child.pid, BUSY_WAIT_MS);
      cur.expectExit();
      const exit = await stopDaemon(cur.child, { signal: kill, timeoutMs: 15000 });
      cur.killed = { aliveMs, ...busy, exit, socketLeft: await isSocket(socket) };
      await sleep(between(DOWN_MS));
      const next = await spawnGeneration();
      const ready = Date.now();
      const connected = await waitForDaemonLine(next.child, /\bvublk: info: frontend connected\b/, RECONNECT_WAIT_MS);
      // Without a backend the guest would only hang until GUEST_TIMEOUT_MS.
      if (connected === undefined) throw new Error(`QEMU did not connect to vublk #${next.n} within ${RECONNECT_WAIT_MS} ms`);
      next.reconnectMs = Date.now() - ready;
    }
  };
  let kills: Promise<void> = Promise.resolve();

  const res = await runGuest({
    socket,
    queues: QUEUES,
    script: crashFioScript(seed),
    timeoutMs: GUEST_TIMEOUT_MS,
    reconnect: true,
    signal: ac.signal,
    log: (l) => {
      log?.(l);
      if (l.includes(`${MARK} run`) && !fioRunning && fioStarted === 0) {
        fioRunning = true;
        fioStarted = Date.now();
        fioWatchdog = setTimeout(() => {
          stopRun(
            new Error(
              `fio did not end within ${FIO_DEADLINE_MS / 1000} s of starting its ${RUNTIME_S} s run: ` +
                `the guest's I/O hangs (requests lost across the restarts?)`,
            ),
          );
        }, FIO_DEADLINE_MS);
        kills = killLoop().catch((e: unknown) => stopRun(e instanceof Error ? e : new Error(String(e))));
      } else if (l.includes(`${MARK} verify`)) {
        fioRunning = false;
        fioMs = Date.now() - fioStarted;
        clearTimeout(fioWatchdog);
      }
    },
  });
  clearTimeout(fioWatchdog);
  fioRunning = false;
  await kills;
  const last = gens[gens.length - 1]!;
  last.expectExit();
  if (!last.killed) last.finalExit = await stopDaemon(last.child, { signal: 'SIGTERM', timeoutMs: 15000 });
  return { res, gens, error, fioMs };
}

// ----------------------------------------------------------- the checks ---

/** Per generation, the last counters line of each (connection, queue): counters are cumulative per connection. */
function lastCounters(g: Generation): Array<Record<string, string>> {
  const byKey = new Map<string, Record<string, string>>();
  const lines = [...loggedCounters(daemonLog(g.child), 'SIGUSR1'), ...loggedCounters(daemonLog(g.child), 'closed')];
  for (const c of lines) byKey.set(`${c.conn}/${c.queue}`, c.fields);
  return [...byKey.values()];
}

/** Sum of a counter over the run, per queue; `missing` counts lines without it. */
function sumCounter(gens: Generation[], key: string): { perQueue: number[]; missing: number; lines: number } {
  const perQueue = new Array<number>(QUEUES).fill(0);
  let missing = 0;
  let lines = 0;
  for (const g of gens) {
    for (const f of lastCounters(g)) {
      lines++;
      const v = f[key];
      if (v === undefined || !/^\d+$/.test(v)) missing++;
      else perQueue[Number(f.queue)] = (perQueue[Number(f.queue)] ?? 0) + Number(v);
    }
  }
  return { perQueue, missing, lines };
}

function checkOutcome(tt: Test, o: Outcome, kill: Kill): void {
  tt.comment(
    `guest ${o.res.result ?? '(no result line)'} in ${(o.res.durationMs / 1000).toFixed(1)} s; ` +
      `fio ${o.fioMs === undefined ? 'did not end' : `ran ${(o.fioMs / 1000).toFixed(1)} s`}`,
  );
  for (const g of o.gens) {
    const k = g.killed;
    tt.comment(
      `vublk #${g.n}: ${g.reconnectMs !== undefined ? `QEMU connected ${g.reconnectMs} ms after start; ` : ''}` +
        (k
          ? `${kill} after ${k.aliveMs} + ${k.busyWaitMs} ms with ${k.inflight ?? 'unknown'} io_uring ops in flight: exit code ${k.exit.code} signal ${k.exit.signal}`
          : 'not killed') +
        ` | ${lastCounters(g)
          .map((f) => `q${f.queue} requests=${f.requests} resubmitted=${f.resubmitted ?? '?'}`)
          .join(' ')}`,
    );
  }
  const guestOutput = tail(o.res.output, 40);
  tt.equal(o.error, undefined, 'the host did not have to stop the run', { error: o.error?.message, guestOutput });
  const killed = o.gens.filter((g) => g.killed !== undefined);
  tt.ok(killed.length >= MIN_KILLS, `vublk was killed with ${kill} at least ${MIN_KILLS} times while fio ran (${killed.length})`);
  const wanted: Exit = kill === 'SIGTERM' ? { code: 0, signal: null } : { code: null, signal: 'SIGKILL' };
  for (const g of killed) {
    tt.same(g.killed?.exit, wanted, `vublk #${g.n}: ${kill === 'SIGTERM' ? 'drained and exited 0' : 'killed'}`, {
      log: tail(daemonLog(g.child), 30),
    });
    if (kill === 'SIGTERM') tt.equal(g.killed?.socketLeft, false, `vublk #${g.n}: removed its socket`);
  }
  tt.ok(o.res.passed, 'fio randwrite+verify exited 0 and the read-back verify pass is clean (guest PASS)', {
    result: o.res.result,
    timedOut: o.res.timedOut,
    aborted: o.res.aborted,
    guestOutput,
  });
  const last = o.gens[o.gens.length - 1]!;
  tt.same(last.finalExit, { code: 0, signal: null }, `vublk #${last.n}: exits 0 on SIGTERM after the guest ended`, {
    log: tail(daemonLog(last.child), 30),
  });
  for (const g of o.gens) tt.same(vublkProblemLines(daemonLog(g.child)), [], `vublk #${g.n}: logged no warn/error line`);

  const requests = sumCounter(o.gens, 'requests');
  tt.ok(
    requests.perQueue.every((n) => n > 0),
    `both virtqueues carried requests (${requests.perQueue.join(', ')})`,
  );
  const resub = sumCounter(o.gens, 'resubmitted');
  tt.equal(resub.missing, 0, 'every counters line has a resubmitted count', {
    lines: resub.lines,
    why: resub.missing > 0 ? 'this vublk counts no resubmitted requests: it has no inflight region (INFLIGHT_SHMFD)' : undefined,
  });
  const total = resub.perQueue.reduce((a, b) => a + b, 0);
  tt.comment(`resubmitted over the run: ${total} (per queue ${resub.perQueue.join(', ')})`);
  if (kill === 'SIGKILL') {
    tt.ok(total > 0, 'requests in flight at a SIGKILL were resubmitted from the inflight region (sum of resubmitted > 0)');
  }
}

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, vublkPrerequisites),
    ciWhat: 'QEMU e2e',
    name: `qemu crash recovery e2e (fio under vublk restarts, ${QUEUES} queues, reconnect=1)`,
    skipName: 'qemu crash recovery e2e',
    timeoutMs: 14 * 60 * 1000,
    fileTimeoutMs: 16 * 60 * 1000,
  },
  async (tt) => {
    tt.comment(`seed ${SEED} (set VUBLK_TEST_SEED to repeat the kill times and fio's offsets)`);
    for (const kill of ['SIGKILL', 'SIGTERM'] as const) {
      await tt.test(`${kill} vublk at random moments under fio randwrite+verify: no error, clean verify`, async (st) => {
        const o = await runWithKills(st, kill, SEED + (kill === 'SIGKILL' ? 0 : 1));
        checkOutcome(st, o, kill);
      });
    }
  },
);
