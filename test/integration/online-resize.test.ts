// Online resize against a real daemon: the image changes size (truncate),
// vublk notices (SIGHUP, or its own poll within a few seconds), updates the
// capacity in config space and on the request path, and tells the frontend
// with CONFIG_CHANGE_MSG on the back-end channel. A shrink below written data
// is refused; one above it is applied; a frontend that never reads its
// back-end channel holds nothing up.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import { connect, logSince, pattern, readImage, startDaemon, until, type Daemon } from './harness';
import { BlkStatus, SECTOR_SIZE, parseBlkConfig } from '../../src/frontend/blk-driver';
import { DEFAULT_PROTOCOL_FEATURES } from '../../src/frontend/features';
import { type TestFrontend } from '../frontend/test-frontend';
import { ProtocolFeature, featureBit } from '../../src/vhost-user/protocol';
import { POLL_MS } from '../../src/device/capacity-watch';

const MIB = 1 << 20;
const IMAGE_BYTES = 32 * MIB;

async function capacity(fe: TestFrontend): Promise<number> {
  return Number(parseBlkConfig(await fe.readConfig()).capacity);
}

/** Waits for the daemon's capacity line after mark; returns it. */
async function capacityLine(d: Daemon, mark: number, re: RegExp, timeoutMs = 5000): Promise<string> {
  await until(() => logSince(d, mark).some((l) => re.test(l)), timeoutMs);
  return logSince(d, mark).find((l) => re.test(l)) ?? '(no line)';
}

function resizeImage(d: Daemon, bytes: number): void {
  fs.truncateSync(d.image, bytes);
}

function noWarnOrError(t: Test, d: Daemon, mark = 0): void {
  t.same(
    logSince(d, mark).filter((l) => /^vublk: (warn|error): /.test(l)),
    [],
    'no warn or error line from vublk',
  );
}

t.test('grow + SIGHUP: CONFIG_CHANGE_MSG, GET_CONFIG shows the new capacity, I/O past the old end works', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe, drv } = await connect(t, d);
  const oldSectors = IMAGE_BYTES / SECTOR_SIZE;
  t.equal(await capacity(fe), oldSectors, 'capacity before');
  t.equal((await drv.read(0, oldSectors, 4096)).status, BlkStatus.IOERR, 'a read past the end fails before the resize');

  const mark = d.v.stderr().length;
  const newBytes = 48 * MIB;
  resizeImage(d, newBytes);
  d.v.child.kill('SIGHUP');
  t.ok(await until(() => fe.configChanges === 1, 3000), 'the frontend got CONFIG_CHANGE_MSG on its back-end channel');
  const newSectors = newBytes / SECTOR_SIZE;
  t.equal(await capacity(fe), newSectors, 'GET_CONFIG shows the new capacity');
  t.match(
    await capacityLine(d, mark, /capacity changed/),
    new RegExp(`^vublk: info: capacity changed .*trigger=SIGHUP .*oldSectors=${oldSectors} newSectors=${newSectors}`),
    'one log line with trigger, old and new sectors',
  );

  const data = pattern(8192, 5);
  const sector = newSectors - data.length / SECTOR_SIZE;
  t.equal((await drv.write(0, sector, data)).status, BlkStatus.OK, 'a write at the new end works');
  const r = await drv.read(0, sector, data.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(data), 'and reads back');
  t.ok(readImage(d.image, sector * SECTOR_SIZE, data.length).equals(data), 'the image holds it');
  t.equal((await drv.read(0, newSectors, 512)).status, BlkStatus.IOERR, 'past the new end still fails');
  t.equal(fs.statSync(d.image).size, newBytes, 'the image did not grow past its size');
  noWarnOrError(t, d);
});

t.test('grow without SIGHUP: the poll notices within a few seconds', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe, drv } = await connect(t, d);
  const mark = d.v.stderr().length;
  const newBytes = 40 * MIB;
  resizeImage(d, newBytes);
  const started = Date.now();
  t.ok(await until(() => fe.configChanges === 1, POLL_MS + 3000), 'CONFIG_CHANGE_MSG arrives without a signal');
  t.ok(Date.now() - started <= POLL_MS + 3000, `within ${Date.now() - started} ms`);
  t.match(await capacityLine(d, mark, /capacity changed/), /trigger=poll /, 'the log names the poll');
  t.equal(await capacity(fe), newBytes / SECTOR_SIZE, 'GET_CONFIG shows the new capacity');
  const data = pattern(4096, 6);
  t.equal((await drv.write(0, newBytes / SECTOR_SIZE - 8, data)).status, BlkStatus.OK, 'I/O at the new end works');
  noWarnOrError(t, d);
});

