// Builds and runs the unit test of the inflight region
// (test/native/inflight-unit.cc: native/inflight.cc through
// native/split-virtqueue.cc) under AddressSanitizer + UBSan: a SIGKILL at
// every point of the completion publish is recovered from, a stale region
// keeps the heads it marks, bad regions are refused, and a head made
// available twice is a violation.

import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';

const root = path.resolve(__dirname, '..', '..', '..');
const src = [
  'test/native/inflight-unit.cc',
  'native/inflight.cc',
  'native/crash-point.cc',
  'native/split-virtqueue.cc',
  'native/guest-memory.cc',
].map((f) => path.join(root, f));

t.test('inflight region: crash points, recovery, bad regions', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-inflight-'));
  const bin = path.join(dir, 'inflight-unit');
  execFileSync('g++', [
    '-std=c++17', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
    '-fno-omit-frame-pointer', '-Wall', '-Wextra', '-Werror', ...src, '-o', bin,
  ]);
  const r = spawnSync(bin, [], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ASAN_OPTIONS: 'abort_on_error=1:detect_leaks=1' },
  });
  t.equal(r.status, 0, `unit test exits cleanly\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  t.notMatch(r.stderr, /AddressSanitizer|runtime error/, 'no sanitizer report');
  t.match(r.stdout, /^done$/m, 'every check ran');
  t.notMatch(r.stdout, /^FAIL/m, 'no check failed');
  t.match(r.stdout, /^ok inflight-cleared: pop delivers/m, 'the last crash point was recovered from');
  fs.rmSync(dir, { recursive: true, force: true });
  t.end();
});
