// Test rig for BlkHandler against a byte-array model (used by
// blk-handler-sim.test.ts and loop-4kn.test.ts; not a test file itself).
//
// A workload is a list of batches of virtio-blk requests. The rig lays each
// request out in guest memory (header, data segments in one of several
// layouts, status byte), fills the handler's shared arrays the way the
// addon's onChains does, records used entries, and checks every batch
// against the model:
//   - within a batch, writes are byte-disjoint from each other and from
//     reads (they may share host blocks: that is the RMW hazard);
//   - every request completes exactly once, status OK, used.len right;
//   - every read returns the model's bytes; no other guest byte changes
//     (status bytes become 0);
//   - after the batch the model has the batch's writes applied.
// The expectations about bouncing are computed here from the spec, not
// from src/align.

import fc from 'fast-check';
import { BlkHandler } from '../../src/blk/blk-handler';
import { QueueCounters } from '../../src/blk/counters';
import { mulberry32 } from '../helpers/prng';
import {
  BOUNCE_BUF_ID,
  CHAIN_STRIDE,
  OP_FLAG_FIXED,
  OP_STRIDE,
  IOV_STRIDE,
  USED_STRIDE,
  type SessionArrays,
  SEG_STRIDE,
} from '../../src/blk/shared-arrays';

/**
 * The handler's private state the checks look into: its range lock, the
 * requests waiting for bounce space, and each queue's request slots.
 */
export interface HandlerInternals {
  lock: { acquire(...args: unknown[]): boolean; release(...args: unknown[]): void; clear(): void; size: number };
  waiting: number[];
  queues: Array<{ slots: Array<{ registered: boolean } | undefined> }>;
}

/** The handler seen through HandlerInternals (the fields exist; TypeScript's `private` is compile-time only). */
export function internals(h: BlkHandler): HandlerInternals {
  return h as unknown as HandlerInternals;
}

export const T_IN = 0;
export const T_OUT = 1;
export const T_FLUSH = 4;
export const IOV_MAX = 1024;
/** Chain heads per queue (the handler's maxQueueSize). */
export const QSIZE = 256;
export const OPS_PER_SLOT = 16;

export function fillRandom(buf: Uint8Array, seed: number): void {
  const r = mulberry32(seed);
  let i = 0;
  for (; i + 4 <= buf.length; i += 4) {
    const v = r();
    buf[i] = v & 0xff;
    buf[i + 1] = (v >>> 8) & 0xff;
    buf[i + 2] = (v >>> 16) & 0xff;
    buf[i + 3] = v >>> 24;
  }
  for (; i < buf.length; i++) buf[i] = r() & 0xff;
}

/**
 * How a request's data is cut into descriptors:
 *  single      one segment, memAlign-aligned address
 *  pages       512-multiple segments (512..4096), aligned, non-contiguous
 *  misaligned  1..3 segments of 512-multiples at addresses that are not 512-aligned
 *  odd         random lengths 1..3000 at random addresses
 *  many512     only 512-byte segments, aligned, non-contiguous
 *  lead512     a 512 B segment, then 4 KiB segments (no host-aligned cut inside), aligned
 */
export type Layout = 'single' | 'pages' | 'misaligned' | 'odd' | 'many512' | 'lead512';

export interface WorkReq {
  kind: 'r' | 'w' | 'f';
  q: number;
  sector: number;
  sectors: number;
  layout: Layout;
  lseed: number;
}

export interface Geometry {
  /** Host O_DIRECT rules. */
  A: number;
  M: number;
  /** Segment length alignment (default M: what Linux 6.18 checks; Linux 6.1 block devices check A). */
  L?: number;
  diskBytes: number;
}

/** Guest memory the rig lays requests into. */
export interface GuestMem {
  /** Bytes of buffer bufId (0..n-1), as the handler addresses them. */
  bufs: Uint8Array[];
  /** Host address of each buffer's byte 0, modulo 4096. */
  phases: number[];
}

export interface LiveReq {
  id: number;
  w: WorkReq;
  type: number;
  pos: number;
  len: number;
  q: number;
  head: number;
  /** Data segments as laid out (before splitChain's merging). */
  segs: Array<[number, number, number]>;
  status: [number, number];
  completions: number;
  usedLen: number;
  usedStatus: number;
  /** Ops the handler issued for it: opcode, flags, iovec count, first iovec bufId. */
  ops: Array<{ opcode: number; flags: number; count: number; buf0: number }>;
  /** The slot's `registered` hint when the request completed. */
  registeredAtEnd: boolean | undefined;
  exp: Expect;
}

