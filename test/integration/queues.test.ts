// Request queues against the real daemon:
//   - two queues at once: batches of 64 requests per queue published with
//     one avail-index store and one kick per queue, to disjoint ranges, in
//     every combination of EVENT_IDX and INDIRECT_DESC; GET_VRING_BASE then
//     reports how many requests each queue consumed (also with requests in
//     flight when it is asked);
//   - bounced requests beyond the 64 MiB bounce arena wait, then complete;
//   - rings stopped and restarted from their base (VM stop / cont), and
//     restarted near 65535 so the 16-bit indices wrap;
//   - a pipeline of single submissions (no lost kick or call), NO_INTERRUPT,
//     fewer queues than offered, rings of 1, 2 and 4 descriptors.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { BlkStatus, BlkType, SECTOR_SIZE, type BlkRequest, type Layout } from '../../src/frontend/blk-driver';
import { VirtioFeature } from '../../src/frontend/features';
import { encodeU64Payload, encodeVringStatePayload } from '../../src/vhost-user/encode';
import { encodeVringAddrPayload, encodeVringFilePayload } from '../../src/frontend/encode';
import { Request } from '../../src/vhost-user/protocol';
import { connect, pattern, readImage, spinUntilPopped, startDaemon } from './harness';

const IMAGE_BYTES = 64 << 20;
const PER_QUEUE = 64;
const ROUNDS = 3; // 3 x (64 writes + 64 reads) per queue: the ring's slots wrap

for (const eventIdx of [true, false]) {
  for (const indirect of [true, false]) {
    t.test(
      `two queues, ${PER_QUEUE} requests per queue per kick, EVENT_IDX ${eventIdx ? 'on' : 'off'}, INDIRECT ${indirect ? 'on' : 'off'}`,
      async (t) => {
        const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
        const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 256, eventIdx, indirect });
        t.equal(fe.hasFeature(VirtioFeature.RING_EVENT_IDX), eventIdx, `EVENT_IDX negotiated: ${eventIdx}`);
        t.equal(fe.hasFeature(VirtioFeature.RING_INDIRECT_DESC), indirect, `INDIRECT_DESC negotiated: ${indirect}`);
        const layouts: Layout[] = indirect
          ? ['indirect', '3desc', 'indirect', 'split-header']
          : ['3desc', 'split-header', '2desc', '3desc'];
        let consumed = [0, 0];
        for (let round = 0; round < ROUNDS; round++) {
          // Queue q owns sectors [q * 32 MiB, ...); request i of a round its own 16 KiB..80 KiB slot.
          const reqs: BlkRequest[] = [];
          const blocks: { q: number; sector: number; data: Buffer }[] = [];
          for (let i = 0; i < PER_QUEUE; i++) {
            for (let q = 0; q < 2; q++) {
              const len = 4096 * (1 + ((i + round) % 4));
              const sector = (q * IMAGE_BYTES) / 2 / SECTOR_SIZE + (round * PER_QUEUE + i) * 32;
              const data = pattern(len, sector * 7 + round);
              blocks.push({ q, sector, data });
              reqs.push({ q, type: BlkType.OUT, sector, data, layout: layouts[i % layouts.length]! });
            }
          }
          const kicks = fe.queues.map((x) => x.kicks);
          const ws = await Promise.all(drv.submitBatch(reqs));
          t.ok(
            fe.queues.every((x, q) => x.kicks - kicks[q]! === 1),
            `round ${round}: one kick per queue for ${PER_QUEUE} writes each`,
          );
          const badW = ws.filter((r) => r.status !== BlkStatus.OK || r.usedLen !== 1).length;
          t.equal(badW, 0, `round ${round}: ${2 * PER_QUEUE} writes OK with used.len 1`);
          const inImage = blocks.filter((b) => readImage(d.image, b.sector * SECTOR_SIZE, b.data.length).equals(b.data)).length;
          t.equal(inImage, blocks.length, `round ${round}: the image holds every write`);
          // Read each block back on the other queue, all in one batch.
          const rs = await Promise.all(
            drv.submitBatch(
              blocks.map((b, i) => ({
                q: 1 - b.q,
                type: BlkType.IN,
                sector: b.sector,
                len: b.data.length,
                layout: layouts[(i + 1) % layouts.length]!,
              })),
            ),
          );
          const badR = rs.filter(
            (r, i) => r.status !== BlkStatus.OK || r.usedLen !== blocks[i]!.data.length + 1 || !r.data.equals(blocks[i]!.data),
          ).length;
          t.equal(badR, 0, `round ${round}: ${2 * PER_QUEUE} reads across queues return the data`);
          consumed = consumed.map((c) => c + 2 * PER_QUEUE);
        }
        t.equal(
          fe.queues.reduce((a, x) => a + x.ring.inFlight, 0),
          0,
          'nothing left in flight',
        );
        t.equal(await fe.getVringBase(0), consumed[0], `GET_VRING_BASE(0) = ${consumed[0]} requests consumed`);
        t.equal(await fe.getVringBase(1), consumed[1], `GET_VRING_BASE(1) = ${consumed[1]} requests consumed`);
      },
    );
  }
}

