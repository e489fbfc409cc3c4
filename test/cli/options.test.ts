import t from 'tap';
import os from 'node:os';
import { UsageError } from '../../src/errors';
import { parseOptions, usageText } from '../../src/cli/options';

/** Whatever parseOptions throws for argv, or undefined when it does not throw. */
function thrown(argv: string[]): unknown {
  try {
    parseOptions(argv);
  } catch (err) {
    return err;
  }
  return undefined;
}

t.test('defaults', (t) => {
  t.same(parseOptions([]), {
    disk: undefined,
    defaultDisk: true,
    socket: './vublk.sock',
    socketGiven: false,
    socketFd: undefined,
    queues: 1,
    queueSize: 1024,
    readOnly: false,
    serial: 'vublk',
    logicalBlockSize: 512,
    logLevel: 'info',
    logFormat: 'text',
    fixedBuffers: true,
    maxPinnedMemory: undefined,
    stateFile: './vublk.sock.state',
    imageLock: true,
    workers: 1,
    pollMaxUs: 50,
    help: false,
  });
  t.end();
});

t.test('--workers and --poll-max-us take bounded integers', (t) => {
  t.equal(parseOptions(['--queues', '8', '--workers', '2']).workers, 2);
  t.equal(parseOptions(['--queues', '8']).workers, Math.min(8, os.availableParallelism()), 'default: one per queue up to the cores');
  t.equal(parseOptions(['--workers', '0']).workers, 0, '0: in-thread');
  t.match((thrown(['--workers', '65']) as Error).message, /--workers expects an integer between 0 and 64/);
  t.match((thrown(['--poll-max-us', '-1']) as Error).message, /--poll-max-us/);
  t.end();
});

t.test('--socket-fd takes an fd number and is refused with --socket', (t) => {
  const o = parseOptions(['--socket-fd', '3', '--state-file', 'none']);
  t.equal(o.socketFd, 3);
  t.equal(o.socketGiven, false);
  t.equal(parseOptions(['--socket-fd=0']).socketFd, 0);
  for (const bad of ['-1', 'x', '3.5', '2147483648', '']) {
    t.match(
      thrown(['--socket-fd=' + bad]),
      { code: 'E_USAGE', message: /^--socket-fd expects a file descriptor number between 0 and 2147483647, got/ },
      bad,
    );
  }
  t.match(thrown(['--socket-fd', '3', '--socket', '/run/x.sock']), {
    code: 'E_USAGE',
    message: '--socket and --socket-fd both name the socket to serve; give one of them',
  });
  t.end();
});