/** What the spec says a read/write must do to host I/O (independent of src/align). */
export interface Expect {
  rmw: boolean;
  bounced: boolean;
  bouncedBytes: number;
  collapse: number;
  split: boolean;
  /** The main I/O is one guest iovec (a FIXED candidate). */
  singleGuestIovec: boolean;
}

/** Merge contiguous same-buffer segments, as splitChain does. */
function merged(segs: ReadonlyArray<[number, number, number]>): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  for (const [b, o, l] of segs) {
    const last = out[out.length - 1];
    if (last && last[0] === b && last[1] + last[2] === o) last[2] += l;
    else out.push([b, o, l]);
  }
  return out;
}

/** Guest bytes [from, to) of an iovec list ([bufId, off, len] each) as maximal per-iovec runs. */
export function cut(list: ReadonlyArray<[number, number, number]>, from: number, to: number): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  let p = 0;
  for (const [b, o, l] of list) {
    const s = Math.max(from, p);
    const e = Math.min(to, p + l);
    if (s < e) out.push([b, o + s - p, e - s]);
    p += l;
  }
  return out;
}

export function expectFor(
  pos: number,
  len: number,
  write: boolean,
  segs: ReadonlyArray<[number, number, number]>,
  g: Geometry,
  phases: number[],
): Expect {
  const { A, M } = g;
  const L = g.L ?? M;
  const end = pos + len;
  const aStart = Math.floor(pos / A) * A;
  const aEnd = Math.ceil(end / A) * A;
  const head = pos % A !== 0;
  const tail = end % A !== 0 && !(head && aEnd - aStart === A);
  const headBytes = head ? Math.min(len, A - (pos % A)) : 0;
  const tailBytes = tail ? end - (aEnd - A) : 0;
  const midStart = head ? aStart + A : pos;
  let midEnd = tail ? aEnd - A : end;
  if (midEnd < midStart) midEnd = midStart;
  const mid = cut(merged(segs), midStart - pos, midEnd - pos);
  const misaligned = mid.some(([b, o, l]) => ((phases[b] ?? 0) + o) % M !== 0 || l % L !== 0);
  const count = misaligned ? (midEnd > midStart ? 1 : 0) : mid.length;
  const total = count + (head ? 1 : 0) + (tail ? 1 : 0);
  let collapse = 0;
  let split = false;
  let forced = false;
  if (total > IOV_MAX) {
    if (count <= IOV_MAX) collapse = total - IOV_MAX + 1;
    else {
      split = true;
      // Is there an A-aligned cut every <= IOV_MAX elements? (else the middle is bounced)
      const lens = [...(head ? [A] : []), ...mid.map((m) => m[2]), ...(tail ? [A] : [])];
      forced = !alignedSplitExists(lens, aStart, A);
    }
  }
  const collapseLen = mid.slice(0, collapse).reduce((s, m) => s + m[2], 0);
  const midBounced = misaligned || forced;
  const bouncedBytes = headBytes + tailBytes + (midBounced ? midEnd - midStart : collapseLen);
  return {
    rmw: write && (head || tail),
    bounced: head || tail || (midBounced && midEnd > midStart) || collapse > 0,
    bouncedBytes,
    collapse,
    split: split && !forced,
    singleGuestIovec: !head && !tail && !midBounced && count === 1,
  };
}

function alignedSplitExists(lens: number[], start: number, A: number): boolean {
  // Greedy farthest jump is optimal for reachability.
  let first = 0;
  let off = start;
  while (lens.length - first > IOV_MAX) {
    let p = off;
    let best = -1;
    let bestOff = off;
    for (let i = first; i < first + IOV_MAX; i++) {
      p += lens[i] as number;
      if (p % A === 0) {
        best = i + 1;
        bestOff = p;
      }
    }
    if (best < 0) return false;
    first = best;
    off = bestOff;
  }
  return true;
}

// ------------------------------------------------------------ generation

