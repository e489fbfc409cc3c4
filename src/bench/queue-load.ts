// One queue of `vublk bench`: iodepth requests kept in flight through fixed
// guest buffers, each refilled as it completes, one avail publish and at most
// one kick per batch.
//
// Per slot (request), in guest memory set aside once at start:
//   meta: header (16 bytes) | status (1 byte)     one 32-byte cell per slot
//   data: bs bytes, 4 KiB aligned, as `segments` descriptors of bs/segments
// Writes carry random bytes; each 512-byte sector of a write begins with its
// own LBA (u64) and the run's tag (u32), so what landed can be checked.

import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { BlkType, SECTOR_SIZE as SECTOR } from '../frontend/blk-driver';
import type { Frontend } from '../frontend/frontend';
import type { Completion } from '../frontend/guest-state';
import type { RingSeg } from '../frontend/split-ring';
import { LatencyHistogram } from './latency-histogram';

export const RW_MODES = ['randread', 'randwrite', 'read', 'write', 'randrw'] as const;
export type RwMode = (typeof RW_MODES)[number];

export interface Workload {
  rw: RwMode;
  bs: number;
  iodepth: number;
  segments: number;
  /** Percentage of reads in randrw. */
  rwmixread: number;
  /** Blocks of bs bytes the I/O ranges over, from offset 0. */
  blocks: number;
  /** Stamped after the LBA in every written sector. */
  tag: number;
}

const META_CELL = 32;
const PAGE = 4096;
const STATUS_NONE = 0xff;

/** Bytes of guest memory one queue needs (data, then meta cells). */
export function queueMemoryBytes(w: Pick<Workload, 'bs' | 'iodepth'>): number {
  return w.iodepth * (Math.ceil(w.bs / PAGE) * PAGE + META_CELL) + PAGE;
}

/** Descriptors one request takes: header, data segments, status. */
export function descsPerRequest(segments: number): number {
  return segments + 2;
}

interface Slot {
  view: DataView;
  hdr: number;
  status: number;
  data: number;
  readSegs: RingSeg[];
  writeSegs: RingSeg[];
  t0: number;
  completion: Completion;
}

export class QueueLoad {
  readonly hist = new LatencyHistogram();
  ios = 0;
  errors = 0;
  inFlight = 0;
  /** performance.now() of the last completion (or of start). */
  lastProgress = 0;
  /** Set by the runner: completed slots are no longer refilled. */
  stopping = false;
  /** Why the run cannot go on (the connection ended with requests in flight). */
  failure: Error | undefined;

  private readonly free: Slot[] = [];
  private readonly bytes: Uint8Array;
  private cursor: number;
  private readonly wantsWrites: boolean;

  constructor(
    private readonly fe: Frontend,
    readonly q: number,
    private readonly w: Workload,
    /** Completions per second of the run, shared by the queues. */
    private readonly timeline: number[],
    private readonly startMs: number,
    firstBlock: number,
  ) {
    const mem = fe.mem;
    if (!mem) throw new Error('front-end has no guest memory: call setup() first');
    const dataStride = Math.ceil(w.bs / PAGE) * PAGE;
    const base = mem.alloc(queueMemoryBytes(w), PAGE);
    const { region, offset } = mem.locateWithin(base, queueMemoryBytes(w));
    this.bytes = region.bytes;
    this.cursor = firstBlock % w.blocks;
    this.wantsWrites = w.rw === 'randwrite' || w.rw === 'write' || (w.rw === 'randrw' && w.rwmixread < 100);
    const segLen = w.bs / w.segments;
    for (let k = 0; k < w.iodepth; k++) {
      const dataGpa = base + k * dataStride;
      const metaGpa = base + w.iodepth * dataStride + k * META_CELL;
      const segs = (write: boolean): RingSeg[] => {
        const out: RingSeg[] = [{ gpa: metaGpa, len: 16, write: false }];
        for (let i = 0; i < w.segments; i++) out.push({ gpa: dataGpa + i * segLen, len: segLen, write });
        out.push({ gpa: metaGpa + 16, len: 1, write: true });
        return out;
      };
      const slot: Slot = {
        view: region.view,
        hdr: offset + (metaGpa - base),
        status: offset + (metaGpa - base) + 16,
        data: offset + (dataGpa - base),
        readSegs: segs(true),
        writeSegs: segs(false),
        t0: 0,
        completion: { resolve: () => this.complete(slot), reject: (err) => this.fail(err) },
      };
      if (this.wantsWrites) randomFillSync(this.bytes, slot.data, w.bs);
      this.free.push(slot);
    }
  }

  /** Puts every idle slot on the ring and publishes (kicking if the ring says so). */
  fill(): void {
    const ring = this.fe.queue(this.q).ring;
    let added = 0;
    while (!this.stopping && this.free.length > 0) {
      const slot = this.free.pop()!; // length checked
      const write = this.pickWrite();
      const block = this.pickBlock();
      const sector = (block * this.w.bs) / SECTOR;
      const v = slot.view;
      v.setUint32(slot.hdr, write ? BlkType.OUT : BlkType.IN, true);
      v.setUint32(slot.hdr + 4, 0, true);
      v.setUint32(slot.hdr + 8, sector % 0x1_0000_0000, true);
      v.setUint32(slot.hdr + 12, Math.floor(sector / 0x1_0000_0000), true);
      this.bytes[slot.status] = STATUS_NONE;
      if (write) this.stamp(slot, sector);
      slot.t0 = performance.now();
      ring.add(write ? slot.writeSegs : slot.readSegs, slot.completion);
      this.inFlight++;
      added++;
    }
    if (added > 0) this.fe.flush(this.q);
  }

  /** Takes what the device returned and refills; returns how many completed. */
  pump(): number {
    const n = this.fe.poll(this.q);
    if (n > 0) this.fill();
    return n;
  }

  private complete(slot: Slot): void {
    const now = performance.now();
    this.inFlight--;
    this.lastProgress = now;
    const status = this.bytes[slot.status];
    if (status !== 0) this.errors++; // IOERR, UNSUPP, or no status written (STATUS_NONE)
    this.ios++;
    this.hist.record((now - slot.t0) * 1e6);
    const second = Math.floor((now - this.startMs) / 1000);
    while (this.timeline.length <= second) this.timeline.push(0);
    this.timeline[second]!++;
    this.free.push(slot);
  }

  private fail(err: Error): void {
    this.inFlight--;
    this.failure ??= err;
  }

  private pickWrite(): boolean {
    switch (this.w.rw) {
      case 'randread':
      case 'read':
        return false;
      case 'randwrite':
      case 'write':
        return true;
      case 'randrw':
        return Math.random() * 100 >= this.w.rwmixread;
    }
  }

  private pickBlock(): number {
    if (this.w.rw === 'read' || this.w.rw === 'write') {
      const b = this.cursor;
      this.cursor = b + 1 === this.w.blocks ? 0 : b + 1;
      return b;
    }
    return Math.floor(Math.random() * this.w.blocks);
  }

  /** The LBA and tag at the start of each sector of the slot's data. */
  private stamp(slot: Slot, sector: number): void {
    const v = slot.view;
    for (let s = 0; s < this.w.bs / SECTOR; s++) {
      const at = slot.data + s * SECTOR;
      const lba = sector + s;
      v.setUint32(at, lba % 0x1_0000_0000, true);
      v.setUint32(at + 4, Math.floor(lba / 0x1_0000_0000), true);
      v.setUint32(at + 8, this.w.tag, true);
    }
  }
}
