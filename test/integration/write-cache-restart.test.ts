// The guest's write cache choice survives a restart of vublk. QEMU caches the
// config space and does not repeat SET_CONFIG to a new backend, so a guest
// that chose write-through keeps believing it: the restarted daemon must
// restore it from its state file (default: next to the socket) and issue
// writes durably. A state file it cannot trust stops it at start-up.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus, BlkType, parseBlkConfig } from '../../src/frontend/blk-driver';
import { encodeConfigPayload } from '../../src/vhost-user/encode';
import { Request } from '../../src/vhost-user/protocol';
import { connIdSince, connect, pattern, readImage, startDaemon, waitConnClosed, type Daemon } from './harness';
import { makeImage, runVublk, startVublk, stopCleanly, tmpDir, warnLines, type VublkProcess } from '../helpers/vublk-process';
import { countersOf, total } from '../helpers/counters';
import type { Frontend } from '../../src/frontend/frontend';
import type { BlkDriver } from '../../src/frontend/blk-driver';

const IMAGE_BYTES = 32 << 20;
const CFG_WRITEBACK = 32;
const WRITES = 8;

function setWriteback(fe: Frontend, on: boolean): Promise<void> {
  return fe.command(Request.SET_CONFIG, encodeConfigPayload(CFG_WRITEBACK, 0, Buffer.from([on ? 1 : 0])), [], true);
}

/** WRITES 16 KiB writes on queue 0 (one request each); checks they are OK and in the image. */
async function writeSome(t: Test, drv: BlkDriver, image: string, seed: number): Promise<void> {
  const reqs = Array.from({ length: WRITES }, (_, i) => ({
    q: 0,
    type: BlkType.OUT,
    sector: 4096 + (seed * WRITES + i) * 32,
    data: pattern(16384, seed * 100 + i),
  }));
  const rs = await Promise.all(drv.submitBatch(reqs));
  t.ok(
    rs.every((r) => r.status === BlkStatus.OK),
    `${WRITES} writes OK`,
  );
  t.ok(
    reqs.every((r) => readImage(image, r.sector * 512, r.data.length).equals(r.data)),
    'and in the image',
  );
}

/** One frontend session on v: what fn does, then close; returns the summed counters logged at close. */
async function session(t: Test, v: VublkProcess, socket: string, fn: (fe: Frontend, drv: BlkDriver) => Promise<void>) {
  // connect() and the log helpers read only v and socket of a Daemon.
  const d = { v, socket } as Daemon;
  const mark = v.stderr().length;
  const { fe, drv } = await connect(t, d, { queues: 1 });
  const conn = await connIdSince(d, mark);
  await fn(fe, drv);
  fe.close();
  await waitConnClosed(d, mark, conn);
  return total(countersOf(v.stderr().slice(mark), conn, 'closed'));
}

t.test('write-through chosen by the guest survives SIGTERM and SIGKILL restarts, and writes stay durable', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const stateFile = `${d.socket}.state`;
  const args = ['--disk', d.disk, '--socket', d.socket];
  t.notOk(fs.existsSync(stateFile), 'no state file before the guest chooses');

  const first = await session(t, d.v, d.socket, async (fe, drv) => {
    t.equal(parseBlkConfig(fe.config!).writeback, 1, 'a fresh device starts write-back');
    await writeSome(t, drv, d.image, 1);
    await setWriteback(fe, false);
    t.equal(parseBlkConfig(await fe.readConfig()).writeback, 0, 'SET_CONFIG acked: GET_CONFIG shows write-through');
    await writeSome(t, drv, d.image, 2);
  });
  t.equal(first.durableWrites, WRITES, 'only the writes after the switch were issued durable');
  const saved = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { version: number; disk: { path: string }; writeback: boolean };
  t.match(
    saved,
    { version: 1, disk: { path: fs.realpathSync(d.disk) }, writeback: false },
    'the state file holds write-through for this disk',
  );
  await d.stop();

  let seed = 3;
  let v: VublkProcess | undefined;
  t.teardown(async () => {
    if (v) await stopCleanly(v);
  });
  let previous = 'SIGTERM';
  for (const how of ['SIGKILL', 'SIGTERM'] as const) {
    v = await startVublk(args);
    t.match(
      v.stderr(),
      new RegExp(`write cache mode restored from state file file=${stateFile} mode=write-through`),
      `restarted after ${previous}: restored, logged at info`,
    );
    const c = await session(t, v, d.socket, async (fe, drv) => {
      t.equal(parseBlkConfig(fe.config!).writeback, 0, 'GET_CONFIG on the new daemon: write-through');
      await writeSome(t, drv, d.image, seed++);
    });
    t.equal(c.durableWrites, WRITES, 'every write issued durable');
    t.equal(c.requests, WRITES);
    t.same(warnLines(v), [], 'no warn or error line');
    const r = await v.stop(how);
    t.same(
      { code: r.code, signal: r.signal },
      how === 'SIGTERM' ? { code: 0, signal: null } : { code: null, signal: 'SIGKILL' },
      `stopped with ${how}`,
    );
    previous = how;
  }

  // And back: write-back chosen again is kept too.
  v = await startVublk(args);
  await session(t, v, d.socket, async (fe) => setWriteback(fe, true));
  await stopCleanly(v);
  v = await startVublk(args);
  t.match(v.stderr(), /write cache mode restored from state file .* mode=write-back/);
  const last = await session(t, v, d.socket, async (fe, drv) => {
    t.equal(parseBlkConfig(fe.config!).writeback, 1, 'write-back again after the restart');
    await writeSome(t, drv, d.image, seed++);
  });
  t.equal(last.durableWrites, 0, 'write-back: no durable writes');
});

