// Message-level fuzzer: random vhost-user conversations against one real
// daemon, the ASan+UBSan build of the addon when it exists (else the normal
// build, said in the output). Each connection is a QEMU-like start-up (done
// properly, or message by message with steps skipped, mutated or preceded
// by noise), then a random mix of valid, mutated and truncated messages
// with random fds attached (eventfds, full eventfds, pipe ends in every
// state, memfds of random sizes, /dev/null, /dev/zero, regular files), fd
// swaps on running rings, random descriptors and heads written into the
// shared rings, kicks and real I/O (test/helpers/fuzz/).
//
// After every connection: the daemon is alive (no signal, no sanitizer
// report), it logs the connection closed (a hang shows here), its event
// loop is idle once we are (a loop spinning on a kick fd makes thousands of
// read(2) calls), it wrote nothing into the canary page no ring or
// descriptor points at, and (finding 1's switch on) it hung up on a
// SET_VRING_NUM that grew a running ring. Every CHECK_EVERY connections and at the
// end: its fd count is back to the baseline, and a well-behaved frontend
// writes and reads back data.
//
// VUBLK_FUZZ_SEED repeats a run (each connection's seed derives from it and
// its index, so VUBLK_FUZZ_FROM=i starts at the failing one);
// VUBLK_FUZZ_ITERATIONS sets the number of connections (long runs);
// VUBLK_FUZZ_FINDINGS turns on the generators of issue #7's known findings
// (test/helpers/fuzz/findings.ts).

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { asanAddonPath, tmpDir } from '../helpers/vublk-process';
import { FdFactory } from '../helpers/fuzz/fds';
import { fuzzConnection, SPIN_READS, type ConnectionReport } from '../helpers/fuzz/connection';
import { enabledFindings, FINDINGS, FINDING_KEYS } from '../helpers/fuzz/findings';
import { iterationSeed, Rng } from '../helpers/fuzz/rng';
import { startToolDaemon, type ToolDaemon } from '../helpers/fuzz/daemon';
import { connIdSince, expectServes, fdCount, logSince, until, waitConnClosed } from './harness';

const ITERATIONS = Number(process.env.VUBLK_FUZZ_ITERATIONS ?? 300);
const FROM = Number(process.env.VUBLK_FUZZ_FROM ?? 0);
const SEED = Number(process.env.VUBLK_FUZZ_SEED ?? Date.now() % 1_000_000);
const CHECK_EVERY = 25;
/** How long a connection may take to close after the frontend left: a hang guard, not a timing claim. */
const CLOSE_GUARD_MS = 20_000;
const QUEUES = 2;
const MAX_QUEUE_SIZE = 256;
const IMAGE_BYTES = 16 << 20;
const SANITIZER = /AddressSanitizer|UndefinedBehaviorSanitizer|runtime error:|LeakSanitizer/;

// Long runs (VUBLK_FUZZ_ITERATIONS, VUBLK_CHURN_CYCLES) outlast tap's default
// 30 s when the file is run on its own with node.
t.setTimeout(60 * 60_000);

// test/native/asan.test.ts re-runs every integration file with
// VUBLK_TEST_ASAN=1; this one already ran the ASan daemon in the plain run.
const rerun = process.env.VUBLK_TEST_ASAN === '1' && process.env.VUBLK_FUZZ_ITERATIONS === undefined;

