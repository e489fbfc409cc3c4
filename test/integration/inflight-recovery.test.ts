// A request vublk had popped and not completed when it was SIGKILLed is
// finished by the next vublk, exactly once, from the inflight region the
// frontend kept (INFLIGHT_SHMFD, issue 8). The frontend plays QEMU after a
// backend crash: the guest's memory and rings and the region outlive the
// connection, and the next connection starts each ring at its used index.
//
//  - A slow write and a fast read in flight, the read completed, SIGKILL:
//    the next vublk completes the write once and does not repeat the read.
//    Without the region the write is lost (the proof the test can fail).
//  - SIGKILL at every store of the completion publish (the daemon's
//    test-only VUBLK_TEST_CRASH_AT hook), then recovery: every request of
//    the batch is returned exactly once and its data is on disk.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus, BlkType, SECTOR_SIZE, BlkDriver, type BlkResult } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { GuestState } from '../../src/frontend/guest-state';
import { InflightRegion } from '../../src/frontend/inflight-region';
import { pattern, readImage, sleep, spinUntilPopped, writeImage } from './harness';
import { frozenFsUnsupported, makeFreezableFs } from '../helpers/frozen-fs';
import { makeImage, startVublk, tmpDir, type VublkProcess } from '../helpers/vublk-process';

const QUEUE_SIZE = 128;
const IMAGE_BYTES = 16 << 20;

/**
 * One virtio-blk device whose backend process comes and goes, as under QEMU
 * with reconnect=1: the image, the socket, the guest (memory and rings) and
 * the inflight region (unless `inflight` is false) stay; vublk processes and
 * their connections are replaced. Teardown closes everything.
 */
class Device {
  readonly guest = new GuestState();
  readonly region: InflightRegion | false;
  readonly socket: string;
  v: VublkProcess | undefined;
  fe: Frontend | undefined;
  drv: BlkDriver | undefined;
  /** stderr of every vublk so far. */
  readonly logs: string[] = [];

  constructor(
    t: Test,
    readonly dir: string,
    readonly image: string,
    inflight = true,
  ) {
    this.region = inflight ? new InflightRegion() : false;
    this.socket = path.join(dir, 'vublk.sock');
    t.teardown(async () => {
      this.fe?.close();
      if (this.v) await this.v.stop('SIGKILL');
      this.guest.close();
      if (this.region) this.region.close();
    });
  }

  /** Starts a vublk (over the stale socket of a killed one); env: extra environment for it. */
  async start(env: Record<string, string> = {}): Promise<VublkProcess> {
    // startVublk() takes the environment of this process when it spawns,
    // before its first await: set env just around that call.
    const saved = Object.keys(env).map((k) => [k, process.env[k]] as const);
    Object.assign(process.env, env);
    const started = startVublk(['--disk', this.image, '--socket', this.socket, '--queues', '1', '--queue-size', String(QUEUE_SIZE)]);
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    this.v = await started;
    return this.v;
  }

  /** Connects and starts the device; a ring the guest already has starts at its used index. */
  async attach(): Promise<BlkDriver> {
    this.fe = await Frontend.connect(this.socket);
    await this.fe.setup({ queues: 1, queueSize: QUEUE_SIZE, inflight: this.region, guest: this.guest });
    this.drv = new BlkDriver(this.fe);
    return this.drv;
  }

  /** SIGKILLs the current vublk (if still alive) and drops its connection; the guest keeps its requests. */
  async kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const r = await this.v!.stop('SIGKILL');
    this.logs.push(r.stderr);
    this.fe?.close();
    this.fe = undefined;
    return r;
  }

  /** Stops the current vublk with SIGTERM; returns its exit and log. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    this.fe?.close();
    this.fe = undefined;
    const r = await this.v!.stop('SIGTERM');
    this.logs.push(r.stderr);
    return r;
  }

  get ring() {
    return this.guest.rings[0]!;
  }

  /** Used ring entry at position i (mod size): the head the device returned. */
  usedHead(i: number): number {
    const r = this.ring;
    return this.guest.mem!.read(r.usedGpa + 4 + 8 * (i % r.size), 4).readUInt32LE(0);
  }

  /** Avail ring entry at position i (mod size): the head the driver offered. */
  availHead(i: number): number {
    const r = this.ring;
    return this.guest.mem!.read(r.availGpa + 4 + 2 * (i % r.size), 2).readUInt16LE(0);
  }

  /** The driver's avail idx as published. */
  availIdx(): number {
    return this.guest.mem!.read(this.ring.availGpa + 2, 2).readUInt16LE(0);
  }
}

