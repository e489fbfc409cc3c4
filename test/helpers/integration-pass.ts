// Runs the whole integration suite once more in child processes with extra
// environment (the ASan addon, another data-plane mode): each file must
// pass, and nothing in its output may match `forbidden`.

import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from './vublk-process';

const integrationDir = path.join(repoRoot, 'dist', 'test', 'integration');

export function integrationPass(t: Test, what: string, env: NodeJS.ProcessEnv, forbidden?: RegExp): void {
  const files = fs.readdirSync(integrationDir).filter((f) => f.endsWith('.test.js'));
  t.ok(files.length > 0, 'there are integration tests to run');
  for (const f of files) {
    const r = spawnSync(process.execPath, [path.join(integrationDir, f)], {
      env: { ...process.env, ...env },
      encoding: 'utf8',
      timeout: 10 * 60 * 1000,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    t.equal(r.status, 0, `${f} passes ${what}${r.status === 0 ? '' : `\n${out.slice(-6000)}`}`);
    if (forbidden) t.notMatch(out, forbidden, `${f}: nothing matches ${forbidden}`);
  }
}