t.test('every option, both spellings', (t) => {
  const expected = {
    disk: '/dev/nvme0n1',
    defaultDisk: false,
    socket: '/run/vublk/vm1.sock',
    socketGiven: true,
    socketFd: undefined,
    queues: 4,
    queueSize: 1024,
    readOnly: true,
    serial: 'disk 01',
    logicalBlockSize: 4096,
    logLevel: 'debug',
    logFormat: 'json',
    fixedBuffers: false,
    maxPinnedMemory: 4 * 2 ** 30,
    stateFile: '/var/lib/vublk/vm1.state',
    imageLock: false,
    workers: 3,
    pollMaxUs: 0,
    help: false,
  };
  t.same(
    parseOptions([
      '--disk',
      '/dev/nvme0n1',
      '--socket',
      '/run/vublk/vm1.sock',
      '--queues',
      '4',
      '--queue-size',
      '1024',
      '--read-only',
      '--serial',
      'disk 01',
      '--logical-block-size',
      '4096',
      '--log-level',
      'debug',
      '--log-format',
      'json',
      '--no-fixed-buffers',
      '--max-pinned-memory',
      '4G',
      '--state-file',
      '/var/lib/vublk/vm1.state',
      '--no-image-lock',
      '--workers',
      '3',
      '--poll-max-us',
      '0',
    ]),
    expected,
  );
  t.same(
    parseOptions([
      '--disk=/dev/nvme0n1',
      '--socket=/run/vublk/vm1.sock',
      '--queues=4',
      '--queue-size=1024',
      '--read-only',
      '--serial=disk 01',
      '--logical-block-size=4096',
      '--log-level=debug',
      '--log-format=json',
      '--no-fixed-buffers',
      '--max-pinned-memory=4g',
      '--state-file=/var/lib/vublk/vm1.state',
      '--no-image-lock',
      '--workers=3',
      '--poll-max-us=0',
    ]),
    expected,
  );
  t.equal(parseOptions(['--disk=a=b']).disk, 'a=b', 'only the first = splits');
  t.equal(parseOptions(['--disk=--odd']).disk, '--odd', '= allows a value starting with --');
  t.equal(parseOptions(['--serial=']).serial, '', 'empty serial');
  t.equal(parseOptions(['--serial', '12345678901234567890']).serial, '12345678901234567890', '20 bytes');
  t.equal(parseOptions(['--queues', '64']).queues, 64);
  t.equal(parseOptions(['--queue-size', '2']).queueSize, 2);
  t.equal(parseOptions(['--logical-block-size', '512']).logicalBlockSize, 512);
  for (const level of ['error', 'warn', 'info', 'debug']) {
    t.equal(parseOptions([`--log-level=${level}`]).logLevel, level);
  }
  t.equal(parseOptions(['--socket', 'x'.repeat(107)]).socket.length, 107);
  t.end();
});

t.test('--help wins', (t) => {
  t.equal(parseOptions(['--help']).help, true);
  t.equal(parseOptions(['-h']).help, true);
  t.equal(parseOptions(['--queues', 'zero', '--help']).help, true, 'other options are not validated');
  const text = usageText();
  for (const opt of [
    '--disk',
    '--socket',
    '--queues',
    '--queue-size',
    '--read-only',
    '--serial',
    '--logical-block-size',
    '--log-level',
    '--log-format',
    '--state-file',
    '--help',
  ]) {
    t.equal(text.split('\n').filter((l) => l.trimStart().startsWith(`${opt} `)).length, 1, `one line for ${opt}`);
  }
  t.end();
});