/** Resolves with the request's result, or 'pending' if it has none after ms. */
function within(p: Promise<BlkResult>, ms: number): Promise<BlkResult | 'pending'> {
  return Promise.race([p, sleep(ms).then(() => 'pending' as const)]);
}

const warnOrError = (log: string): string[] => log.split('\n').filter((l) => /^vublk: (warn|error): /.test(l));

// ------------------------------------------------- a slow and a fast one ---

const A_SECTOR = 2048;
const A_BYTES = 64 * 1024;
const B_SECTOR = 8192;
const B_BYTES = 4096;

/**
 * A (a write to the image on a frozen file system: it stays in the kernel)
 * and B (a read: completes) in flight; B completes; SIGKILL; thaw; a new
 * vublk; reconnect with the same guest (and region, if inflight).
 */
async function slowAndFast(t: Test, inflight: boolean) {
  const dir = tmpDir('vublk-int-inflight-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ffs = makeFreezableFs(t, dir);
  const image = makeImage(ffs.mnt, IMAGE_BYTES);
  const bData = pattern(B_BYTES, 2);
  writeImage(image, B_SECTOR * SECTOR_SIZE, bData);
  const dev = new Device(t, dir, image, inflight);
  // Teardowns run last-registered first: thaw before anything waits on the daemon.
  t.teardown(() => ffs.thaw());
  await dev.start();
  const drv = await dev.attach();

  const aData = pattern(A_BYTES, 3);
  ffs.freeze();
  const a = drv.write(0, A_SECTOR, aData);
  t.ok(spinUntilPopped(dev.fe!, 0, 1), 'vublk popped A (a write held by the frozen file system)');
  const b = await within(drv.read(0, B_SECTOR, B_BYTES), 5000);
  t.ok(b !== 'pending' && b.status === BlkStatus.OK && b.data.equals(bData), 'B (a read) completed with the right data while A is held');
  t.equal(await within(a, 200), 'pending', 'A has not completed');
  const usedBefore = dev.ring.usedIdx();
  t.equal(usedBefore, 1, 'one used entry (B) before the kill');
  if (dev.region) {
    const q = dev.region.queue(0);
    t.same(q.inflightHeads(), [dev.availHead(0)], "the region marks A's head, and only it, in flight");
  }

  const killed = await Promise.all([
    dev.kill(),
    (async () => {
      await sleep(100);
      ffs.thaw();
    })(),
  ]);
  t.equal(killed[0].signal, 'SIGKILL', 'vublk #1 was SIGKILLed');
  await dev.start();
  // Without the region the new vublk may return a head the guest no longer
  // has in flight while the rings start: setup then fails.
  const attachError = await dev.attach().then(
    () => undefined,
    (e: unknown) => e,
  );
  return { dev, a, usedBefore, aData, attachError };
}

t.test(
  'A (slow) and B (fast) in flight, B done, SIGKILL: the next vublk completes A once and does not repeat B',
  { skip: frozenFsUnsupported() },
  async (t) => {
    const { dev, a, usedBefore, aData, attachError } = await slowAndFast(t, true);
    t.equal(attachError, undefined, 'the frontend reconnected and started the ring');
    const r = await within(a, 5000);
    t.ok(r !== 'pending' && r.status === BlkStatus.OK, 'A completed after the restart', { r });
    await sleep(200); // a repeated completion would come now
    t.equal(dev.ring.usedIdx(), usedBefore + 1, 'exactly one more used entry: A, once; B is not repeated');
    t.equal(dev.usedHead(usedBefore), dev.availHead(0), "that entry is A's head");
    t.ok(dev.fe!.isOpen, 'the frontend is still connected: it saw no head returned twice');
    t.ok(readImage(dev.image, A_SECTOR * SECTOR_SIZE, A_BYTES).equals(aData), "A's data is on disk");
    t.same((dev.region as InflightRegion).queue(0).inflightHeads(), [], 'nothing is left in flight in the region');
    const stopped = await dev.stop();
    t.equal(stopped.code, 0, 'vublk #2 exits 0 on SIGTERM');
    t.match(
      stopped.stderr,
      /resubmitting requests left in flight by an earlier backend conn=\d+ queue=0 count=1\b/,
      'vublk #2 resubmitted one request',
    );
    t.match(stopped.stderr, /counters conn=\d+ queue=0 reason=closed .*\bresubmitted=1\b/, 'its counters say resubmitted=1');
    t.same(dev.logs.flatMap(warnOrError), [], 'no warn or error line from either vublk');
  },
);

t.test('the same without INFLIGHT_SHMFD: A is lost', { skip: frozenFsUnsupported() }, async (t) => {
  const { dev, a, attachError } = await slowAndFast(t, false);
  if (attachError !== undefined) t.comment(`reconnect: ${String(attachError)}`);
  // The new vublk starts at the used index (1) while the guest offered 2
  // heads: it pops B's head again and never sees A's.
  t.equal(await within(a, 3000), 'pending', 'A is never completed');
  await dev.stop();
});

// --------------------------------------------- crash at every publish store ---

const POINTS = ['pop-marked', 'used-written', 'used-published', 'inflight-partly-cleared', 'inflight-cleared'] as const;
/** Writes per round: the crash fires at the first completion batch of at least MIN_BATCH. */
const ROUND = 16;
const MIN_BATCH = 2;
const MAX_ROUNDS = 20;
const WRITE_BYTES = 8192;

for (const point of POINTS) {
  t.test(`SIGKILL at ${point}: recovery returns every request of the batch exactly once, data on disk`, async (t) => {
    const dir = tmpDir('vublk-int-crashat-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const dev = new Device(t, dir, makeImage(dir, IMAGE_BYTES));
    // A head is marked at pop one at a time: that point has batches of 1.
    const v1 = await dev.start({ VUBLK_TEST_CRASH_AT: point === 'pop-marked' ? point : `${point}:${MIN_BATCH}` });
    const drv = await dev.attach();
    const died = v1.stop('SIGCONT').then(() => 'died' as const); // SIGCONT: a no-op signal; resolves at exit

    // Rounds of ROUND writes, each round submitted at once and completed
    // before the next: round r's used entries are at [r*ROUND, (r+1)*ROUND).
    const written = new Map<number, Buffer>();
    let round = 0;
    let pending: Array<Promise<BlkResult>> = [];
    let heads: number[] = [];
    for (; round < MAX_ROUNDS; round++) {
      const first = dev.availIdx();
      const reqs = Array.from({ length: ROUND }, (_, i) => {
        const sector = (round * ROUND + i) * (WRITE_BYTES / SECTOR_SIZE);
        const data = pattern(WRITE_BYTES, 100 + round * ROUND + i);
        written.set(sector, data);
        return { q: 0, type: BlkType.OUT, sector, data };
      });
      pending = drv.submitBatch(reqs);
      heads = Array.from({ length: ROUND }, (_, i) => dev.availHead(first + i));
      const outcome = await Promise.race([Promise.all(pending).then(() => 'done' as const), died]);
      if (outcome === 'died') break;
    }
    if (!t.ok(round < MAX_ROUNDS, `vublk #1 died at ${point} (round ${round})`)) return;
    const exit = await dev.kill();
    t.equal(exit.signal, 'SIGKILL', 'by its own SIGKILL');

    await dev.start();
    await dev.attach();
    const results = await Promise.all(pending.map((p) => within(p, 5000)));
    t.ok(
      results.every((r) => r !== 'pending' && r.status === BlkStatus.OK),
      'every request of the round completed OK after the restart',
    );
    await sleep(200); // a repeated completion would come now
    const end = (round + 1) * ROUND;
    t.equal(dev.ring.usedIdx(), end, `used idx is ${end}: one used entry per request`);
    const returned = Array.from({ length: ROUND }, (_, i) => dev.usedHead(round * ROUND + i)).sort((x, y) => x - y);
    t.same(
      returned,
      [...heads].sort((x, y) => x - y),
      "the round's used entries are its heads, each exactly once",
    );
    t.ok(dev.fe!.isOpen, 'the frontend is still connected: it saw no head returned twice');
    const q = (dev.region as InflightRegion).queue(0);
    t.same(q.inflightHeads(), [], 'nothing is left in flight in the region');
    t.equal(q.usedIdx, end & 0xffff, "the region's used_idx is the ring's");
    const bad = [...written].filter(([s, d]) => !readImage(dev.image, s * SECTOR_SIZE, d.length).equals(d)).map(([s]) => s);
    t.same(bad, [], 'every write is on disk');
    const stopped = await dev.stop();
    t.equal(stopped.code, 0, 'vublk #2 exits 0 on SIGTERM');
    t.comment(`vublk #2: ${/resubmitting requests .*/m.exec(stopped.stderr)?.[0] ?? 'resubmitted nothing'}`);
    t.same(dev.logs.flatMap(warnOrError), [], 'no warn or error line from either vublk');
  });
}
