// GET_INFLIGHT_FD and SET_INFLIGHT_FD over a real socket. The region vublk
// hands out is a sealed, zeroed memfd of the size it says; every field of a
// SET_INFLIGHT_FD that cannot describe the device's queues is a violation
// that disconnects only that frontend. Also: SET_VRING_CALL on a running
// ring signals the new call fd once (a driver waiting across a reconnect is
// woken).

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { native } from '../../src/native/binding';
import { encodeInflightPayload } from '../../src/vhost-user/encode';
import { encodeVringFilePayload } from '../../src/frontend/encode';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol';
import { Frontend } from '../../src/frontend/frontend';
import { InflightRegion } from '../../src/frontend/inflight-region';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { connIdSince, connect, expectServes, expectViolation, startDaemon, type Daemon } from './harness';

const MiB = 1 << 20;
const QUEUES = 2;
const QSIZE = 128;

let shared: Promise<Daemon> | undefined;
function daemon(): Promise<Daemon> {
  shared ??= startDaemon(t, { imageBytes: 16 * MiB, queues: QUEUES, queueSize: QSIZE });
  return shared;
}

function expectErrno(t: Test, fn: () => void, code: string, what: string): void {
  try {
    fn();
    t.fail(`${what}: succeeded`);
  } catch (err) {
    t.equal((err as { code?: string }).code, code, what);
  }
}

t.test('GET_INFLIGHT_FD hands out a zeroed memfd of mmap_size bytes, sealed against growing and shrinking', async (t) => {
  const d = await daemon();
  const { fe } = await connect(t, d, { queues: QUEUES, memory: { regions: [4 * MiB] } });
  t.ok(fe.has(ProtocolFeature.INFLIGHT_SHMFD), 'INFLIGHT_SHMFD is offered and negotiated');
  t.ok(fe.inflight?.created, 'setup created a region');
  for (const [nq, qs] of [
    [1, 1],
    [QUEUES, QSIZE],
    [1, 64],
  ] as const) {
    const r = await fe.getInflightFd(nq, qs);
    t.teardown(() => native.closeFd(r.fd));
    t.same([r.mmapOffset, r.numQueues, r.queueSize], [0, nq, qs], `${nq}x${qs}: the reply echoes the counts, offset 0`);
    t.ok(r.mmapSize >= nq * (16 + 16 * qs), `${nq}x${qs}: mmap_size ${r.mmapSize} holds every queue region`);
    t.match(native.fdTarget(r.fd), /^\/memfd:/, 'it is a memfd');
    t.equal(fs.fstatSync(r.fd).size, r.mmapSize, 'of mmap_size bytes');
    const bytes = new Uint8Array(native.mapShared(r.fd, r.mmapSize, 0));
    t.ok(
      bytes.every((b) => b === 0),
      'zeroed',
    );
    expectErrno(t, () => fs.ftruncateSync(r.fd, r.mmapSize + 4096), 'EPERM', 'it cannot grow');
    expectErrno(t, () => fs.ftruncateSync(r.fd, 0), 'EPERM', 'it cannot shrink');
  }
  const drv = new BlkDriver(fe);
  t.equal((await drv.flush(1)).status, BlkStatus.OK, 'the frontend is still served');
});

t.test('SET_VRING_CALL on a running ring signals the new call fd once', async (t) => {
  const d = await daemon();
  const { fe } = await connect(t, d, { queues: 1, memory: { regions: [4 * MiB] } });
  const fresh = native.eventfdCreate();
  t.teardown(() => native.closeFd(fresh));
  await fe.command(Request.SET_VRING_CALL, encodeVringFilePayload(0, false), [fresh], true);
  t.ok(native.eventfdRead(fresh) > 0, 'the new call fd was signalled');
  t.equal(native.eventfdRead(fresh), 0, 'once');
});

/** A frontend set up on the shared daemon with rings stopped (GET_VRING_BASE), ready for a SET_INFLIGHT_FD. */
async function stoppedFrontend(t: Test, d: Daemon, stop = true): Promise<{ fe: Frontend; conn: number; mark: number }> {
  const mark = d.v.stderr().length;
  const fe = await Frontend.connect(d.socket);
  t.teardown(() => fe.close());
  await fe.setup({ queues: QUEUES, memory: { regions: [4 * MiB] } });
  const conn = await connIdSince(d, mark);
  if (stop) await fe.stop();
  return { fe, conn, mark };
}

/** A region from GET_INFLIGHT_FD, mapped; closed at teardown. */
async function freshRegion(t: Test, fe: Frontend, nq = QUEUES, qs = QSIZE): Promise<InflightRegion> {
  const r = new InflightRegion();
  r.adopt(await fe.getInflightFd(nq, qs));
  t.teardown(() => r.close());
  return r;
}

interface BadCase {
  name: string;
  rule: RegExp;
  /** Rings keep running (default: stopped first). */
  running?: boolean;
  send(fe: Frontend, t: Test): Promise<void>;
}

const fields = (r: InflightRegion) => ({ fd: r.fd, mmapSize: r.mmapSize, mmapOffset: 0, numQueues: r.numQueues, queueSize: r.queueSize });

