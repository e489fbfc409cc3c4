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
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  BLOCK_SIZES_MARKER,
  createSparseImage,
  daemonLog,
  ensureGuest,
  ext4Script,
  findCommand,
  fioVerifyScript,
  guestPrerequisites,
  repoRoot,
  runGuest,
  startVublk,
  stopDaemon,
  vublkProblemLines,
  waitForDaemonLine,
  type RunGuestResult,
} from '../helpers/qemu-guest';

const QUEUES = 2;
const IMAGE_BYTES = 256 * 1024 * 1024;
const HOST_SECTOR = 4096;
const GUEST_LBS = 512;
/** fio: MiB per job (2 jobs on disjoint regions). */
const FIO_MIB_PER_JOB = 64;
const FIO_IODEPTH = 32;
const GUEST_TIMEOUT_MS = 4 * 60 * 1000;
const VERBOSE = !!process.env.VUBLK_E2E_VERBOSE;
const log = VERBOSE ? (l: string): void => void process.stderr.write(`${l}\n`) : undefined;

type Exit = { code: number | null; signal: NodeJS.Signals | null };

// ----------------------------------------------------------- loop device ---

/** Loop devices attached by this process and not yet detached. */
const attachedLoops = new Set<string>();
let loopExitHook = false;

function losetup(args: string[]): { ok: boolean; stdout: string; stderr: string; status: number | null } {
  const r = spawnSync('losetup', args, { encoding: 'utf8', timeout: 30000 });
  return {
    ok: r.status === 0 && !r.error,
    stdout: (r.stdout ?? '').trim(),
    stderr: `${(r.stderr ?? '').trim()}${r.error ? ` (${r.error.message})` : ''}`,
    status: r.status,
  };
}

/** `losetup --find --show --sector-size 4096 --direct-io=on FILE` -> /dev/loopN. */
function attachLoop(file: string): string {
  const r = losetup(['--find', '--show', '--sector-size', String(HOST_SECTOR), '--direct-io=on', file]);
  // --show prints the device even when a later step (e.g. direct I/O) failed.
  const dev = /^\/dev\/loop\d+$/m.exec(r.stdout)?.[0];
  if (dev !== undefined) {
    attachedLoops.add(dev);
    if (!loopExitHook) {
      loopExitHook = true;
      // Last resort if a teardown never ran (the harness kills vublk on exit too).
      process.once('exit', () => {
        for (const d of attachedLoops) losetup(['--detach', d]);
      });
    }
  }
  if (!r.ok || dev === undefined) {
    if (dev !== undefined && losetup(['--detach', dev]).ok) attachedLoops.delete(dev);
    throw new Error(`losetup --find --show --sector-size ${HOST_SECTOR} --direct-io=on ${file} failed ` +
      `(status ${r.status}): ${r.stderr || r.stdout}`);
  }
  return dev;
}

/** Detach `dev` (idempotent); retries briefly while it is still busy. */
async function detachLoop(dev: string): Promise<{ ok: boolean; detail: string }> {
  if (!attachedLoops.has(dev)) return { ok: true, detail: 'already detached' };
  let last = '';
  for (let i = 0; i < 20; i++) {
    const r = losetup(['--detach', dev]);
    if (r.ok) {
      attachedLoops.delete(dev);
      return { ok: true, detail: 'detached' };
    }
    last = r.stderr;
    await new Promise((res) => setTimeout(res, 250));
  }
  return { ok: false, detail: last };
}

function sysBlock(dev: string, rel: string): string | undefined {
  try {
    return fs.readFileSync(path.join('/sys/block', path.basename(dev), rel), 'utf8').trim();
  } catch {
    return undefined;
  }
}

// ----------------------------------------------------------- vublk logs ---