t.test('GET_VRING_BASE waits for requests in flight and counts them', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
  const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 256 });
  // 3 requests on queue 0, 40 on queue 1, in flight when GET_VRING_BASE is sent.
  const reqs: BlkRequest[] = [];
  for (let i = 0; i < 3; i++) reqs.push({ q: 0, type: BlkType.OUT, sector: i * 256, data: pattern(128 * 1024, i) });
  for (let i = 0; i < 40; i++) reqs.push({ q: 1, type: BlkType.OUT, sector: 4096 + i * 256, data: pattern(128 * 1024, 100 + i) });
  const done = Promise.all(drv.submitBatch(reqs));
  // Once the daemon has taken them (avail_event moved), they are its to finish before it answers.
  t.ok(spinUntilPopped(fe, 0, 3) && spinUntilPopped(fe, 1, 40), 'the daemon took the 43 requests');
  const b1 = fe.getVringBase(1);
  const b0 = fe.getVringBase(0);
  t.equal(await b1, 40, 'queue 1 consumed 40');
  t.equal(await b0, 3, 'queue 0 consumed 3');
  const rs = await done;
  t.ok(
    rs.every((r) => r.status === BlkStatus.OK),
    'every request completed OK before the rings stopped',
  );
  t.ok(
    reqs.every((r) => readImage(d.image, Number(r.sector) * SECTOR_SIZE, r.data!.length).equals(r.data!)),
    'and is in the image',
  );
});

t.test('a queue the daemon does not have cannot be set up (--queues 1, frontend wants 2)', async (t) => {
  const d = await startDaemon(t, { imageBytes: 1 << 20, queues: 1 });
  const { fe } = await connect(t, d, false);
  await t.rejects(fe.setup({ queues: 2 }), /supports 1 queues, 2 wanted/, 'GET_QUEUE_NUM says 1');
});

t.test('bounced requests beyond the bounce arena wait for room, then all complete', async (t) => {
  // 2 queues x 36 writes of 1 MiB whose first piece is 100 B (so O_DIRECT cannot
  // take them as they are): 72 MiB, more than the 64 MiB bounce arena.
  const MB = 1 << 20;
  const d = await startDaemon(t, { imageBytes: 128 * MB, queues: 2, queueSize: 256 });
  const { drv } = await connect(t, d, { queues: 2, queueSize: 256, indirect: true, memory: { regions: [64 * MB, 64 * MB] } });
  // Pieces of at most 64 KiB (size_max), through indirect tables.
  const pieces = (len: number) => [100, 65536 - 100, ...Array.from({ length: len / 65536 - 1 }, () => 65536)];
  const N = 72;
  const blocks = Array.from({ length: N }, (_, i) => ({ q: i % 2, sector: i * 2048, data: randomBytes(MB) }));
  const writes = await Promise.all(
    drv.submitBatch(
      blocks.map((b) => {
        let at = 0;
        const segs = pieces(MB).map((len) => {
          const seg = { len, write: false, data: b.data.subarray(at, at + len), align: 1 };
          at += len;
          return seg;
        });
        return { q: b.q, type: BlkType.OUT, sector: b.sector, segs, layout: 'indirect' as const };
      }),
    ),
  );
  t.equal(writes.filter((r) => r.status === BlkStatus.OK && r.usedLen === 1).length, N, `${N} bounced 1 MiB writes OK`);
  t.equal(blocks.filter((b) => readImage(d.image, b.sector * SECTOR_SIZE, MB).equals(b.data)).length, N, `the image holds all ${N}`);
  const reads = await Promise.all(
    drv.submitBatch(
      blocks.map((b) => ({
        q: 1 - b.q,
        type: BlkType.IN,
        sector: b.sector,
        segs: pieces(MB).map((len) => ({ len, write: true, align: 1 })),
        layout: 'indirect' as const,
      })),
    ),
  );
  t.equal(
    reads.filter((r, i) => r.status === BlkStatus.OK && r.usedLen === MB + 1 && r.data.equals(blocks[i]!.data)).length,
    N,
    `${N} bounced 1 MiB reads return the data`,
  );
});

