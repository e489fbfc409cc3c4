// Builds and runs the unit test of native/uring.cc (test/native/uring-unit.cc)
// under AddressSanitizer + UBSan: a failed io_uring submit must leave no SQE
// that the kernel could later issue with another request's iovecs, and the
// ring must count and cancel its outstanding ops (what a closing connection
// waits for).

import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';

const root = path.resolve(__dirname, '..', '..', '..');
const src = ['test/native/uring-unit.cc', 'native/uring.cc'].map((f) => path.join(root, f));

t.test('Uring: failed submit drops its SQEs; in-flight count; cancel', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-uring-'));
  const bin = path.join(dir, 'uring-unit');
  execFileSync('g++', [
    '-std=c++17', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
    '-fno-omit-frame-pointer', '-Wall', '-Wextra', '-Werror', ...src, '-l:liburing.a', '-o', bin,
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
  fs.rmSync(dir, { recursive: true, force: true });
  t.end();
});
