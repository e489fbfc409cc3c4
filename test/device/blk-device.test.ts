// BlkDevice and its write cache store: the saved mode is restored, a new
// mode is saved before it takes effect, and a save that fails refuses the
// SET_CONFIG and leaves the mode as it was.

import t from 'tap';
import { BlkDevice, type WriteCacheStore } from '../../src/device/blk-device';
import type { HostDisk } from '../../src/disk/host-disk';
import { StateFileError } from '../../src/errors';

const CFG_WRITEBACK = 32;

const fakeDisk: HostDisk = {
  path: '/fake/disk.img',
  fd: -1,
  sizeBytes: 64 << 20,
  kind: 'file',
  readOnly: false,
  rules: {
    offsetAlign: 512,
    memAlign: 512,
    lenAlign: 512,
    physicalBlock: 4096,
    ioMin: 0,
    ioOpt: 0,
    source: 'fallback',
    sizeBytes: 64 << 20,
    blockDevice: false,
  },
  discard: { discard: false, writeZeroes: true, mayUnmap: false, maxDiscardBytes: 0, maxWriteZeroesBytes: 1 << 30, discardAlign: 4096 },
};

/** A store in memory that records what happened and fails on demand. */
class FakeStore implements WriteCacheStore {
  readonly file = '/fake/vublk.sock.state';
  saves: Array<{ writeback: boolean; modeWhenSaved: boolean }> = [];
  failSaves = 0;
  device: BlkDevice | undefined;
  constructor(public saved: boolean | undefined) {}
  load(): boolean | undefined {
    return this.saved;
  }
  save(writeback: boolean): void {
    this.saves.push({ writeback, modeWhenSaved: this.device?.writeback() ?? true });
    if (this.failSaves > 0) {
      this.failSaves--;
      throw new StateFileError(`cannot write state file ${this.file}: fsync failed (EIO)`);
    }
    this.saved = writeback;
  }
}

function device(store: WriteCacheStore | undefined): BlkDevice {
  return new BlkDevice(fakeDisk, {
    queues: 1,
    queueSize: 128,
    readOnly: false,
    serial: 'x',
    logicalBlockSize: 512,
    fixedBuffers: false,
    writeCacheState: store,
  });
}

function configByte(d: BlkDevice): number {
  return d.readConfig(CFG_WRITEBACK, 1)![0]!;
}

t.test('without a store the mode starts write-back and changes in memory', (t) => {
  const d = device(undefined);
  t.equal(d.writeback(), true);
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(0)), true);
  t.equal(d.writeback(), false);
  t.equal(configByte(d), 0);
  t.end();
});

t.test('an empty store: write-back; a saved mode is restored', (t) => {
  t.equal(device(new FakeStore(undefined)).writeback(), true, 'nothing saved: write-back');
  const d = device(new FakeStore(false));
  t.equal(d.writeback(), false, 'saved write-through is restored');
  t.equal(configByte(d), 0, 'and is what GET_CONFIG shows');
  t.end();
});

t.test('a new mode is saved before it takes effect; the same mode again is not saved', (t) => {
  const store = new FakeStore(undefined);
  const d = device(store);
  store.device = d;
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(0)), true);
  t.same(store.saves, [{ writeback: false, modeWhenSaved: true }], 'saved while write-back was still in force');
  t.equal(d.writeback(), false);
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(0)), true, 'write-through again: accepted');
  t.equal(store.saves.length, 1, 'nothing to save');
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(7)), true, 'any non-zero byte is write-back');
  t.same(store.saves[1], { writeback: true, modeWhenSaved: false });
  t.equal(d.writeback(), true);
  t.end();
});

t.test('a save that fails refuses the write and keeps the mode, and puts the mode in force back in the file', (t) => {
  const store = new FakeStore(undefined);
  const d = device(store);
  store.device = d;
  store.failSaves = 1;
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(0)), false, 'refused');
  t.equal(d.writeback(), true, 'still write-back');
  t.equal(configByte(d), 1, 'GET_CONFIG still shows write-back');
  t.same(
    store.saves.map((s) => s.writeback),
    [false, true],
    'then the mode in force was saved again',
  );
  t.equal(store.saved, true);
  t.end();
});

t.test('writes the config space does not allow are refused without touching the store', (t) => {
  const store = new FakeStore(undefined);
  const d = device(store);
  t.equal(d.writeConfig(0, Uint8Array.of(0)), false, 'capacity is read-only');
  t.equal(d.writeConfig(CFG_WRITEBACK, Uint8Array.of(0, 0)), false, 'two bytes at writeback');
  t.same(store.saves, []);
  t.end();
});

t.test('a store that cannot be loaded stops the device from being made', (t) => {
  const store = new FakeStore(undefined);
  store.load = () => {
    throw new StateFileError('state file /fake/vublk.sock.state is not valid JSON; delete it');
  };
  t.throws(() => device(store), /is not valid JSON/);
  t.end();
});
