// The daemon's stderr as machines read it: with --log-format json every line
// is one JSON object (through start-up, a frontend doing I/O, a protocol
// violation and shutdown); with stderr connected to "journald" (JOURNAL_STREAM
// naming it) every line starts with its syslog priority.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BlkDriver } from '../../src/frontend/blk-driver';
import { Frontend } from '../../src/frontend/frontend';
import { makeImage, runVublk, startVublk, tmpDir, type VublkProcess } from '../helpers/vublk-process';

const IMAGE_BYTES = 32 << 20;

/** A frontend writes and reads 4 KiB, then one sends a message with an unknown request number. */
async function exercise(t: Test, v: VublkProcess): Promise<void> {
  const fe = await Frontend.connect(v.socket);
  try {
    await fe.setup({ queues: 1, memory: { regions: [4 << 20] } });
    const drv = new BlkDriver(fe);
    const data = Buffer.alloc(4096, 0x5a);
    t.equal((await drv.write(0, 8, data)).status, 0, 'write');
    t.ok((await drv.read(0, 8, data.length)).data.equals(data), 'read back');
  } finally {
    fe.close();
  }
  const bad = net.connect(v.socket);
  await new Promise<void>((resolve, reject) => bad.once('connect', resolve).once('error', reject));
  const header = Buffer.alloc(12);
  header.writeUInt32LE(0xfff0, 0); // no such request
  header.writeUInt32LE(1, 4); // version 1
  bad.end(header);
}

function lines(t: Test, text: string): string[] {
  t.equal(text.at(-1), '\n', 'stderr ends with a whole line');
  return text.slice(0, -1).split('\n');
}

t.test('--log-format json: every stderr line is one JSON object', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = makeImage(dir, IMAGE_BYTES);
  const socket = path.join(dir, 'v.sock');
  const v = await startVublk(['--disk', disk, '--socket', socket, '--log-format', 'json', '--log-level', 'debug'], {
    ready: /"msg":"serving"/,
  });
  await exercise(t, v);
  await v.waitForLog(/"msg":"disconnecting frontend: protocol violation"/);
  const r = await v.stop('SIGTERM');
  t.equal(r.code, 0, 'exits 0');

  const records = lines(t, r.stderr).map((line) => {
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new Error(`stderr line is not JSON: ${line}`);
    }
  });
  t.ok(records.length >= 10, `${records.length} records`);
  const levels = new Set(['error', 'warn', 'info', 'debug']);
  const bad = records.filter((rec) => !levels.has(rec.level as string) || typeof rec.msg !== 'string' || typeof rec.time !== 'number');
  t.same(bad, [], 'each has a level name, a msg and a time');
  t.same(new Set(records.map((rec) => rec.level)), new Set(['debug', 'info', 'warn']), 'debug, info and warn seen');
  t.notOk(
    records.some((rec) => 'pid' in rec || 'hostname' in rec),
    'no pid or hostname',
  );

  const serving = records.find((rec) => rec.msg === 'serving');
  t.match(serving, {
    level: 'info',
    disk,
    kind: 'file',
    bytes: IMAGE_BYTES,
    socket,
    queues: 1,
    readOnly: false,
    features: /FLUSH/,
  });
  const violation = records.find((rec) => rec.msg === 'disconnecting frontend: protocol violation');
  t.match(violation, { level: 'warn', conn: Number, rule: /65520|0xfff0|unknown/i });
  t.match(records.at(-1), { level: 'info', msg: /./ });
});

t.test('--log-format json: a start-up failure is one JSON error line', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = await runVublk(['--disk', path.join(dir, 'nope.img'), '--socket', path.join(dir, 's'), '--log-format=json']);
  t.equal(r.code, 1);
  const [only, ...rest] = lines(t, r.stderr);
  t.same(rest, [], 'one line');
  t.match(JSON.parse(only!), { level: 'error', msg: /nope\.img: no such file/, time: Number });
});

t.test('stderr that is the JOURNAL_STREAM gets priority prefixes; an inherited one that is not does not', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = makeImage(dir, IMAGE_BYTES);
  const run = async (journalStream: string, format: string, ready: RegExp): Promise<string[]> => {
    const socket = path.join(dir, `${format}.sock`);
    // sh finds its stderr's (the pipe to this test) device and inode, as systemd
    // would for the journal's socket, and execs node in the same process.
    const setEnv = `JOURNAL_STREAM=${journalStream}; export JOURNAL_STREAM; exec "$@"`;
    const v = await startVublk(['--disk', disk, '--socket', socket, '--log-format', format], {
      wrapper: ['sh', '-c', setEnv, 'sh'],
      ready,
    });
    await exercise(t, v);
    await v.waitForLog(/protocol violation/);
    const r = await v.stop('SIGTERM');
    t.equal(r.code, 0, `${format}: exits 0`);
    return lines(t, r.stderr);
  };
  const ownStderr = '$(stat -L -c %d:%i /proc/self/fd/2)';

  const text = await run(ownStderr, 'text', /^<6>vublk: info: serving /);
  t.same(
    text.filter((l) => !/^<[3467]>vublk: (error|warn|info|debug): /.test(l)),
    [],
    'text: every line has a prefix',
  );
  t.ok(
    text.some((l) => l.startsWith('<4>vublk: warn: disconnecting frontend: protocol violation conn=')),
    'warn is <4>',
  );
  t.ok(
    text.some((l) => l.startsWith('<6>vublk: info: serving disk=')),
    'info is <6>',
  );

  const json = await run(ownStderr, 'json', /^<6>\{.*"msg":"serving"/);
  for (const l of json) {
    const m = /^<([0-9])>(.*)$/.exec(l);
    const rec = m ? (JSON.parse(m[2]!) as Record<string, unknown>) : undefined;
    if (rec === undefined || !('level' in rec) || 'time' in rec) {
      t.fail(`json in journald: a <N> prefix, then an object with level and without time: ${l}`);
      break;
    }
    t.equal(Number(m![1]), { error: 3, warn: 4, info: 6, debug: 7 }[rec.level as string], `${rec.msg}: priority`);
  }

  const notJournal = await run('1:1', 'text', /^vublk: info: serving /);
  t.same(
    notJournal.filter((l) => !l.startsWith('vublk: ')),
    [],
    'JOURNAL_STREAM naming another file: plain lines',
  );
});
