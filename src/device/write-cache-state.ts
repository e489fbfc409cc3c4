// The guest's write cache choice (CONFIG_WCE writeback byte), kept in a small
// JSON file so that it survives a restart of vublk: QEMU caches the config
// space and never repeats the guest's choice to a new backend.
//
//   {"version":1,"disk":{"path":"/abs/disk.img","kind":"file","dev":"2049","ino":"131"},"writeback":false}
//
// The file names the disk it belongs to, so a file left by another disk is
// refused instead of silently applied. It is replaced atomically (temporary
// file in the same directory, fsync, rename, fsync of the directory): a crash
// leaves the old file or the new one, never a torn one.

import fs from 'node:fs';
import path from 'node:path';
import { StateFileError } from '../errors';

export const STATE_FORMAT_VERSION = 1;
/** A state file is a few hundred bytes; anything this large is not one. */
const MAX_STATE_BYTES = 64 * 1024;

/** What identifies the disk a state file belongs to. Device numbers as decimal strings (they can exceed 2^53). */
export interface DiskIdentity {
  /** Canonical path (symlinks resolved), or rbd:POOL[/NAMESPACE]/IMAGE. */
  path: string;
  kind: 'file' | 'block' | 'rbd';
  /** Image files: st_dev and st_ino. Block devices: st_rdev (the device node's own inode is not stable). */
  dev?: string;
  ino?: string;
  rdev?: string;
}

/** The identity of the disk open as fd at path (what it is now, not what the path named at open). */
export function diskIdentity(diskPath: string, fd: number): DiskIdentity {
  const st = fs.fstatSync(fd, { bigint: true });
  let p = diskPath;
  try {
    p = fs.realpathSync(diskPath);
  } catch {
    // Renamed or removed since it was opened: the inode numbers still tell.
  }
  if (st.isBlockDevice()) return { path: p, kind: 'block', rdev: String(st.rdev) };
  return { path: p, kind: 'file', dev: String(st.dev), ino: String(st.ino) };
}

function sameDisk(a: DiskIdentity, b: unknown): boolean {
  if (typeof b !== 'object' || b === null) return false;
  const o = b as Record<string, unknown>;
  return o.path === a.path && o.kind === a.kind && o.dev === a.dev && o.ino === a.ino && o.rdev === a.rdev;
}

function describeDisk(d: unknown): string {
  if (typeof d !== 'object' || d === null) return 'an unnamed disk';
  const o = d as Record<string, unknown>;
  if (o.kind === 'rbd') return String(o.path);
  const ids = o.kind === 'block' ? `rdev ${String(o.rdev)}` : `dev ${String(o.dev)} ino ${String(o.ino)}`;
  return `${String(o.path)} (${ids})`;
}

function errCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/** The write cache mode of one disk, in one file. */
export class WriteCacheStateFile {
  constructor(
    readonly file: string,
    private readonly disk: DiskIdentity,
  ) {}

  /**
   * The saved mode (true: write-back), or undefined when there is no file.
   * Throws a StateFileError naming the file and the remedy for a file that
   * cannot be read, is not valid, has another format version or belongs to
   * another disk: never a silent default.
   */
  load(): boolean | undefined {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch (err) {
      if (errCode(err) === 'ENOENT') {
        this.checkDirectory();
        return undefined;
      }
      throw this.invalid(`cannot be read (${errCode(err)})`);
    }
    if (!st.isFile()) throw this.invalid('is not a regular file');
    if (st.size > MAX_STATE_BYTES) throw this.invalid(`is ${st.size} bytes, too large for a state file`);
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      throw this.invalid(`cannot be read (${errCode(err)})`);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw this.invalid('is not valid JSON');
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw this.invalid('is not a JSON object');
    const o = doc as Record<string, unknown>;
    if (o.version !== STATE_FORMAT_VERSION) {
      throw this.invalid(`has format version ${JSON.stringify(o.version) ?? 'none'}, this vublk reads version ${STATE_FORMAT_VERSION}`);
    }
    if (!sameDisk(this.disk, o.disk)) {
      throw this.invalid(`was written for another disk, ${describeDisk(o.disk)}, not ${describeDisk(this.disk)}`);
    }
    if (typeof o.writeback !== 'boolean') throw this.invalid('has no boolean "writeback"');
    return o.writeback;
  }

  /** Replaces the file atomically and durably; throws a StateFileError (the old file stays) on failure. */
  save(writeback: boolean): void {
    const doc = { version: STATE_FORMAT_VERSION, disk: this.disk, writeback };
    const dir = path.dirname(this.file);
    const tmp = path.join(dir, `.${path.basename(this.file)}.${process.pid}.tmp`);
    let step = 'open';
    try {
      const fd = fs.openSync(tmp, 'w', 0o644);
      try {
        step = 'write';
        fs.writeFileSync(fd, JSON.stringify(doc) + '\n');
        step = 'fsync';
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      step = 'rename';
      fs.renameSync(tmp, this.file);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw new StateFileError(`cannot write state file ${this.file}: ${step} failed (${errCode(err)})`, {
        path: this.file,
        syscall: step,
        cause: err,
      });
    }
    // The rename is in place; until the directory is synced a crash may undo it.
    try {
      const dfd = fs.openSync(dir, 'r');
      try {
        fs.fsyncSync(dfd);
      } finally {
        fs.closeSync(dfd);
      }
    } catch (err) {
      throw new StateFileError(`cannot write state file ${this.file}: fsync of ${dir} failed (${errCode(err)})`, {
        path: this.file,
        syscall: 'fsync',
        cause: err,
      });
    }
  }

  /** A file that is absent is fine; one that could never be created is found out now, not at the guest's first SET_CONFIG. */
  private checkDirectory(): void {
    const dir = path.dirname(this.file);
    let isDir = false;
    try {
      isDir = fs.statSync(dir).isDirectory();
    } catch {
      // reported below
    }
    if (!isDir) {
      throw new StateFileError(
        `state file ${this.file} cannot be created: ${dir} is not a directory; create it or pass another --state-file`,
        { path: this.file },
      );
    }
  }

  private invalid(what: string): StateFileError {
    return new StateFileError(
      `state file ${this.file} ${what}; delete it (the write cache mode goes back to write-back) or pass another --state-file`,
      { path: this.file },
    );
  }
}
