// `vublk install-unit` into a temporary root, as an operator runs it: the
// files it writes, what it refuses, and systemd-analyze verify on the result,
// for image files, block devices and RBD images.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseOptions } from '../../src/cli/options';
import { HIDDEN_FROM_SERVICE } from '../../src/cli/install-unit-rbd';
import { vublkBin } from '../helpers/vublk-process';
import { execStartArgv, parseEnvironmentFile, unitDir, unitValue } from './unit-file';
import { securityReport, stubExecutable, systemdAnalyzeMissing, unitRoot, verifyUnits } from './unit-root';

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

const CEPH_CONF = '/etc/ceph/ceph.conf';
const KEYRING = '/etc/ceph/ceph.client.vublk.keyring';

/** A root with a Ceph conf naming client.vublk's keyring, and that keyring (mode 0600, as ceph auth leaves it). */
function rootWithCeph(t: Parameters<typeof unitRoot>[0]): string {
  const root = unitRoot(t);
  fs.mkdirSync(path.join(root, 'etc/ceph'), { recursive: true });
  fs.writeFileSync(path.join(root, CEPH_CONF), `[global]\nmon host = 192.0.2.1\n[client.vublk]\nkeyring = ${KEYRING}\n`, { mode: 0o644 });
  fs.writeFileSync(path.join(root, KEYRING), '[client.vublk]\n\tkey = x\n', { mode: 0o600 });
  return root;
}

