// Frontends come and go; the daemon and the disk stay. One frontend is
// served at a time: the next is served once the previous has left, whether
// it left idle, with requests in flight (held in the kernel by a frozen file
// system), or with a GET_VRING_BASE pending,
// and sees what it wrote. The guest's write-cache choice stays with the
// device across frontends.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus, BlkType, SECTOR_SIZE, BlkDriver, type BlkRequest } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { parseBlkConfig } from '../../src/frontend/blk-driver';
import { encodeConfigPayload } from '../../src/vhost-user/encode';
import { Request } from '../../src/vhost-user/protocol';
import { connIdSince, connect, logSince, pattern, readImage, sleep, spinUntilPopped, startDaemon, until, waitConnClosed } from './harness';
import { frozenFsUnsupported, makeFreezableFs } from '../helpers/frozen-fs';
import { tmpDir } from '../helpers/vublk-process';

const IMAGE_BYTES = 32 << 20;

t.test('a second frontend is served after the first disconnects and reads what the first wrote', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2 });
  const blocks = Array.from({ length: 16 }, (_, i) => ({ sector: i * 100, data: pattern(4096 * (1 + (i % 8)), i) }));
  let mark = d.v.stderr().length;
  const first = await connect(t, d, { queues: 2 });
  const c1 = await connIdSince(d, mark);
  const ws = await Promise.all(
    first.drv.submitBatch(blocks.map((b, i) => ({ q: i % 2, type: BlkType.OUT, sector: b.sector, data: b.data }))),
  );
  t.ok(
    ws.every((r) => r.status === BlkStatus.OK),
    'the first frontend wrote 16 blocks',
  );
  first.fe.close();
  await waitConnClosed(d, mark, c1);

  for (let n = 2; n <= 4; n++) {
    mark = d.v.stderr().length;
    const next = await connect(t, d, { queues: n % 2 === 0 ? 1 : 2, memTable: n === 3 ? 'set-mem-table' : 'auto' });
    const c = await connIdSince(d, mark);
    t.ok(c > c1, `frontend ${n} is a new connection (conn=${c})`);
    const rs = await Promise.all(
      next.drv.submitBatch(blocks.map((b) => ({ q: 0, type: BlkType.IN, sector: b.sector, len: b.data.length }))),
    );
    t.ok(
      rs.every((r, i) => r.status === BlkStatus.OK && r.data.equals(blocks[i]!.data)),
      `frontend ${n} reads every block the first wrote`,
    );
    // Each frontend also leaves something for the next.
    const b = { sector: 5000 + n * 64, data: pattern(8192, 1000 + n) };
    t.equal((await next.drv.write(0, b.sector, b.data)).status, BlkStatus.OK, `frontend ${n} writes`);
    blocks.push(b);
    next.fe.close();
    await waitConnClosed(d, mark, c);
  }
  t.notOk(
    logSince(d, 0).some((l) => /^vublk: (warn|error): /.test(l)),
    'no warn or error lines',
  );
});

t.test(
  'a frontend that closes with requests in flight: the daemon drains them, then serves the next',
  { skip: frozenFsUnsupported() },
  async (t) => {
    // The image lives on a file system the test freezes, so the writes are
    // still in the kernel when the frontend leaves, however fast the disk:
    // on a plain image they could all complete before the daemon saw the EOF.
    const dir = tmpDir('vublk-int-reconnect-');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const ffs = makeFreezableFs(t, dir);
    const image = path.join(ffs.mnt, 'disk.img');
    fs.closeSync(fs.openSync(image, 'w'));
    fs.truncateSync(image, IMAGE_BYTES);
    const d = await startDaemon(t, { diskFile: image, imageBytes: IMAGE_BYTES, queues: 2, queueSize: 256 });
    // Teardowns run last-registered first: thaw before the daemon is stopped.
    t.teardown(() => ffs.thaw());
    const mark = d.v.stderr().length;
    const first = await connect(t, d, { queues: 2, queueSize: 256 });
    const c1 = await connIdSince(d, mark);
    // 2 x 64 writes of 128 KiB (half of them bounced: '2desc'), then close as soon as the daemon has them.
    const layouts = ['2desc', 'indirect', '3desc', '2desc'] as const;
    const reqs: BlkRequest[] = [];
    for (let i = 0; i < 64; i++) {
      for (let q = 0; q < 2; q++) {
        reqs.push({ q, type: BlkType.OUT, sector: (q * 64 + i) * 256, data: pattern(128 * 1024, i * 2 + q), layout: layouts[i % 4]! });
      }
    }
    ffs.freeze();
    const pending = first.drv.submitBatch(reqs).map((p) =>
      p.then(
        () => 'done',
        () => 'abandoned',
      ),
    );
    t.ok(spinUntilPopped(first.fe, 0, 64) && spinUntilPopped(first.fe, 1, 64), 'the daemon popped all 128 requests');
    first.fe.close();
    const outcomes = await Promise.all(pending);
    t.comment(`${outcomes.filter((o) => o === 'abandoned').length} of ${reqs.length} requests had no used entry yet at close`);
    t.ok(await until(() => logSince(d, mark).some((l) => /draining in-flight requests/.test(l)), 10_000), 'the daemon starts draining');
    const drain = logSince(d, mark).find((l) => /draining in-flight requests/.test(l));
    t.match(
      drain ?? '',
      new RegExp(`conn=${c1} inflight=[1-9]`),
      `the daemon had requests in flight when the frontend left: ${drain ?? '(no drain line)'}`,
    );
    ffs.thaw();
    await waitConnClosed(d, mark, c1, 20_000);

    // The next frontend is served, and every byte it writes and reads is right.
    const second = await connect(t, d, { queues: 2, queueSize: 256 });
    const data = pattern(64 * 1024, 4242);
    const w = await second.drv.write(1, 40000, data);
    const r = await second.drv.read(0, 40000, data.length);
    t.ok(w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data), 'the second frontend writes and reads back');
    t.ok(readImage(d.image, 40000 * SECTOR_SIZE, data.length).equals(data), 'and the image holds it');
    // Every in-flight write either landed whole or not at all is not promised; but none may land outside its range.
    const outside = readImage(d.image, 128 * 256 * SECTOR_SIZE, 40000 * SECTOR_SIZE - 128 * 256 * SECTOR_SIZE);
    t.ok(
      outside.every((b) => b === 0),
      'no byte was written outside the abandoned requests\u2019 ranges',
    );
    const lines = logSince(d, mark);
    t.notOk(
      lines.some((l) => /^vublk: (warn|error): /.test(l)),
      `no warn or error lines:\n${lines.join('\n')}`,
    );
  },
);