t.test('rings stopped with GET_VRING_BASE and restarted from that base (VM stop / cont) keep working', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
  const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 128 });
  let sector = 0;
  const check = async (what: string) => {
    const reqs: BlkRequest[] = [];
    for (let i = 0; i < 40; i++) {
      reqs.push({ q: i % 2, type: BlkType.OUT, sector, data: pattern(8192, sector) });
      sector += 16;
    }
    const ws = await Promise.all(drv.submitBatch(reqs));
    const rs = await Promise.all(drv.submitBatch(reqs.map((r) => ({ q: 1 - r.q, type: BlkType.IN, sector: r.sector, len: 8192 }))));
    t.ok(
      ws.every((r) => r.status === BlkStatus.OK) && rs.every((r, i) => r.status === BlkStatus.OK && r.data.equals(reqs[i]!.data!)),
      `${what}: 40 writes and reads OK on both queues`,
    );
  };
  await check('before the stop');
  for (let cycle = 1; cycle <= 3; cycle++) {
    // Stop, the way QEMU's vhost_dev_stop does it: GET_VRING_BASE per queue.
    const bases = [await fe.getVringBase(0), await fe.getVringBase(1)];
    t.same(bases, [40 * cycle, 40 * cycle], `stop ${cycle}: each queue consumed ${40 * cycle} requests (20 writes + 20 reads per round)`);
    // Start again (vhost_dev_start): features, then per queue num, base, addr, kick, call; then enable.
    await fe.command(Request.SET_FEATURES, encodeU64Payload(fe.features), [], true);
    for (const q of fe.queues) {
      await fe.command(Request.SET_VRING_NUM, encodeVringStatePayload(q.index, q.ring.size), [], true);
      await fe.command(Request.SET_VRING_BASE, encodeVringStatePayload(q.index, bases[q.index]!), [], true);
      await fe.command(
        Request.SET_VRING_ADDR,
        encodeVringAddrPayload({
          index: q.index,
          desc: fe.mem!.gpaToUva(q.ring.descGpa),
          used: fe.mem!.gpaToUva(q.ring.usedGpa),
          avail: fe.mem!.gpaToUva(q.ring.availGpa),
        }),
        [],
        true,
      );
      await fe.command(Request.SET_VRING_KICK, encodeVringFilePayload(q.index, false), [q.kickFd], true);
      await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(q.index, false), [q.callFd], true);
    }
    for (const q of fe.queues) await fe.command(Request.SET_VRING_ENABLE, encodeVringStatePayload(q.index, 1), [], true);
    await check(`after restart ${cycle}`);
  }
});

