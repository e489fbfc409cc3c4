// Runs the integration suite once more with the daemon's addon built with
// AddressSanitizer + UBSan (build-asan/, scripts/build-asan.sh). The
// frontend side stays uninstrumented; every vublk child the suite starts is
// instrumented, and the suite's helper fails on any sanitizer report. The
// daemons run with one data-plane worker (--workers 1: every queue on one
// thread), which the plain run, one worker per queue, does not cover.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../helpers/vublk-process';
import { integrationPass } from '../helpers/integration-pass';

const asanAddon = path.join(repoRoot, 'build-asan', 'Release', 'vublk_native.node');

const missing = fs.existsSync(asanAddon) ? false : `ASan build missing at ${asanAddon}: scripts/build-asan.sh builds it`;
if (missing && process.env.CI) throw new Error(missing);

t.test('integration suite is clean under AddressSanitizer, with one data-plane worker', { skip: missing }, (t) => {
  integrationPass(t, 'under ASan with --workers 1', { VUBLK_TEST_ASAN: '1', VUBLK_TEST_WORKERS: '1' }, /AddressSanitizer|runtime error:/);
  t.end();
});
