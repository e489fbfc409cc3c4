// Checks the in-repo front-end against a real vhost-user-blk back-end,
// qemu-storage-daemon: if both agree, the front-end is a fair judge of vublk.
// Skips (with the reason) when qemu-storage-daemon is absent, unless CI is set.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { TestFrontend } from './test-frontend';
import { VirtioFeature, DEFAULT_PROTOCOL_FEATURES } from '../../src/frontend/features';
import { BlkDriver, BlkStatus, BlkType, LAYOUTS, parseBlkConfig, SECTOR_SIZE, type BlkRequest } from '../../src/frontend/blk-driver';
import { Qsd, qsdMissingReason } from '../helpers/qsd';
import { Flags, ProtocolFeature, Request, featureBit } from '../../src/vhost-user/protocol';

const IMG = 64 << 20;
const missing = qsdMissingReason();
if (missing !== undefined && process.env.CI) {
  t.fail(`CI is set but ${missing}`);
} else if (missing !== undefined) {
  t.plan(0, missing);
} else {
  main();
}

async function withQsd(tt: tap.Test, fn: (q: Qsd) => Promise<void>, opts: Parameters<typeof Qsd.start>[0] = {}): Promise<void> {
  const q = await Qsd.start({ size: IMG, ...opts });
  tt.teardown(() => q.stop());
  try {
    await fn(q);
  } catch (err) {
    tt.comment(`qemu-storage-daemon log:\n${q.log}`);
    throw err;
  }
}