const BAD: BadCase[] = [
  {
    name: 'GET_INFLIGHT_FD num_queues 0',
    rule: /GET_INFLIGHT_FD num_queues 0 is outside 1\.\.2/,
    send: async (fe) =>
      fe.send(Request.GET_INFLIGHT_FD, encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues: 0, queueSize: QSIZE })),
  },
  {
    name: 'GET_INFLIGHT_FD too many queues',
    rule: /GET_INFLIGHT_FD num_queues 3 is outside 1\.\.2/,
    send: async (fe) =>
      fe.send(Request.GET_INFLIGHT_FD, encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues: 3, queueSize: QSIZE })),
  },
  {
    name: 'GET_INFLIGHT_FD queue_size 0',
    rule: /GET_INFLIGHT_FD queue_size 0 is outside 1\.\.128/,
    send: async (fe) => fe.send(Request.GET_INFLIGHT_FD, encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 0 })),
  },
  {
    name: 'GET_INFLIGHT_FD queue_size too big',
    rule: /GET_INFLIGHT_FD queue_size 256 is outside 1\.\.128/,
    send: async (fe) =>
      fe.send(Request.GET_INFLIGHT_FD, encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 256 })),
  },
  {
    name: 'SET_INFLIGHT_FD without an fd',
    rule: /SET_INFLIGHT_FD carries 0 fds, expected 1/,
    send: async (fe) => fe.send(Request.SET_INFLIGHT_FD, encodeInflightPayload(fields(fe.inflight!))),
  },
  {
    name: 'SET_INFLIGHT_FD mmap_size too small',
    rule: /SET_INFLIGHT_FD mmap_size \d+ is not the \d+ bytes/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), mmapSize: fe.inflight!.mmapSize - 64 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD mmap_offset not page aligned',
    rule: /SET_INFLIGHT_FD mmap_offset 100 is not page aligned/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), mmapOffset: 100 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD mmap_offset past the end of the file',
    rule: /SET_INFLIGHT_FD mmap_offset 1048576 \+ mmap_size \d+ passes the file's end/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), mmapOffset: MiB }, false),
  },
  {
    name: 'SET_INFLIGHT_FD num_queues 0',
    rule: /SET_INFLIGHT_FD num_queues 0 is outside 1\.\.2/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), numQueues: 0 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD too many queues',
    rule: /SET_INFLIGHT_FD num_queues 3 is outside 1\.\.2/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), numQueues: 3 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD queue_size 0',
    rule: /SET_INFLIGHT_FD queue_size 0 is outside 1\.\.128/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), queueSize: 0 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD queue_size too big',
    rule: /SET_INFLIGHT_FD queue_size 256 is outside 1\.\.128/,
    send: async (fe) => fe.setInflightFd({ ...fields(fe.inflight!), queueSize: 256 }, false),
  },
  {
    name: 'SET_INFLIGHT_FD with an unsealed memfd',
    rule: /SET_INFLIGHT_FD fd is not a memfd sealed against shrinking/,
    send: async (fe, t) => {
      const r = fe.inflight!;
      const fd = native.memfdCreate('vublk-int-unsealed', r.mmapSize);
      t.teardown(() => native.closeFd(fd));
      await fe.setInflightFd({ ...fields(r), fd }, false);
    },
  },
  {
    name: 'SET_INFLIGHT_FD with a region of version 7',
    rule: /SET_INFLIGHT_FD queue 1 region has version 7/,
    send: async (fe, t) => {
      const r = await freshRegion(t, fe);
      r.queue(1).version = 7;
      await fe.setInflightFd(fields(r), false);
    },
  },
  {
    name: 'SET_INFLIGHT_FD with a region whose desc_num is not queue_size',
    rule: /SET_INFLIGHT_FD queue 0 region has desc_num 64, not queue_size 128/,
    send: async (fe, t) => {
      const r = await freshRegion(t, fe);
      r.queue(0).version = 1;
      r.queue(0).descNum = 64;
      await fe.setInflightFd(fields(r), false);
    },
  },
  {
    name: 'SET_INFLIGHT_FD while a ring runs',
    rule: /SET_INFLIGHT_FD while queue 0 runs/,
    running: true,
    send: async (fe) => fe.setInflightFd(fields(fe.inflight!), false),
  },
];

for (const c of BAD) {
  t.test(`violation: ${c.name}`, async (t) => {
    const d = await daemon();
    const { fe, conn, mark } = await stoppedFrontend(t, d, !c.running);
    await c.send(fe, t);
    await expectViolation(t, d, fe, mark, conn, c.rule);
    await expectServes(t, d);
  });
}

t.test('a good region handed back after a stop is taken, and the rings serve again', async (t) => {
  const d = await daemon();
  const { fe } = await stoppedFrontend(t, d);
  const bases = fe.queues.map((q) => q.ring.usedIdx());
  await fe.restart(bases);
  const drv = new BlkDriver(fe);
  const r = await Promise.all([drv.flush(0), drv.flush(1)]);
  t.ok(
    r.every((x) => x.status === BlkStatus.OK),
    'both queues serve after SET_INFLIGHT_FD and restart',
  );
  t.equal(fe.inflight!.queue(0).version, 1, 'the backend initialised queue 0 region (version 1)');
  t.equal(fe.inflight!.queue(0).descNum, QSIZE, 'desc_num is the queue size');
  t.same(fe.inflight!.queue(0).inflightHeads(), [], 'nothing is left marked in flight');
});