export function arbWorkReq(
  diskSectors: number,
  opts: { maxSectors?: number; layouts?: Layout[]; flush?: boolean } = {},
): fc.Arbitrary<WorkReq> {
  const maxSectors = opts.maxSectors ?? 128;
  const layouts = opts.layouts ?? (['single', 'single', 'pages', 'misaligned', 'odd', 'many512'] as Layout[]);
  return fc
    .record({
      kind: fc.oneof(
        { weight: 6, arbitrary: fc.constant<'w'>('w') },
        { weight: 4, arbitrary: fc.constant<'r'>('r') },
        { weight: opts.flush === false ? 0 : 1, arbitrary: fc.constant<'f'>('f') },
      ),
      q: fc.nat(1),
      // [sector, sectors]: anywhere, or small requests on a hot spot of six
      // host blocks, so byte-disjoint writes often share a block (the RMW hazard).
      place: fc.oneof(
        {
          weight: 3,
          arbitrary: fc.tuple(
            fc.nat(diskSectors - 1),
            fc.oneof(
              { weight: 3, arbitrary: fc.integer({ min: 1, max: 16 }) },
              { weight: 2, arbitrary: fc.integer({ min: 1, max: maxSectors }) },
            ),
          ),
        },
        { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 56, max: 103 }), fc.integer({ min: 1, max: 3 })) },
      ),
      // A quarter are host-aligned (4 KiB start and length): zero-copy / FIXED candidates.
      aligned: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      layout: fc.constantFrom(...layouts),
      lseed: fc.nat(),
    })
    .map(({ aligned, place, ...w }) => {
      let [sector, sectors] = place;
      if (aligned) {
        sector -= sector % 8;
        sectors = Math.min(Math.ceil(sectors / 8) * 8, maxSectors - (maxSectors % 8));
      }
      return { ...w, sector: Math.min(sector, diskSectors - sectors - ((diskSectors - sectors) % (aligned ? 8 : 1))), sectors } as WorkReq;
    });
}

/** Keeps the requests that respect the batch rules (writes byte-disjoint from writes and reads). */
export function selectBatch(reqs: readonly WorkReq[]): WorkReq[] {
  const out: WorkReq[] = [];
  const writes: Array<[number, number]> = [];
  const reads: Array<[number, number]> = [];
  const hits = (list: Array<[number, number]>, s: number, e: number): boolean => list.some(([a, b]) => a < e && s < b);
  for (const r of reqs) {
    if (r.kind === 'f') {
      out.push(r);
      continue;
    }
    const s = r.sector * 512;
    const e = s + r.sectors * 512;
    if (hits(writes, s, e)) continue;
    if (r.kind === 'w') {
      if (hits(reads, s, e)) continue;
      writes.push([s, e]);
    } else reads.push([s, e]);
    out.push(r);
  }
  return out;
}

// ------------------------------------------------------------ the rig

export interface RigOptions {
  geometry: Geometry;
  mem: GuestMem;
  /** Most requests per onChains call. */
  chunkMax?: number;
}

export class Rig {
  readonly errors: string[] = [];
  readonly done: LiveReq[] = [];
  /** (q, head) -> request in flight. */
  private readonly inflight: Array<Map<number, LiveReq>> = [new Map(), new Map()];
  private readonly freeHeads: number[][] = [];
  private nextId = 0;
  private cursors: number[] = [];
  private expected: Uint8Array[] = [];
  private batchReqs: LiveReq[] = [];
  private writeData = new Map<number, Uint8Array>();
  handler: BlkHandler | undefined;
  totalOps = 0;

  constructor(
    readonly arrays: SessionArrays,
    readonly opts: RigOptions,
  ) {
    for (let q = 0; q < 2; q++) this.freeHeads.push(Array.from({ length: QSIZE }, (_, i) => QSIZE - 1 - i));
  }

  get g(): Geometry {
    return this.opts.geometry;
  }

  /** Guest memory allocation: next address in some buffer with the wanted alignment. */
  private alloc(len: number, align: 'M' | 'mis' | 'any', r: () => number): [number, number] {
    const { bufs, phases } = this.opts.mem;
    const M = this.g.M;
    for (let tries = 0; tries < bufs.length; tries++) {
      const b = (r() + tries) % bufs.length;
      const ph = phases[b] ?? 0;
      const cur = (this.cursors[b] ?? 0) + 1 + (r() % 64); // gap: never contiguous with the previous segment
      let off = cur;
      if (align === 'M') off = Math.ceil((cur + ph) / M) * M - ph;
      else if (align === 'mis') {
        const want = 1 + (r() % (M - 1));
        off = Math.ceil((cur + ph - want) / M) * M + want - ph;
        if (off < cur) off += M;
      }
      if (off + len <= (bufs[b] as Uint8Array).length) {
        this.cursors[b] = off + len;
        return [b, off];
      }
    }
    throw new Error(`test rig: guest memory exhausted allocating ${len} bytes`);
  }

