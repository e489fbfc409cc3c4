// Online resize: notices that the host disk changed size (a poll every
// POLL_MS, at once on SIGHUP, or on an RBD image's header update) and has
// the device apply it; the device
// tells each connection (CONFIG_CHANGE_MSG on the back-end channel).
//
// A shrink below the highest sector written since this vublk started is
// refused (BlkDevice.resize): the guest keeps its old capacity. That mark is
// kept in memory only: a restarted vublk knows nothing of earlier writes, and
// a file already truncated has lost its tail whatever vublk then tells the
// guest; the refusal keeps a guest from being handed a disk smaller than the
// data it wrote, and the log line says what happened.

import type { BlkDevice, ResizeResult } from './blk-device';
import { log } from '../log';

/** How often the disk's size is looked at without a SIGHUP. */
export const POLL_MS = 2000;

export type ResizeTrigger = 'SIGHUP' | 'poll' | 'rbd-update';

export class CapacityWatch {
  private timer: NodeJS.Timeout | undefined;
  /** The size last acted on: the poll acts (and logs) once per new size. */
  private lastBytes: number;
  private readFailed = false;

  constructor(
    private readonly device: BlkDevice,
    /** The host disk's size now (fstat or BLKGETSIZE64); throws on failure. */
    private readonly readSize: () => number,
    private readonly pollMs = POLL_MS,
  ) {
    this.lastBytes = device.disk.sizeBytes;
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.check('poll'), this.pollMs);
    // The poll alone never keeps the daemon alive.
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Looks at the size now; SIGHUP acts even on a size seen before (a refused shrink is tried again). */
  check(trigger: ResizeTrigger): ResizeResult | undefined {
    let bytes: number;
    try {
      bytes = this.readSize();
    } catch (err) {
      if (!this.readFailed || trigger === 'SIGHUP') {
        log.warn('cannot read the disk size; capacity unchanged', { disk: this.device.disk.path, trigger, error: err as Error });
      }
      this.readFailed = true;
      return undefined;
    }
    this.readFailed = false;
    if (bytes === this.lastBytes && trigger !== 'SIGHUP') return undefined;
    this.lastBytes = bytes;
    const r = this.device.resize(bytes);
    const fields = { disk: this.device.disk.path, trigger, bytes, oldSectors: r.before, newSectors: r.after };
    if (r.outcome === 'applied') {
      log.info('capacity changed', fields);
    } else if (r.outcome === 'refused') {
      log.error('disk shrank below data the guest wrote: shrink refused, capacity unchanged', {
        ...fields,
        writtenEndSector: r.writtenEnd,
      });
    } else if (trigger === 'SIGHUP') {
      log.info('capacity unchanged', fields);
    }
    return r;
  }
}
