// A file system root for `systemd-analyze verify --root`: systemd's own
// units (the targets ours depend on) copied in, so our units are checked as
// installed, including that ExecStart='s program exists and is executable.

import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tmpDir } from '../helpers/vublk-process';

const SYSTEM_UNITS = '/usr/lib/systemd/system';

export function systemdAnalyzeMissing(): string | false {
  const r = spawnSync('systemd-analyze', ['--version']);
  if (r.status === 0) return false;
  // CI installs systemd's tools: there a skip would hide a missing step.
  if (process.env.CI) throw new Error('systemd-analyze is not installed (.ci/run installs the systemd package)');
  return 'systemd-analyze is not installed';
}

/** An empty root with systemd's units; teardown removes it. */
export function unitRoot(t: Test): string {
  const root = tmpDir('vublk-root-');
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  fs.cpSync(SYSTEM_UNITS, path.join(root, SYSTEM_UNITS), { recursive: true, verbatimSymlinks: true });
  return root;
}

/** An executable stand-in for vublk at `exec` inside root. */
export function stubExecutable(root: string, exec: string): void {
  fs.mkdirSync(path.dirname(path.join(root, exec)), { recursive: true });
  fs.writeFileSync(path.join(root, exec), '#!/bin/sh\n', { mode: 0o755 });
}

/**
 * Runs systemd-analyze verify --root on units (names, e.g. vublk@data.service)
 * and returns its exit status and the lines it printed about vublk units.
 */
export function verifyUnits(root: string, units: string[]): { code: number | null; vublkLines: string[]; output: string } {
  const r = spawnSync('systemd-analyze', ['verify', `--root=${root}`, ...units], { encoding: 'utf8', timeout: 60_000 });
  const output = `${r.stdout}${r.stderr}`;
  return { code: r.status, output, vublkLines: output.split('\n').filter((l) => /vublk/.test(l)) };
}

/** `systemd-analyze security --offline` on unit inside root: the exposure (NaN if none printed) and the settings it marks ✗. */
export function securityReport(root: string, unit: string): { exposure: number; failed: string[]; output: string } {
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', `--root=${root}`, unit], { encoding: 'utf8', timeout: 60_000 });
  const m = new RegExp(`Overall exposure level for ${unit.replace(/[.@]/g, '\\$&')}: ([0-9.]+)`).exec(r.stdout);
  const failed = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('✗'))
    .map((l) => l.slice(1).trim().split(/\s+/)[0]!);
  return { exposure: m ? Number(m[1]) : NaN, failed, output: `${r.stdout}${r.stderr}` };
}
