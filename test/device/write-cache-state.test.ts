// The write cache state file: what it accepts, what it refuses (naming the
// file and the remedy), and how it is replaced.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { StateFileError } from '../../src/errors';
import { STATE_FORMAT_VERSION, WriteCacheStateFile, diskIdentity, type DiskIdentity } from '../../src/device/write-cache-state';
import { makeImage, tmpDir } from '../helpers/vublk-process';

function setup(t: Test): { dir: string; disk: DiskIdentity; file: string } {
  const dir = tmpDir('vublk-state-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = makeImage(dir, 1 << 20);
  const fd = fs.openSync(image, 'r');
  const disk = diskIdentity(image, fd);
  fs.closeSync(fd);
  return { dir, disk, file: path.join(dir, 'vublk.sock.state') };
}

/** What load() throws, or undefined. */
function loadError(s: WriteCacheStateFile): unknown {
  try {
    s.load();
  } catch (err) {
    return err;
  }
  return undefined;
}

t.test('the identity of a disk: canonical path, device and inode', (t) => {
  const { dir, disk } = setup(t);
  const st = fs.statSync(path.join(dir, 'disk.img'), { bigint: true });
  t.same(disk, { path: fs.realpathSync(path.join(dir, 'disk.img')), kind: 'file', dev: String(st.dev), ino: String(st.ino) });
  fs.symlinkSync(path.join(dir, 'disk.img'), path.join(dir, 'link.img'));
  const fd = fs.openSync(path.join(dir, 'link.img'), 'r');
  t.same(diskIdentity(path.join(dir, 'link.img'), fd), disk, 'a symlink names the same disk');
  fs.closeSync(fd);
  t.end();
});

t.test('no file: nothing saved; save then load gives the mode back', (t) => {
  const { disk, file } = setup(t);
  const s = new WriteCacheStateFile(file, disk);
  t.equal(s.load(), undefined, 'absent file: undefined (the default applies)');
  s.save(false);
  t.equal(s.load(), false, 'write-through comes back');
  t.same(JSON.parse(fs.readFileSync(file, 'utf8')), { version: STATE_FORMAT_VERSION, disk, writeback: false }, 'the documented format');
  s.save(true);
  t.equal(new WriteCacheStateFile(file, disk).load(), true, 'a new reader sees write-back');
  t.same(fs.readdirSync(path.dirname(file)).sort(), ['disk.img', 'vublk.sock.state'], 'no temporary file is left behind');
  t.end();
});

t.test('save replaces the file by rename (a reader holding the old one keeps it whole)', (t) => {
  const { disk, file } = setup(t);
  const s = new WriteCacheStateFile(file, disk);
  s.save(true);
  const before = fs.statSync(file).ino;
  const old = fs.openSync(file, 'r');
  s.save(false);
  t.not(fs.statSync(file).ino, before, 'a new inode took the name');
  t.match(fs.readFileSync(old, 'utf8'), /"writeback":true/, 'the old inode was never rewritten');
  fs.closeSync(old);
  t.end();
});

t.test('a save that fails throws a StateFileError naming the file, and leaves what was there and no debris', (t) => {
  const { dir, disk } = setup(t);
  const missing = path.join(dir, 'no-such-dir', 'x.state');
  const err = (() => {
    try {
      new WriteCacheStateFile(missing, disk).save(false);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.type(err, StateFileError);
  t.match((err as Error).message, `cannot write state file ${missing}: open failed (ENOENT)`);

  // The name is taken by a non-empty directory: the rename fails.
  const blocked = path.join(dir, 'blocked.state');
  fs.mkdirSync(blocked);
  fs.writeFileSync(path.join(blocked, 'keep'), 'x');
  t.throws(() => new WriteCacheStateFile(blocked, disk).save(false), /cannot write state file .*blocked\.state: rename failed/);
  t.same(fs.readdirSync(dir).sort(), ['blocked.state', 'disk.img'], 'the temporary file was removed');
  t.end();
});

t.test('a file vublk cannot trust stops it, naming the file and what to do', (t) => {
  const { dir, disk, file } = setup(t);
  const other = makeImage(dir, 1 << 20, 'other.img');
  const ofd = fs.openSync(other, 'r');
  const otherDisk = diskIdentity(other, ofd);
  fs.closeSync(ofd);
  const good = { version: STATE_FORMAT_VERSION, disk, writeback: false };
  const cases: Array<[string, () => void, RegExp]> = [
    ['not JSON', () => fs.writeFileSync(file, '{"version":1,'), /is not valid JSON/],
    ['empty', () => fs.writeFileSync(file, ''), /is not valid JSON/],
    ['not an object', () => fs.writeFileSync(file, '[1]'), /is not a JSON object/],
    [
      'another format version',
      () => fs.writeFileSync(file, JSON.stringify({ ...good, version: 2 })),
      /has format version 2, this vublk reads version 1/,
    ],
    ['no format version', () => fs.writeFileSync(file, JSON.stringify({ disk, writeback: false })), /has format version none/],
    [
      'another disk',
      () => fs.writeFileSync(file, JSON.stringify({ ...good, disk: otherDisk })),
      /was written for another disk, .*other\.img/,
    ],
    [
      'same path, another inode',
      () => fs.writeFileSync(file, JSON.stringify({ ...good, disk: { ...disk, ino: '1' } })),
      /was written for another disk/,
    ],
    [
      'no disk',
      () => fs.writeFileSync(file, JSON.stringify({ version: 1, writeback: false })),
      /was written for another disk, an unnamed disk/,
    ],
    ['writeback not a boolean', () => fs.writeFileSync(file, JSON.stringify({ ...good, writeback: 0 })), /has no boolean "writeback"/],
    ['a directory', () => fs.mkdirSync(file), /is not a regular file/],
    ['too large', () => fs.writeFileSync(file, ' '.repeat(100 * 1024)), /is 102400 bytes, too large/],
  ];
  for (const [what, make, why] of cases) {
    fs.rmSync(file, { recursive: true, force: true });
    make();
    const err = loadError(new WriteCacheStateFile(file, disk));
    t.type(err, StateFileError, `${what}: a StateFileError`);
    t.equal((err as StateFileError).code, 'E_STATE');
    t.match((err as Error).message, why, `${what}: says why`);
    t.match((err as Error).message, `state file ${file} `, `${what}: names the file`);
    t.match((err as Error).message, /delete it .* or pass another --state-file/, `${what}: says what to do`);
  }
  t.end();
});

t.test('an unreadable file is an error, not a default', { skip: process.getuid?.() === 0 ? 'root reads any file' : false }, (t) => {
  const { disk, file } = setup(t);
  new WriteCacheStateFile(file, disk).save(false);
  fs.chmodSync(file, 0);
  t.match((loadError(new WriteCacheStateFile(file, disk)) as Error).message, /cannot be read \(EACCES\)/);
  t.end();
});

t.test('a state file under a path that is not a directory cannot be read', (t) => {
  const { dir, disk } = setup(t);
  const file = path.join(dir, 'disk.img', 'x.state');
  t.match((loadError(new WriteCacheStateFile(file, disk)) as Error).message, /cannot be read \(ENOTDIR\)/);
  t.end();
});

t.test('an absent file in a directory that does not exist is refused at load, not at the first save', (t) => {
  const { dir, disk } = setup(t);
  const file = path.join(dir, 'no-such-dir', 'x.state');
  const err = loadError(new WriteCacheStateFile(file, disk));
  t.type(err, StateFileError);
  t.equal(
    (err as Error).message,
    `state file ${file} cannot be created: ${path.dirname(file)} is not a directory; create it or pass another --state-file`,
  );
  t.end();
});