function main(): void {
  t.test('setup negotiates like QEMU 7.2 and reads the config', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 2 });
      tt.ok(fe.hasFeature(VirtioFeature.VERSION_1), 'VERSION_1');
      tt.ok(fe.hasFeature(VirtioFeature.RING_EVENT_IDX), 'EVENT_IDX taken when offered');
      tt.ok(fe.hasFeature(VirtioFeature.RING_INDIRECT_DESC), 'INDIRECT_DESC taken when offered');
      tt.equal(fe.protocolFeatures, fe.offeredProtocolFeatures & DEFAULT_PROTOCOL_FEATURES);
      tt.ok(fe.has(ProtocolFeature.CONFIGURE_MEM_SLOTS), 'qsd offers CONFIGURE_MEM_SLOTS: memory went by ADD_MEM_REG');
      tt.ok(fe.has(ProtocolFeature.BACKEND_REQ), 'back-end channel set up');
      tt.ok(fe.maxQueues >= 2);
      const cfg = parseBlkConfig(fe.config!);
      tt.equal(cfg.capacity, BigInt(IMG / SECTOR_SIZE), 'capacity in 512-byte sectors');
      tt.equal(cfg.numQueues, 2);
      tt.equal(cfg.blkSize, 512);
      const again = parseBlkConfig(await fe.readConfig());
      tt.same(again, cfg, 'readConfig() again gives the same');
    }),
  );

  t.test('write and read back in every layout (event idx, indirect, ADD_MEM_REG)', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 1 });
      const d = new BlkDriver(fe);
      let sector = 0;
      for (const wl of LAYOUTS) {
        for (const rl of ['3desc', wl] as const) {
          const data = randomBytes(12 * 1024);
          const w = await d.write(0, sector, data, { layout: wl });
          tt.same([w.status, w.usedLen], [BlkStatus.OK, 1], `write ${wl}: OK, used len 1`);
          const r = await d.read(0, sector, data.length, { layout: rl });
          tt.same([r.status, r.usedLen], [BlkStatus.OK, data.length + 1], `read ${rl} after write ${wl}: OK, used len data + status`);
          tt.ok(r.data.equals(data), `read ${rl} returns what write ${wl} wrote`);
          tt.ok(q.readImage(sector * SECTOR_SIZE, data.length).equals(data), 'the image holds it');
          sector += 64;
        }
      }
      tt.equal(
        fe.mem!.allocated,
        fe.queues.reduce((a, x) => a + 16 * x.ring.size + 6 + 2 * x.ring.size + 6 + 8 * x.ring.size, 0),
        'every request buffer was released',
      );
    }),
  );

  t.test('buffers straddling the region boundary, odd fragments, SET_MEM_TABLE with shared fd', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({
        queues: 1,
        memTable: 'set-mem-table',
        eventIdx: false,
        indirect: false,
        memory: { regions: [4 << 20, 4 << 20, 4 << 20], fdLayout: 'shared-fd', leadIn: 1 << 20 },
      });
      tt.notOk(fe.hasFeature(VirtioFeature.RING_EVENT_IDX));
      tt.notOk(fe.hasFeature(VirtioFeature.RING_INDIRECT_DESC));
      tt.equal(fe.mem!.boundaries().length, 2);
      const d = new BlkDriver(fe);
      const mem = fe.mem!;
      let crossing = 0;
      let descs = 0;
      d.onChain = (segs) => {
        descs += segs.length;
        crossing += segs.filter((x) => mem.boundaries().some((b) => x.gpa < b && x.gpa + x.len > b)).length;
      };
      const data = randomBytes(64 * 1024);
      tt.equal((await d.write(0, 1000, data, { straddle: true })).status, BlkStatus.OK);
      tt.equal(crossing, 1, 'the write buffer crossed a region boundary');
      const r = await d.read(0, 1000, data.length, { straddle: true, layout: '2desc' });
      tt.ok(r.data.equals(data), 'straddling write and read agree');
      crossing = 0;
      descs = 0;
      const f = await d.read(0, 1000, data.length, { layout: 'fragmented' });
      tt.ok(f.data.equals(data), 'fragmented read (odd sizes, some straddling) agrees');
      tt.ok(crossing >= 2 && descs > 40, `fragmented: ${descs} descriptors, ${crossing} crossing a boundary`);
      const seg = [
        { len: 512, write: false, data: data.subarray(0, 512) },
        { len: 3, write: false, data: data.subarray(512, 515), straddle: true },
        { len: 509, write: false, data: data.subarray(515, 1024) },
      ];
      tt.equal((await d.raw(0, BlkType.OUT, 2000, seg)).status, BlkStatus.OK, 'raw write of 512 + 3 + 509 bytes');
      tt.ok((await d.read(0, 2000, 1024)).data.equals(data.subarray(0, 1024)));
    }),
  );

  t.test('flush, get-id, errors', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 1 });
      const d = new BlkDriver(fe);
      for (const layout of LAYOUTS) {
        const fl = await d.flush(0, { layout });
        tt.same([fl.status, fl.usedLen], [BlkStatus.OK, 1], `flush (${layout})`);
        const id = await d.getId(0, { layout });
        tt.equal(id.status, BlkStatus.OK, `get-id (${layout})`);
        tt.equal(id.data.length, 20);
        tt.match(id.data.toString('latin1'), /^vhost_user_blk\0/, 'serial of the qsd export');
      }
      const past = await d.read(0, IMG / SECTOR_SIZE, 512);
      tt.equal(past.status, BlkStatus.IOERR, 'read past the end: IOERR');
      const unsupp = await d.raw(0, 0x7777, 0, []);
      tt.equal(unsupp.status, BlkStatus.UNSUPP, 'unknown request type: UNSUPP');
    }),
  );

  t.test('two queues in parallel, batches, GET_VRING_BASE', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 2, queueSize: 256 });
      const d = new BlkDriver(fe);
      const blocks = Array.from({ length: 64 }, () => randomBytes(4096));
      const writes: BlkRequest[] = blocks.map((data, i) => ({
        q: i % 2,
        type: BlkType.OUT,
        sector: i * 8,
        data,
        layout: i % 4 < 2 ? '3desc' : 'indirect',
      }));
      const kicksBefore = fe.queues.map((x) => x.kicks);
      const ws = await Promise.all(d.submitBatch(writes));
      tt.ok(
        ws.every((r) => r.status === BlkStatus.OK),
        '64 writes over two queues in one batch',
      );
      tt.ok(
        fe.queues.every((x, i) => x.kicks - kicksBefore[i]! <= 1),
        'one kick per queue for the batch',
      );
      // Read each block back on the other queue.
      const rs = await Promise.all(d.submitBatch(blocks.map((_, i) => ({ q: (i + 1) % 2, type: BlkType.IN, sector: i * 8, len: 4096 }))));
      tt.ok(
        rs.every((r, i) => r.status === BlkStatus.OK && r.data.equals(blocks[i]!)),
        'read back across queues',
      );
      tt.equal(await fe.getVringBase(0), 64, 'queue 0 consumed 32 writes + 32 reads');
      tt.equal(await fe.getVringBase(1), 64, 'queue 1 too');
    }),
  );

  t.test('negotiation without REPLY_ACK, CONFIG, MQ, BACKEND_REQ', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 1, protocolFeatures: featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS), qemuInitNotifiers: false });
      tt.equal(fe.protocolFeatures, featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS));
      tt.equal(fe.config, undefined);
      const d = new BlkDriver(fe);
      const data = randomBytes(4096);
      tt.equal((await d.write(0, 8, data)).status, BlkStatus.OK);
      tt.ok((await d.read(0, 8, 4096)).data.equals(data));
    }),
  );

  t.test('needReplyAll: every command acked', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 2, needReplyAll: true, memTable: 'set-mem-table' });
      const d = new BlkDriver(fe);
      tt.equal((await d.flush(1)).status, BlkStatus.OK);
    }),
  );

  t.test('malformed message: the back-end disconnects, pending work is rejected', (tt) =>
    withQsd(tt, async (q) => {
      const fe = await TestFrontend.connect(q.socket);
      tt.teardown(() => fe.close());
      await fe.setup({ queues: 1 });
      const d = new BlkDriver(fe);
      tt.equal((await d.flush(0)).status, BlkStatus.OK);
      // A header claiming a 64 KiB payload: more than any vhost-user message.
      const bad = Buffer.alloc(12);
      bad.writeUInt32LE(Request.SET_CONFIG, 0);
      bad.writeUInt32LE(Flags.VERSION, 4);
      bad.writeUInt32LE(0x10000, 8);
      const reply = fe.recvReply();
      fe.sendRaw(bad);
      await fe.waitClosed(3000);
      tt.notOk(fe.isOpen);
      await tt.rejects(reply, /back-end closed the connection/);
      await tt.rejects(d.read(0, 0, 512), /back-end closed the connection/);
      tt.throws(() => fe.send(Request.GET_FEATURES), /back-end closed the connection/);
    }),
  );
}