  private layout(w: WorkReq, len: number): Array<[number, number, number]> {
    const r = mulberry32(w.lseed);
    const lens: number[] = [];
    let align: 'M' | 'mis' | 'any' = 'M';
    const take = (l: number): void => {
      lens.push(l);
    };
    let rem = len;
    switch (w.layout) {
      case 'single':
        take(len);
        break;
      case 'pages':
        while (rem > 0) {
          const l = Math.min(rem, 512 * (1 + (r() % 8)));
          take(l);
          rem -= l;
        }
        break;
      case 'many512':
        while (rem > 0) {
          take(512);
          rem -= 512;
        }
        break;
      case 'lead512':
        take(512);
        rem -= 512;
        while (rem > 0) {
          const l = Math.min(rem, 4096);
          take(l);
          rem -= l;
        }
        break;
      case 'misaligned': {
        align = 'mis';
        let sectors = len / 512;
        const parts = 1 + (r() % 3);
        for (let i = 0; i < parts && sectors > 0; i++) {
          const s = i === parts - 1 ? sectors : 1 + (r() % sectors);
          take(s * 512);
          sectors -= s;
        }
        if (sectors > 0) lens[lens.length - 1] = (lens[lens.length - 1] as number) + sectors * 512;
        break;
      }
      case 'odd':
        align = 'any';
        while (rem > 0) {
          const l = Math.min(rem, 1 + (r() % 3000));
          take(l);
          rem -= l;
        }
        break;
    }
    return lens.map((l) => {
      const [b, o] = this.alloc(l, align, r);
      return [b, o, l];
    });
  }

  /**
   * Lays out a batch in guest memory and computes the expected guest image.
   * Returns the requests grouped into onChains calls (consecutive, same queue).
   */
  prepareBatch(work: readonly WorkReq[], model: Uint8Array, seed: number): LiveReq[][] {
    const { bufs } = this.opts.mem;
    this.cursors = bufs.map(() => 0);
    this.batchReqs = [];
    this.writeData.clear();
    const r = mulberry32(seed ^ 0x5eed);
    for (const w of work) {
      const type = w.kind === 'w' ? T_OUT : w.kind === 'r' ? T_IN : T_FLUSH;
      const pos = w.sector * 512;
      const len = w.kind === 'f' ? 0 : w.sectors * 512;
      const segs = len > 0 ? this.layout(w, len) : [];
      const st = this.alloc(1, 'any', r);
      const req: LiveReq = {
        id: this.nextId++,
        w,
        type,
        pos,
        len,
        q: w.q,
        head: -1,
        segs,
        status: st,
        completions: 0,
        usedLen: -1,
        usedStatus: -1,
        ops: [],
        registeredAtEnd: undefined,
        exp: expectFor(pos, len, type === T_OUT, segs, this.g, this.opts.mem.phases),
      };
      this.batchReqs.push(req);
    }
    // Background: random bytes in everything the batch may touch.
    bufs.forEach((b, i) => fillRandom(b.subarray(0, Math.min(b.length, (this.cursors[i] ?? 0) + 4096)), seed + i * 7919));
    for (const req of this.batchReqs) {
      if (req.type === T_OUT) {
        const data = new Uint8Array(req.len);
        fillRandom(data, seed ^ (req.id * 2654435761));
        this.writeData.set(req.id, data);
        this.scatter(req, data);
      }
      const [sb, so] = req.status;
      (bufs[sb] as Uint8Array)[so] = 0xff;
    }
    // Expected guest image after the batch.
    this.expected = bufs.map((b, i) => b.slice(0, Math.min(b.length, (this.cursors[i] ?? 0) + 4096)));
    for (const req of this.batchReqs) {
      if (req.type === T_IN) this.scatter(req, model.subarray(req.pos, req.pos + req.len), this.expected);
      const [sb, so] = req.status;
      (this.expected[sb] as Uint8Array)[so] = 0;
    }
    // Group into onChains calls.
    const chunkMax = this.opts.chunkMax ?? 8;
    const chunks: LiveReq[][] = [];
    let k = 0;
    while (k < this.batchReqs.length) {
      const q = (this.batchReqs[k] as LiveReq).q;
      const size = 1 + (r() % chunkMax);
      const chunk: LiveReq[] = [];
      while (k < this.batchReqs.length && chunk.length < size && (this.batchReqs[k] as LiveReq).q === q)
        chunk.push(this.batchReqs[k++] as LiveReq);
      chunks.push(chunk);
    }
    return chunks;
  }

