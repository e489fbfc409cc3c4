// BlkHandler on a simulated 4096-byte-sector host (A = 4096, M = 512)
// against a byte-array model: random batches of reads, writes and flushes on
// two queues, unaligned sectors and lengths, many-segment and
// memory-misaligned requests, and ops completed in an order fast-check picks.
// See blk-rig.ts (workload, layout, checks) and sim-plane.ts (the disk).

import t, { type Test } from 'tap';
import fc from 'fast-check';
import { QueueCounters } from '../../src/blk/counters';
import { T_IN, T_OUT, arbWorkReq, firstDiff, internals, selectBatch, sumCounters, type LiveReq, type WorkReq } from './blk-rig';
import { mulberry32 } from '../helpers/prng';
import { chooser, drive, makeWorld, type SimWorld } from './sim-plane';

const A = 4096;
const M = 512;
const DISK = 256 * 1024; // 64 host blocks: requests collide often
const GEO = { A, M, diskBytes: DISK };
/** Region phases: 0, a 512-multiple, and an odd one (3000) the handler must account for. */
const PHASES = [0, 1536, 3000];

interface Run {
  batches: WorkReq[][];
  choices: number[];
  schedSeed: number;
  seed: number;
  bounceBytes: number;
  /** Segment length rule: M (Linux 6.18) or A (Linux 6.1 block devices). */
  L: number;
}

const arbRun: fc.Arbitrary<Run> = fc.record({
  batches: fc.array(fc.array(arbWorkReq(DISK / 512), { minLength: 1, maxLength: 24, size: '+1' }), { minLength: 1, maxLength: 6 }),
  choices: fc.array(fc.nat(), { maxLength: 300 }),
  schedSeed: fc.nat(),
  seed: fc.nat(),
  // 80 KiB: the largest request (64 KiB + head + tail) fits, but requests wait for space.
  bounceBytes: fc.constantFrom(80 * 1024, 80 * 1024, 160 * 1024, 1 << 20),
  L: fc.constantFrom(M, M, A),
});

interface Outcome {
  problems: string[];
  counters: QueueCounters;
  world: SimWorld;
  reqs: LiveReq[];
  bounceWaits: number;
}

function noLock(w: SimWorld): void {
  internals(w.handler).lock = { acquire: () => true, release: () => undefined, clear: () => undefined, size: 0 };
}

