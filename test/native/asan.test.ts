// Runs the integration suite once more with the daemon's addon built with
// AddressSanitizer + UBSan (build-asan/, scripts/build-asan.sh). The
// frontend side stays uninstrumented; every vublk child the suite starts is
// instrumented, and the suite's helper fails on any sanitizer report.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../helpers/vublk-process';

const asanAddon = path.join(repoRoot, 'build-asan', 'Release', 'vublk_native.node');
const integrationDir = path.join(repoRoot, 'dist', 'test', 'integration');

const missing = fs.existsSync(asanAddon) ? false : `ASan build missing at ${asanAddon}: scripts/build-asan.sh builds it`;
if (missing && process.env.CI) throw new Error(missing);

t.test('integration suite is clean under AddressSanitizer', { skip: missing }, (t) => {
  const files = fs.readdirSync(integrationDir).filter((f) => f.endsWith('.test.js'));
  t.ok(files.length > 0, 'there are integration tests to run');
  for (const f of files) {
    const r = spawnSync(process.execPath, [path.join(integrationDir, f)], {
      env: { ...process.env, VUBLK_TEST_ASAN: '1' },
      encoding: 'utf8',
      timeout: 10 * 60 * 1000,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    t.equal(r.status, 0, `${f} passes under ASan${r.status === 0 ? '' : `\n${out.slice(-6000)}`}`);
    t.notMatch(out, /AddressSanitizer|runtime error:/, `${f}: no sanitizer report`);
  }
  t.end();
});