t.test('shrink below written data is refused; a shrink above it is applied', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe, drv } = await connect(t, d);
  const oldSectors = IMAGE_BYTES / SECTOR_SIZE;
  const data = pattern(4096, 7);
  const written = (20 * MIB) / SECTOR_SIZE;
  t.equal((await drv.write(0, written, data)).status, BlkStatus.OK, 'the guest writes at 20 MiB');

  let mark = d.v.stderr().length;
  resizeImage(d, 16 * MIB);
  d.v.child.kill('SIGHUP');
  const refused = await capacityLine(d, mark, /shrink refused/);
  t.match(
    refused,
    new RegExp(
      `^vublk: error: disk shrank below data the guest wrote: shrink refused, capacity unchanged .*oldSectors=${oldSectors} newSectors=${(16 * MIB) / SECTOR_SIZE} writtenEndSector=${written + 8}`,
    ),
    'a clear error line naming the sectors',
  );
  t.equal(await capacity(fe), oldSectors, 'capacity unchanged');
  t.equal(fe.configChanges, 0, 'no CONFIG_CHANGE_MSG');
  const small = pattern(4096, 8);
  t.equal((await drv.write(0, 64, small)).status, BlkStatus.OK, 'I/O still works');
  const r = await drv.read(0, 64, small.length);
  t.ok(r.status === BlkStatus.OK && r.data.equals(small), 'and reads back');

  mark = d.v.stderr().length;
  const aboveBytes = 24 * MIB;
  resizeImage(d, aboveBytes);
  d.v.child.kill('SIGHUP');
  t.ok(await until(() => fe.configChanges === 1, 3000), 'a shrink above the written data: CONFIG_CHANGE_MSG');
  t.equal(await capacity(fe), aboveBytes / SECTOR_SIZE, 'GET_CONFIG shows the smaller capacity');
  t.match(
    await capacityLine(d, mark, /capacity changed/),
    new RegExp(`oldSectors=${oldSectors} newSectors=${aboveBytes / SECTOR_SIZE}`),
    'logged',
  );
  t.equal((await drv.read(0, aboveBytes / SECTOR_SIZE, 512)).status, BlkStatus.IOERR, 'I/O past the new end fails');
  t.equal((await drv.read(0, written, 4096)).status, BlkStatus.OK, 'I/O below it works');
});

t.test('a frontend that never reads its back-end channel does not hold the daemon up', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe, drv } = await connect(t, d);
  fe.setBackendReading(false);
  let bytes = IMAGE_BYTES;
  for (let i = 0; i < 8; i++) {
    bytes += MIB;
    const mark = d.v.stderr().length;
    resizeImage(d, bytes);
    d.v.child.kill('SIGHUP');
    await capacityLine(d, mark, /capacity changed/);
    t.equal(await capacity(fe), bytes / SECTOR_SIZE, `resize ${i + 1}: GET_CONFIG answers with the new capacity`);
    const data = pattern(4096, 10 + i);
    const sector = bytes / SECTOR_SIZE - 8;
    t.equal((await drv.write(0, sector, data)).status, BlkStatus.OK, `resize ${i + 1}: I/O at the new end works`);
  }
  t.equal(fe.configChanges, 0, 'nothing read from the back-end channel yet');
  fe.setBackendReading(true);
  t.ok(await until(() => fe.configChanges >= 1), `the notifications wait in the channel (${fe.configChanges} read once reading resumes)`);
  noWarnOrError(t, d);
});

t.test('without BACKEND_REQ there is no channel: the resize still applies', async (t) => {
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES });
  const { fe } = await connect(t, d, { protocolFeatures: DEFAULT_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.BACKEND_REQ) });
  const mark = d.v.stderr().length;
  resizeImage(d, 36 * MIB);
  d.v.child.kill('SIGHUP');
  await capacityLine(d, mark, /capacity changed/);
  t.equal(await capacity(fe), (36 * MIB) / SECTOR_SIZE, 'GET_CONFIG shows it');
  t.equal(fe.configChanges, 0, 'no message');
  noWarnOrError(t, d);
});
