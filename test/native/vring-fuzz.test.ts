// Fuzzes the native descriptor walker under AddressSanitizer + UBSan: the
// harness (native/fuzz/vring-fuzz.cc) builds hostile rings in two adjacent
// guest memory regions and checks every segment it gets back. Any
// out-of-bounds access aborts it.

import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';

const root = path.resolve(__dirname, '..', '..', '..');
const src = ['native/fuzz/vring-fuzz.cc', 'native/guest-memory.cc', 'native/split-virtqueue.cc', 'native/inflight.cc', 'native/crash-point.cc'].map((f) =>
  path.join(root, f),
);

t.test('descriptor walker survives hostile rings under ASan', (t) => {
  const bin = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-fuzz-')), 'vring-fuzz');
  execFileSync('g++', [
    '-std=c++17', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
    '-fno-omit-frame-pointer', '-Wall', '-Wextra', '-Werror', ...src, '-o', bin,
  ]);
  const iterations = 30000;
  const r = spawnSync(bin, [String(iterations), String(Date.now() % 1000)], {
    encoding: 'utf8',
    env: { ...process.env, ASAN_OPTIONS: 'abort_on_error=1:detect_leaks=1' },
  });
  t.equal(r.status, 0, `fuzzer exits cleanly\n${r.stderr.slice(-4000)}`);
  t.notMatch(r.stderr, /AddressSanitizer|runtime error/, 'no sanitizer report');
  const m = /iterations=(\d+) chains=(\d+) violations=(\d+)/.exec(r.stdout);
  t.ok(m, `summary line printed: ${r.stdout}`);
  if (m) {
    t.equal(Number(m[1]), iterations);
    // The generator must reach both sides: chains delivered and rules broken.
    t.ok(Number(m[2]) > 1000, `delivered chains (${m[2]})`);
    t.ok(Number(m[3]) > 1000, `caught violations (${m[3]})`);
  }
  fs.rmSync(path.dirname(bin), { recursive: true, force: true });
  t.end();
});
