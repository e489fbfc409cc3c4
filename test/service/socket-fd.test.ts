// --socket-fd N: a listening socket passed by any supervisor, served like a
// systemd one; and every fd that is not a listening Unix stream socket,
// whichever way it was passed, refused with a line saying what it is.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { native } from '../../src/native/binding';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { makeImage, startVublk, stopCleanly, tmpDir, vublkBin } from '../helpers/vublk-process';
import { notifyListener } from './notify-listener';

t.test('--socket-fd serves the passed socket, never unlinks it; WATCHDOG_PID of another process: no pings', async (t) => {
  const dir = tmpDir('vublk-sockfd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const address = path.join(dir, 'passed.sock');
  const listenFd = native.listenUnix(address, 16);
  t.teardown(() => native.closeFd(listenFd));
  const notify = await notifyListener(t, path.join(dir, 'notify'));
  const env = { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' };
  const v = await startVublk(['--disk', makeImage(dir), '--socket-fd', '3', '--state-file', 'none'], {
    env,
    fd3: listenFd,
    socket: address,
  });
  t.match(await v.waitForLog(/serving/), `socket=${address} socketPassedBy="--socket-fd 3"`);
  await notify.waitFor('READY=1');
  for (let i = 0; i < 100 && !v.stdout().includes('reconnect=1'); i++) await new Promise((r) => setTimeout(r, 20));
  t.match(v.stdout(), `-chardev socket,id=vublk0,path=${address},reconnect=1`, 'the QEMU command line names the passed socket');
  const fe = await Frontend.connect(address);
  t.teardown(() => fe.close());
  await fe.setup();
  const drv = new BlkDriver(fe);
  t.equal((await drv.write(0, 0, Buffer.alloc(4096, 7))).status, BlkStatus.OK);
  t.ok((await drv.read(0, 0, 4096)).data.equals(Buffer.alloc(4096, 7)));
  await new Promise((r) => setTimeout(r, 500));
  t.same(notify.withLine('WATCHDOG=1'), [], 'WATCHDOG_PID names another process: no WATCHDOG=1');
  await stopCleanly(v);
  t.ok(fs.existsSync(address), 'the socket file stays');
  native.closeFd(native.connectUnix(address));
  t.pass('and still accepts connections');
});

/** Runs vublk with `fd3` as its fd 3 until it exits. */
function runWithFd3(args: string[], fd3: number | 'ignore', env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [vublkBin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe', fd3],
    env: { ...process.env, ...env },
    timeout: 15000,
  });
  return { code: r.status, stderr: r.stderr.toString() };
}

t.test('fds that are not listening Unix stream sockets are refused with a line naming the problem', async (t) => {
  const dir = tmpDir('vublk-sockfd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = makeImage(dir, 1 << 20);
  const file = fs.openSync(path.join(dir, 'plain'), 'w');
  t.teardown(() => fs.closeSync(file));
  const listening = path.join(dir, 'l.sock');
  const lfd = native.listenUnix(listening, 1);
  t.teardown(() => native.closeFd(lfd));
  const connected = native.connectUnix(listening);
  t.teardown(() => native.closeFd(connected));
  const systemd = { LISTEN_FDS: '1' };
  const cases: Array<[string, string[], number | 'ignore', NodeJS.ProcessEnv, RegExp]> = [
    // Not fd 3: node itself opens fds from 3 up when nothing is passed there.
    [
      'a closed fd',
      ['--socket-fd', '1000'],
      'ignore',
      {},
      /^vublk: error: --socket-fd 1000: fd 1000 is not open; expected a listening Unix stream socket$/m,
    ],
    ['a regular file', ['--socket-fd', '3'], file, {}, /^vublk: error: --socket-fd 3: fd 3 is not a socket;/m],
    [
      'a connected socket',
      ['--socket-fd', '3'],
      connected,
      {},
      /^vublk: error: --socket-fd 3: fd 3 is not listening \(listen\(2\) was not called on it\);/m,
    ],
    ['a regular file from systemd', [], file, systemd, /^vublk: error: systemd \(LISTEN_FDS\): fd 3 is not a socket;/m],
    [
      '--socket with a systemd socket',
      ['--socket', listening],
      lfd,
      systemd,
      /^vublk: error: --socket is set but systemd passed a listening socket/m,
    ],
  ];
  for (const [what, args, fd3, env, re] of cases) {
    // LISTEN_PID is the child's own pid: sh exports its $$ and execs node.
    const r = env.LISTEN_FDS
      ? (() => {
          const s = spawnSync(
            '/bin/sh',
            ['-c', 'export LISTEN_PID=$$; exec "$@"', 'sh', process.execPath, vublkBin, '--disk', disk, ...args],
            {
              stdio: ['ignore', 'pipe', 'pipe', fd3],
              env: { ...process.env, ...env },
              timeout: 15000,
            },
          );
          return { code: s.status, stderr: s.stderr.toString() };
        })()
      : runWithFd3(['--disk', disk, ...args], fd3, env);
    t.equal(r.code, 1, `${what}: exit 1`);
    t.match(r.stderr, re, what);
  }
  // LISTEN_PID of another process: the fds are not ours; vublk binds --socket as usual.
  const own = path.join(dir, 'own.sock');
  const v = await startVublk(['--disk', disk, '--socket', own, '--state-file', 'none'], {
    env: { LISTEN_FDS: '1', LISTEN_PID: '1' },
    fd3: file,
    socket: own,
  });
  t.notMatch(await v.waitForLog(/serving/), 'socketPassedBy', 'LISTEN_PID of another process is ignored');
  await stopCleanly(v);
  t.notOk(fs.existsSync(own), 'its own socket is unlinked at stop as before');
});