t.test('a frontend that connects while another is served waits, then is served once the first leaves', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const mark = d.v.stderr().length;
  const first = await connect(t, d, { queues: 1 });
  const c1 = await connIdSince(d, mark);

  // The second connects (the kernel queues it in the backlog) and starts its set-up.
  const fe2 = await Frontend.connect(d.socket, { timeoutMs: 15000 });
  t.teardown(() => fe2.close());
  let setupDone = false;
  const setup2 = fe2.setup({ queues: 1 }).then(() => {
    setupDone = true;
  });
  setup2.catch(() => undefined);

  // Meanwhile the first keeps working and the second gets no answer.
  for (let i = 0; i < 10; i++) {
    const data = pattern(4096, 50 + i);
    const w = await first.drv.write(0, 2000 + i * 8, data);
    const r = await first.drv.read(0, 2000 + i * 8, 4096);
    t.ok(w.status === BlkStatus.OK && r.data.equals(data), `the first frontend still does I/O (${i})`);
    await sleep(30);
  }
  t.notOk(setupDone, 'the second frontend has not been answered while the first is served');
  t.notOk(
    logSince(d, mark).some((l) => /frontend connected conn=(?!1\b)\d+/.test(l)),
    'the daemon has not accepted it',
  );

  first.fe.close();
  await waitConnClosed(d, mark, c1);
  await setup2;
  t.ok(setupDone, 'the second frontend is served once the first left');
  const drv2 = new BlkDriver(fe2);
  const r = await drv2.read(0, 2000, 10 * 4096);
  const want = Buffer.concat(Array.from({ length: 10 }, (_, i) => pattern(4096, 50 + i)));
  t.ok(r.status === BlkStatus.OK && r.data.equals(want), 'and reads what the first wrote');
});

t.test('the write cache mode the guest chose stays with the device across reconnects', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  let mark = d.v.stderr().length;
  const first = await connect(t, d, { queues: 1 });
  const c1 = await connIdSince(d, mark);
  t.equal(parseBlkConfig(first.fe.config!).writeback, 1, 'the device starts in writeback mode');
  // The guest turns the volatile write cache off (writethrough): config byte 32.
  await first.fe.command(Request.SET_CONFIG, encodeConfigPayload(32, 0, Buffer.from([0])), [], true);
  t.equal(parseBlkConfig(await first.fe.readConfig()).writeback, 0, 'GET_CONFIG shows writethrough');
  const data = pattern(64 * 1024, 8);
  t.equal((await first.drv.write(0, 300, data)).status, BlkStatus.OK, 'a writethrough write is OK');
  t.ok(readImage(d.image, 300 * SECTOR_SIZE, data.length).equals(data), 'and is in the image');
  first.fe.close();
  await waitConnClosed(d, mark, c1);

  mark = d.v.stderr().length;
  const second = await connect(t, d, { queues: 1 });
  t.equal(parseBlkConfig(second.fe.config!).writeback, 0, 'the next frontend finds writethrough still set');
  const r = await second.drv.read(0, 300, data.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(data), 'and reads the data');
  t.notOk(
    logSince(d, 0).some((l) => /^vublk: (warn|error): /.test(l)),
    'no warn or error lines',
  );
});

t.test('a frontend that leaves while its GET_VRING_BASE waits for requests in flight: the next is served', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queueSize: 256 });
  const mark = d.v.stderr().length;
  const first = await connect(t, d, { queues: 1, queueSize: 256 });
  const c1 = await connIdSince(d, mark);
  const reqs = Array.from({ length: 64 }, (_, i) => ({ q: 0, type: BlkType.OUT, sector: i * 256, data: pattern(128 * 1024, i) }));
  const pending = first.drv.submitBatch(reqs).map((p) => p.catch(() => undefined));
  t.ok(spinUntilPopped(first.fe, 0, 64), 'the daemon took the 64 writes');
  const base = first.fe.getVringBase(0).catch((e: Error) => e);
  first.fe.close();
  await Promise.all(pending);
  t.type(await base, Error, 'no reply reaches a frontend that left');
  await waitConnClosed(d, mark, c1);
  const second = await connect(t, d, { queues: 1 });
  const data = pattern(4096, 77);
  const w = await second.drv.write(0, 30000, data);
  const r = await second.drv.read(0, 30000, 4096);
  t.ok(w.status === BlkStatus.OK && r.data.equals(data), 'the next frontend is served and does I/O');
  t.notOk(
    logSince(d, mark).some((l) => /^vublk: (warn|error): /.test(l)),
    'no warn or error lines',
  );
});
