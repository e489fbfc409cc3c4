// A simulated data plane for BlkHandler (not a test file itself): guest
// memory buffers, the bounce arena and a disk that applies O_DIRECT rules the
// way Linux does, completing ops in whatever order the test chooses. A readv
// snapshots the disk when it completes and a writev changes it when it
// completes, so missing serialisation between overlapping I/O shows up as
// wrong bytes.

import { BlkHandler } from '../../src/blk/blk-handler';
import { IOV_MAX, QSIZE, Rig, fillRandom, type GuestMem, type Geometry, type LiveReq } from './blk-rig';
import {
  BOUNCE_BUF_ID,
  COPY_STRIDE,
  CQE_STRIDE,
  OP_FLAG_FIXED,
  OP_FSYNC,
  OP_READV,
  OP_STRIDE,
  OP_WRITEV,
  IOV_STRIDE,
  allocateArrays,
  type DataPlane,
  type SessionArrays,
} from '../../src/blk/shared-arrays';

export const EINVAL = 22;

export interface SimOp {
  userData: number;
  opcode: number;
  offset: number;
  flags: number;
  iovs: Array<[number, number, number]>;
}

export class SimPlane implements DataPlane {
  readonly pending: SimOp[] = [];
  /** Things native would have thrown for (bad iovec, bad FIXED op, ...). */
  readonly violations: string[] = [];
  readonly bounce: Uint8Array;
  registered = false;
  /** How many of n ops submit() takes (default all): a full ring. */
  take: ((n: number) => number) | undefined;
  einval = 0;

  constructor(
    readonly arrays: SessionArrays,
    readonly mem: GuestMem,
    readonly disk: Uint8Array,
    readonly g: Geometry,
    bounceBytes: number,
    readonly rig: Rig,
    readonly handler: () => BlkHandler,
  ) {
    this.bounce = new Uint8Array(bounceBytes);
  }

  private buf(b: number): Uint8Array | undefined {
    return b === BOUNCE_BUF_ID ? this.bounce : this.mem.bufs[b];
  }

  private addr(b: number, off: number): number {
    return (b === BOUNCE_BUF_ID ? 0 : (this.mem.phases[b] ?? 0)) + off;
  }

  submit(n: number): number {
    this.rig.noteOps(n);
    const { sqOps, sqIovs } = this.arrays;
    const ops: SimOp[] = [];
    for (let k = 0; k < n; k++) {
      const o = k * OP_STRIDE;
      const op: SimOp = {
        opcode: sqOps[o] as number,
        userData: sqOps[o + 1] as number,
        offset: sqOps[o + 2] as number,
        flags: sqOps[o + 5] as number,
        iovs: [],
      };
      if (op.opcode !== OP_FSYNC && op.opcode !== OP_READV && op.opcode !== OP_WRITEV) this.fail(`opcode ${op.opcode}`);
      if (op.opcode !== OP_FSYNC) {
        const start = sqOps[o + 3] as number;
        const count = sqOps[o + 4] as number;
        if (count < 1 || count > IOV_MAX) this.fail(`op with ${count} iovecs`);
        for (let m = start; m < start + count; m++) {
          const i = m * IOV_STRIDE;
          const iov: [number, number, number] = [sqIovs[i] as number, sqIovs[i + 1] as number, sqIovs[i + 2] as number];
          const b = this.buf(iov[0]);
          if (b === undefined || iov[1] < 0 || iov[1] + iov[2] > b.length) this.fail(`iovec ${JSON.stringify(iov)} outside memory`);
          op.iovs.push(iov);
        }
        if ((op.flags & OP_FLAG_FIXED) !== 0 && (!this.registered || count !== 1 || (op.iovs[0]?.[0] ?? BOUNCE_BUF_ID) >= BOUNCE_BUF_ID)) {
          this.fail(`FIXED op ${JSON.stringify(op.iovs.slice(0, 2))} not one iovec in registered guest memory`);
        }
      }
      ops.push(op);
    }
    const taken = this.take ? Math.min(n, this.take(n)) : n;
    for (let k = 0; k < taken; k++) this.pending.push(ops[k] as SimOp);
    return taken;
  }

  private fail(why: string): never {
    this.violations.push(why);
    throw new RangeError(`submit: ${why}`);
  }

  copy(n: number): void {
    const c = this.arrays.copies;
    for (let k = 0; k < n; k++) {
      const e = k * COPY_STRIDE;
      const [sb, so, db, dof, len] = [c[e], c[e + 1], c[e + 2], c[e + 3], c[e + 4]] as number[] as [number, number, number, number, number];
      const src = this.buf(sb);
      const dst = this.buf(db);
      if (!src || !dst || so < 0 || dof < 0 || so + len > src.length || dof + len > dst.length) {
        this.violations.push(`copy ${JSON.stringify([sb, so, db, dof, len])} out of bounds`);
        throw new RangeError('copy: range outside guest memory and bounce arena');
      }
      if (sb === BOUNCE_BUF_ID && db === BOUNCE_BUF_ID)
        this.violations.push(`copy inside the bounce arena ${JSON.stringify([so, dof, len])}`);
      dst.set(src.slice(so, so + len), dof);
    }
  }

  writeGuest(bufId: number, offset: number, data: Uint8Array): void {
    (this.buf(bufId) as Uint8Array).set(data, offset);
  }

