// A data-plane worker that polls its rings suppresses the guest's kicks
// while it polls; before it sleeps it turns them back on and looks once
// more. A request the driver published while it still saw kicks suppressed
// came with no kick: only that re-check finds it. The daemon runs with the
// test hook VUBLK_TEST_POLL_REARM_DELAY_MS, which holds each poll pass for
// 300 ms after its last empty look and before kicks come back on, so the
// frontend can publish into that window; without the re-check the request
// would wait for a kick that never comes.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus } from '../../src/frontend/blk-driver';
import { connect, startDaemon } from './harness';
import { tmpDir } from '../helpers/vublk-process';

const WANT_SKIPPED = 3;
const TIMEOUT_MS = 5000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no completion within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * An image on tmpfs where the kernel allows O_DIRECT there (completions come
 * back within the poll bound, so the worker starts polling), else in a
 * temporary directory on disk.
 */
function fastImage(bytes: number): string {
  for (const parent of ['/dev/shm', undefined]) {
    const dir = parent === undefined ? tmpDir('vublk-rearm-') : fs.mkdtempSync(path.join(parent, 'vublk-rearm-'));
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, bytes);
    try {
      fs.closeSync(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT));
      return file;
    } catch {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  throw new Error('no directory takes O_DIRECT');
}

for (const eventIdx of [false, true]) {
  t.test(`a request published while kicks are suppressed is served (EVENT_IDX ${eventIdx ? 'on' : 'off'})`, async (t) => {
    const bytes = 8 << 20;
    const image = fastImage(bytes);
    t.teardown(() => fs.rmSync(path.dirname(image), { recursive: true, force: true }));
    const d = await startDaemon(t, {
      diskFile: image,
      imageBytes: bytes,
      extraArgs: ['--workers', '1', '--poll-max-us', '2000'],
      env: { VUBLK_TEST_POLL_REARM_DELAY_MS: '300' },
    });
    const { fe, drv } = await connect(t, d, { eventIdx });
    let skipped = 0;
    let served = 0;
    const deadline = Date.now() + 60_000;
    while (skipped < WANT_SKIPPED && Date.now() < deadline) {
      // A completion right after its request: the worker starts polling after it.
      const first = await within(drv.read(0, 0, 4096), TIMEOUT_MS, 'a kicked read');
      if (first.status !== BlkStatus.OK) t.fail(`read failed with status ${first.status}`);
      await sleep(20); // inside the worker's held re-arm window, if a pass started
      const kicks = fe.kicksSent(0);
      const p = drv.read(0, 8, 4096);
      if (fe.kicksSent(0) !== kicks) {
        await within(p, TIMEOUT_MS, 'a kicked read');
        continue;
      }
      skipped++;
      const r = await within(p, TIMEOUT_MS, `read ${skipped} published with kicks suppressed`);
      if (r.status === BlkStatus.OK) served++;
    }
    t.equal(skipped, WANT_SKIPPED, `the driver published ${WANT_SKIPPED} reads without a kick (the worker had suppressed kicks)`);
    t.equal(served, skipped, 'each of them completed: the re-check after re-enabling kicks found it');
  });
}
