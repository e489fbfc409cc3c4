// SIGTERM (and SIGINT) while a guest is doing I/O: every request the daemon
// has taken from the rings completes (used entry, status OK, data in the
// image or in guest memory) before the daemon exits 0 and removes its socket:
// plain requests, requests waiting for bounce-arena room, and (on a 4K-sector
// loop device) read-modify-write cycles waiting on each other.

import t from 'tap';
import fs from 'node:fs';
import { BlkStatus, BlkType, SECTOR_SIZE, type BlkRequest, type BlkResult } from '../../src/frontend/blk-driver';
import type { Frontend } from '../../src/frontend/frontend';
import { encodeConfigPayload } from '../../src/vhost-user/encode';
import { Request } from '../../src/vhost-user/protocol';
import { connect, logSince, pattern, readImage, spinUntilPopped, startDaemon, writeImage, type Daemon } from './harness';
import { loopUnsupported } from '../helpers/loop-device';

const IMAGE_BYTES = 64 << 20;
/** Reads target the first half, which holds this before the daemon starts; writes the second half. */
const PREFILL = pattern(IMAGE_BYTES / 2, 77);

/**
 * Used entries the device wrote before it went away are the guest's, even if
 * the socket's EOF is seen before the call notification: drain the used ring
 * before the frontend abandons what is still in flight.
 */
function drainBeforeAbandon(fe: Frontend): void {
  for (const q of fe.queues) {
    const ring = q.ring;
    const abandon = ring.abandonAll.bind(ring);
    ring.abandonAll = () => {
      ring.drainUsed((e) => e.token.resolve(e.len));
      return abandon();
    };
  }
}

