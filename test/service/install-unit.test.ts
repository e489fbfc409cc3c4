// `vublk install-unit` into a temporary root, as an operator runs it: the
// files it writes, what it refuses, and systemd-analyze verify on the result.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseOptions } from '../../src/cli/options';
import { vublkBin } from '../helpers/vublk-process';
import { execStartArgv, parseEnvironmentFile, unitDir, unitValue } from './unit-file';
import { stubExecutable, systemdAnalyzeMissing, unitRoot, verifyUnits } from './unit-root';

const skipVerify = systemdAnalyzeMissing();
const DISK = '/var/lib/images/data.img';

function install(args: string[]) {
  const r = spawnSync(process.execPath, [vublkBin, 'install-unit', ...args], { encoding: 'utf8', timeout: 15000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function rootWithDisk(t: Parameters<typeof unitRoot>[0]): string {
  const root = unitRoot(t);
  fs.mkdirSync(path.join(root, path.dirname(DISK)), { recursive: true });
  fs.writeFileSync(path.join(root, DISK), '');
  fs.truncateSync(path.join(root, DISK), 1 << 20);
  return root;
}

const read = (root: string, p: string) => fs.readFileSync(path.join(root, p), 'utf8');

t.test('installs the units, the config and the drop-in for an image file; systemd-analyze verify passes', async (t) => {
  const root = rootWithDisk(t);
  const r = install(['data', '--disk', DISK, '--root', root, '--options', '--queues 4  --serial data']);
  t.equal(r.code, 0, 'exit 0');
  for (const f of [
    '/etc/systemd/system/vublk@.socket',
    '/etc/systemd/system/vublk@.service',
    '/etc/vublk/data.conf',
    '/etc/systemd/system/vublk@data.service.d/disk.conf',
  ]) {
    t.ok(fs.existsSync(path.join(root, f)), `${f} written`);
    t.match(r.stdout, f, `${f} listed`);
  }
  t.match(r.stdout, /useradd --system .* vublk/, 'prints how to create the user');
  t.match(r.stdout, `chown vublk:vublk ${DISK}`, 'and to give it the image');
  t.match(
    r.stdout,
    /systemctl daemon-reload\n\s+systemctl enable --now vublk@data\.socket/,
    'then daemon-reload and enable --now the socket',
  );
  t.match(r.stdout, '/usr/local/bin/vublk does not exist yet', 'warns that the program the unit runs is missing');
  for (const f of ['vublk@.socket', 'vublk@.service']) {
    t.equal(read(root, `/etc/systemd/system/${f}`), fs.readFileSync(path.join(unitDir, f), 'utf8'), `${f} is the shipped unit`);
  }
  t.equal(
    read(root, '/etc/systemd/system/vublk@data.service.d/disk.conf')
      .match(/^[A-Z]\w*=.*$/gm)
      ?.join('\n'),
    `ReadWritePaths=${DISK}`,
    'the drop-in makes only the image writable',
  );

  // The config, read as systemd reads an EnvironmentFile, gives ExecStart= a command line vublk accepts.
  const env = parseEnvironmentFile(read(root, '/etc/vublk/data.conf'));
  t.same(env, { VUBLK_DISK: DISK, VUBLK_OPTIONS: '--queues 4 --serial data' });
  const argv = execStartArgv({ name: 'data', runtimeDir: '/run', stateDir: '/var/lib', env }, vublkBin).slice(2);
  t.same(argv, ['--disk', DISK, '--state-file', '/var/lib/vublk/data.state', '--queues', '4', '--serial', 'data']);
  const opts = parseOptions(argv);
  t.equal(opts.queues, 4);
  t.equal(opts.disk, DISK);

  if (skipVerify) return;
  stubExecutable(root, '/usr/local/bin/vublk');
  const v = verifyUnits(root, ['vublk@data.service', 'vublk@data.socket']);
  t.equal(v.code, 0, 'systemd-analyze verify exits 0 on the installed units');
  t.same(v.vublkLines, [], 'and says nothing about them', { output: v.output });
});

t.test('an existing config with other contents is kept unless --force; the same one is fine', async (t) => {
  const root = rootWithDisk(t);
  t.equal(install(['data', '--disk', DISK, '--root', root]).code, 0);
  const before = read(root, '/etc/vublk/data.conf');
  t.equal(install(['data', '--disk', DISK, '--root', root]).code, 0, 'installing the same again succeeds');
  const r = install(['data', '--disk', DISK, '--root', root, '--options', '--read-only']);
  t.equal(r.code, 2);
  t.match(
    r.stderr,
    /^vublk: error: install-unit: \/etc\/vublk\/data\.conf exists with other contents; keep it, or replace it with --force$/m,
  );
  t.equal(read(root, '/etc/vublk/data.conf'), before, 'the config is untouched');
  t.equal(install(['data', '--disk', DISK, '--root', root, '--options', '--read-only', '--force']).code, 0);
  t.match(read(root, '/etc/vublk/data.conf'), /^VUBLK_OPTIONS="--read-only"$/m, '--force replaces it');
});

t.test('--exec, --unit-dir and --config-dir are written into the installed units', async (t) => {
  const root = rootWithDisk(t);
  const r = install([
    'data',
    '--disk',
    DISK,
    '--root',
    root,
    '--exec',
    '/opt/vublk/bin/vublk',
    '--unit-dir',
    '/usr/local/lib/systemd/system',
    '--config-dir',
    '/etc/vublk-disks',
  ]);
  t.equal(r.code, 0, r.stderr);
  const unitDirInRoot = path.join(root, '/usr/local/lib/systemd/system');
  t.match(unitValue('vublk@.service', 'ExecStart', unitDirInRoot), /^\/opt\/vublk\/bin\/vublk --disk /);
  t.equal(unitValue('vublk@.service', 'EnvironmentFile', unitDirInRoot), '/etc/vublk-disks/%i.conf');
  t.ok(fs.existsSync(path.join(root, '/etc/vublk-disks/data.conf')));
  t.ok(fs.existsSync(path.join(unitDirInRoot, 'vublk@data.service.d/disk.conf')));
  if (skipVerify) return;
  stubExecutable(root, '/opt/vublk/bin/vublk');
  const v = verifyUnits(root, ['vublk@data.service', 'vublk@data.socket']);
  t.equal(v.code, 0);
  t.same(v.vublkLines, [], 'verify says nothing about them', { output: v.output });
});

/** A block device node (a loop device's numbers) at root/dev/vdb: needs CAP_MKNOD and a tmp without nodev. */
function makeBlockNode(root: string): string | undefined {
  fs.mkdirSync(path.join(root, 'dev'), { recursive: true });
  const mk = spawnSync('mknod', [path.join(root, 'dev/vdb'), 'b', '7', '200'], { encoding: 'utf8' });
  return mk.status === 0 ? undefined : `cannot create a device node: ${mk.stderr}`;
}

const noBlockNode = (() => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-mknod-'));
  try {
    return makeBlockNode(dir) ?? false;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
})();

t.test('a block device gets DeviceAllow= in the drop-in', { skip: noBlockNode }, async (t) => {
  const root = unitRoot(t);
  t.equal(makeBlockNode(root), undefined);
  const r = install(['vdb', '--disk', '/dev/vdb', '--root', root]);
  t.equal(r.code, 0, r.stderr);
  const dropIn = read(root, '/etc/systemd/system/vublk@vdb.service.d/disk.conf');
  t.match(dropIn, /^ReadWritePaths=\/dev\/vdb$/m);
  t.match(dropIn, /^DeviceAllow=\/dev\/vdb rw$/m);
  t.match(r.stdout, /block device: user vublk reaches it through group disk/);
  t.notMatch(r.stdout, /chown/, 'no chown for a block device');
});

t.test('refuses what the units could not use, with one line naming it', async (t) => {
  const root = rootWithDisk(t);
  const cases: Array<[string, string[], RegExp]> = [
    ['a missing disk', ['data', '--disk', '/var/lib/images/nope.img'], /disk \/var\/lib\/images\/nope\.img does not exist under /],
    ['a relative disk', ['data', '--disk', 'data.img'], /--disk expects an absolute path/],
    ['a disk path with a space', ['data', '--disk', '/var/lib/my disk.img'], /--disk expects an absolute path without spaces/],
    ['no NAME', ['--disk', DISK], /install-unit expects the disk's NAME first/],
    ['a NAME with a slash', ['a/b', '--disk', DISK], /NAME expects 1 to 64 letters/],
    [
      '--options setting the socket',
      ['data', '--disk', DISK, '--options', '--socket /tmp/x'],
      /--options must not set --socket: the unit sets it/,
    ],
    [
      '--options that vublk refuses',
      ['data', '--disk', DISK, '--options', '--queues 0'],
      /--options: --queues expects an integer between 1 and/,
    ],
    ['--options with a quote', ['data', '--disk', DISK, '--options', '--serial "x y"'], /--options cannot contain quotes/],
    ['an unknown argument', ['data', '--disk', DISK, '--bogus'], /unknown argument "--bogus"/],
  ];
  for (const [what, args, re] of cases) {
    const r = install([...args, '--root', root]);
    t.equal(r.code, 2, `${what}: exit 2`);
    t.match(r.stderr, /^vublk: error: /, `${what}: one error line`);
    t.match(r.stderr, re, what);
  }
  t.notOk(fs.existsSync(path.join(root, 'etc/vublk')), 'nothing was written');
});