/** key=value fields of a `vublk: <level>: <message> k=v ...` line (bare values only). */
function logFields(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of line.matchAll(/\b([A-Za-z][A-Za-z0-9_]*)=([^\s"]+)/g)) out[m[1] as string] = m[2] as string;
  return out;
}

const COUNTER_KEYS = [
  'bytesBounced',
  'rmwCycles',
  'overlapWaits',
  'iovCollapses',
  'ioSplits',
  'fixedOps',
  'plainOps',
  'requests',
  'errors',
] as const;

interface QueueCounters {
  line: string;
  conn: string;
  queue: number;
  values: Partial<Record<(typeof COUNTER_KEYS)[number], number>>;
}

/** vublk's `counters ... reason=closed` lines (logged when a frontend connection closes). */
function closedCounters(output: string): QueueCounters[] {
  return output
    .split('\n')
    .filter((l) => /\bvublk: info: counters\b/.test(l) && /\breason=closed\b/.test(l))
    .map((line) => {
      const f = logFields(line);
      const values: QueueCounters['values'] = {};
      for (const k of COUNTER_KEYS) if (f[k] !== undefined && /^\d+$/.test(f[k])) values[k] = Number(f[k]);
      return { line, conn: f.conn ?? '?', queue: Number(f.queue ?? NaN), values };
    });
}

/** Resolves once the daemon's stdout/stderr have ended (all its lines captured), or after `ms`. */
async function outputDrained(child: ChildProcess, ms = 3000): Promise<void> {
  const ended = (s: NodeJS.ReadableStream | null): boolean =>
    s === null || (s as unknown as { readableEnded?: boolean; destroyed?: boolean }).readableEnded === true ||
    (s as unknown as { destroyed?: boolean }).destroyed === true;
  const deadline = Date.now() + ms;
  while (!(ended(child.stdout) && ended(child.stderr)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

function tail(s: string, n = 60): string {
  return s.split('\n').slice(-n).join('\n');
}

// ----------------------------------------------------------------- boot ---

interface BootResult {
  res: RunGuestResult;
  output: string;
  counters: QueueCounters[];
}

/**
 * Fresh sparse file -> 4K loop device (DIO) -> vublk (512-byte guest blocks)
 * -> one guest boot running `script`; checks everything that does not depend
 * on the workload. Returns the guest result and vublk's output.
 */
async function boot4kn(tt: Test, what: string, script: string): Promise<BootResult> {
  const dir = await fsp.mkdtemp(path.join(process.env.VUBLK_E2E_TMPDIR ?? os.tmpdir(), 'vublk-e2e-4kn-'));
  const file = path.join(dir, 'backing.img');
  const socket = path.join(dir, 'vhost.sock');
  let dev: string | undefined;
  let child: ChildProcess | undefined;
  let stopped: Exit | undefined;
  // One teardown, in this order: vublk (if still running), the loop device,
  // the directory holding its backing file.
  tt.teardown(async () => {
    if (child !== undefined && stopped === undefined) stopped = await stopDaemon(child, { timeoutMs: 10000 });
    if (dev !== undefined) {
      const d = await detachLoop(dev);
      tt.comment(`teardown: ${dev} ${d.ok ? d.detail : `NOT detached: ${d.detail}`}`);
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });

  await createSparseImage(file, IMAGE_BYTES);
  dev = attachLoop(file);
  const hostLbs = sysBlock(dev, 'queue/logical_block_size');
  const hostDio = sysBlock(dev, 'loop/dio');
  tt.comment(`${what}: ${dev} -> ${file}: logical_block_size=${hostLbs} physical_block_size=` +
    `${sysBlock(dev, 'queue/physical_block_size')} dma_alignment=${sysBlock(dev, 'queue/dma_alignment')} dio=${hostDio}`);
  // The host setup itself must be what this test is about.
  if (hostLbs !== String(HOST_SECTOR) || hostDio !== '1') {
    throw new Error(`${dev} is not a 4K-native direct-I/O loop device (logical_block_size=${hostLbs}, dio=${hostDio}); ` +
      `is ${dir} on a filesystem with O_DIRECT support? (set VUBLK_E2E_TMPDIR)`);
  }

  child = await startVublk({
    image: dev,
    socket,
    queues: QUEUES,
    extraArgs: ['--logical-block-size', String(GUEST_LBS)],
    ...(log ? { log } : {}),
  });
  const vublk = child;
  // If vublk dies the guest's I/O would hang until the timeout: stop early.
  const ac = new AbortController();
  const onExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    ac.abort(new Error(`vublk exited during the run (code ${code}, signal ${sig})`));
  vublk.once('exit', onExit);
  let res: RunGuestResult;
  let closedLine: string | undefined;
  try {
    res = await runGuest({ socket, queues: QUEUES, script, timeoutMs: GUEST_TIMEOUT_MS, signal: ac.signal, ...(log ? { log } : {}) });
    // QEMU is gone: vublk must notice by itself (and log the counters then).
    closedLine = await waitForDaemonLine(vublk, /\bvublk: info: frontend connection closed\b/, 10000);
  } finally {
    vublk.off('exit', onExit);
    stopped = await stopDaemon(vublk, { signal: 'SIGTERM', timeoutMs: 10000 });
    await outputDrained(vublk);
  }
  const output = daemonLog(vublk);
  tt.comment(`${what}: guest ${res.result ?? '(no result line)'} in ${(res.durationMs / 1000).toFixed(1)} s; ` +
    `vublk stopped (code ${stopped.code}, signal ${stopped.signal})`);

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

  tt.ok(res.passed, `guest ${what} PASS`, {
    result: res.result,
    exitCode: res.exitCode,
    signal: res.signal,
    timedOut: res.timedOut,
    backendDied: res.aborted,
    guestOutput: tail(res.output),
    backendOutput: tail(output, 30),
  });
  tt.ok(closedLine !== undefined, 'vublk noticed the frontend connection close by itself', { backendOutput: tail(output, 30) });
  tt.same(stopped, { code: 0, signal: null }, 'vublk exits 0 on SIGTERM', { backendOutput: tail(output, 30) });
  tt.same(vublkProblemLines(output), [], 'vublk logged no warn/error line', { backendOutput: tail(output, 30) });

  // Per-queue counters of the (only) connection.
  const counters = closedCounters(output);
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

function sum(cs: QueueCounters[], k: (typeof COUNTER_KEYS)[number]): number {
  return cs.reduce((a, c) => a + (c.values[k] ?? 0), 0);
}

// ---------------------------------------------------------------- tests ---

function prerequisites(): { ok: boolean; reason?: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (platform ${process.platform})` };
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return { ok: false, reason: 'needs root (losetup of a 4K-sector loop device)' };
  }
  if (!findCommand('losetup')) return { ok: false, reason: 'losetup not found (apt-get install mount)' };
  if (!fs.existsSync('/dev/loop-control')) return { ok: false, reason: 'no /dev/loop-control (loop module not loaded?)' };
  const g = guestPrerequisites();
  if (!g.ok) return g;
  const bin = path.join(repoRoot(), 'bin', 'vublk.js');
  if (!fs.existsSync(bin)) return { ok: false, reason: `${bin} not found` };
  return { ok: true };
}

const prereq = prerequisites();
const common = {
  expectQueues: QUEUES,
  expectSizeBytes: IMAGE_BYTES,
  expectLogicalBlockSize: GUEST_LBS,
  expectPhysicalBlockSize: HOST_SECTOR,
};

if (!prereq.ok) {
  if (process.env.CI) {
    t.fail(`QEMU 4K-native e2e prerequisites missing in CI: ${prereq.reason}`);
  } else {
    t.test('qemu guest on a 4K-native host device', { skip: prereq.reason ?? 'prerequisites missing' }, async () => {});
  }
} else {
  t.setTimeout(20 * 60 * 1000);
  t.test(`qemu guest, 512-byte blocks on a 4K-native loop device (${QUEUES} queues)`, { timeout: 15 * 60 * 1000 }, async (tt) => {
    const t0 = Date.now();
    await ensureGuest(log ? { log } : {});
    tt.comment(`guest ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

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
    tt.comment(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  });
}