t.test('a state file that cannot be written refuses the SET_CONFIG and keeps the mode', async (t) => {
  const dir = tmpDir('vublk-int-wce-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const stateFile = path.join(dir, 'gone', 'vublk.state');
  fs.mkdirSync(path.dirname(stateFile));
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, extraArgs: ['--state-file', stateFile] });
  // Gone after start-up (which checks that the directory is there).
  fs.rmdirSync(path.dirname(stateFile));
  const c = await session(t, d.v, d.socket, async (fe, drv) => {
    await t.rejects(setWriteback(fe, false), /back-end refused SET_CONFIG \(ack 1\)/, 'REPLY_ACK 1');
    t.equal(parseBlkConfig(await fe.readConfig()).writeback, 1, 'GET_CONFIG still shows write-back');
    await writeSome(t, drv, d.image, 1);
  });
  t.equal(c.durableWrites, 0, 'writes stay write-back');
  const errors = d.v
    .stderr()
    .split('\n')
    .filter((l) => /^vublk: error: /.test(l));
  t.equal(errors.length, 1, 'one error line');
  t.match(errors[0], `cannot save the write cache mode; SET_CONFIG refused, the mode stays file=${stateFile} mode=write-back`);
  t.match(errors[0], /open failed \(ENOENT\)/);
});

t.test('--state-file none: the mode lives in memory only, a restart forgets it', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, extraArgs: ['--state-file', 'none'] });
  await session(t, d.v, d.socket, async (fe) => setWriteback(fe, false));
  await d.stop();
  t.same(
    fs.readdirSync(d.dir).filter((f) => f.includes('state')),
    [],
    'no state file written',
  );
  const v = await startVublk(['--disk', d.disk, '--socket', d.socket, '--state-file', 'none']);
  t.teardown(() => stopCleanly(v));
  await session(t, v, d.socket, async (fe) => {
    t.equal(parseBlkConfig(fe.config!).writeback, 1, 'write-back after the restart');
  });
});

t.test('a state file it cannot trust stops the daemon at start-up, naming the file and the remedy', async (t) => {
  const dir = tmpDir('vublk-int-wce-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const a = makeImage(dir, IMAGE_BYTES, 'a.img');
  const b = makeImage(dir, IMAGE_BYTES, 'b.img');
  const socket = path.join(dir, 'vublk.sock');
  const stateFile = `${socket}.state`;
  // Disk a's daemon leaves a state file behind...
  const v = await startVublk(['--disk', a, '--socket', socket]);
  await session(t, v, socket, async (fe) => setWriteback(fe, false));
  await stopCleanly(v);
  t.ok(fs.existsSync(stateFile));
  // ...that a daemon for disk b on the same socket must not apply.
  const stale = await runVublk(['--disk', b, '--socket', socket]);
  t.equal(stale.code, 1, 'exits 1 like other start-up errors');
  const first = stale.stderr.split('\n')[0] ?? '';
  t.match(first, new RegExp(`^vublk: error: state file ${stateFile} was written for another disk, ${a} .*, not ${b} `));
  t.match(first, /delete it \(the write cache mode goes back to write-back\) or pass another --state-file$/);
  t.notOk(fs.existsSync(socket), 'no socket was created');

  fs.writeFileSync(stateFile, '{"version":1,"disk":');
  const torn = await runVublk(['--disk', a, '--socket', socket]);
  t.equal(torn.code, 1);
  t.match(torn.stderr, `vublk: error: state file ${stateFile} is not valid JSON; delete it`);

  const nowhere = path.join(dir, 'nowhere', 'x.state');
  const noDir = await runVublk(['--disk', a, '--socket', socket, '--state-file', nowhere]);
  t.equal(noDir.code, 1);
  t.match(noDir.stderr, `vublk: error: state file ${nowhere} cannot be created: ${path.dirname(nowhere)} is not a directory`);

  fs.rmSync(stateFile);
  const fresh = await startVublk(['--disk', b, '--socket', socket]);
  t.teardown(() => stopCleanly(fresh));
  t.notMatch(fresh.stderr(), /restored/, 'after the file is deleted: starts, write-back');
});
