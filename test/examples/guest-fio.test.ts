// examples/guest-fio.sh as a user runs it: against a running vublk, fio's
// report on stdout, vublk's counters agree with the I/O the guest's kernel
// did, and the exit status says when fio failed or the guest never reported.
// Boots the e2e guest (TCG); skipped with the reason when its prerequisites
// are missing (failed under CI), like the e2e tests.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { countersOf, total } from '../helpers/counters';
import { daemonLog, stopDaemon, waitForDaemonLine } from '../helpers/daemon';
import { startVublkBackend, vublkProblemLines } from '../helpers/guest/backends';
import { guestDisk, guestTest, tail } from '../helpers/guest/harness';
import { allPrerequisites, guestPrerequisites, vublkPrerequisites } from '../helpers/guest/prerequisites';
import { e2eLog } from '../helpers/guest/verbose';
import { repoRoot } from '../helpers/repo-root';

const script = path.join(repoRoot(), 'examples', 'guest-fio.sh');
const QUEUES = 2;
/** Per boot; a TCG boot plus a few seconds of fio takes about 15 s. */
const RUN_TIMEOUT_SECS = 300;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function guestFio(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      e2eLog?.(`[guest-fio] ${c.toString().trimEnd()}`);
    });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** fio's "Disk stats" line for vda: [reads, writes] the guest's kernel completed while fio ran. */