t.test('without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses used notifications', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
  const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 256, eventIdx: false });
  const q1 = fe.queue(1);
  q1.ring.setAvailFlags(1);
  const calls = q1.calls;
  const reqs = Array.from({ length: 32 }, (_, i) => ({ q: 1, type: BlkType.OUT, sector: i * 64, data: pattern(16384, i) }));
  const results = drv.submitBatch(reqs);
  // The driver polls instead of waiting for a call.
  for (let i = 0; i < 500 && q1.ring.inFlight > 0; i++) {
    await new Promise((r) => setTimeout(r, 5));
    fe.poll(1);
  }
  const rs = await Promise.all(results);
  t.ok(
    rs.every((r) => r.status === BlkStatus.OK),
    '32 writes completed (found by polling)',
  );
  t.equal(q1.calls, calls, 'no call notification was sent while NO_INTERRUPT was set');
  q1.ring.setAvailFlags(0);
  const r = await drv.read(1, 0, 16384);
  t.ok(r.status === BlkStatus.OK && r.data.equals(reqs[0]!.data), 'with the flag cleared, completions are notified again');
  t.ok(q1.calls > calls, 'by a call');
});

for (const eventIdx of [true, false]) {
  t.test(
    `a pipeline of single submissions (queue depth 32 per queue) never loses a kick or a call, EVENT_IDX ${eventIdx ? 'on' : 'off'}`,
    async (t) => {
      const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
      const { fe, drv } = await connect(t, d, { queues: 2, queueSize: 128, eventIdx });
      const TOTAL = 500; // per queue
      const DEPTH = 32;
      const layouts: Layout[] = ['3desc', '2desc', 'indirect', 'split-header'];
      const written = new Map<number, Buffer>();
      let bad = 0;
      let lastProgress = Date.now();
      const worker = async (q: number, lane: number) => {
        for (let n = lane; n < TOTAL; n += DEPTH) {
          const sector = (q * TOTAL + n) * 8;
          const data = pattern(4096, sector);
          const w = await drv.write(q, sector, data, { layout: layouts[n % 4]! });
          if (w.status !== BlkStatus.OK) bad++;
          written.set(sector, data);
          // Read an earlier block back on the same queue, in another layout.
          const back = n >= DEPTH ? n - DEPTH : n;
          const bs = (q * TOTAL + back) * 8;
          const r = await drv.read(q, bs, 4096, { layout: layouts[(n + 1) % 4]! });
          if (r.status !== BlkStatus.OK || !r.data.equals(pattern(4096, bs))) bad++;
          lastProgress = Date.now();
        }
      };
      const stall = setInterval(() => {
        if (Date.now() - lastProgress > 3000) {
          t.fail(`no completion for 3 s: a kick or a call was lost (in flight: ${fe.queues.map((x) => x.ring.inFlight).join(', ')})`);
          fe.close();
        }
      }, 500);
      try {
        await Promise.all([0, 1].flatMap((q) => Array.from({ length: DEPTH }, (_, lane) => worker(q, lane))));
      } finally {
        clearInterval(stall);
      }
      t.equal(bad, 0, `${2 * TOTAL} writes and ${2 * TOTAL} reads, one submission each, all OK`);
      let inImage = 0;
      for (const [sector, data] of written) if (readImage(d.image, sector * SECTOR_SIZE, 4096).equals(data)) inImage++;
      t.equal(inImage, 2 * TOTAL, 'the image holds every write');
      t.comment(`kicks ${fe.queues.map((x) => x.kicks).join('/')}, calls ${fe.queues.map((x) => x.calls).join('/')}`);
    },
  );
}

t.test('fewer queues than the daemon offers, and tiny rings (1, 2 and 4 descriptors) that wrap on every request', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 4, queueSize: 256 });
  for (const [queues, size] of [
    [1, 1],
    [2, 2],
    [3, 4],
  ] as const) {
    const { fe, drv } = await connect(t, d, { queues, queueSize: size, indirect: true });
    const reqs: BlkRequest[] = [];
    for (let i = 0; i < 60; i++) {
      const q = i % queues;
      const data = pattern(4096 + 512 * (i % 5), size * 1000 + i);
      reqs.push({ q, type: BlkType.OUT, sector: size * 10000 + i * 32, data, layout: 'indirect' });
    }
    // One at a time per queue: the ring holds only `size` descriptors.
    let ok = 0;
    await Promise.all(
      Array.from({ length: queues }, async (_, q) => {
        for (const r of reqs.filter((x) => x.q === q)) {
          const w = await drv.request(r);
          const back = await drv.read(q, r.sector, r.data!.length, { layout: 'indirect' });
          if (w.status === BlkStatus.OK && back.status === BlkStatus.OK && back.data.equals(r.data!)) ok++;
        }
      }),
    );
    t.equal(ok, 60, `${queues} of 4 queues, ring size ${size}: 60 writes and read-backs OK`);
    t.equal(await fe.getVringBase(0), (120 / queues) & 0xffff, `queue 0 consumed ${120 / queues}`);
    fe.close();
  }
});