  private scatter(req: LiveReq, data: Uint8Array, into: Uint8Array[] = this.opts.mem.bufs): void {
    let p = 0;
    for (const [b, o, l] of req.segs) {
      (into[b] as Uint8Array).set(data.subarray(p, p + l), o);
      p += l;
    }
  }

  private gather(req: LiveReq): Uint8Array {
    const out = new Uint8Array(req.len);
    let p = 0;
    for (const [b, o, l] of req.segs) {
      out.set((this.opts.mem.bufs[b] as Uint8Array).subarray(o, o + l), p);
      p += l;
    }
    return out;
  }

  /** Fills the shared arrays for one onChains call and makes the call. */
  submitChunk(chunk: readonly LiveReq[]): void {
    const handler = this.handler as BlkHandler;
    const { chains, headers, segs } = this.arrays;
    let s = 0;
    const q = (chunk[0] as LiveReq).q;
    const put = (b: number, o: number, l: number, f: number): void => {
      segs[s * SEG_STRIDE] = b;
      segs[s * SEG_STRIDE + 1] = o;
      segs[s * SEG_STRIDE + 2] = l;
      segs[s * SEG_STRIDE + 3] = f;
      s++;
    };
    const hdrRand = mulberry32(chunk.length * 31 + (chunk[0] as LiveReq).id);
    chunk.forEach((req, i) => {
      const head = this.freeHeads[q]?.pop();
      if (head === undefined) throw new Error('test rig: out of chain heads');
      req.head = head;
      this.inflight[q]?.set(head, req);
      const c = i * CHAIN_STRIDE;
      const first = s;
      // Header: 16 readable bytes somewhere (content is in `headers`).
      put(0, 1 + (hdrRand() % 4000), 16, 0);
      for (const [b, o, l] of req.segs) put(b, o, l, req.type === T_IN ? 1 : 0);
      put(req.status[0], req.status[1], 1, 1);
      chains[c] = head;
      chains[c + 1] = first;
      chains[c + 2] = s - first;
      chains[c + 3] = 16;
      const v = new DataView(headers.buffer, headers.byteOffset + i * 16, 16);
      v.setUint32(0, req.type, true);
      v.setUint32(4, 0, true);
      v.setBigUint64(8, BigInt(req.w.sector), true);
    });
    handler.onChains(q, chunk.length);
  }

  /** DataPlane.pushUsed: record completions (and write status bytes like native). */
  onUsed(q: number, n: number): void {
    const u = this.arrays.used;
    for (let i = 0; i < n; i++) {
      const k = i * USED_STRIDE;
      const head = u[k] as number;
      const req = this.inflight[q]?.get(head);
      if (req === undefined) {
        this.errors.push(`used entry for queue ${q} head ${head}, which is not in flight (completed twice?)`);
        continue;
      }
      this.inflight[q]?.delete(head);
      this.freeHeads[q]?.push(head);
      req.completions++;
      req.usedLen = u[k + 1] as number;
      req.usedStatus = u[k + 4] as number;
      if (u[k + 2] !== req.status[0] || u[k + 3] !== req.status[1]) {
        this.errors.push(`request ${req.id}: status location (${u[k + 2]}, ${u[k + 3]}) != (${req.status[0]}, ${req.status[1]})`);
      } else {
        (this.opts.mem.bufs[req.status[0]] as Uint8Array)[req.status[1]] = u[k + 4] as number;
      }
      // The slot still describes this request.
      const slot = internals(this.handler as BlkHandler).queues[q]?.slots[head];
      req.registeredAtEnd = slot?.registered;
      this.done.push(req);
    }
  }

  /** Records the ops of a submit(n) call (before the data plane takes them). */
  noteOps(n: number): void {
    const { sqOps, sqIovs } = this.arrays;
    for (let k = 0; k < n; k++) {
      const o = k * OP_STRIDE;
      const userData = sqOps[o + 1] as number;
      // userData carries the slot's generation above the slot id (src/blk/completion-id.ts).
      const slotId = Math.floor(userData / OPS_PER_SLOT) % (2 * QSIZE);
      const q = Math.floor(slotId / QSIZE);
      const head = slotId - q * QSIZE;
      const req = this.inflight[q]?.get(head);
      const start = sqOps[o + 3] as number;
      const op = {
        opcode: sqOps[o] as number,
        flags: sqOps[o + 5] as number,
        count: sqOps[o + 4] as number,
        buf0: sqIovs[start * IOV_STRIDE] as number,
      };
      if (req === undefined) this.errors.push(`op for queue ${q} head ${head}, which is not in flight`);
      else req.ops.push(op);
      this.totalOps++;
    }
  }