function diskStats(report: string): [number, number] | undefined {
  const m = /^\s*vda: ios=(\d+)\/(\d+),/m.exec(report);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

/** I/Os fio issued, summed over its "issued rwts: total=R,W,T,..." lines. */
function fioIssued(report: string): number {
  let n = 0;
  for (const m of report.matchAll(/issued rwts: total=(\d+),(\d+),(\d+)/g)) n += Number(m[1]) + Number(m[2]) + Number(m[3]);
  return n;
}

/**
 * vublk's counters for connection `conn`, logged when that QEMU went away,
 * agree with fio's report: at least the requests fio's disk stats saw (they
 * are sampled, so they may miss the last few), at most the I/Os fio issued
 * (the block layer may merge some) plus a few more of the kernel's own (the
 * partition scan before fio starts).
 */
async function expectCounted(tt: Test, vublk: Parameters<typeof daemonLog>[0], conn: number, run: Run): Promise<void> {
  await waitForDaemonLine(vublk, new RegExp(`counters conn=${conn} queue=${QUEUES - 1} reason=closed`), 10000);
  const counters = countersOf(daemonLog(vublk), conn, 'closed');
  tt.equal(counters.length, QUEUES, `one counters line per queue for conn ${conn}`, { log: tail(daemonLog(vublk), 20) });
  const sum = total(counters);
  const stats = diskStats(run.stdout);
  tt.ok(stats !== undefined, "fio's report has the disk stats of vda");
  const seen = (stats?.[0] ?? 0) + (stats?.[1] ?? 0);
  const issued = fioIssued(run.stdout);
  tt.ok(seen > 0 && issued >= seen, `the guest did I/O: fio issued ${issued}, its disk stats saw ${seen}`);
  tt.ok(sum.requests >= seen && sum.requests <= issued + 100, `vublk counted ${sum.requests} requests`);
  tt.equal(sum.errors, 0, 'none failed');
  tt.ok(counters.every((c) => c.requests > 0), 'both queues served requests');
}

guestTest(
  t,
  {
    prereq: allPrerequisites(guestPrerequisites, () => vublkPrerequisites({ built: true })),
    ciWhat: 'guest-fio example',
    name: 'examples/guest-fio.sh on a running vublk',
    skipName: 'examples/guest-fio.sh',
    timeoutMs: 15 * 60 * 1000,
    fileTimeoutMs: 20 * 60 * 1000,
  },
  async (tt) => {
    let vublk: Awaited<ReturnType<typeof startVublkBackend>> | undefined;
    const disk = await guestDisk(tt, { prefix: 'vublk-guest-fio-', imageBytes: 256 * 1024 * 1024, daemon: () => vublk });
    vublk = await startVublkBackend({ image: disk.image, socket: disk.socket, queues: QUEUES, ...(e2eLog ? { log: e2eLog } : {}) });
    const common = ['--socket', disk.socket, '--queues', String(QUEUES), '--timeout', String(RUN_TIMEOUT_SECS)];

    await tt.test('randwrite 4k with verify, fio options after --', async (st) => {
      const run = await guestFio([
        ...common, '--',
        // Bounded by size, not --runtime: fio skips the verify pass when
        // the runtime ends during the writes.
        '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=16M', '--verify=crc32c', '--verify_fatal=1',
      ]);
      st.equal(run.code, 0, 'exit status 0', { stderr: tail(run.stderr, 30) });
      st.match(run.stdout, /^guest-fio: \(groupid=0, jobs=1\): err= 0:/m, "fio's job report, without errors");
      st.match(run.stdout, /^ +WRITE: bw=/m, 'the write summary');
      st.match(run.stdout, /issued rwts: total=4096,4096,0,0 /, 'every 4k block of 16 MiB written once and read back once to verify');
      st.notMatch(run.stdout, /VUBLK-E2E-RESULT|vublk-init:/, 'nothing but fio on stdout');
      await expectCounted(st, vublk!, 1, run);
    });

    await tt.test('randread from a job file (--job)', async (st) => {
      const job = path.join(disk.dir, 'read.fio');
      fs.writeFileSync(job, '[randread]\nrw=randread\nbs=4k\niodepth=32\nsize=64M\nruntime=3\ntime_based=1\n');
      const run = await guestFio([...common, '--job', job]);
      st.equal(run.code, 0, 'exit status 0', { stderr: tail(run.stderr, 30) });
      st.match(run.stdout, /^randread: \(groupid=0, jobs=1\): err= 0:/m, "the job file's job ran");
      st.match(run.stdout, /^ +READ: bw=/m, 'the read summary');
      st.notMatch(run.stdout, /^ +WRITE: bw=/m, 'no writes');
      await expectCounted(st, vublk!, 2, run);
    });

    await tt.test('fio failing in the guest: exit status 1, fio says why on stdout', async (st) => {
      const run = await guestFio([...common, '--', '--rw=read', '--size=1M', '--ioengine=no-such-engine']);
      st.equal(run.code, 1, 'exit status 1');
      st.match(run.stdout, /no-such-engine/, "fio's own error message");
      st.match(run.stderr, /guest-fio: the guest reported fio exited with status \d+/);
    });

    await tt.test('a guest that never reports: exit status 1 after --timeout', async (st) => {
      // A socket that accepts and never answers: QEMU waits for the
      // vhost-user handshake and the guest never boots.
      const mute = path.join(disk.dir, 'mute.sock');
      const held: net.Socket[] = [];
      const server = net.createServer((s) => void held.push(s));
      await new Promise<void>((r) => server.listen(mute, r));
      try {
        const run = await guestFio(['--socket', mute, '--timeout', '3', '--', '--rw=read', '--size=1M']);
        st.equal(run.code, 1, 'exit status 1');
        st.match(run.stderr, /no result from the guest within 3 s \(--timeout\)/);
        st.equal(run.stdout, '', 'no report');
      } finally {
        for (const s of held) s.destroy();
        await new Promise((r) => server.close(r));
      }
    });

    const stopped = await stopDaemon(vublk);
    tt.same(stopped, { code: 0, signal: null }, 'vublk exits 0 on SIGTERM');
    tt.same(vublkProblemLines(daemonLog(vublk)), [], 'vublk logged no warn/error line');
  },
);

t.test('usage errors exit 2 before booting anything', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-guest-fio-usage-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cases: Array<[string[], RegExp]> = [
    [['--socket', path.join(dir, 'none.sock'), '--', '--rw=read'], /no vublk socket at .*none\.sock \(start vublk first/],
    [['--socket', path.join(dir, 'none.sock')], /no fio job: give fio options after --/],
    [['--queues', '0', '--', '--rw=read'], /--queues expects a number of at least 1, got '0'/],
    [['--timeout', 'soon', '--', '--rw=read'], /--timeout expects a whole number, got 'soon'/],
    [['--job', path.join(dir, 'missing.fio')], /--job: no such file: .*missing\.fio/],
    [['--iodepth=4'], /unknown option '--iodepth=4' \(fio options go after --/],
  ];
  for (const [args, re] of cases) {
    const r = await guestFio(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, re);
    t.equal(r.stdout, '');
  }
  const help = await guestFio(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /--job FILE +a fio job file/);
});