  readGuest(bufId: number, offset: number, dst: Uint8Array): void {
    dst.set((this.buf(bufId) as Uint8Array).subarray(offset, offset + dst.length));
  }

  pushUsed(q: number, n: number): void {
    this.rig.onUsed(q, n);
  }

  /** Performs one op against the disk, O_DIRECT rules enforced; returns its result. */
  private perform(op: SimOp): number {
    if (op.opcode === OP_FSYNC) return 0;
    const { A, M } = this.g;
    const L = this.g.L ?? M;
    let total = 0;
    let ok = op.offset % A === 0;
    for (const [b, o, l] of op.iovs) {
      total += l;
      if (this.addr(b, o) % M !== 0 || l % L !== 0) ok = false;
    }
    if (total % A !== 0) ok = false;
    if (!ok) {
      this.einval++;
      return -EINVAL;
    }
    const avail = Math.max(0, Math.min(total, this.disk.length - op.offset));
    let p = op.offset;
    let left = avail;
    for (const [b, o, l] of op.iovs) {
      const n = Math.min(l, left);
      if (n <= 0) break;
      const mem = this.buf(b) as Uint8Array;
      if (op.opcode === OP_READV) mem.set(this.disk.subarray(p, p + n), o);
      else this.disk.set(mem.subarray(o, o + n), p);
      p += n;
      left -= n;
    }
    return avail;
  }

  /** Completes the pending ops at these indices (one onCompletions call). */
  complete(indices: number[]): void {
    const picked = [...new Set(indices)].sort((a, b) => b - a).map((i) => this.pending.splice(i, 1)[0] as SimOp);
    const cqes = this.arrays.cqes;
    picked.forEach((op, i) => {
      cqes[i * CQE_STRIDE] = op.userData;
      cqes[i * CQE_STRIDE + 1] = this.perform(op);
    });
    this.handler().onCompletions(picked.length);
  }
}

export interface SimWorld {
  arrays: SessionArrays;
  mem: GuestMem;
  disk: Uint8Array;
  model: Uint8Array;
  rig: Rig;
  plane: SimPlane;
  handler: BlkHandler;
  violations: string[];
}

export function makeWorld(opts: {
  geometry: Geometry;
  bufSize: number;
  phases: number[];
  bounceBytes: number;
  seed: number;
  chunkMax?: number;
  registered?: boolean;
}): SimWorld {
  const arrays = allocateArrays(QSIZE);
  const mem: GuestMem = { bufs: opts.phases.map(() => new Uint8Array(opts.bufSize)), phases: opts.phases };
  const disk = new Uint8Array(opts.geometry.diskBytes);
  fillRandom(disk, opts.seed); // random, so a stale or misplaced block shows
  const model = disk.slice();
  const rig = new Rig(arrays, { geometry: opts.geometry, mem, chunkMax: opts.chunkMax ?? 8 });
  const violations: string[] = [];
  let handler: BlkHandler | undefined;
  const plane = new SimPlane(arrays, mem, disk, opts.geometry, opts.bounceBytes, rig, () => handler as BlkHandler);
  handler = new BlkHandler(arrays, {
    queues: 2,
    maxQueueSize: QSIZE,
    disk: { capacitySectors: opts.geometry.diskBytes / 512, readOnly: false, logicalBlockSize: 512 },
    serial: 'sim',
    writeback: () => true,
    onViolation: (q, rule) => violations.push(`violation on queue ${q}: ${rule}`),
    bounceBytes: opts.bounceBytes,
    rules: { offsetAlign: opts.geometry.A, memAlign: opts.geometry.M, lenAlign: opts.geometry.L ?? opts.geometry.M },
  });
  opts.phases.forEach((p, b) => handler?.setRegionPhase(b, p));
  handler.attach(plane);
  if (opts.registered) {
    handler.setRegistered(true);
    plane.registered = true;
  }
  rig.handler = handler;
  return { arrays, mem, disk, model, rig, plane, handler, violations };
}

/**
 * Runs one prepared batch: submits its chunks and completes ops in the order
 * `choose` dictates, until nothing is pending. Returns problems (a request
 * left in flight with nothing pending is one).
 */
export function drive(w: SimWorld, chunks: ReadonlyArray<readonly LiveReq[]>, choose: () => number): string[] {
  let ci = 0;
  let steps = 0;
  while (ci < chunks.length || w.plane.pending.length > 0) {
    if (++steps > 100000) return ['scheduler: no progress after 100000 steps'];
    const c = choose();
    if (ci < chunks.length && (w.plane.pending.length === 0 || (c & 1) === 0)) {
      w.rig.submitChunk(chunks[ci++] as readonly LiveReq[]);
      continue;
    }
    const n = w.plane.pending.length;
    const picks = [(c >>> 2) % n];
    if ((c & 2) !== 0 && n > 1) picks.push(choose() % n);
    w.plane.complete(picks);
  }
  if (w.rig.inflightCount() > 0) return [`requests never completed (no op pending for them): ${w.rig.stranded()}`];
  return [];
}

/** A choice source: the given numbers, then zeros (zeros = submit all, then FIFO). */
export function chooser(choices: readonly number[]): () => number {
  let i = 0;
  return () => (i < choices.length ? (choices[i++] as number) : 0);
}
