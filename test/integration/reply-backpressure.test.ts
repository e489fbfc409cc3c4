// Replies never block the daemon. A frontend that sends requests and does
// not read the replies fills its socket's buffer; the daemon queues what does
// not fit (bounded) instead of waiting for the socket, so the rest of its
// work goes on: the same connection's data plane keeps serving I/O and the
// daemon answers SIGUSR1. Past the bound the frontend is disconnected with
// one warn line naming the rule, and the daemon serves the next frontend.

import t from 'tap';
import { Request } from '../../src/vhost-user/protocol';
import { BlkStatus } from '../../src/frontend/blk-driver';
import { MAX_QUEUED_REPLY_BYTES } from '../../src/vhost-user/reply-queue';
import {
  connIdSince,
  connect,
  expectServes,
  logSince,
  pattern,
  startDaemon,
  until,
  waitConnClosed,
  VIOLATION_LINE,
  WARN_LINE,
} from './harness';

/** A GET_FEATURES reply: 12-byte header + u64. */
const REPLY_BYTES = 20;
/** Far more replies than a Unix socket buffers (about 200-300 small messages), far fewer than the bound. */
const UNREAD = 1000;

t.test('a frontend that does not read its replies stalls nothing and is disconnected past the bound', async (t) => {
  t.ok(UNREAD * REPLY_BYTES < MAX_QUEUED_REPLY_BYTES / 2, 'the first stage stays well inside the bound');
  const d = await startDaemon(t);
  const mark = d.v.stderr().length;
  const { fe, drv } = await connect(t, d, { memory: { regions: [4 << 20, 4 << 20] } });
  const conn = await connIdSince(d, mark);

  fe.setReading(false);
  for (let i = 0; i < UNREAD; i++) fe.send(Request.GET_FEATURES);

  // The daemon's socket to us is full now; its data plane still serves us.
  const data = pattern(8192, 7);
  const w = await drv.write(0, 2048, data);
  const r = await drv.read(0, 2048, data.length);
  t.ok(
    w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data),
    'I/O on the same connection is served while replies are unread',
  );
  const usr1 = d.v.stderr().length;
  d.v.child.kill('SIGUSR1');
  t.ok(
    await until(() => logSince(d, usr1).some((l) => /counters .*reason=SIGUSR1/.test(l)), 5000),
    'the daemon handles SIGUSR1 while replies are unread',
  );
  t.notOk(
    logSince(d, mark).some((l) => WARN_LINE.test(l)),
    'the frontend is still connected: no warn line yet',
  );

  // Keep asking without reading: past the bound the daemon gives up on it.
  let sent = UNREAD;
  const most = UNREAD + Math.ceil((2 * MAX_QUEUED_REPLY_BYTES) / REPLY_BYTES);
  try {
    while (sent < most && !logSince(d, mark).some((l) => /frontend connection closed/.test(l))) {
      fe.send(Request.GET_FEATURES);
      sent++;
      if (sent % 256 === 0) await new Promise((res) => setImmediate(res));
    }
  } catch {
    // EPIPE/ECONNRESET: the daemon closed the connection.
  }
  await waitConnClosed(d, mark, conn);
  const warns = logSince(d, mark).filter((l) => WARN_LINE.test(l));
  t.equal(warns.length, 1, `one warn line:\n${warns.join('\n')}`);
  const m = VIOLATION_LINE.exec(warns[0] ?? '');
  t.match(m?.[2] ?? '', /does not read its replies/, `naming the rule: ${warns[0] ?? '(none)'}`);
  t.notOk(
    logSince(d, mark).some((l) => /^vublk: error: /.test(l)),
    'no error-level line',
  );
  fe.close();
  await expectServes(t, d);
});
