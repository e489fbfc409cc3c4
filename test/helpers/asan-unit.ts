// Builds a C++ unit test with AddressSanitizer + UBSan and runs it. The
// binary prints "ok <name>" per check, "FAIL <name>" and exit 1 at the
// first that fails, and "done" when every check ran.

import type { Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';

const root = path.resolve(__dirname, '..', '..', '..');

/** Compiles `sources` (repo-relative) with `libs`, runs the binary and checks its report; returns its stdout. */
export function runAsanUnit(t: Test, name: string, sources: string[], libs: string[] = []): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vublk-${name}-`));
  const bin = path.join(dir, name);
  try {
    execFileSync('g++', [
      '-std=c++17',
      '-O1',
      '-g',
      '-fsanitize=address,undefined',
      '-fno-sanitize-recover=all',
      '-fno-omit-frame-pointer',
      '-Wall',
      '-Wextra',
      '-Werror',
      ...sources.map((f) => path.join(root, f)),
      ...libs,
      '-o',
      bin,
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
    return r.stdout;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
