// The frontend's side of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, as QEMU keeps
// it: one region per device, created by the first GET_INFLIGHT_FD, kept (fd
// and mapping) across backend restarts and reconnects, handed back with
// SET_INFLIGHT_FD on every start. The caller owns the object and closes it.
//
// Layout (docs/interop/vhost-user.rst, "Inflight I/O tracking"), one queue
// region per queue, each mmapSize / numQueues bytes:
//
//   +0 features u64 | +8 version u16 | +10 desc_num u16
//   +12 last_batch_head u16 | +14 used_idx u16
//   +16 desc[desc_num]: +0 inflight u8 | +1 padding[5] | +6 next u16 | +8 counter u64

import { native } from '../native/binding';

const QUEUE_HEADER = 16;
const DESC_STATE = 16;

export interface DescState {
  inflight: number;
  next: number;
  counter: bigint;
}

/** Read (and, for tests that forge a region, write) access to one queue's region. */
export class QueueRegionView {
  constructor(
    private readonly view: DataView,
    readonly descNumCapacity: number,
  ) {}

  get features(): bigint {
    return this.view.getBigUint64(0, true);
  }
  get version(): number {
    return this.view.getUint16(8, true);
  }
  set version(v: number) {
    this.view.setUint16(8, v, true);
  }
  get descNum(): number {
    return this.view.getUint16(10, true);
  }
  set descNum(v: number) {
    this.view.setUint16(10, v, true);
  }
  get lastBatchHead(): number {
    return this.view.getUint16(12, true);
  }
  get usedIdx(): number {
    return this.view.getUint16(14, true);
  }

  desc(i: number): DescState {
    if (!Number.isInteger(i) || i < 0 || i >= this.descNumCapacity) throw new RangeError(`descriptor ${i} out of range`);
    const at = QUEUE_HEADER + i * DESC_STATE;
    return { inflight: this.view.getUint8(at), next: this.view.getUint16(at + 6, true), counter: this.view.getBigUint64(at + 8, true) };
  }

  /** Heads marked inflight now. */
  inflightHeads(): number[] {
    const heads: number[] = [];
    for (let i = 0; i < this.descNumCapacity; i++) if (this.desc(i).inflight !== 0) heads.push(i);
    return heads;
  }
}

export class InflightRegion {
  /** -1 until GET_INFLIGHT_FD created it. */
  fd = -1;
  mmapSize = 0;
  mmapOffset = 0;
  numQueues = 0;
  queueSize = 0;
  private map: ArrayBuffer | undefined;

  get created(): boolean {
    return this.fd >= 0;
  }

  /** Takes the fd of a GET_INFLIGHT_FD reply and maps it, as QEMU does. */
  adopt(r: { fd: number; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }): void {
    if (this.created) throw new Error('inflight region already created');
    this.map = native.mapShared(r.fd, r.mmapSize, r.mmapOffset);
    this.fd = r.fd;
    this.mmapSize = r.mmapSize;
    this.mmapOffset = r.mmapOffset;
    this.numQueues = r.numQueues;
    this.queueSize = r.queueSize;
  }

  /** Bytes of one queue's region (mmapSize split evenly, as the backend lays it out). */
  get queueRegionBytes(): number {
    return this.mmapSize / this.numQueues;
  }

  /** The whole mapping, for tests that check or forge bytes. */
  bytes(): Uint8Array {
    if (!this.map) throw new Error('inflight region not created');
    return new Uint8Array(this.map);
  }

  queue(q: number): QueueRegionView {
    if (!this.map) throw new Error('inflight region not created');
    if (!Number.isInteger(q) || q < 0 || q >= this.numQueues) throw new RangeError(`no queue ${q} in the inflight region`);
    const size = this.queueRegionBytes;
    return new QueueRegionView(new DataView(this.map, q * size, size), this.queueSize);
  }

  close(): void {
    if (this.fd >= 0) native.closeFd(this.fd);
    this.fd = -1;
    this.map = undefined;
  }
}