t.test('error messages', (t) => {
  const cases: Array<[string[], string]> = [
    [['--queues', 'x'], '--queues expects an integer between 1 and 64, got "x"'],
    [['--queues', '0'], '--queues expects an integer between 1 and 64, got "0"'],
    [['--queues', '65'], '--queues expects an integer between 1 and 64, got "65"'],
    [['--queues=-1'], '--queues expects an integer between 1 and 64, got "-1"'],
    [['--queues', '1.5'], '--queues expects an integer between 1 and 64, got "1.5"'],
    [['--queues', '0x4'], '--queues expects an integer between 1 and 64, got "0x4"'],
    [['--queues', ' 4'], '--queues expects an integer between 1 and 64, got " 4"'],
    [['--queues='], '--queues expects an integer between 1 and 64, got ""'],
    [['--queue-size', '3'], '--queue-size expects a power of two between 2 and 1024, got "3"'],
    [['--queue-size', '1'], '--queue-size expects a power of two between 2 and 1024, got "1"'],
    [['--queue-size', '2048'], '--queue-size expects a power of two between 2 and 1024, got "2048"'],
    [['--queue-size', 'big'], '--queue-size expects a power of two between 2 and 1024, got "big"'],
    [['--serial', '123456789012345678901'], '--serial expects at most 20 printable ASCII characters, got "123456789012345678901"'],
    [['--serial', 'caf\u00e9'], '--serial expects at most 20 printable ASCII characters, got "caf\u00e9"'],
    [['--serial', 'a\tb'], '--serial expects at most 20 printable ASCII characters, got "a\\tb"'],
    [['--logical-block-size', '1024'], '--logical-block-size expects 512 or 4096, got "1024"'],
    [['--logical-block-size=4k'], '--logical-block-size expects 512 or 4096, got "4k"'],
    [['--log-level', 'trace'], '--log-level expects one of error, warn, info, debug, got "trace"'],
    [['--log-level', 'INFO'], '--log-level expects one of error, warn, info, debug, got "INFO"'],
    [['--log-format', 'yaml'], '--log-format expects one of text, json, got "yaml"'],
    [['--log-format'], '--log-format expects a value (text|json)'],
    [['--disk='], '--disk expects a path, got ""'],
    [['--socket='], '--socket expects a path, got ""'],
    [['--disk', 'a\0b'], '--disk expects a path without NUL bytes, got "a\\u0000b"'],
    [['--socket', 'x'.repeat(108)], '--socket expects a path of at most 107 bytes (a Unix socket address limit), got 108 bytes'],
    [['--disk'], '--disk expects a value (PATH)'],
    [['--queues'], '--queues expects a value (N)'],
    [['--log-level'], '--log-level expects a value (error|warn|info|debug)'],
    [
      ['--disk', '--read-only'],
      '--disk expects a value (PATH), got option "--read-only"; write --disk=VALUE for a value starting with "--"',
    ],
    [['--read-only=yes'], '--read-only takes no value, got "yes"'],
    [['--read-only='], '--read-only takes no value, got ""'],
    [['--bogus'], 'unknown option "--bogus" (see --help)'],
    [['--bogus=1'], 'unknown option "--bogus" (see --help)'],
    [['--Disk', 'x'], 'unknown option "--Disk" (see --help)'],
    [['disk.img'], 'unexpected argument "disk.img" (options start with "--"; see --help)'],
    [['-q', '4'], 'unexpected argument "-q" (options start with "--"; see --help)'],
    [['--'], 'unexpected argument "--" (options start with "--"; see --help)'],
    [['--queues', '2', 'extra'], 'unexpected argument "extra" (options start with "--"; see --help)'],
    [['--queues', '2', '--queues', '2'], '--queues given more than once'],
    [['--read-only', '--read-only'], '--read-only given more than once'],
    [['--disk=a', '--disk', 'b'], '--disk given more than once'],
  ];
  for (const [argv, message] of cases) {
    const err = thrown(argv);
    t.type(err, UsageError, `${JSON.stringify(argv)} is a UsageError`);
    t.equal((err as UsageError | undefined)?.code, 'E_USAGE');
    t.equal((err as Error | undefined)?.message, message, JSON.stringify(argv));
    t.notMatch((err as Error | undefined)?.message ?? '', /\n/, 'one line');
  }
  t.end();
});

t.test('--max-pinned-memory: bytes with an optional binary suffix', (t) => {
  t.equal(parseOptions(['--max-pinned-memory', '0']).maxPinnedMemory, 0);
  t.equal(parseOptions(['--max-pinned-memory', '65536']).maxPinnedMemory, 65536);
  t.equal(parseOptions(['--max-pinned-memory', '512M']).maxPinnedMemory, 512 * 2 ** 20);
  t.equal(parseOptions(['--max-pinned-memory', '2T']).maxPinnedMemory, 2 * 2 ** 40);
  for (const bad of ['', '4GB', '-1', '1.5G', 'lots', '99999999999999T']) {
    const err = thrown(['--max-pinned-memory', bad]);
    t.ok(err instanceof UsageError, `${JSON.stringify(bad)} is refused`);
    t.match((err as Error).message, /^--max-pinned-memory expects a size in bytes/, 'naming the option');
  }
  t.end();
});

