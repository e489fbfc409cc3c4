// vublk run as vublk@.service runs it: the units' ExecStart= line, on the
// socket unit's address, with NOTIFY_SOCKET and WATCHDOG_USEC. First through
// systemd-socket-activate (which execs vublk on the first connection); then
// with the listening socket held by the test, as systemd holds it, to show
// what a restart looks like: vublk is SIGKILLed, the socket keeps listening,
// a frontend that connects meanwhile waits, and the next vublk serves it.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/native/binding';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { pattern } from '../integration/harness';
import { makeImage, startVublk, stopCleanly, tmpDir, vublkBin, type VublkProcess } from '../helpers/vublk-process';
import { execStartArgv, listenAddress, type Instance } from './unit-file';
import { notifyListener, type NotifyListener } from './notify-listener';

const WATCHDOG_USEC = 400_000;
// The frontend connects before (phase 1) or while (phase 2) vublk starts.
const FRONTEND_TIMEOUT_MS = 20_000;

function instance(t: Test): { inst: Instance; dir: string } {
  const dir = tmpDir('vublk-svc-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const d of ['run', 'state/vublk']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  const inst: Instance = {
    name: 'data',
    runtimeDir: path.join(dir, 'run'),
    stateDir: path.join(dir, 'state'),
    env: { VUBLK_DISK: makeImage(dir, 32 << 20), VUBLK_OPTIONS: '--queues 2' },
  };
  return { inst, dir };
}

async function connectAndWrite(t: Test, socket: string, sector: number, seed: number) {
  const fe = await Frontend.connect(socket, { timeoutMs: FRONTEND_TIMEOUT_MS });
  t.teardown(() => fe.close());
  await fe.setup({ queues: 2 });
  const drv = new BlkDriver(fe);
  const data = pattern(64 * 1024, seed);
  t.equal((await drv.write(1, sector, data)).status, BlkStatus.OK, 'write');
  const r = await drv.read(0, sector, data.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(data), 'reads back what it wrote');
  return { fe, drv };
}

/** WATCHDOG=1 messages in the second after `from`: about 1e6 / (WATCHDOG_USEC / 2) of them. */
async function checkWatchdogRate(t: Test, notify: NotifyListener, from: number) {
  const first = await notify.waitFor('WATCHDOG=1', from);
  await new Promise((r) => setTimeout(r, 1300));
  const inSecond = notify.withLine('WATCHDOG=1', from).filter((n) => n.t >= first.t && n.t < first.t + 1);
  t.ok(inSecond.length >= 4 && inSecond.length <= 6, `WATCHDOG=1 every WATCHDOG_USEC/2: ${inSecond.length} in 1 s (expect 5)`);
}

t.test('systemd-socket-activate runs the ExecStart line on the socket unit address: READY, STATUS, WATCHDOG, I/O', async (t) => {
  const { inst } = instance(t);
  const address = listenAddress(inst);
  fs.mkdirSync(path.dirname(address), { recursive: true });
  const notify = await notifyListener(t, path.join(inst.runtimeDir, 'notify'));
  const [node, bin, ...args] = execStartArgv(inst, vublkBin);
  t.equal(bin, vublkBin);
  const wrapper = [
    'systemd-socket-activate',
    '-l',
    address,
    '-E',
    `NOTIFY_SOCKET=${notify.address}`,
    '-E',
    `WATCHDOG_USEC=${WATCHDOG_USEC}`,
    '--',
  ];
  t.equal(node, process.execPath);
  // startVublk resolves once vublk logs "serving", which it does only after
  // systemd-socket-activate saw the first connection and exec'd it.
  const starting = startVublk(args, { wrapper, socket: address, asan: false, timeoutMs: FRONTEND_TIMEOUT_MS });
  let v: VublkProcess | undefined;
  t.teardown(async () => {
    if (v) await v.stop('SIGKILL');
  });
  const io = connectAndWrite(t, address, 2048, 1);
  v = await starting;
  await io;
  const serving = await v.waitForLog(/serving/);
  t.match(serving, `socket=${address} socketPassedBy="systemd (LISTEN_FDS)"`, 'serves the passed socket, named by its address');
  t.match(serving, `stateFile=${path.join(inst.stateDir, 'vublk', 'data.state')}`, 'the state file is under %S/vublk');
  const ready = await notify.waitFor('READY=1');
  t.ok(ready.msg.includes(`STATUS=waiting for a frontend on ${address}`), 'READY=1 with a STATUS line');
  await notify.waitFor('STATUS=serving conn 1');
  await checkWatchdogRate(t, notify, 0);
  const mark = notify.messages.length;
  const r = await v.stop('SIGTERM');
  t.equal(r.code, 0, 'exits 0 on SIGTERM');
  const stopping = await notify.waitFor('STOPPING=1', mark);
  t.ok(stopping.msg.includes('STATUS=draining conn 1'), 'STOPPING=1 names the connection it drains');
  t.ok(fs.existsSync(address), 'the socket file is not unlinked by vublk');
  v = undefined;
});