t.test('an RBD image: the config names it and the Ceph client, the drop-in opens the network; systemd-analyze verify passes', async (t) => {
  const root = rootWithCeph(t);
  const r = install([
    'vm1',
    '--disk',
    'rbd:vms/guest1',
    '--ceph-conf',
    CEPH_CONF,
    '--ceph-id',
    'vublk',
    '--root',
    root,
    '--options',
    '--queues 2',
  ]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, '/etc/systemd/system/vublk@vm1.service.d/disk.conf', 'the drop-in is listed');
  const env = parseEnvironmentFile(read(root, '/etc/vublk/vm1.conf'));
  t.same(env, { VUBLK_DISK: 'rbd:vms/guest1', VUBLK_OPTIONS: `--ceph-conf ${CEPH_CONF} --ceph-id vublk --queues 2` });
  const argv = execStartArgv({ name: 'vm1', runtimeDir: '/run', stateDir: '/var/lib', env }, vublkBin).slice(2);
  const opts = parseOptions(argv);
  t.same(opts.rbd, { pool: 'vms', namespace: '', image: 'guest1', snapshot: '' }, 'ExecStart= gives vublk the image');
  t.equal(opts.cephConf, CEPH_CONF);
  t.equal(opts.cephId, 'vublk');
  t.equal(opts.queues, 2);

  const settings = read(root, '/etc/systemd/system/vublk@vm1.service.d/disk.conf').match(/^[A-Z]\w*=.*$/gm);
  t.same(
    settings,
    ['PrivateNetwork=no', 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6', 'IPAddressDeny='],
    'the drop-in lets vublk reach the cluster, and makes no path writable',
  );
  t.match(r.stdout, `# user vublk must read the keyring of client.vublk:\n  chgrp vublk ${KEYRING} && chmod g+r ${KEYRING}\n`);
  t.notMatch(r.stdout, /chown/, 'nothing to chown');
  t.notMatch(r.stdout, `user vublk must read ${CEPH_CONF}`, 'the conf is readable by all already');
  t.match(r.stdout, /systemctl daemon-reload\n\s+systemctl enable --now vublk@vm1\.socket/);

  if (skipVerify) return;
  stubExecutable(root, '/usr/local/bin/vublk');
  const v = verifyUnits(root, ['vublk@vm1.service', 'vublk@vm1.socket']);
  t.equal(v.code, 0, 'systemd-analyze verify exits 0 on the installed units');
  t.same(v.vublkLines, [], 'and says nothing about them', { output: v.output });
});

t.test(
  "a namespace and a snapshot pass through; without --ceph-conf Ceph's default is checked and client.admin is not chgrp-ed",
  async (t) => {
    const root = rootWithCeph(t);
    fs.writeFileSync(path.join(root, '/etc/ceph/ceph.client.admin.keyring'), '', { mode: 0o600 });
    const r = install(['snap', '--disk', 'rbd:vms/tenant1/guest1@gold', '--root', root]);
    t.equal(r.code, 0, r.stderr);
    const env = parseEnvironmentFile(read(root, '/etc/vublk/snap.conf'));
    t.same(env, { VUBLK_DISK: 'rbd:vms/tenant1/guest1@gold', VUBLK_OPTIONS: '' });
    t.same(parseOptions(['--disk', env.VUBLK_DISK!]).rbd, { pool: 'vms', namespace: 'tenant1', image: 'guest1', snapshot: 'gold' });
    t.match(r.stdout, /keyring of client\.admin, \/etc\/ceph\/ceph\.client\.admin\.keyring, which can do anything/);
    t.match(r.stdout, /^\s+# chgrp vublk \/etc\/ceph\/ceph\.client\.admin\.keyring/m, 'the command is only suggested, commented out');

    fs.rmSync(path.join(root, 'etc/ceph'), { recursive: true });
    const bare = install(['bare', '--disk', 'rbd:vms/guest2', '--ceph-id', 'vublk', '--root', root]);
    t.equal(bare.code, 0, bare.stderr);
    t.match(bare.stdout, `# ${CEPH_CONF} does not exist yet`, 'a missing default conf is pointed out');
    t.match(bare.stdout, '# no keyring of client.vublk found (Ceph looks in /etc/ceph/ceph.client.vublk.keyring, ');
  },
);

t.test('a conf only its group may read, and a keyring named by [client]: both in the next steps', async (t) => {
  const root = rootWithCeph(t);
  fs.writeFileSync(
    path.join(root, '/etc/ceph/private.conf'),
    '[global]\nmon host = 192.0.2.1\n[client]\nkeyring = /etc/ceph/$cluster.$name.keyring\n',
    {
      mode: 0o640,
    },
  );
  const r = install(['vm1', '--disk', 'rbd:vms/guest1', '--ceph-conf', '/etc/ceph/private.conf', '--ceph-id', 'vublk', '--root', root]);
  t.equal(r.code, 0, r.stderr);
  t.match(
    r.stdout,
    '# user vublk must read /etc/ceph/private.conf:\n  chgrp vublk /etc/ceph/private.conf && chmod g+r /etc/ceph/private.conf\n',
  );
  t.match(r.stdout, `chgrp vublk ${KEYRING} && chmod g+r ${KEYRING}`, '$cluster.$name expanded to the keyring of client.vublk');
});

t.test(
  'systemd-analyze security: the RBD drop-in gives up only the network hardening, exposure still at most 2.0',
  { skip: skipVerify },
  async (t) => {
    const root = rootWithDisk(t);
    fs.mkdirSync(path.join(root, 'etc/ceph'), { recursive: true });
    fs.writeFileSync(path.join(root, CEPH_CONF), '[global]\nmon host = 192.0.2.1\n');
    t.equal(install(['data', '--disk', DISK, '--root', root]).code, 0);
    t.equal(install(['vm1', '--disk', 'rbd:vms/guest1', '--root', root]).code, 0);
    const file = securityReport(root, 'vublk@data.service');
    const rbd = securityReport(root, 'vublk@vm1.service');
    t.same(
      rbd.failed.filter((s) => !file.failed.includes(s)).sort(),
      ['IPAddressDeny=', 'PrivateNetwork=', 'RestrictAddressFamilies=~AF_(INET|INET6)'],
      'what the RBD instance loses against an image file',
      { file: file.output, rbd: rbd.output },
    );
    t.comment(`exposure: image file ${file.exposure}, RBD image ${rbd.exposure}`);
    t.ok(rbd.exposure <= 2.0, `exposure ${rbd.exposure} <= 2.0`);
  },
);

t.test('the directories install-unit refuses are the ones the unit hides', async (t) => {
  t.equal(unitValue('vublk@.service', 'ProtectHome'), 'yes');
  t.equal(unitValue('vublk@.service', 'PrivateTmp'), 'yes');
  t.same(
    HIDDEN_FROM_SERVICE.map(([dir]) => dir),
    ['/home', '/root', '/run/user', '/tmp', '/var/tmp'],
    'ProtectHome=yes hides /home, /root, /run/user; PrivateTmp=yes /tmp, /var/tmp',
  );
});

t.test('refuses RBD installs the service could not use, with one line naming the problem', async (t) => {
  const root = rootWithCeph(t);
  for (const dir of ['/home/ops', '/root', '/run/user/0', '/tmp', '/var/tmp']) {
    fs.mkdirSync(path.join(root, dir), { recursive: true });
    fs.copyFileSync(path.join(root, CEPH_CONF), path.join(root, dir, 'ceph.conf'));
  }
  fs.writeFileSync(path.join(root, '/etc/ceph/home-keyring.conf'), '[global]\nmon host = 192.0.2.1\nkeyring = /root/ceph.keyring\n');
  const rbd = ['vm1', '--disk', 'rbd:vms/guest1'];
  const cases: Array<[string, string[], RegExp]> = [
    ['a spec without an image', ['vm1', '--disk', 'rbd:vms'], /--disk rbd:vms: expected rbd:POOL\/IMAGE or rbd:POOL\/NAMESPACE\/IMAGE/],
    ['a spec with four parts', ['vm1', '--disk', 'rbd:a/b/c/d'], /--disk rbd:a\/b\/c\/d: expected rbd:POOL\/IMAGE/],
    ['an empty snapshot', ['vm1', '--disk', 'rbd:vms/guest1@'], /names must be non-empty, without "\/", "@" or spaces/],
    [
      'a name with "$"',
      ['vm1', '--disk', 'rbd:vms/gue$t'],
      /names with quotes, backslashes, "\$" or "%" cannot go into the unit's configuration/,
    ],
    [
      'a conf under /home',
      [...rbd, '--ceph-conf', '/home/ops/ceph.conf'],
      /--ceph-conf \/home\/ops\/ceph\.conf is under \/home, which ProtectHome=yes hides from the service/,
    ],
    ['a conf under /root', [...rbd, '--ceph-conf', '/root/ceph.conf'], /is under \/root, which ProtectHome=yes hides/],
    ['a conf under /run/user', [...rbd, '--ceph-conf', '/run/user/0/ceph.conf'], /is under \/run\/user, which ProtectHome=yes hides/],
    ['a conf under /tmp', [...rbd, '--ceph-conf', '/tmp/ceph.conf'], /is under \/tmp, which PrivateTmp=yes hides/],
    ['a conf under /var/tmp', [...rbd, '--ceph-conf', '/var/tmp/ceph.conf'], /is under \/var\/tmp, which PrivateTmp=yes hides/],
    ['a missing conf', [...rbd, '--ceph-conf', '/etc/ceph/nope.conf'], /--ceph-conf \/etc\/ceph\/nope\.conf does not exist under /],
    ['a relative conf', [...rbd, '--ceph-conf', 'ceph.conf'], /--ceph-conf expects an absolute path/],
    [
      'a conf naming a keyring under /root',
      [...rbd, '--ceph-conf', '/etc/ceph/home-keyring.conf'],
      /the keyring of client\.admin in \/etc\/ceph\/home-keyring\.conf, \/root\/ceph\.keyring, is under \/root/,
    ],
    ['--ceph-id with "client."', [...rbd, '--ceph-id', 'client.vublk'], /--ceph-id expects the name without "client\."/],
    [
      '--ceph-conf in --options',
      [...rbd, '--options', `--ceph-conf ${CEPH_CONF}`],
      /--options must not set --ceph-conf: give it to install-unit itself/,
    ],
    ['--ceph-id for an image file', ['vm1', '--disk', DISK, '--ceph-id', 'vublk'], /--ceph-id applies to an rbd: disk only/],
  ];
  for (const [what, args, re] of cases) {
    const r = install([...args, '--root', root]);
    t.equal(r.code, 2, `${what}: exit 2`);
    t.match(r.stderr, /^vublk: error: install-unit: [^\n]*\n$/, `${what}: one error line`);
    t.match(r.stderr, re, what);
  }
  t.notOk(fs.existsSync(path.join(root, 'etc/vublk')), 'nothing was written');
});
