// The fds the fuzzer attaches to messages: what a hostile frontend can send
// with SCM_RIGHTS. Pipes are FIFOs (mkfifo): the daemon cannot tell one from
// a pipe(2), and Node can open each end with or without O_NONBLOCK (a
// FIFO's ends are separate open file descriptions, so the daemon's copy
// keeps the blocking mode we chose).
//
// The factory owns every fd it made, including the ends it keeps (a pipe's
// other end), and closes them in closeAll(), after the daemon has dropped
// the connection.

import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { native } from '../../../src/native/binding';
import type { Rng } from './rng';

export const FD_KINDS = [
  'eventfd',
  /** An eventfd whose counter is at its maximum (a write would block; ours is non-blocking). */
  'eventfd-full',
  /** Read end of an empty pipe whose writer stays open. */
  'pipe-read',
  /** Read end of a pipe with 3 bytes in it (a short eventfd read). */
  'pipe-read-data',
  /** Read end of a pipe whose writer is closed: EOF, readable for ever. */
  'pipe-read-hup',
  /** Non-blocking write end, reader open. */
  'pipe-write',
  /** Blocking write end of a full pipe, reader open: a write(2) blocks until someone reads. */
  'pipe-write-full-blocking',
  /** Write end whose reader is closed (EPIPE; POLLERR). */
  'pipe-write-hup',
  'memfd',
  'dev-null',
  'dev-zero',
  'regular-file',
] as const;
export type FdKind = (typeof FD_KINDS)[number];

/** Kinds that, as a kick fd, stay readable (or in error) for ever: finding 3, kick side. */
export const HUNG_UP_KINDS: ReadonlySet<FdKind> = new Set(['pipe-read-hup', 'pipe-write-hup']);
/** Kinds that, as a call fd, block the writer: finding 3, call side. */
export const BLOCKING_KINDS: ReadonlySet<FdKind> = new Set(['pipe-write-full-blocking']);

export interface FuzzFd {
  fd: number;
  kind: FdKind;
  /** memfd and regular-file: the size it was created with. */
  size?: number;
}

const EVENTFD_MAX = (1n << 64n) - 2n;
const TWO53 = 2 ** 53;

export class FdFactory {
  private readonly owned: number[] = [];
  private readonly fifos: string[] = [];
  private seq = 0;

  constructor(private readonly dir: string) {}

  /** Every fd handed out or kept by this factory since the last closeAll. */
  get count(): number {
    return this.owned.length;
  }

  make(kind: FdKind, rng: Rng): FuzzFd {
    switch (kind) {
      case 'eventfd':
        return { fd: this.own(native.eventfdCreate()), kind };
      case 'eventfd-full': {
        const fd = this.own(native.eventfdCreate());
        // The counter saturates at 2^64-2; one write takes at most 2^53 here.
        let left = EVENTFD_MAX;
        while (left > 0n) {
          const step = left > BigInt(TWO53) ? TWO53 : Number(left);
          native.eventfdWrite(fd, step);
          left -= BigInt(step);
        }
        return { fd, kind };
      }
      case 'pipe-read':
      case 'pipe-read-data':
      case 'pipe-read-hup': {
        const p = this.fifo();
        const r = this.own(fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK));
        const w = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
        fs.unlinkSync(p);
        if (kind === 'pipe-read-data') fs.writeSync(w, Buffer.from([1, 2, 3]));
        if (kind === 'pipe-read-hup') fs.closeSync(w);
        else this.own(w);
        return { fd: r, kind };
      }
      case 'pipe-write':
      case 'pipe-write-full-blocking':
      case 'pipe-write-hup': {
        const p = this.fifo();
        const r = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
        const blocking = kind === 'pipe-write-full-blocking';
        // With a reader open, opening the write end does not wait.
        const w = this.own(fs.openSync(p, fs.constants.O_WRONLY | (blocking ? 0 : fs.constants.O_NONBLOCK)));
        if (blocking) {
          // Fill it through a second, non-blocking open of the same pipe.
          const filler = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
          const chunk = Buffer.alloc(65536, 0xaa);
          try {
            for (;;) fs.writeSync(filler, chunk);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
          }
          fs.closeSync(filler);
        }
        fs.unlinkSync(p);
        if (kind === 'pipe-write-hup') fs.closeSync(r);
        else this.own(r);
        return { fd: w, kind };
      }
      case 'memfd': {
        const size = rng.pick([0, 4096, 65536, 1 << 20, 2 << 20, 4 << 20, rng.int(1, 1024) * 4096, rng.int(1, 8191)]);
        return { fd: this.own(native.memfdCreate('vublk-int-fuzz', size)), kind, size };
      }
      case 'dev-null':
        return { fd: this.own(fs.openSync('/dev/null', 'r+')), kind };
      case 'dev-zero':
        return { fd: this.own(fs.openSync('/dev/zero', 'r+')), kind };
      case 'regular-file': {
        const file = path.join(this.dir, `file-${this.seq++}`);
        const fd = this.own(fs.openSync(file, 'w+'));
        fs.unlinkSync(file);
        const size = rng.pick([0, 4096, 1 << 20, rng.int(1, 65536)]);
        fs.ftruncateSync(fd, size);
        return { fd, kind, size };
      }
    }
  }

  /** Closes everything this factory made (after the daemon dropped the connection). */
  closeAll(): void {
    for (const fd of this.owned.splice(0)) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed (cannot happen unless a test closed it itself)
      }
    }
  }

  /** Removes the spare FIFOs. */
  dispose(): void {
    this.closeAll();
    for (const p of this.fifos.splice(0)) fs.rmSync(p, { force: true });
  }

  private own(fd: number): number {
    this.owned.push(fd);
    return fd;
  }

  /** A fresh FIFO path (made 32 at a time: one mkfifo process per batch). */
  private fifo(): string {
    if (this.fifos.length === 0) {
      const batch = Array.from({ length: 32 }, () => path.join(this.dir, `fifo-${this.seq++}`));
      execFileSync('mkfifo', batch);
      this.fifos.push(...batch);
    }
    return this.fifos.pop()!; // filled above
  }
}
