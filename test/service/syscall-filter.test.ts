// The unit's SystemCallFilter= kills vublk (SIGSYS) on any system call it
// does not allow, and systemd cannot be run here to try it. So: trace every
// system call vublk makes while it starts, serves a frontend's reads,
// writes, flushes and discards, and shuts down, and check each one against
// the filter as this systemd expands it; and every socket() it opens
// against RestrictAddressFamilies=. On an image file, and on an RBD image
// of a test cluster with the families install-unit's drop-in adds.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Frontend } from '../../src/frontend/frontend';
import { BlkDriver, BlkStatus } from '../../src/frontend/blk-driver';
import { makeImage, startVublk, tmpDir } from '../helpers/vublk-process';
import { cephUnsupported, createImage, startCephCluster } from '../helpers/ceph-cluster';
import { dropInText, type InstallRequest } from '../../src/cli/install-unit';
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

interface Trace {
  /** Every system call vublk made. */
  syscalls: Set<string>;
  /** The address family of every socket() it called. */
  families: Set<string>;
}

/** Runs vublk on diskArgs under strace, serves a frontend every request type, stops it; what it called. */
async function traceServing(t: Test, dir: string, diskArgs: string[]): Promise<Trace> {
  const trace = path.join(dir, 'trace');
  const socket = path.join(dir, 'v.sock');
  const v = await startVublk([...diskArgs, '--socket', socket, '--state-file', path.join(dir, 'state'), '--queues', '2'], {
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

  const syscalls = new Set<string>();
  const families = new Set<string>();
  for (const line of fs.readFileSync(trace, 'utf8').split('\n')) {
    const m = /^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)/.exec(line);
    if (m) syscalls.add(m[1]!);
    const s = /^\d+\s+socket\((AF_[A-Z0-9]+)/.exec(line);
    if (s) families.add(s[1]!);
  }
  return { syscalls, families };
}

/** The system calls of tr outside the unit's SystemCallFilter=. */
function deniedSyscalls(tr: Trace): string[] {
  const filter = unitValue('vublk@.service', 'SystemCallFilter');
  if (filter.startsWith('~')) throw new Error('SystemCallFilter= is no longer an allow list: this test needs another check');
  const allowed = allowedSyscalls(filter);
  return [...tr.syscalls].filter((s) => !allowed.has(s)).sort();
}

/** RestrictAddressFamilies= allow lists add up; the unit's, then the drop-in's lines. */
function allowedFamilies(dropIn = ''): Set<string> {
  const lists = [
    unitValue('vublk@.service', 'RestrictAddressFamilies'),
    ...[...dropIn.matchAll(/^RestrictAddressFamilies=(.*)$/gm)].map((m) => m[1]!),
  ];
  return new Set(lists.flatMap((l) => l.trim().split(/\s+/)));
}

t.test("every system call vublk makes serving an image file is allowed by the unit's SystemCallFilter=", { skip }, async (t) => {
  const dir = tmpDir('vublk-seccomp-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tr = await traceServing(t, dir, ['--disk', makeImage(dir)]);
  t.ok(tr.syscalls.has('io_uring_enter'), `the trace saw io_uring (${tr.syscalls.size} distinct system calls)`);
  t.same(deniedSyscalls(tr), [], 'none outside the filter');
  const families = allowedFamilies();
  t.same(
    [...tr.families].filter((f) => !families.has(f)),
    [],
    `its sockets are of the unit's families (${[...families].join(' ')})`,
  );
});

const rbdSkip = skip || cephUnsupported();

t.test('on an RBD image too, with the address families of the drop-in install-unit writes for it', { skip: rbdSkip }, async (t) => {
  const c = startCephCluster(t);
  createImage(c, 'traced');
  const dir = tmpDir('vublk-seccomp-rbd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tr = await traceServing(t, dir, ['--disk', 'rbd:rbd/traced', '--ceph-conf', c.conf]);
  t.ok(tr.syscalls.has('connect'), `the trace saw librbd connect (${tr.syscalls.size} distinct system calls)`);
  t.same(deniedSyscalls(tr), [], 'none outside the filter');
  const req: InstallRequest = {
    name: 'traced',
    disk: 'rbd:rbd/traced',
    cephConf: c.conf,
    cephId: undefined,
    root: '/',
    unitDir: '/etc/systemd/system',
    configDir: '/etc/vublk',
    options: '',
    exec: '/usr/local/bin/vublk',
    force: false,
  };
  const families = allowedFamilies(dropInText(req, 'rbd'));
  t.ok(tr.families.has('AF_INET'), `librbd opened TCP sockets (families ${[...tr.families].join(' ')})`);
  t.same(
    [...tr.families].filter((f) => !families.has(f)),
    [],
    `its sockets are of the drop-in's families (${[...families].join(' ')})`,
  );
  t.notOk(allowedFamilies().has('AF_INET'), 'which the unit alone refuses');
});
