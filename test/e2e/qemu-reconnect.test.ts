/**
 * QEMU reconnect end-to-end tests (vublk only).
 *
 * Requirement: QEMU started with `-chardev socket,...,reconnect=1` must
 * reattach after a disconnect. The guest runs rounds of O_DIRECT
 * write + read-back + sha256 compare on /dev/vda (roundsScript()). When it
 * starts writing each round of RESTART_ROUNDS, the host signals the current
 * vublk as soon as it has disk I/O in flight, waits DOWN_MS and starts a new
 * vublk on the same image and socket. QEMU must reconnect to each new vublk
 * and the guest must finish every round (and the final re-read of all rounds)
 * without an I/O error or a checksum mismatch.
 *
 *  - SIGTERM: vublk drains in-flight I/O, removes its socket, exits 0.
 *  - SIGKILL: no drain; the stale socket stays behind and the new vublk has
 *    to replace it. The requests the guest had in flight are never completed
 *    by the dead vublk: when GET_VRING_BASE fails, QEMU ("vhost VQ n ring
 *    restore failed") sets each ring's last_avail_idx to the used index in
 *    guest memory, so the next vublk is handed them again and serves them.
 *    The guest only sees them take longer.
 *
 * Every vublk must log no `vublk: warn:` / `vublk: error:` line, and each one
 * stopped with SIGTERM must exit 0.
 *
 * VUBLK_E2E_VERBOSE=1 streams guest/daemon output to stderr. Without the
 * prerequisites the test is skipped, except under CI (env CI set).
 */