  inflightCount(): number {
    return (this.inflight[0]?.size ?? 0) + (this.inflight[1]?.size ?? 0);
  }

  stranded(): string {
    const out: string[] = [];
    for (const m of this.inflight) for (const r of m.values()) out.push(describe(r));
    return out.join('; ');
  }

  /**
   * Checks a drained batch and applies its writes to the model. Returns
   * problems (empty when the batch is right).
   */
  checkBatch(model: Uint8Array, registered = false): string[] {
    const out = [...this.errors];
    this.errors.length = 0;
    for (const req of this.batchReqs) {
      const d = describe(req);
      if (req.completions !== 1) {
        out.push(`${d}: completed ${req.completions} times`);
        continue;
      }
      if (req.usedStatus !== 0) out.push(`${d}: status ${req.usedStatus}, expected OK (0)`);
      const wantLen = req.type === T_IN ? req.len + 1 : 1;
      if (req.usedLen !== wantLen) out.push(`${d}: used.len ${req.usedLen}, expected ${wantLen}`);
      if (req.type === T_IN && req.usedStatus === 0) {
        const got = this.gather(req);
        const want = model.subarray(req.pos, req.pos + req.len);
        const i = firstDiff(got, want);
        if (i >= 0) out.push(`${d}: read returned wrong data from byte ${i} (disk offset ${req.pos + i}): got ${got[i]}, model ${want[i]}`);
      }
      if (req.type !== T_FLUSH) {
        // The registered hint and the FIXED flag.
        const fixed = req.ops.filter((o) => (o.flags & OP_FLAG_FIXED) !== 0);
        for (const o of fixed) {
          if (o.count !== 1 || o.buf0 >= BOUNCE_BUF_ID) out.push(`${d}: FIXED op with ${o.count} iovecs, first in buffer ${o.buf0}`);
        }
        if (req.exp.bounced) {
          if (fixed.length > 0) out.push(`${d}: bounced request issued a FIXED op`);
          if (req.registeredAtEnd !== false) out.push(`${d}: bounced request kept registered=${req.registeredAtEnd}`);
        } else if (registered && req.exp.singleGuestIovec) {
          const main = req.ops.filter((o) => o.opcode !== 2);
          if (main.length !== 1 || fixed.length !== 1)
            out.push(`${d}: aligned single-iovec request with registered memory did not use one FIXED op (${JSON.stringify(req.ops)})`);
        }
        if (!registered && fixed.length > 0) out.push(`${d}: FIXED op while memory is not registered`);
      }
    }
    // Guest memory: reads hold model bytes, status bytes 0, nothing else changed.
    this.opts.mem.bufs.forEach((b, i) => {
      const exp = this.expected[i] as Uint8Array;
      const got = b.subarray(0, exp.length);
      const k = firstDiff(got, exp);
      if (k >= 0) out.push(`guest buffer ${i} byte ${k} is ${got[k]}, expected ${exp[k]} (${this.owner(i, k)})`);
    });
    // Apply the batch's writes to the model.
    for (const req of this.batchReqs) {
      const data = this.writeData.get(req.id);
      if (data) model.set(data, req.pos);
    }
    return out;
  }

  private owner(b: number, off: number): string {
    for (const req of this.batchReqs) {
      let p = 0;
      for (const [sb, so, sl] of req.segs) {
        if (sb === b && off >= so && off < so + sl) return `${describe(req)} byte ${p + off - so}`;
        p += sl;
      }
      if (req.status[0] === b && req.status[1] === off) return `status byte of ${describe(req)}`;
    }
    return 'not part of any request';
  }

  /** The bytes a write request of the current batch carries. */
  dataOf(req: LiveReq): Uint8Array | undefined {
    return this.writeData.get(req.id);
  }

  /** Requests of the current batch (for expectations). */
  get batch(): readonly LiveReq[] {
    return this.batchReqs;
  }
}

export function describe(r: LiveReq): string {
  const k = r.type === T_IN ? 'read' : r.type === T_OUT ? 'write' : 'flush';
  return `#${r.id} ${k} q${r.q} head ${r.head} [${r.pos}, +${r.len}) ${r.w.layout}/${r.segs.length} segs`;
}

export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

export function sumCounters(handler: BlkHandler): QueueCounters {
  const c = new QueueCounters();
  for (const q of handler.counters()) c.add(q);
  return c;
}
