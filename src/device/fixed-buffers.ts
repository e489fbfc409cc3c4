// Whether a connection registers its guest memory with io_uring as fixed
// buffers (REGISTERED_BUF). Registration faults in and pins every byte of
// every region the frontend announced; RLIMIT_MEMLOCK does not bound it for
// root (CAP_IPC_LOCK), so a frontend with a huge sparse memfd could make the
// daemon allocate host memory until the OOM killer acts. The bound is
// --max-pinned-memory: past it nothing is registered and the connection is
// served with plain reads and writes. Either refusal is one warning per
// connection.

import { log, type LogFields } from '../log';

export interface FixedBufferOptions {
  /** --no-fixed-buffers turns registration off (no warning then). */
  enabled: boolean;
  /** --max-pinned-memory, in bytes. */
  maxPinnedBytes: number;
  conn: number;
}

export class FixedBufferPolicy {
  private warned = false;

  constructor(private readonly opts: FixedBufferOptions) {}

  /**
   * Registers guest memory of `bytes` in total (called with I/O drained)
   * when allowed; returns whether it is registered now. `register` throws
   * when the kernel refuses (e.g. RLIMIT_MEMLOCK).
   */
  apply(bytes: number, register: () => number): boolean {
    if (!this.opts.enabled || bytes === 0) return false;
    const limit = this.opts.maxPinnedBytes;
    if (bytes > limit) {
      this.warn('guest memory exceeds --max-pinned-memory: not registering it with io_uring; using plain reads and writes', {
        guestBytes: bytes,
        maxPinnedBytes: limit,
      });
      return false;
    }
    try {
      const buffers = register();
      log.debug('guest memory registered as io_uring fixed buffers', { conn: this.opts.conn, buffers, bytes });
      return true;
    } catch (err) {
      this.warn('cannot register guest memory with io_uring; using plain reads and writes', { error: err });
      return false;
    }
  }

  private warn(message: string, fields: LogFields): void {
    if (this.warned) return;
    this.warned = true;
    log.warn(message, { conn: this.opts.conn, ...fields });
  }
}
