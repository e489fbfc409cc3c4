// examples/qemu-attach.sh --dry-run: the QEMU command line it builds, read
// back into argv by bash itself (so the printed line is also valid shell),
// agrees with the daemon's options and with the command line vublk prints.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { MAX_QUEUES } from '../../src/blk/features';
import { MAX_QUEUE_SIZE, MIN_QUEUE_SIZE, parseOptions } from '../../src/cli/options';
import { qemuCommandLine } from '../../src/cli/qemu-command';
import { findCommand } from '../helpers/find-command';
import { repoRoot } from '../helpers/repo-root';

const script = path.join(repoRoot(), 'examples', 'qemu-attach.sh');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function attach(args: string[]): Run {
  const r = spawnSync('bash', [script, ...args], { encoding: 'utf8', timeout: 30000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The words bash makes of a printed command line. */
function shellWords(line: string): string[] {
  const r = spawnSync('bash', ['-c', 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', '_', line], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bash cannot parse ${line}: ${r.stderr}`);
  return r.stdout.split('\0').slice(0, -1);
}

/** argv of a --dry-run (which must succeed). */
function dryRun(args: string[]): string[] {
  const r = attach(['--dry-run', ...args]);
  if (r.status !== 0) throw new Error(`qemu-attach.sh --dry-run ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return shellWords(r.stdout.trim());
}

/** The value after each occurrence of option `opt` in argv. */
function optionValues(argv: readonly string[], opt: string): string[] {
  const out: string[] = [];
  argv.forEach((a, i) => {
    if (a === opt && i + 1 < argv.length) out.push(argv[i + 1]!);
  });
  return out;
}

/** QEMU 9.2 deprecated reconnect=SECONDS for reconnect-ms; the script picks by the installed version. */
function expectedReconnect(): string {
  if (findCommand('qemu-system-x86_64') === null) return 'reconnect=1';
  const v = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).stdout;
  const m = /version (\d+)\.(\d+)/.exec(v);
  const [major, minor] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  return major > 9 || (major === 9 && minor >= 2) ? 'reconnect-ms=1000' : 'reconnect=1';
}

t.test('--dry-run prints the whole vhost-user command line, the QEMU arguments after -- last', async (t) => {
  const argv = dryRun([
    '--socket', 'rel/dir/v.sock', '--queues', '3', '--queue-size', '256', '--mem', '2G', '--accel', 'tcg',
    '--', '-nographic', '-append', "console=ttyS0 it's quiet",
  ]);
  const sock = path.resolve('rel/dir/v.sock');
  t.same(argv, [
    'qemu-system-x86_64',
    '-accel', 'tcg,thread=multi', '-cpu', 'max',
    '-m', '2G',
    '-object', 'memory-backend-memfd,id=mem,size=2G,share=on',
    '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=vublk0,path=${sock},${expectedReconnect()}`,
    '-device', 'vhost-user-blk-pci,chardev=vublk0,num-queues=3,queue-size=256',
    '-nographic', '-append', "console=ttyS0 it's quiet",
  ]);
  t.same(dryRun(['--socket', sock, '--accel', 'kvm']).slice(1, 5), ['-accel', 'kvm', '-cpu', 'host'], 'kvm uses -cpu host');
});

t.test('the vhost-user parts equal the command line vublk prints at start-up', async (t) => {
  const sock = '/run/vublk/data.sock';
  for (const queues of [1, 4]) {
    // The daemon prints one option per line, ending in "...".
    const printed = qemuCommandLine(sock, queues).replace(/\\\n/g, ' ').split(/\s+/).filter((w) => w !== '' && w !== '...');
    const script = dryRun(['--socket', sock, '--queues', String(queues)]);
    for (const opt of ['-m', '-object', '-numa', '-chardev', '-device']) {
      // The daemon always prints reconnect=1; the script follows the installed QEMU.
      const fromScript = optionValues(script, opt).map((v) => v.replace('reconnect-ms=1000', 'reconnect=1'));
      t.same(fromScript, optionValues(printed, opt), `${opt} with ${queues} queue(s)`);
    }
  }
});

t.test('--queues and --queue-size take exactly the values vublk takes', async (t) => {
  const daemonTakes = (opt: string, v: string): boolean => {
    try {
      parseOptions([`--${opt}`, v]);
      return true;
    } catch {
      return false;
    }
  };
  const cases: Array<[string, string[]]> = [
    ['queues', ['0', '1', '2', '7', String(MAX_QUEUES), String(MAX_QUEUES + 1), 'x', '-1']],
    ['queue-size', [String(MIN_QUEUE_SIZE / 2), String(MIN_QUEUE_SIZE), '3', '100', '128', String(MAX_QUEUE_SIZE), String(MAX_QUEUE_SIZE * 2), 'x']],
  ];
  for (const [opt, values] of cases) {
    for (const v of values) {
      const r = attach(['--dry-run', `--${opt}`, v]);
      const want = daemonTakes(opt, v);
      t.equal(r.status, want ? 0 : 2, `--${opt} ${v}: ${want ? 'accepted' : 'refused'} as by vublk`, { stderr: r.stderr });
      if (!want) t.match(r.stderr, new RegExp(`^qemu-attach: --${opt} expects`), 'one line naming the option');
    }
  }
});

t.test('refuses what QEMU or vublk could not use, with exit status 2', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--dry-run', '--socket', '/tmp/a,b.sock'], /must not contain a comma/],
    [['--dry-run', '--accel', 'hvf'], /--accel expects kvm or tcg/],
    [['--dry-run', '--bogus'], /unknown option '--bogus'/],
    [['--socket'], /--socket expects a path/],
    [['--socket', '/nonexistent/vublk.sock'], /no vublk socket at \/nonexistent\/vublk.sock/],
  ];
  for (const [args, re] of cases) {
    const r = attach(args);
    t.equal(r.status, 2, args.join(' '));
    t.match(r.stderr, re);
    t.equal(r.stdout, '', 'prints no command line');
  }
  const help = attach(['--help']);
  t.equal(help.status, 0);
  t.match(help.stdout, /--dry-run +print the QEMU command line/);
});