t.test('a restart under a listening socket: SIGKILL, a frontend waits in the backlog, the next vublk serves it', async (t) => {
  const { inst } = instance(t);
  const address = listenAddress(inst);
  fs.mkdirSync(path.dirname(address), { recursive: true });
  // The test plays systemd: it owns the listening socket and passes it as fd 3.
  const listenFd = native.listenUnix(address, 16);
  t.teardown(() => native.closeFd(listenFd));
  const notify = await notifyListener(t, `@vublk-test-notify-${process.pid}`);
  const [, , ...args] = execStartArgv(inst, vublkBin);
  // sd_listen_fds(3) wants LISTEN_PID to be vublk's pid: the shell sets it to
  // its own and execs node, keeping the pid.
  const wrapper = ['/bin/sh', '-c', 'export LISTEN_PID=$$ WATCHDOG_PID=$$; exec "$@"', 'sh'];
  const env = { LISTEN_FDS: '1', NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: String(WATCHDOG_USEC) };
  const start = () => startVublk(args, { wrapper, env, fd3: listenFd, socket: address });
  let v: VublkProcess | undefined = await start();
  t.teardown(async () => {
    if (v) await v.stop('SIGKILL');
  });
  t.match(await v.waitForLog(/serving/), `socket=${address} socketPassedBy="systemd (LISTEN_FDS)"`, 'serves the socket the test holds');
  await notify.waitFor('READY=1');
  const first = await connectAndWrite(t, address, 4096, 2);
  await checkWatchdogRate(t, notify, 0);

  await v.stop('SIGKILL');
  v = undefined;
  await first.fe.closed;
  t.ok(fs.existsSync(address), 'the socket file survives vublk');
  // Connecting now succeeds: the socket is still listening, nobody accepts yet.
  const waiting = await Frontend.connect(address, { timeoutMs: FRONTEND_TIMEOUT_MS });
  t.teardown(() => waiting.close());
  const setup = waiting.setup({ queues: 2 });
  const mark = notify.messages.length;
  v = await start();
  await setup;
  t.pass('the frontend that connected while vublk was down is served by the next vublk');
  const drv = new BlkDriver(waiting);
  const r = await drv.read(0, 4096, 64 * 1024);
  t.ok(r.status === BlkStatus.OK && r.data.equals(pattern(64 * 1024, 2)), 'and reads what the first frontend wrote');
  t.equal((await drv.write(0, 8192, pattern(4096, 3))).status, BlkStatus.OK, 'and writes');
  await notify.waitFor('READY=1', mark);
  await notify.waitFor('STATUS=serving conn 1', mark);
  const stopMark = notify.messages.length;
  await stopCleanly(v);
  v = undefined;
  await notify.waitFor('STOPPING=1', stopMark);
  // vublk closed only its copy: the socket still accepts connections.
  const fd = native.connectUnix(address);
  native.closeFd(fd);
  t.pass('the socket still accepts connections after vublk stopped');
});
