// native.GuestMemory: one connection's guest memory mapped once and shared
// by the Sessions of several data-plane threads through a process-wide
// token. Driven on the addon directly: the sharing is invisible over the
// socket.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native } from '../../src/native/binding';
import { allocateArrays } from '../../src/blk/shared-arrays';

const noop = { onChains: () => undefined, onCompletions: () => undefined, onViolation: () => undefined };
const REGION = 3 * 1024 * 1024 + 4096; // an odd size, to find it in /proc/self/maps

function session(disk: number, token?: number) {
  return new native.Session(1, 128, disk, 8, 4096, allocateArrays(128), noop, 0, false, token);
}

/** How many mappings of the region's size this process has. */
function regionMaps(): number {
  let n = 0;
  for (const l of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(l);
    if (m && parseInt(m[2]!, 16) - parseInt(m[1]!, 16) === REGION) n++;
  }
  return n;
}

t.test('two Sessions with one token see the same guest bytes', (t) => {
  const disk = fs.openSync('/dev/null', 'r');
  t.teardown(() => fs.closeSync(disk));
  const mem = new native.GuestMemory();
  const id = mem.addRegion(native.memfdCreate('guest', REGION), 0x100000, REGION, 0x7f0000000000, 0);
  t.equal(id, 0, 'first region is bufId 0');
  t.same(mem.regions(), [{ bufId: 0, mmapOffset: 0 }], 'regions() lists it');
  t.equal(mem.regionBytes(), REGION, 'regionBytes() counts it');
  t.ok(mem.token > 0, 'token is a positive number');
  t.not(new native.GuestMemory().token, mem.token, 'another GuestMemory has another token');

  const a = session(disk, mem.token);
  const b = session(disk, mem.token);
  a.writeGuest(0, 4096, Buffer.from('shared between sessions'));
  const out = new Uint8Array(23);
  b.readGuest(0, 4096, out);
  t.equal(Buffer.from(out).toString(), 'shared between sessions', 'b reads what a wrote');
  t.same(b.regions(), mem.regions(), 'a Session reports the shared regions');
  t.equal(b.regionBytes(), REGION, 'and their size');
  t.equal(regionMaps(), 1, 'the region is mapped once');

  t.throws(() => a.addRegion(native.eventfdCreate(), 0, 4096, 0, 0), /guest memory is shared/, 'addRegion on a sharing Session throws');
  t.throws(() => a.removeRegion(0x100000, REGION), /guest memory is shared/, 'removeRegion throws');
  t.throws(() => a.clearRegions(), /guest memory is shared/, 'clearRegions throws');

  mem.destroy();
  mem.destroy(); // idempotent
  t.equal(regionMaps(), 1, 'destroy() keeps the map while Sessions hold it');
  b.readGuest(0, 4096, out);
  t.equal(Buffer.from(out).toString(), 'shared between sessions', 'still readable through b');
  t.throws(() => session(disk, mem.token), /memoryToken names no GuestMemory/, 'a destroyed token finds nothing');
  a.destroy();
  t.equal(regionMaps(), 1, 'one Session still holds it');
  b.destroy();
  t.equal(regionMaps(), 0, 'unmapped after the last Session is destroyed');
  t.end();
});

t.test('GuestMemory checks regions like Session.addRegion, and closes the fd', (t) => {
  const mem = new native.GuestMemory();
  t.teardown(() => mem.destroy());
  const fd = native.memfdCreate('guest', 8192);
  t.throws(() => mem.addRegion(fd, 0, 16384, 0, 0), /beyond the end of its fd/, 'a region past its file end');
  t.throws(() => fs.fstatSync(fd), 'the fd is closed');
  t.equal(mem.addRegion(native.memfdCreate('g', 8192), 0, 4096, 0, 4096), 0, 'mmapOffset 4096');
  t.same(mem.regions(), [{ bufId: 0, mmapOffset: 4096 }], 'regions() carries the mmapOffset');
  t.equal(mem.removeRegion(0, 4096), true, 'removeRegion');
  t.same(mem.regions(), [], 'none left');
  mem.destroy();
  t.throws(() => mem.addRegion(native.memfdCreate('g', 4096), 0, 4096, 0, 0), /destroyed/, 'addRegion after destroy');
  t.end();
});

t.test('a Session in a worker thread uses a GuestMemory made on the main thread', async (t) => {
  const mem = new native.GuestMemory();
  t.teardown(() => mem.destroy());
  mem.addRegion(native.memfdCreate('guest', 65536), 0, 65536, 0x10000, 0);
  const binding = path.join(__dirname, '..', '..', 'src', 'native', 'binding.js');
  const arrays = path.join(__dirname, '..', '..', 'src', 'blk', 'shared-arrays.js');
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const { native } = require(${JSON.stringify(binding)});
    const { allocateArrays } = require(${JSON.stringify(arrays)});
    const noop = { onChains() {}, onCompletions() {}, onViolation() {} };
    const disk = fs.openSync('/dev/null', 'r');
    const s = new native.Session(1, 128, disk, 8, 4096, allocateArrays(128), noop, 0, false, workerData.token);
    const out = new Uint8Array(5);
    s.readGuest(0, 100, out);
    s.writeGuest(0, 200, Buffer.from('from worker'));
    s.destroy();
    fs.closeSync(disk);
    parentPort.postMessage(Buffer.from(out).toString());
  `;
  const reader = session(fs.openSync('/dev/null', 'r'), mem.token);
  t.teardown(() => reader.destroy());
  reader.writeGuest(0, 100, Buffer.from('hello'));
  const w = new Worker(code, { eval: true, workerData: { token: mem.token } });
  const got = await new Promise<string>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  t.equal(got, 'hello', 'the worker reads what the main thread wrote');
  const out = new Uint8Array(11);
  reader.readGuest(0, 200, out);
  t.equal(Buffer.from(out).toString(), 'from worker', 'the main thread reads what the worker wrote');
});