import t, { type Test } from 'tap';
import { daemonLog, isSocket, stopDaemon, waitForDaemonLine, type Exit } from '../helpers/daemon';
import { startVublkGeneration, vublkProblemLines, type VublkGeneration } from '../helpers/guest/backends';
import { guestDisk, guestTest, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { runGuest, type RunGuestResult } from '../helpers/guest/run';
import { ROUND_MARKER, roundsScript } from '../helpers/guest/scripts';
import { e2eLog } from '../helpers/guest/verbose';
import { untilUringBusy } from '../helpers/uring-inflight';

const QUEUES = 2;
const ROUNDS = 8;
const REGION_BYTES = 8 * 1024 * 1024;
const IMAGE_BYTES = 128 * 1024 * 1024;
/** vublk is replaced when the guest starts writing each of these rounds... */
const RESTART_ROUNDS = [2, 5];
/** ...this long after the guest said so (its dd writers are then busy)... */
const KILL_DELAY_MS = 200;
/** ...and then as soon as its io_uring has an operation in flight (waiting at most this long). */
const BUSY_WAIT_MS = 3000;
/** Time without a backend before the next vublk starts. */
const DOWN_MS = 1500;
/** QEMU retries every second (reconnect=1): give up on it after this long. */
const RECONNECT_WAIT_MS = 20000;
const GUEST_TIMEOUT_MS = 3 * 60 * 1000;
const log = e2eLog;

/** One vublk process of a run. */
interface Generation extends VublkGeneration {
  /** Generations after the first: QEMU's connection, and how long after the daemon was ready it came. */
  connectedLine?: string | undefined;
  reconnectMs?: number;
  /** Set when the test stopped it mid-run. */
  killed?: {
    exit: Exit;
    /** io_uring operations submitted and not completed when the signal was sent (best effort). */
    uringInflight: number | undefined;
    /** How long we waited for an operation in flight after KILL_DELAY_MS. */
    busyWaitMs: number;
    stopMs: number;
    /** A socket file was left at the path after it exited. */
    socketLeft: boolean;
    /** Last progress line of the guest before the signal. */
    guestProgress: string;
  };
  /** Exit of the last generation, stopped with SIGTERM after the guest ended. */
  finalExit?: Exit;
}

interface Outcome {
  res: RunGuestResult;
  gens: Generation[];
  restartError: Error | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * One guest boot (chardev reconnect=1) running the rounds script. When the
 * guest starts writing each round of RESTART_ROUNDS, the current vublk gets
 * `kill` (once it has disk I/O in flight) and a new one is started on the same
 * image and socket DOWN_MS after it exited.
 */
async function runWithRestarts(tt: Test, kill: 'SIGTERM' | 'SIGKILL'): Promise<Outcome> {
  const { image, socket } = await guestDisk(tt, { prefix: 'vublk-e2e-rc-', imageBytes: IMAGE_BYTES });

  const gens: Generation[] = [];
  // Never leave a daemon behind, whatever happens below.
  tt.teardown(async () => {
    for (const g of gens) await stopDaemon(g.child, { signal: 'SIGKILL', timeoutMs: 1000 });
  });
  // A daemon that dies on its own leaves the guest hanging: stop QEMU early.
  const ac = new AbortController();
  const spawnGeneration = async (): Promise<Generation> => {
    const onUnexpectedExit = (e: Error): void => ac.abort(e);
    const g = await startVublkGeneration({ image, socket, queues: QUEUES, n: gens.length + 1, onUnexpectedExit });
    gens.push(g);
    return g;
  };
  await spawnGeneration();

  const guestLines: string[] = [];
  const progress = (): string => guestLines.filter((l) => l.includes(ROUND_MARKER)).pop() ?? '(no round started)';

  const replace = async (): Promise<void> => {
    const cur = gens[gens.length - 1]!;
    await sleep(KILL_DELAY_MS);
    const { inflight, busyWaitMs } = await untilUringBusy(cur.child.pid, BUSY_WAIT_MS);
    const guestProgress = progress();
    cur.expectExit();
    const t1 = Date.now();
    const exit = await stopDaemon(cur.child, { signal: kill, timeoutMs: 15000 });
    cur.killed = {
      exit,
      uringInflight: inflight,
      busyWaitMs,
      stopMs: Date.now() - t1,
      socketLeft: await isSocket(socket),
      guestProgress,
    };
    await sleep(DOWN_MS);
    const next = await spawnGeneration();
    const ready = Date.now();
    next.connectedLine = await waitForDaemonLine(next.child, /\bvublk: info: frontend connected\b/, RECONNECT_WAIT_MS);
    next.reconnectMs = Date.now() - ready;
    // Without a backend the guest would only hang until GUEST_TIMEOUT_MS.
    if (next.connectedLine === undefined) throw new Error(`QEMU did not connect to vublk #${next.n} within ${RECONNECT_WAIT_MS} ms`);
  };

  const triggers = new Set(RESTART_ROUNDS.map((r) => `${ROUND_MARKER} ${r} write`));
  let chain: Promise<void> = Promise.resolve();
  let restartError: Error | undefined;
  const res = await runGuest({
    socket,
    queues: QUEUES,
    script: roundsScript({ rounds: ROUNDS, regionBytes: REGION_BYTES, expectQueues: QUEUES, expectSizeBytes: IMAGE_BYTES }),
    timeoutMs: GUEST_TIMEOUT_MS,
    reconnect: true,
    signal: ac.signal,
    log: (l) => {
      guestLines.push(l);
      log?.(l);
      const hit = [...triggers].find((tr) => l.includes(tr));
      if (hit === undefined) return;
      triggers.delete(hit);
      chain = chain
        .then(() => (restartError ? undefined : replace()))
        .catch((e: unknown) => {
          // A failed restart would leave the guest waiting forever.
          restartError ??= e instanceof Error ? e : new Error(String(e));
          ac.abort(restartError);
        });
    },
  });
  await chain;
  const last = gens[gens.length - 1]!;
  last.expectExit();
  last.finalExit = await stopDaemon(last.child, { signal: 'SIGTERM', timeoutMs: 15000 });
  return { res, gens, restartError };
}

/** What happened around each restart, as test comments (the report reads them). */
function describeOutcome(tt: Test, o: Outcome): void {
  tt.comment(`guest ${o.res.result ?? '(no result line)'} in ${(o.res.durationMs / 1000).toFixed(1)} s`);
  for (const g of o.gens) {
    if (g.connectedLine !== undefined || g.reconnectMs !== undefined) {
      tt.comment(`vublk #${g.n}: ${g.connectedLine ?? 'NO frontend connection'} (${g.reconnectMs} ms after it was ready)`);
    }
    const k = g.killed;
    if (k !== undefined) {
      tt.comment(
        `vublk #${g.n}: signalled at guest "${k.guestProgress}" with ${k.uringInflight ?? 'unknown'} io_uring ops ` +
          `in flight (waited ${k.busyWaitMs} ms for one); exit code ${k.exit.code} signal ${k.exit.signal} ` +
          `after ${k.stopMs} ms; socket ${k.socketLeft ? 'left behind' : 'removed'}`,
      );
      const drained = daemonLog(g.child)
        .split('\n')
        .find((l) => /draining in-flight/.test(l));
      if (drained) tt.comment(`vublk #${g.n}: ${drained}`);
    }
    if (g.finalExit) tt.comment(`vublk #${g.n}: final SIGTERM: exit code ${g.finalExit.code} signal ${g.finalExit.signal}`);
  }
  const qemu = o.res.output.split('\n').filter((x) => /^qemu-system-x86_64:/.test(x));
  const counts = new Map<string, number>();
  for (const l of qemu) {
    const key = l.replace(/'[^']*'/g, "'...'");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  for (const [l, n] of counts) tt.comment(`QEMU (x${n}): ${l}`);
}

function checkOutcome(tt: Test, o: Outcome, kill: 'SIGTERM' | 'SIGKILL'): void {
  const killed = o.gens.filter((g) => g.killed !== undefined);
  tt.equal(killed.length, RESTART_ROUNDS.length, `vublk was replaced ${RESTART_ROUNDS.length} times while the guest ran`, {
    restartError: o.restartError?.message,
    guestOutput: tail(o.res.output),
  });
  for (const g of killed) {
    const wanted: Exit = kill === 'SIGTERM' ? { code: 0, signal: null } : { code: null, signal: 'SIGKILL' };
    tt.same(g.killed?.exit, wanted, `vublk #${g.n}: ${kill === 'SIGTERM' ? 'exits 0 on SIGTERM' : 'killed'}`, {
      log: tail(daemonLog(g.child), 30),
    });
    if (kill === 'SIGTERM') tt.equal(g.killed?.socketLeft, false, `vublk #${g.n}: removed its socket`, {});
  }
  for (const g of o.gens.slice(1)) {
    tt.ok(g.connectedLine, `QEMU reattached: vublk #${g.n} logged a frontend connection`, {
      log: tail(daemonLog(g.child), 30),
    });
  }
  tt.ok(o.res.passed, 'guest finished every round and the final re-read: PASS', {
    result: o.res.result,
    timedOut: o.res.timedOut,
    aborted: o.res.aborted,
    guestOutput: tail(o.res.output),
  });
  const last = o.gens[o.gens.length - 1]!;
  tt.same(last.finalExit, { code: 0, signal: null }, `vublk #${last.n}: exits 0 on SIGTERM after the guest ended`, {
    log: tail(daemonLog(last.child), 30),
  });
  for (const g of o.gens) {
    tt.same(vublkProblemLines(daemonLog(g.child)), [], `vublk #${g.n}: logged no warn/error line`, {});
  }
}

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, vublkPrerequisites),
    ciWhat: 'QEMU e2e',
    name: `qemu reconnect e2e (vublk, ${QUEUES} queues, chardev reconnect=1)`,
    skipName: 'qemu reconnect e2e',
    timeoutMs: 12 * 60 * 1000,
    fileTimeoutMs: 15 * 60 * 1000,
  },
  async (tt) => {
    await tt.test('SIGTERM vublk under I/O, restart: QEMU reattaches, guest passes', async (st) => {
      const o = await runWithRestarts(st, 'SIGTERM');
      describeOutcome(st, o);
      checkOutcome(st, o, 'SIGTERM');
    });

    await tt.test('SIGKILL vublk under I/O (no drain), restart over the stale socket: guest passes', async (st) => {
      const o = await runWithRestarts(st, 'SIGKILL');
      describeOutcome(st, o);
      checkOutcome(st, o, 'SIGKILL');
    });
  },
);