function exited(d: Daemon): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const c = d.v.child;
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve({ code: c.exitCode, signal: c.signalCode });
  return new Promise((resolve) => c.once('exit', (code, signal) => resolve({ code, signal })));
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal} with requests in flight: all complete OK before the daemon exits 0`, async (t) => {
    const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256, prepare: (img) => writeImage(img, 0, PREFILL) });
    const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 256, eventIdx: true });
    drainBeforeAbandon(fe);
    const half = IMAGE_BYTES / 2 / SECTOR_SIZE;
    const layouts = ['3desc', '2desc', 'indirect', '3desc'] as const;
    const reqs: BlkRequest[] = [];
    for (let i = 0; i < 64; i++) {
      for (let q = 0; q < 2; q++) {
        const k = i * 2 + q;
        if (i % 4 === 3) reqs.push({ q, type: BlkType.IN, sector: k * 256, len: 128 * 1024, layout: layouts[i % 4]! });
        else reqs.push({ q, type: BlkType.OUT, sector: half + k * 256, data: pattern(128 * 1024, k), layout: layouts[i % 4]! });
      }
    }
    const mark = d.v.stderr().length;
    const results = drv.submitBatch(reqs).map((p) =>
      p.then(
        (r): BlkResult | Error => r,
        (e: Error) => e,
      ),
    );
    t.ok(spinUntilPopped(fe, 0, 64) && spinUntilPopped(fe, 1, 64), 'the daemon took all 128 requests from the rings');
    d.v.child.kill(signal);
    const exit = await exited(d);
    await d.stop(); // sanitizer check; already exited
    t.same(exit, { code: 0, signal: null }, `the daemon exits 0 on ${signal}`);
    t.notOk(fs.existsSync(d.socket), 'the socket is removed');

    const lines = logSince(d, mark);
    const drain = lines.find((l) => /draining in-flight requests/.test(l));
    t.match(drain ?? '', /inflight=[1-9]/, `requests were in flight at ${signal}: ${drain ?? '(no drain line)'}`);
    t.ok(
      lines.findIndex((l) => /shutting down/.test(l)) < lines.findIndex((l) => /draining in-flight/.test(l)),
      'it logged the shutdown, then drained',
    );

    await fe.waitClosed(2000);
    const rs = await Promise.all(results);
    t.equal(fe.queue(0).ring.usedIdx(), 64, 'queue 0: 64 used entries');
    t.equal(fe.queue(1).ring.usedIdx(), 64, 'queue 1: 64 used entries');
    const failed = rs.map((r, i) => [r, reqs[i]!] as const).filter(([r]) => r instanceof Error || r.status !== BlkStatus.OK);
    t.equal(
      failed.length,
      0,
      `every request completed with status OK${failed.length ? `; first failure: ${String(failed[0]![0] instanceof Error ? failed[0]![0].message : failed[0]![0].status)}` : ''}`,
    );
    let writesOk = 0;
    let readsOk = 0;
    rs.forEach((r, i) => {
      const req = reqs[i]!;
      const off = Number(req.sector) * SECTOR_SIZE;
      if (r instanceof Error) return;
      if (req.type === BlkType.OUT && r.usedLen === 1 && readImage(d.image, off, req.data!.length).equals(req.data!)) writesOk++;
      if (req.type === BlkType.IN && r.usedLen === req.len! + 1 && r.data.equals(PREFILL.subarray(off, off + req.len!))) readsOk++;
    });
    t.equal(writesOk, 96, 'all 96 writes are in the image');
    t.equal(readsOk, 32, 'all 32 reads returned the image bytes');
  });
}

t.test('SIGTERM while bounced requests wait for bounce-arena room: all complete OK, exit 0', async (t) => {
  const MB = 1 << 20;
  const d = await startDaemon(t, { imageBytes: 128 * MB, queues: 2, queueSize: 256 });
  const { fe, drv } = await connect(t, d, {
    queues: 2,
    queueSize: 256,
    eventIdx: true,
    indirect: true,
    memory: { regions: [64 * MB, 64 * MB] },
  });
  drainBeforeAbandon(fe);
  // 2 x 48 writes of 1 MiB in pieces of 100 B + 64 KiB - 100 B + 15 x 64 KiB: each goes
  // through the 64 MiB bounce arena, so a third of them wait for room.
  const pieces = [100, 65536 - 100, ...Array.from({ length: 15 }, () => 65536)];
  const blocks = Array.from({ length: 96 }, (_, i) => ({ q: i % 2, sector: i * 2048, data: pattern(MB, i) }));
  const reqs: BlkRequest[] = blocks.map((b) => {
    let at = 0;
    const segs = pieces.map((len) => {
      const seg = { len, write: false, data: b.data.subarray(at, at + len), align: 1 };
      at += len;
      return seg;
    });
    return { q: b.q, type: BlkType.OUT, sector: b.sector, segs, layout: 'indirect' as const };
  });
  const mark = d.v.stderr().length;
  const results = drv.submitBatch(reqs).map((p) =>
    p.then(
      (r): BlkResult | Error => r,
      (e: Error) => e,
    ),
  );
  t.ok(spinUntilPopped(fe, 0, 48) && spinUntilPopped(fe, 1, 48), 'the daemon took all 96 requests from the rings');
  d.v.child.kill('SIGTERM');
  const exit = await exited(d);
  await d.stop();
  t.same(exit, { code: 0, signal: null }, 'the daemon exits 0');
  t.notOk(fs.existsSync(d.socket), 'the socket is removed');
  const drain = logSince(d, mark).find((l) => /draining in-flight requests/.test(l));
  t.match(drain ?? '', /inflight=[1-9]/, `requests were in flight at SIGTERM: ${drain ?? '(no drain line)'}`);
  await fe.waitClosed(2000);
  const rs = await Promise.all(results);
  t.equal(rs.filter((r) => !(r instanceof Error) && r.status === BlkStatus.OK && r.usedLen === 1).length, 96, 'all 96 writes completed OK');
  t.equal(blocks.filter((b) => readImage(d.image, b.sector * SECTOR_SIZE, MB).equals(b.data)).length, 96, 'and are in the image');
});

t.test('SIGTERM while read-modify-write cycles wait on each other (4K host, 512-byte writes)', { skip: loopUnsupported() }, async (t) => {
  const fill = pattern(4 << 20, 4);
  const d = await startDaemon(t, {
    imageBytes: 16 << 20,
    queues: 2,
    queueSize: 256,
    loopSectorSize: 4096,
    prepare: (img) => writeImage(img, 0, fill),
  });
  const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 256, eventIdx: true, indirect: true });
  drainBeforeAbandon(fe);
  // Writethrough (every write O_DSYNC), so the cycles take a while.
  await fe.command(Request.SET_CONFIG, encodeConfigPayload(32, 0, Buffer.from([0])), [], true);
  // 2 x 200 writes of 512 B into 50 host blocks: 7 of every 8 wait for another's RMW.
  const N = 400;
  const reqs: BlkRequest[] = Array.from({ length: N }, (_, i) => ({
    q: i % 2,
    type: BlkType.OUT,
    sector: 2000 + i,
    data: pattern(512, 900 + i),
    layout: 'indirect' as const,
  }));
  const mark = d.v.stderr().length;
  const results = drv.submitBatch(reqs).map((p) =>
    p.then(
      (r): BlkResult | Error => r,
      (e: Error) => e,
    ),
  );
  t.ok(spinUntilPopped(fe, 0, N / 2) && spinUntilPopped(fe, 1, N / 2), `the daemon took all ${N} requests from the rings`);
  d.v.child.kill('SIGTERM');
  const exit = await exited(d);
  await d.stop();
  t.same(exit, { code: 0, signal: null }, 'the daemon exits 0');
  t.notOk(fs.existsSync(d.socket), 'the socket is removed');
  const drain = logSince(d, mark).find((l) => /draining in-flight requests/.test(l));
  t.match(drain ?? '', /inflight=[1-9]/, `requests were in flight at SIGTERM: ${drain ?? '(no drain line)'}`);
  await fe.waitClosed(2000);
  const rs = await Promise.all(results);
  t.equal(rs.filter((r) => !(r instanceof Error) && r.status === BlkStatus.OK).length, N, `all ${N} writes completed OK`);
  const expect = Buffer.from(fill);
  for (const r of reqs) Buffer.from(r.data!).copy(expect, Number(r.sector) * SECTOR_SIZE);
  t.ok(readImage(d.image, 0, 4 << 20).equals(expect), 'every one is in the image, and nothing else changed');
});

t.test('SIGTERM with an idle frontend connected and another waiting to be served', async (t) => {
  const d = await startDaemon(t, { imageBytes: 1 << 20 });
  const { fe } = await connect(t, d, { queues: 1 });
  const waiting = await connect(t, d, false);
  const setup = waiting.fe.setup({ queues: 1 });
  setup.catch(() => undefined);
  d.v.child.kill('SIGTERM');
  const exit = await exited(d);
  await d.stop();
  t.same(exit, { code: 0, signal: null }, 'the daemon exits 0');
  t.notOk(fs.existsSync(d.socket), 'the socket is removed');
  await t.resolves(fe.waitClosed(2000), 'the served frontend sees EOF');
  await t.rejects(setup, 'the waiting frontend is never served');
});
