// BlkHandler on a REAL 4Kn device: a loop device with 4096-byte logical
// sectors and direct I/O over a 64 MiB file, driven through the native
// Session (io_uring, bounce arena, copies, optional fixed buffers). The same
// workload and checks as blk-handler-sim.test.ts (blk-rig.ts): random
// batches of unaligned reads/writes on two queues, guest memory in two
// memfd regions (one with an odd mmap phase), every read and the device's
// final bytes compared with a byte-array model.
//
// Needs root and losetup; skipped (with the reason) otherwise, unless CI is
// set, where a missing requirement fails.

import t from 'tap';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { native, type Session } from '../../src/native/binding';
import { BlkHandler } from '../../src/blk/blk-handler';
import { probeDirectIo } from '../../src/disk/probe';
import { QueueCounters } from '../../src/blk/counters';
import { QSIZE, Rig, arbWorkReq, fillRandom, firstDiff, selectBatch, sumCounters, type GuestMem, type WorkReq } from './blk-rig';
import { mulberry32 } from '../helpers/prng';
import { attachLoop } from '../helpers/loop-device';
import { allocateArrays, type DataPlane } from '../../src/blk/shared-arrays';

const DISK_BYTES = 64 << 20;
const WINDOW_SECTORS = 2048; // each run works in a 1 MiB window: requests collide
const REGION = 16 << 20;
const REGION1_PHASE = 100; // region 1 starts 100 bytes into a page
const BOUNCE_BYTES = 64 << 20;

function findCommand(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

const losetup = findCommand('losetup');
const blockdev = findCommand('blockdev');
const skip =
  typeof process.getuid === 'function' && process.getuid() !== 0
    ? 'needs root (losetup)'
    : losetup === undefined
      ? 'losetup is not installed'
      : false;
if (skip && process.env.CI) {
  t.fail(`loop-4kn test cannot run in CI: ${skip}`);
}

interface LoopRun {
  batches: WorkReq[][];
  base: number;
  seed: number;
  yields: number[];
}

const arbLoopRun: fc.Arbitrary<LoopRun> = fc.record({
  batches: fc.array(fc.array(arbWorkReq(WINDOW_SECTORS), { minLength: 4, maxLength: 24 }), { minLength: 1, maxLength: 4 }),
  base: fc.nat((DISK_BYTES / 512 - WINDOW_SECTORS) / 8).map((k) => k * 8),
  seed: fc.nat(),
  yields: fc.array(fc.nat(3), { maxLength: 40 }),
});

/** An aligned scratch buffer (mmap'd memfd) for O_DIRECT reads and writes of the device. */
function alignedScratch(size: number): Uint8Array {
  const fd = native.memfdCreate('vublk-test-scratch', size);
  try {
    return new Uint8Array(native.mapShared(fd, size, 0));
  } finally {
    native.closeFd(fd);
  }
}

function readDevice(fd: number, scratch: Uint8Array, pos: number, len: number, out: Uint8Array): void {
  for (let off = 0; off < len; off += scratch.length) {
    const n = Math.min(scratch.length, len - off);
    const got = fs.readSync(fd, scratch, 0, n, pos + off);
    if (got !== n) throw new Error(`short O_DIRECT read of the device at ${pos + off}: ${got}/${n}`);
    out.set(scratch.subarray(0, n), off);
  }
}

const withTimeout = <T>(p: Promise<T>, ms: number, what: () => string): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });

t.test('real 4Kn loop device: random batches match the model', { skip }, async (t) => {
  // Cleanups run in reverse order, each one even if another failed; the loop
  // device is always detached.
  const cleanups: Array<() => void> = [];
  t.teardown(() => {
    for (const c of cleanups.reverse()) {
      try {
        c();
      } catch (err) {
        t.comment(`cleanup failed: ${(err as Error).message}`);
      }
    }
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-align-loop-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'backing.img');
  const model = new Uint8Array(DISK_BYTES);
  fillRandom(model, 0xd15c);
  fs.writeFileSync(file, model);
  const ffd = fs.openSync(file, 'r+');
  fs.fsyncSync(ffd);
  fs.closeSync(ffd);

  const loop = attachLoop(file, 4096);
  const dev = loop.dev;
  cleanups.push(() => loop.detach());
  t.comment(`loop device ${dev}`);
  const ss = blockdev ? execFileSync(blockdev, ['--getss', dev], { encoding: 'utf8' }).trim() : '4096';
  t.equal(ss, '4096', 'the loop device has 4096-byte logical sectors');

  const fd = fs.openSync(dev, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  cleanups.push(() => fs.closeSync(fd));
  const rules = probeDirectIo(fd, dev, 4096);
  t.equal(rules.offsetAlign, 4096, 'probe: offsetAlign 4096');
  t.equal(rules.memAlign, 512, 'probe: memAlign 512');
  const checkFd = fs.openSync(dev, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  cleanups.push(() => fs.closeSync(checkFd));
  const scratch = alignedScratch(1 << 20);

  // Through the device (not the file), the model must hold already.
  const first = new Uint8Array(1 << 20);
  readDevice(checkFd, scratch, 0, first.length, first);
  t.equal(firstDiff(first, model.subarray(0, first.length)), -1, 'device starts with the model bytes');

  const arrays = allocateArrays(QSIZE);
  let handler: BlkHandler | undefined;
  const violations: string[] = [];
  const session: Session = new native.Session(
    2,
    QSIZE,
    fd,
    512,
    BOUNCE_BYTES,
    arrays,
    {
      onChains() {},
      onCompletions: (n: number) => handler?.onCompletions(n),
      onViolation: (q: number, m: string) => violations.push(`native violation q${q}: ${m}`),
    },
    DISK_BYTES,
    true,
  );
  cleanups.push(() => session.destroy());

  // Guest memory: two memfd regions; region 1 sits REGION1_PHASE bytes into a page.
  const views: Uint8Array[] = [];
  const phases = [0, REGION1_PHASE];
  phases.forEach((ph, i) => {
    const mfd = native.memfdCreate(`vublk-test-guest${i}`, REGION + ph);
    views.push(new Uint8Array(native.mapShared(mfd, REGION + ph, 0), ph, REGION));
    const bufId = session.addRegion(mfd, i * (1 << 30), REGION, 0x7f0000000000 + i * (1 << 30), ph);
    t.equal(bufId, i, `region ${i} is bufId ${i}`);
  });
  const mem: GuestMem = { bufs: views, phases };
  const rig = new Rig(arrays, { geometry: { A: rules.offsetAlign, M: rules.memAlign, diskBytes: DISK_BYTES }, mem, chunkMax: 8 });
  handler = new BlkHandler(arrays, {
    queues: 2,
    maxQueueSize: QSIZE,
    disk: { capacitySectors: DISK_BYTES / 512, readOnly: false, logicalBlockSize: 512 },
    serial: 'loop4kn',
    writeback: () => true,
    onViolation: (q, rule) => violations.push(`handler violation q${q}: ${rule}`),
    bounceBytes: BOUNCE_BYTES,
    rules,
  });
  phases.forEach((ph, i) => handler?.setRegionPhase(i, ph));
  let registered = false;
  try {
    session.registerBuffers();
    registered = true;
  } catch (err) {
    t.comment(`guest memory not registered as fixed buffers (${(err as Error).message}); plain ops only`);
  }
  handler.setRegistered(registered);
  const h = handler;
  rig.handler = h;
  const plane: DataPlane = {
    readGuest: (b, o, d) => session.readGuest(b, o, d),
    submit: (n) => {
      rig.noteOps(n);
      return session.submit(n);
    },
    copy: (n) => session.copy(n),
    writeGuest: (b, o, d) => session.writeGuest(b, o, d),
    pushUsed: (q, n) => rig.onUsed(q, n),
  };
  h.attach(plane);

  const total = new QueueCounters();
  let batchNo = 0;
  const window = new Uint8Array(WINDOW_SECTORS * 512);
  const r = await fc.check(
    fc.asyncProperty(arbLoopRun, async (run) => {
      const yieldAt = mulberry32(run.seed);
      for (const work of run.batches) {
        const moved = selectBatch(work).map((w) => ({ ...w, sector: w.sector + run.base }));
        const chunks = rig.prepareBatch(moved, model, run.seed + batchNo++);
        for (const [i, chunk] of chunks.entries()) {
          rig.submitChunk(chunk);
          // Sometimes let completions in between submissions.
          const y = run.yields[i] ?? yieldAt() % 4;
          if (y === 1) await new Promise((res) => setImmediate(res));
          else if (y === 2) await new Promise((res) => setTimeout(res, 1));
        }
        await withTimeout(h.whenIdle(), 20000, () => `requests never completed: ${rig.stranded()}`);
        const problems = rig.checkBatch(model, registered);
        problems.push(...violations);
        readDevice(checkFd, scratch, run.base * 512, window.length, window);
        const k = firstDiff(window, model.subarray(run.base * 512, run.base * 512 + window.length));
        if (k >= 0) problems.push(`device byte ${run.base * 512 + k} is ${window[k]}, model ${model[run.base * 512 + k]}`);
        if (problems.length > 0) throw new Error(problems.slice(0, 10).join('\n'));
      }
    }),
    { numRuns: 40, endOnFailure: true },
  );
  if (r.failed) t.fail(fc.defaultReportMessage(r) ?? 'property failed');
  else t.pass(`property holds over ${r.numRuns} runs on ${dev}`);
  // Large requests on the real device: IOV_MAX collapse (1032 x 512 B at an
  // unaligned sector: head + 1024 + tail), splits (> 1024 pieces), and a
  // middle with no host-aligned cut (forced through the bounce arena).
  if (!r.failed) {
    const lead = (512 + 1100 * 4096 + 3584) / 512;
    const big: Array<[string, WorkReq]> = [
      ['collapse write', { kind: 'w', q: 0, sector: 20001, sectors: 1032, layout: 'many512', lseed: 1 }],
      ['collapse read', { kind: 'r', q: 1, sector: 20001, sectors: 1032, layout: 'many512', lseed: 2 }],
      ['split write', { kind: 'w', q: 0, sector: 40000, sectors: 1500, layout: 'many512', lseed: 3 }],
      ['unaligned split write', { kind: 'w', q: 1, sector: 50001, sectors: 1700, layout: 'many512', lseed: 4 }],
      ['split read', { kind: 'r', q: 0, sector: 40000, sectors: 1500, layout: 'many512', lseed: 5 }],
      ['unaligned split read', { kind: 'r', q: 1, sector: 50001, sectors: 1700, layout: 'many512', lseed: 6 }],
      ['no aligned cut, write', { kind: 'w', q: 0, sector: 60000, sectors: lead, layout: 'lead512', lseed: 7 }],
      ['no aligned cut, read', { kind: 'r', q: 0, sector: 60000, sectors: lead, layout: 'lead512', lseed: 8 }],
    ];
    for (const [name, w] of big) {
      const chunks = rig.prepareBatch([w], model, 4242 + batchNo++);
      for (const c of chunks) rig.submitChunk(c);
      await withTimeout(h.whenIdle(), 20000, () => `${name}: never completed: ${rig.stranded()}`);
      const problems = rig.checkBatch(model, registered);
      const pos = w.sector * 512;
      const len = Math.ceil((w.sectors * 512 + 8192) / 4096) * 4096;
      const got = new Uint8Array(len);
      const at = Math.floor(pos / 4096) * 4096;
      readDevice(checkFd, scratch, at, len, got);
      const k = firstDiff(got, model.subarray(at, at + len));
      if (k >= 0) problems.push(`device byte ${at + k} is ${got[k]}, model ${model[at + k]}`);
      t.same(problems, [], `${name} on the real device`);
    }
  }

  total.add(sumCounters(h));
  if (!r.failed) {
    t.ok(total.iovCollapses >= 2, `IOV_MAX collapses happened (${total.iovCollapses})`);
    t.ok(total.ioSplits >= 4, `splits happened (${total.ioSplits})`);
  }

  t.equal(h.inflight(), 0, 'nothing in flight');
  t.equal(h.bounceInUse, 0, 'bounce arena empty');
  t.ok(total.rmwCycles > 0, `RMW cycles exercised (${total.rmwCycles})`);
  t.ok(total.overlapWaits > 0, `overlap waits exercised (${total.overlapWaits})`);
  if (registered) t.ok(total.fixedOps > 0, `fixed-buffer ops issued (${total.fixedOps})`);
  t.equal(total.errors, 0, 'no request failed');
  t.comment(`counters: ${JSON.stringify(total)}`);

  // The whole device equals the model.
  const all = new Uint8Array(DISK_BYTES);
  readDevice(checkFd, scratch, 0, DISK_BYTES, all);
  const k = firstDiff(all, model);
  t.equal(k, -1, k < 0 ? 'device equals the model' : `device byte ${k} is ${all[k]}, model ${model[k]}`);
  t.end();
});