function runSim(run: Run, o: { withoutLock?: boolean; registered?: boolean } = {}): Outcome {
  const w = makeWorld({
    geometry: { ...GEO, L: run.L },
    bufSize: 2 << 20,
    phases: PHASES,
    bounceBytes: run.bounceBytes,
    seed: run.seed,
    registered: o.registered ?? false,
  });
  if (o.withoutLock) noLock(w);
  const fromArray = chooser(run.choices);
  const rnd = mulberry32(run.schedSeed);
  let used = 0;
  const choose = (): number => (used++ < run.choices.length ? fromArray() : run.schedSeed === 0 ? 0 : rnd());
  const problems: string[] = [];
  const reqs: LiveReq[] = [];
  // Count requests that had to wait for bounce space.
  const waiting = internals(w.handler).waiting;
  let bounceWaits = 0;
  const push = waiting.push.bind(waiting);
  waiting.push = (...ids: number[]): number => {
    bounceWaits += ids.length;
    return push(...ids);
  };
  for (const [bi, work] of run.batches.entries()) {
    const chunks = w.rig.prepareBatch(selectBatch(work), w.model, run.seed + bi * 1013);
    reqs.push(...w.rig.batch);
    problems.push(...drive(w, chunks, choose));
    if (problems.length > 0) break;
    problems.push(...w.rig.checkBatch(w.model, o.registered ?? false));
    const k = firstDiff(w.disk, w.model);
    if (k >= 0) problems.push(`after batch ${bi}: disk byte ${k} (host block ${Math.floor(k / A)}) is ${w.disk[k]}, model ${w.model[k]}`);
    if (problems.length > 0) break;
  }
  problems.push(...w.violations, ...w.plane.violations);
  if (w.plane.einval > 0) problems.push(`${w.plane.einval} ops broke the O_DIRECT rules (EINVAL)`);
  const c = sumCounters(w.handler);
  if (problems.length === 0) {
    const rw = reqs.filter((r) => r.type === T_IN || r.type === T_OUT);
    const want = {
      requests: reqs.length,
      errors: 0,
      rmwCycles: rw.filter((r) => r.exp.rmw).length,
      iovCollapses: rw.filter((r) => r.exp.collapse > 0).length,
      ioSplits: rw.filter((r) => r.exp.split).length,
      bytesBounced: rw.reduce((s, r) => s + r.exp.bouncedBytes, 0),
      ops: w.rig.totalOps,
    };
    const got = {
      requests: c.requests,
      errors: c.errors,
      rmwCycles: c.rmwCycles,
      iovCollapses: c.iovCollapses,
      ioSplits: c.ioSplits,
      bytesBounced: c.bytesBounced,
      ops: c.fixedOps + c.plainOps,
    };
    if (JSON.stringify(got) !== JSON.stringify(want)) problems.push(`counters ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
    if (w.handler.bounceInUse !== 0) problems.push(`bounce arena still holds ${w.handler.bounceInUse} bytes`);
    if (w.handler.inflight() !== 0) problems.push(`handler reports ${w.handler.inflight()} in flight`);
    const lockSize = internals(w.handler).lock.size;
    if (lockSize !== 0) problems.push(`range lock still holds ${lockSize} entries`);
  }
  return { problems, counters: c, world: w, reqs, bounceWaits };
}

function holds(t: Test, prop: fc.IProperty<[Run]>, numRuns: number): void {
  const r = fc.check(prop, { numRuns });
  if (r.failed) t.fail(fc.defaultReportMessage(r) ?? 'property failed');
  else t.pass(`property holds over ${r.numRuns} runs`);
}

t.test('property: random batches on 2 queues match the model (random completion order)', (t) => {
  const total = new QueueCounters();
  let requests = 0;
  let bounceWaits = 0;
  holds(
    t,
    fc.property(arbRun, (run) => {
      const o = runSim(run);
      if (o.problems.length > 0) throw new Error(o.problems.slice(0, 10).join('\n'));
      total.add(o.counters);
      requests += o.reqs.length;
      bounceWaits += o.bounceWaits;
    }),
    300,
  );
  t.ok(bounceWaits > 0, `requests waited for bounce space (${bounceWaits})`);
  t.ok(total.rmwCycles > 0, `read-modify-write cycles were exercised (${total.rmwCycles})`);
  t.ok(total.overlapWaits > 0, `requests waited for overlapping RMWs (${total.overlapWaits})`);
  t.ok(total.bytesBounced > 0, `bytes bounced (${total.bytesBounced})`);
  t.comment(`counters over the run: ${JSON.stringify(total)}; ${requests} requests`);
  t.end();
});

t.test('without the range lock the same property fails (the test can see missing serialisation)', (t) => {
  const r = fc.check(
    fc.property(arbRun, (run) => {
      const o = runSim(run, { withoutLock: true });
      if (o.problems.length > 0) throw new Error(o.problems.slice(0, 10).join('\n'));
    }),
    { numRuns: 300 },
  );
  t.ok(r.failed, 'fast-check finds a counterexample when the lock always grants');
  const msg = r.errorInstance instanceof Error ? r.errorInstance.message : String(r.errorInstance);
  t.match(msg, /disk byte|read returned wrong data/, 'the counterexample is lost or stale data, not something else');
  if (r.failed) t.comment(`shrunk counterexample after ${r.numRuns} runs:\n${msg.split('\n').slice(0, 3).join('\n')}`);
  t.end();
});

t.test('registered hint: aligned single-iovec requests use FIXED ops, bounced requests never do', (t) => {
  const total = new QueueCounters();
  let singles = 0;
  let bounced = 0;
  holds(
    t,
    fc.property(arbRun, (run) => {
      const o = runSim(run, { registered: true });
      if (o.problems.length > 0) throw new Error(o.problems.slice(0, 10).join('\n'));
      total.add(o.counters);
      singles += o.reqs.filter((r) => !r.exp.bounced && r.exp.singleGuestIovec).length;
      bounced += o.reqs.filter((r) => r.exp.bounced).length;
    }),
    100,
  );
  t.ok(total.fixedOps > 0, `fixedOps grew (${total.fixedOps})`);
  t.ok(singles > 0 && bounced > 0, `both kinds were exercised (${singles} FIXED candidates, ${bounced} bounced)`);
  t.end();
});

// ------------------------------------------------- large requests (IOV_MAX)

const BIG_DISK = 8 << 20;
const BIG = { A, M, diskBytes: BIG_DISK };

function bigWorld(bounceBytes: number, registered = false): SimWorld {
  return makeWorld({ geometry: BIG, bufSize: 12 << 20, phases: [0, 512, 3000], bounceBytes, seed: 7, registered, chunkMax: 64 });
}

/** One batch of explicit requests in one onChains call; ops complete as `choices` say (then FIFO). */
function runBig(w: SimWorld, work: WorkReq[], choices: number[] = []): string[] {
  const registered = w.plane.registered;
  // One onChains call with every request, so `choices` address ops deterministically.
  const chunks = [w.rig.prepareBatch(work, w.model, 99).flat()];
  const problems = drive(w, chunks, chooser(choices));
  if (problems.length > 0) return problems;
  problems.push(...w.rig.checkBatch(w.model, registered));
  const k = firstDiff(w.disk, w.model);
  if (k >= 0) problems.push(`disk byte ${k} (host block ${Math.floor(k / A)}) is ${w.disk[k]}, model ${w.model[k]}`);
  problems.push(...w.violations, ...w.plane.violations);
  return problems;
}

const req = (kind: 'r' | 'w', sector: number, sectors: number, layout: WorkReq['layout'], q = 0): WorkReq => ({
  kind,
  q,
  sector,
  sectors,
  layout,
  lseed: sector + sectors,
});

t.test('IOV_MAX collapse through the handler: 1032 x 512 B segments, unaligned at both ends', (t) => {
  const w = bigWorld(16 << 20, true);
  // pos 512: 7 pieces in the head block, 1024 in the middle, 1 in the tail block -> 1026 -> collapse 3.
  const write = req('w', 1, 1032, 'many512');
  t.same(runBig(w, [write]), [], 'collapsed write lands byte-exact');
  const read = req('r', 1, 1032, 'many512');
  t.same(runBig(w, [read]), [], 'collapsed read returns the bytes');
  const c = sumCounters(w.handler);
  t.equal(c.iovCollapses, 2, 'both requests collapsed');
  t.equal(c.fixedOps, 0, 'no FIXED op for collapsed requests');
  t.end();
});

t.test('split through the handler: 1500 aligned 512 B segments (aligned and unaligned start)', (t) => {
  const w = bigWorld(16 << 20, true);
  t.same(runBig(w, [req('w', 8, 1500, 'many512')]), [], 'aligned split write');
  t.same(runBig(w, [req('r', 8, 1500, 'many512')]), [], 'aligned split read');
  t.same(runBig(w, [req('w', 4001, 1700, 'many512')]), [], 'unaligned (RMW) split write');
  t.same(runBig(w, [req('r', 4001, 1700, 'many512')]), [], 'unaligned split read');
  t.equal(sumCounters(w.handler).ioSplits, 4, 'four split requests');
  t.end();
});

t.test('no host-aligned cut (512 B then 4 KiB segments): the middle is bounced instead', (t) => {
  const w = bigWorld(16 << 20, true);
  // 512 + 1100 * 4096 + 3584: file offsets 512 + 4096k inside, never aligned.
  const sectors = (512 + 1100 * 4096 + 3584) / 512;
  t.same(runBig(w, [req('w', 0, sectors, 'lead512')]), [], 'aligned write, forced middle bounce');
  t.same(runBig(w, [req('r', 0, sectors, 'lead512')]), [], 'aligned read, forced middle bounce');
  // Ends unaligned: an RMW write (tail block) whose middle is forced through the bounce arena.
  t.same(runBig(w, [req('w', 16, sectors - 7, 'lead512')]), [], 'RMW write, forced middle bounce');
  t.same(runBig(w, [req('r', 16, sectors - 7, 'lead512')]), [], 'read of it');
  t.end();
});

t.test('forced middle bounce of an RMW write after the bounce arena fragmented', (t) => {
  // P1 (4 KiB head block) | W (head+tail blocks) | P2 (4 KiB): P1 completes and
  // frees the space before W, so when W re-plans its middle through the arena
  // after its RMW reads, first fit puts the larger buffer somewhere else. Its
  // head/tail blocks (just read from disk, guest bytes patched in) must move
  // with it.
  const w = bigWorld(16 << 20);
  const sectors = (512 + 1100 * 4096 + 3584) / 512 - 7; // ends 512 B into a block
  const p1 = req('r', 9000, 1, 'single'); // unaligned 512 B read: one bounce block
  const rmw = req('w', 16, sectors, 'lead512');
  const p2 = req('r', 9003, 1, 'single');
  // Choices: submit (one chunk of all 3); then complete op 0 (P1's read), then
  // op 0 again (W's tail RMW read), then FIFO.
  const problems = runBig(w, [p1, rmw, p2], [0, 1, 1]);
  t.same(problems, [], 'the RMW write keeps its head/tail blocks when its bounce buffer is re-allocated');
  t.end();
});

t.test('forced middle bounce when the arena is busy: the valid request must not fail', (t) => {
  // Arena: exactly the forced middle bounce of an aligned read, but a
  // concurrent 4 KiB bounce holder makes the allocation fail. The request is valid; the
  // guest must not see an I/O error (seed iov-max-padding-collapse).
  const mid = 512 + 1100 * 4096 + 3584;
  const arena = Math.ceil(mid / 4096) * 4096;
  const w = bigWorld(arena);
  const p1 = req('r', 9000, 1, 'single');
  const big = req('r', 0, mid / 512, 'lead512');
  t.same(runBig(w, [p1, big]), [], 'both requests complete OK');
  t.end();
});

// ------------------------------------------------------ a full submission ring

t.test('ring takes only some ops: every request still completes exactly once', (t) => {
  // The DataPlane contract: submit(n) returns how many ops it took; the rest
  // complete with EIO ("never hang"). Requests may fail, but each must get
  // exactly one used entry.
  const cases: Array<[string, (w: SimWorld) => WorkReq[], (n: number) => number]> = [
    [
      // 255 aligned reads fill the op array; the RMW write's second RMW read
      // forces a mid-request submit of 256 ops, of which the ring takes 255.
      'a flush of the op array in the middle of an RMW request',
      () => [...Array.from({ length: 255 }, (_, i) => req('r', 8 * (i % 60) + 8 * 64, 8, 'single')), req('w', 7, 2, 'single')],
      (n) => (n === 256 ? 255 : n),
    ],
    [
      // The refused RMW read of W1 fails W1; releasing W1's range grants W2,
      // which queues two RMW reads while the refusal loop is still running.
      'a refused op whose failure grants a waiting RMW write',
      () => [req('w', 1, 1, 'single'), req('w', 7, 2, 'single'), req('r', 80, 8, 'single')],
      (() => {
        let first = true;
        return (n: number) => {
          if (first) {
            first = false;
            return 0;
          }
          return n;
        };
      })(),
    ],
  ];
  for (const [name, mk, take] of cases) {
    const w = makeWorld({
      geometry: { A, M, diskBytes: 1 << 20 },
      bufSize: 4 << 20,
      phases: [0, 0, 0],
      bounceBytes: 1 << 20,
      seed: 3,
      chunkMax: 256,
    });
    w.plane.take = take;
    const work = mk(w);
    const chunks = [w.rig.prepareBatch(work, w.model, 5).flat()];
    const problems = drive(w, chunks, chooser([]));
    const done = w.rig.batch.filter((r) => r.completions === 1).length;
    const twice = w.rig.batch.filter((r) => r.completions > 1).length;
    t.same(problems, [], `${name}: nothing left hanging`);
    t.equal(done, work.length, `${name}: ${done}/${work.length} requests completed once`);
    t.equal(twice, 0, `${name}: no request completed twice`);
    t.equal(w.handler.inflight(), 0, `${name}: handler has nothing in flight`);
  }
  t.end();
});

t.test("ring refusal while an op is being queued: no request gets another request's iovecs", (t) => {
  // One onChains call: W1, an RMW write of block 0 (one RMW read op); W2, an
  // aligned write of block 0 that waits behind W1 in the range lock; 127
  // RMW writes on their own block pairs (254 RMW read ops) and one aligned
  // read: 256 ops, the op array is full. B, an aligned 4 KiB write, must
  // flush the array before queueing its op, and the ring refuses that whole
  // submit. W1 fails (EIO, allowed), which grants W2 at once. B's own op is
  // submitted afterwards and taken: B must write exactly its own bytes.
  const w = makeWorld({
    geometry: { A, M, diskBytes: 4 << 20 },
    bufSize: 4 << 20,
    phases: [0, 0, 0],
    bounceBytes: 4 << 20,
    seed: 11,
    chunkMax: 256,
  });
  let calls = 0;
  w.plane.take = (n) => (calls++ === 0 ? 0 : n);
  const work: WorkReq[] = [
    req('w', 1, 1, 'single'),
    req('w', 0, 8, 'single'),
    ...Array.from({ length: 127 }, (_, k) => req('w', 8 * (2 * k + 2) + 7, 2, 'single')),
    req('r', 8 * 300, 8, 'single'),
    req('w', 8 * 400, 8, 'single'),
  ];
  const chunks = [w.rig.prepareBatch(work, w.model, 17).flat()];
  const problems = drive(w, chunks, chooser([]));
  t.same(problems, [], 'nothing left hanging');
  t.same(w.violations, [], 'the chains are valid');
  const batch = w.rig.batch;
  const w1 = batch[0] as LiveReq;
  const w2 = batch[1] as LiveReq;
  const b = batch[batch.length - 1] as LiveReq;
  t.equal(calls > 0 && w1.usedStatus !== 0, true, 'the refused W1 failed');
  t.equal(w2.usedStatus, 0, 'W2 (never refused) completed OK');
  t.equal(b.usedStatus, 0, 'B (never refused) completed OK');
  // Disk: refused writes wrote nothing; W2 and B wrote their bytes; nothing else changed.
  for (const r of batch) {
    const data = w.rig.dataOf(r);
    if (data && r.usedStatus === 0) w.model.set(data, r.pos);
  }
  const k = firstDiff(w.disk, w.model);
  t.equal(
    k,
    -1,
    k < 0
      ? 'disk holds exactly the successful writes'
      : `disk byte ${k} (host block ${Math.floor(k / A)}) is ${w.disk[k]}, expected ${w.model[k]}`,
  );
  const w2data = w.rig.dataOf(w2) as Uint8Array;
  t.not(firstDiff(w.disk.subarray(b.pos, b.pos + 4096), w2data), -1, "B's block does not hold W2's bytes");
  t.same(w.plane.violations, [], 'no invalid op reached the ring');
  t.end();
});