t.test('--state-file: a path, "none", or the socket path + ".state"', (t) => {
  t.equal(parseOptions(['--socket', '/run/vublk/vm2.sock']).stateFile, '/run/vublk/vm2.sock.state', 'follows --socket');
  t.equal(
    parseOptions(['--state-file', '/srv/s.json', '--socket', '/run/a.sock']).stateFile,
    '/srv/s.json',
    'given: kept, wherever the socket is',
  );
  t.equal(parseOptions(['--state-file', 'none']).stateFile, null, '"none": in memory only');
  t.equal(parseOptions(['--state-file=./none']).stateFile, './none', 'a file named none is ./none');
  t.equal((thrown(['--state-file=']) as Error | undefined)?.message, '--state-file expects a path, got ""');
  t.equal((thrown(['--state-file']) as Error | undefined)?.message, '--state-file expects a value (PATH|none)');
  t.type(thrown(['--state-file', 'a', '--state-file', 'b']), UsageError, 'given twice');
  t.end();
});

t.test('--disk rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT] with --ceph-conf and --ceph-id', (t) => {
  const o = parseOptions(['--disk', 'rbd:vms/disk1', '--ceph-conf', '/etc/ceph/x.conf', '--ceph-id', 'hv1']);
  t.same(o.rbd, { pool: 'vms', namespace: '', image: 'disk1', snapshot: '' });
  t.equal(o.disk, 'rbd:vms/disk1');
  t.equal(o.cephConf, '/etc/ceph/x.conf');
  t.equal(o.cephId, 'hv1');
  t.same(parseOptions(['--disk=rbd:vms/tenant/disk1']).rbd, { pool: 'vms', namespace: 'tenant', image: 'disk1', snapshot: '' });
  t.same(parseOptions(['--disk=rbd:vms/disk1@before-upgrade']).rbd, {
    pool: 'vms',
    namespace: '',
    image: 'disk1',
    snapshot: 'before-upgrade',
  });
  t.same(parseOptions(['--disk=rbd:vms/t/disk1@s1']).rbd, { pool: 'vms', namespace: 't', image: 'disk1', snapshot: 's1' });
  t.equal(parseOptions(['--disk', './rbd.img']).rbd, undefined, 'a path is a path');
  const cases: Array<[string[], string]> = [
    [['--disk', 'rbd:vms'], '--disk rbd:vms: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, optionally @SNAPSHOT'],
    [['--disk', 'rbd:a/b/c/d'], '--disk rbd:a/b/c/d: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, optionally @SNAPSHOT'],
    [['--disk', 'rbd:vms/'], '--disk rbd:vms/: pool, namespace, image and snapshot names must be non-empty, without "/", "@" or spaces'],
    [
      ['--disk', 'rbd:vms/img@'],
      '--disk rbd:vms/img@: pool, namespace, image and snapshot names must be non-empty, without "/", "@" or spaces',
    ],
    [
      ['--disk', 'rbd:vms/img@a@b'],
      '--disk rbd:vms/img@a@b: pool, namespace, image and snapshot names must be non-empty, without "/", "@" or spaces',
    ],
    [['--disk', 'rbd:vms@s/img'], '--disk rbd:vms@s/img: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, optionally @SNAPSHOT'],
    [['--disk', 'rbd:vms/x', '--ceph-id', 'client.hv1'], '--ceph-id expects the name without "client.", e.g. "hv1"'],
    [['--disk', 'rbd:vms/x', '--ceph-id', 'a b'], '--ceph-id expects a Ceph client name (letters, digits, "_", ".", "-"), got "a b"'],
    [['--disk', 'x.img', '--ceph-conf', 'c'], '--ceph-conf applies to an rbd: disk only (--disk rbd:POOL/IMAGE)'],
    [['--ceph-id', 'hv1'], '--ceph-id applies to an rbd: disk only (--disk rbd:POOL/IMAGE)'],
  ];
  for (const [argv, message] of cases) {
    const err = thrown(argv);
    t.ok(err instanceof UsageError, `${argv.join(' ')} is a usage error`);
    t.equal((err as Error).message, message);
  }
  t.end();
});