for (const eventIdx of [true, false]) {
  t.test(`ring indices crossing the 16-bit wrap (restarted at base 65500), EVENT_IDX ${eventIdx ? 'on' : 'off'}`, async (t) => {
    const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 1, queueSize: 256 });
    const { fe, drv } = await connect(t, d, { queues: 1, queueSize: 64, eventIdx });
    t.equal(await fe.getVringBase(0), 0, 'stopped before any request');
    const q = fe.queue(0);
    const BASE = 65500;
    // Move the driver's side of the ring to BASE, as if it had run that long.
    // SAFETY: test-only reach into the in-repo driver's private indices; no chain is in flight.
    const ring = q.ring as unknown as { shadowAvail: number; publishedAvail: number; lastUsed: number; availGpa: number; usedGpa: number };
    ring.shadowAvail = ring.publishedAvail = ring.lastUsed = BASE;
    const mem = fe.mem!;
    const set16 = (gpa: number, v: number) => {
      const { region, offset } = mem.locate(gpa);
      Atomics.store(new Uint16Array(region.buffer), offset / 2, v);
    };
    set16(ring.availGpa + 2, BASE); // avail idx
    set16(ring.usedGpa + 2, BASE); // used idx
    set16(ring.availGpa + 4 + 2 * 64, BASE); // used_event
    set16(ring.usedGpa + 4 + 8 * 64, BASE); // avail_event, as the device would have left it
    await fe.command(Request.SET_VRING_BASE, encodeVringStatePayload(0, BASE), [], true);
    await fe.command(
      Request.SET_VRING_ADDR,
      encodeVringAddrPayload({
        index: 0,
        desc: mem.gpaToUva(q.ring.descGpa),
        used: mem.gpaToUva(q.ring.usedGpa),
        avail: mem.gpaToUva(q.ring.availGpa),
      }),
      [],
      true,
    );
    await fe.command(Request.SET_VRING_KICK, encodeVringFilePayload(0, false), [q.kickFd], true);
    await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(0, false), [q.callFd], true);
    await fe.command(Request.SET_VRING_ENABLE, encodeVringStatePayload(0, 1), [], true);
    // 4 batches of 20 writes + 20 reads: the indices go 65500 -> 65536 = 0 -> 124.
    let sector = 0;
    let ok = 0;
    for (let b = 0; b < 4; b++) {
      const reqs: BlkRequest[] = Array.from({ length: 20 }, (_, i) => ({
        q: 0,
        type: BlkType.OUT,
        sector: (sector + i) * 8,
        data: pattern(4096, b * 100 + i),
      }));
      sector += 20;
      const ws = await Promise.all(drv.submitBatch(reqs));
      const rs = await Promise.all(drv.submitBatch(reqs.map((r) => ({ q: 0, type: BlkType.IN, sector: r.sector, len: 4096 }))));
      ok +=
        ws.filter((r) => r.status === BlkStatus.OK).length +
        rs.filter((r, i) => r.status === BlkStatus.OK && r.data.equals(reqs[i]!.data!)).length;
    }
    t.equal(ok, 160, '160 requests across the wrap, all OK with the right data');
    t.equal(q.ring.usedIdx(), (BASE + 160) & 0xffff, `used idx wrapped to ${(BASE + 160) & 0xffff}`);
    t.equal(await fe.getVringBase(0), (BASE + 160) & 0xffff, 'GET_VRING_BASE reports the wrapped index');
  });
}