t.test(
  'message fuzzer: random, mutated and truncated vhost-user messages with random fds',
  { skip: rerun && 'the plain run already fuzzed the ASan daemon', timeout: 30 * 60_000 },
  async (t) => {
    const asan = fs.existsSync(asanAddonPath);
    const findings = enabledFindings();
    t.comment(`seed ${SEED} (VUBLK_FUZZ_SEED=${SEED} repeats it), ${ITERATIONS} connections from ${FROM}`);
    t.comment(
      asan
        ? `daemon runs the ASan+UBSan addon (${asanAddonPath})`
        : `ASan build missing at ${asanAddonPath} (scripts/build-asan.sh builds it): fuzzing the normal build, memory errors show only as crashes`,
    );
    // npm test builds it (scripts/ensure-setup.js): with CI set, as for every missing prerequisite, that is a failure.
    if (!asan && process.env.CI) t.fail(`CI is set: the ASan build must exist at ${asanAddonPath}`);
    t.comment(
      `known-finding generators on: ${[...findings].join(', ') || 'none'} (of ${FINDING_KEYS.map((k) => `${k} (#${FINDINGS[k].finding})`).join(', ')})`,
    );

    const d = await startToolDaemon(t, { asan, imageBytes: IMAGE_BYTES, queues: QUEUES });
    const dir = tmpDir('vublk-fuzz-fds-');
    const fds = new FdFactory(dir);
    t.teardown(() => {
      fds.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    // Warm-up: one well-behaved connection, so what the daemon creates once exists.
    await served(t, d, 'warm-up');
    const baseline = fdCount(d.pid);
    t.comment(`daemon pid ${d.pid}: ${baseline} fds open at the baseline`);

    const target = { socket: d.socket, pid: d.pid, queues: QUEUES, maxQueueSize: MAX_QUEUE_SIZE, capacitySectors: d.capacitySectors };
    const violations = new Map<string, number>();
    const scriptErrors = new Map<string, number>();
    let spins = 0;
    let withIo = 0;
    const kinds = new Map<string, number>();
    for (let i = FROM; i < FROM + ITERATIONS; i++) {
      const seed = iterationSeed(SEED, i);
      const mark = d.v.stderr().length;
      let report: ConnectionReport;
      try {
        report = await fuzzConnection(target, new Rng(seed), fds, findings);
      } catch (err) {
        // Connecting failed: the daemon is gone or stopped accepting.
        return fail(t, d, i, undefined, `cannot connect: ${(err as Error).message}`);
      }
      if (report.ioDone > 0) withIo++;
      for (const a of report.actions) {
        const k = /^(ftruncate|held back|kick|io|ring|mutated|truncated|qemu setup|gentle|hostile|skip|grow|idle window)/.exec(a)?.[1];
        if (k) kinds.set(k, (kinds.get(k) ?? 0) + 1);
      }
      for (const e of report.scriptErrors) scriptErrors.set(e, (scriptErrors.get(e) ?? 0) + 1);
      // The daemon must close this connection (it may have already).
      const exited = () => d.v.child.exitCode !== null || d.v.child.signalCode !== null;
      const closedLine = /frontend connection closed conn=/;
      const closed = await until(() => exited() || logSince(d, mark).some((l) => closedLine.test(l)), CLOSE_GUARD_MS);
      const err = d.v.stderr().slice(mark);
      if (SANITIZER.test(err)) return fail(t, d, i, report, 'sanitizer report');
      if (d.v.child.exitCode !== null || d.v.child.signalCode !== null) {
        return fail(t, d, i, report, `daemon died (${d.v.child.exitCode ?? d.v.child.signalCode})`);
      }
      if (!closed) {
        return fail(t, d, i, report, `daemon did not close the connection within ${CLOSE_GUARD_MS} ms: hung (killed)`);
      }
      if (report.acceptedGrow !== undefined) {
        return fail(t, d, i, report, `daemon kept serving after ${report.acceptedGrow}`);
      }
      if (report.canaryHit !== undefined) {
        return fail(
          t,
          d,
          i,
          report,
          `daemon wrote into guest memory that no ring or descriptor points at (canary offset ${report.canaryHit})`,
        );
      }
      if (report.idleReads !== undefined && report.idleReads > SPIN_READS) {
        spins++;
        return fail(t, d, i, report, `daemon event loop spins: ${report.idleReads} read(2) calls while the frontend was idle`);
      }
      fds.closeAll();
      for (const l of logSince(d, mark)) {
        const m = /protocol violation conn=\d+ rule=(.*)$/.exec(l);
        if (m) {
          const rule = m[1]!.replace(/\d+/g, 'N').replace(/0xN[0-9a-f]*/g, '0x…');
          violations.set(rule, (violations.get(rule) ?? 0) + 1);
        }
      }
      if ((i + 1 - FROM) % CHECK_EVERY === 0 || i === FROM + ITERATIONS - 1) {
        if (!(await until(() => fdCount(d.pid) === baseline, 5000))) {
          return fail(t, d, i, report, `fd leak: ${fdCount(d.pid)} fds open, baseline ${baseline}`);
        }
        t.pass(`after ${i + 1 - FROM} connections: ${baseline} fds open, as at the start`);
        await served(t, d, `after ${i + 1 - FROM} connections`);
        if (d.v.child.exitCode !== null) return fail(t, d, i, report, 'daemon died while serving a well-behaved frontend');
      }
    }
    t.equal(spins, 0, 'the event loop never spun');
    t.same([...scriptErrors.entries()], [], "the fuzzer's own steps never failed (other than by the daemon hanging up)");
    t.comment(`${withIo} of ${ITERATIONS} connections got as far as completing real I/O`);
    t.comment(`steps: ${[...kinds.entries()].map(([k, n]) => `${k} ${n}`).join(', ')}`);
    const top = [...violations.entries()].sort((a, b) => b[1] - a[1]);
    t.comment(`${top.reduce((s, [, n]) => s + n, 0)} connections ended by a protocol violation, ${top.length} distinct rules:`);
    for (const [rule, n] of top.slice(0, 40)) t.comment(`  ${n} x ${rule}`);
    const errors = d.v
      .stderr()
      .split('\n')
      .filter((l) => /^vublk: error: /.test(l));
    t.comment(`${errors.length} error-level log lines${errors.length ? `, e.g. ${errors[0]}` : ''}`);
    await t.resolves(d.stop(), 'the daemon exits 0 on SIGTERM (and no sanitizer report)');
  },
);

/** A well-behaved frontend writes and reads back; waits until the daemon closed it. */
async function served(t: Test, d: ToolDaemon, when: string): Promise<void> {
  const mark = d.v.stderr().length;
  await expectServes(t, d, `${when}: a well-behaved frontend writes and reads back`);
  await waitConnClosed(d, mark, await connIdSince(d, mark), CLOSE_GUARD_MS);
}

/** Reports a failure with what replays it; the daemon is killed (it may be hung), so teardown only cleans up. */
async function fail(t: Test, d: ToolDaemon, i: number, report: ConnectionReport | undefined, why: string): Promise<void> {
  const tail = d.v.stderr().split('\n').slice(-30).join('\n');
  const actions = report ? report.actions.slice(-60).join('\n  ') : '(none)';
  t.comment(`connection ${i}'s actions:\n  ${actions}`);
  t.comment(`daemon stderr (tail):\n${tail}`);
  await d.kill();
  t.fail(
    `${why} at connection ${i}: VUBLK_FUZZ_SEED=${SEED} VUBLK_FUZZ_FROM=${i} VUBLK_FUZZ_FINDINGS=${process.env.VUBLK_FUZZ_FINDINGS ?? ''} repeats it`,
  );
}
