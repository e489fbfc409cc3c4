// The unit's SystemCallFilter= kills vublk (SIGSYS) on any system call it
// does not allow, and systemd cannot be run here to try it. So: trace every
// system call vublk makes while it starts, serves a frontend's reads,
// writes, flushes and discards, and shuts down, and check each one against
// the filter as this systemd expands it.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { makeImage, startVublk, tmpDir } from '../helpers/vublk-process';
import { unitValue } from './unit-file';
import { systemdAnalyzeMissing } from './unit-root';

const straceMissing = spawnSync('strace', ['-V']).status === 0 ? false : 'strace is not installed';
if (straceMissing && process.env.CI) throw new Error(`${straceMissing} (.ci/run installs it)`);
const skip = systemdAnalyzeMissing() || straceMissing;

/** The system calls a SystemCallFilter= allow list names, groups expanded by systemd-analyze. */
function allowedSyscalls(filter: string): Set<string> {
  const allowed = new Set<string>();
  const seen = new Set<string>();
  const add = (item: string) => {
    if (!item.startsWith('@')) {
      allowed.add(item);
      return;
    }
    if (seen.has(item)) return;
    seen.add(item);
    const r = spawnSync('systemd-analyze', ['syscall-filter', item], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`systemd-analyze syscall-filter ${item}: ${r.stderr}`);
    for (const line of r.stdout.split('\n').slice(1)) {
      const name = line.trim();
      if (name !== '' && !name.startsWith('#')) add(name);
    }
  };
  for (const item of filter.trim().split(/\s+/)) add(item);
  return allowed;
}

t.test("every system call vublk makes serving a frontend is allowed by the unit's SystemCallFilter=", { skip }, async (t) => {
  const filter = unitValue('vublk@.service', 'SystemCallFilter');
  t.notOk(filter.startsWith('~'), 'the filter is an allow list');
  const allowed = allowedSyscalls(filter);
  const dir = tmpDir('vublk-seccomp-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const trace = path.join(dir, 'trace');
  const socket = path.join(dir, 'v.sock');
  const v = await startVublk(['--disk', makeImage(dir), '--socket', socket, '--state-file', path.join(dir, 'state'), '--queues', '2'], {
    wrapper: ['strace', '-f', '-qq', '-o', trace, '--'],
    socket,
    asan: false,
    timeoutMs: 60_000,
  });
  // strace does not exec: vublk is its child.
  const stracePid = v.child.pid!;
  const vublkPid = Number(fs.readFileSync(`/proc/${stracePid}/task/${stracePid}/children`, 'utf8').trim().split(/\s+/)[0]);
  t.teardown(() => {
    if (v.child.exitCode === null) v.child.kill('SIGKILL');
  });
  const fe = await Frontend.connect(socket, { timeoutMs: 30_000 });
  t.teardown(() => fe.close());
  await fe.setup({ queues: 2 });
  const drv = new BlkDriver(fe);
  t.equal((await drv.write(0, 8, Buffer.alloc(8192, 1))).status, BlkStatus.OK);
  t.equal(
    (await drv.write(1, 3, Buffer.alloc(512, 2), { layout: '2desc' })).status,
    BlkStatus.OK,
    'an unaligned write (read-modify-write)',
  );
  t.equal((await drv.read(1, 0, 16384)).status, BlkStatus.OK);
  t.equal((await drv.flush(0)).status, BlkStatus.OK);
  t.equal((await drv.discard(0, 64, 64)).status, BlkStatus.OK);
  fe.close();
  process.kill(vublkPid, 'SIGTERM');
  const r = await v.stop();
  t.equal(r.code, 0, 'vublk exits 0 under strace');

  const used = new Set<string>();
  for (const line of fs.readFileSync(trace, 'utf8').split('\n')) {
    const m = /^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)/.exec(line);
    if (m) used.add(m[1]!);
  }
  t.ok(used.has('io_uring_enter'), `the trace saw io_uring (${used.size} distinct system calls)`);
  const denied = [...used].filter((s) => !allowed.has(s)).sort();
  t.same(denied, [], 'none outside the filter');
});
