// virtio-blk requests over the in-repo front-end, in the descriptor layouts
// real guests use (and a few they rarely do):
//
//   '3desc'        header | data | status                (Linux virtio_blk)
//   '2desc'        header+data | status  for writes,
//                  header | data+status  for reads       (SeaBIOS, old Windows)
//   'indirect'     the 3desc chain through an indirect table
//   'split-header' the 16-byte header over two descriptors (8 + 8, apart)
//   'fragmented'   data in many small descriptors of odd sizes and
//                  alignments, some straddling a memory-region boundary
//
// A request is header {type u32, ioprio u32, sector u64}, data, status u8.

import type { Frontend } from './frontend';
import type { RingSeg } from './split-ring';

export const BlkType = Object.freeze({
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const);

export const BlkStatus = Object.freeze({ OK: 0, IOERR: 1, UNSUPP: 2 } as const);

export const SECTOR_SIZE = 512;
export const BLK_ID_BYTES = 20;
export const BLK_HEADER_SIZE = 16;

export type Layout = '3desc' | '2desc' | 'indirect' | 'split-header' | 'fragmented';
export const LAYOUTS: readonly Layout[] = ['3desc', '2desc', 'indirect', 'split-header', 'fragmented'];

export interface BlkResult {
  /** Status byte the device wrote (0xff if it wrote none: the buffer is pre-filled with 0xff). */
  status: number;
  /** Length the device put in the used ring. */
  usedLen: number;
  /** Device-writable data bytes (reads, GET_ID), concatenated; empty otherwise. */
  data: Buffer;
}

/** One data buffer of a raw request: `write` means device-writable. */
export interface DataSeg {
  len: number;
  write: boolean;
  /** Bytes to place in a driver-readable buffer (default zeroes). */
  data?: Uint8Array;
  /** Place this buffer across a memory-region boundary ('try': if one is free). */
  straddle?: boolean | 'try';
  /** Memory alignment of this buffer (default the request's). */
  align?: number;
}

export interface RequestOptions {
  layout?: Layout;
  /** Memory alignment of data buffers (default 512). */
  align?: number;
  /** Place the data buffer across a memory-region boundary. */
  straddle?: boolean;
  /** Header ioprio field. */
  ioprio?: number;
  /** Header length in the chain (default 16; other values make malformed requests). */
  headerLen?: number;
  /** Status buffer length (default 1; 0 leaves the status descriptor out). */
  statusLen?: number;
}

export interface BlkRequest extends RequestOptions {
  q: number;
  type: number;
  sector: number | bigint;
  /** Data segments in chain order; or use data/len below. */
  segs?: DataSeg[];
  /** Write payload (OUT, DISCARD, WRITE_ZEROES, ...): one driver-readable data buffer. */
  data?: Uint8Array;
  /** Read length (IN, GET_ID): one device-writable data buffer. */
  len?: number;
}

export interface BlkConfig {
  capacity: bigint;
  sizeMax: number;
  segMax: number;
  geometry: { cylinders: number; heads: number; sectors: number };
  blkSize: number;
  physicalBlockExp: number;
  alignmentOffset: number;
  minIoSize: number;
  optIoSize: number;
  writeback: number;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  discardSectorAlignment: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: number;
}

/** Parses struct virtio_blk_config (at least 60 bytes). */
export function parseBlkConfig(b: Buffer): BlkConfig {
  if (b.length < 60) throw new RangeError(`virtio_blk_config needs 60 bytes, got ${b.length}`);
  return {
    capacity: b.readBigUInt64LE(0),
    sizeMax: b.readUInt32LE(8),
    segMax: b.readUInt32LE(12),
    geometry: { cylinders: b.readUInt16LE(16), heads: b.readUInt8(18), sectors: b.readUInt8(19) },
    blkSize: b.readUInt32LE(20),
    physicalBlockExp: b.readUInt8(24),
    alignmentOffset: b.readUInt8(25),
    minIoSize: b.readUInt16LE(26),
    optIoSize: b.readUInt32LE(28),
    writeback: b.readUInt8(32),
    numQueues: b.readUInt16LE(34),
    maxDiscardSectors: b.readUInt32LE(36),
    maxDiscardSeg: b.readUInt32LE(40),
    discardSectorAlignment: b.readUInt32LE(44),
    maxWriteZeroesSectors: b.readUInt32LE(48),
    maxWriteZeroesSeg: b.readUInt32LE(52),
    writeZeroesMayUnmap: b.readUInt8(56),
  };
}

/** Fragment sizes cycled by the 'fragmented' layout: odd, small, sector and non-sector sized. */
const FRAGMENT_SIZES = [512, 100, 1536, 7, 412, 2048, 505, 4096, 1, 3000];
const FRAGMENT_ALIGNS = [512, 4, 8, 1, 2, 16, 1, 4096, 1, 8];

/** A request turned into guest buffers and ring segments. */
interface Prepared {
  segs: RingSeg[];
  indirect: boolean;
  allocs: number[];
  /** Device-writable data buffers to read back, in order. */
  readBack: { gpa: number; len: number }[];
  statusGpa: number | undefined;
}

export class BlkDriver {
  readonly fe: Frontend;
  /** Called with each chain just before it is queued (tests inspect layouts with it). */
  onChain: ((segs: readonly RingSeg[], indirect: boolean) => void) | undefined;

  constructor(fe: Frontend) {
    this.fe = fe;
  }

  private get mem() {
    const m = this.fe.mem;
    if (!m) throw new Error('front-end has no guest memory: call setup() first');
    return m;
  }

  /** Reads len bytes at sector. */
  read(q: number, sector: number | bigint, len: number, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.request({ ...opts, q, type: BlkType.IN, sector, len });
  }

  /** Writes data at sector. */
  write(q: number, sector: number | bigint, data: Uint8Array, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.request({ ...opts, q, type: BlkType.OUT, sector, data });
  }

  flush(q: number, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.request({ ...opts, q, type: BlkType.FLUSH, sector: 0 });
  }

  /** GET_ID: the device's serial, 20 bytes (NUL-padded). */
  getId(q: number, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.request({ ...opts, q, type: BlkType.GET_ID, sector: 0, len: BLK_ID_BYTES });
  }

  /** DISCARD or WRITE_ZEROES of ranges {sector, sectors, unmap}. */
  ranges(
    q: number,
    type: number,
    ranges: { sector: number | bigint; sectors: number; unmap?: boolean }[],
    opts: RequestOptions = {},
  ): Promise<BlkResult> {
    const data = Buffer.alloc(16 * ranges.length);
    ranges.forEach((r, i) => {
      data.writeBigUInt64LE(BigInt(r.sector), 16 * i);
      data.writeUInt32LE(r.sectors, 16 * i + 8);
      data.writeUInt32LE(r.unmap ? 1 : 0, 16 * i + 12);
    });
    return this.request({ ...opts, q, type, sector: 0, data });
  }

  discard(q: number, sector: number | bigint, sectors: number, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.ranges(q, BlkType.DISCARD, [{ sector, sectors }], opts);
  }

  writeZeroes(q: number, sector: number | bigint, sectors: number, unmap = false, opts: RequestOptions = {}): Promise<BlkResult> {
    return this.ranges(q, BlkType.WRITE_ZEROES, [{ sector, sectors, unmap }], opts);
  }

  /** Any request type with explicit data segments (each one descriptor in the 3desc family of layouts). */
  raw(q: number, type: number, sector: number | bigint, dataSegs: DataSeg[], opts: RequestOptions = {}): Promise<BlkResult> {
    return this.request({ ...opts, q, type, sector, segs: dataSegs });
  }

  /** One request: queued, published and kicked at once. */
  request(r: BlkRequest): Promise<BlkResult> {
    const [p] = this.submitBatch([r]);
    return p!; // one request in, one promise out
  }

  /**
   * Queues every request before publishing: each queue's avail idx is
   * written once and kicked (at most) once for the whole batch.
   */
  submitBatch(reqs: readonly BlkRequest[]): Promise<BlkResult>[] {
    const touched = new Set<number>();
    const out = reqs.map((r) => {
      const prep = this.prepare(r);
      touched.add(r.q);
      this.onChain?.(prep.segs, prep.indirect);
      let used: Promise<number>;
      try {
        used = this.fe.enqueue(r.q, prep.segs, { indirect: prep.indirect });
      } catch (err) {
        this.release(prep);
        throw err;
      }
      return used.then(
        (usedLen) => this.finish(prep, usedLen),
        (err: unknown) => {
          this.release(prep);
          throw err;
        },
      );
    });
    for (const q of touched) this.fe.flush(q);
    return out;
  }

  // ------------------------------------------------------------ internals

  private prepare(r: BlkRequest): Prepared {
    const mem = this.mem;
    const layout = r.layout ?? '3desc';
    const align = r.align ?? 512;
    const headerLen = r.headerLen ?? BLK_HEADER_SIZE;
    const statusLen = r.statusLen ?? 1;
    const allocs: number[] = [];
    const alloc = (size: number, a: number, straddle: boolean | 'try' = false): number => {
      let g: number;
      try {
        g = mem.alloc(Math.max(1, size), a, { straddle: straddle !== false });
      } catch (err) {
        if (straddle !== 'try') throw err;
        g = mem.alloc(Math.max(1, size), a);
      }
      allocs.push(g);
      return g;
    };
    try {
      let dataSegs: DataSeg[];
      if (r.segs) dataSegs = r.segs;
      else if (r.data) dataSegs = [{ len: r.data.length, write: false, data: r.data, straddle: r.straddle ?? false }];
      else if (r.len !== undefined) dataSegs = [{ len: r.len, write: true, straddle: r.straddle ?? false }];
      else dataSegs = [];
      if (layout === 'fragmented') dataSegs = fragment(dataSegs, mem.boundaries().length > 0);

      const header = Buffer.alloc(Math.max(headerLen, BLK_HEADER_SIZE));
      header.writeUInt32LE(r.type >>> 0, 0);
      header.writeUInt32LE((r.ioprio ?? 0) >>> 0, 4);
      header.writeBigUInt64LE(BigInt(r.sector), 8);

      const allRead = dataSegs.length > 0 && dataSegs.every((s) => !s.write);
      const allWrite = dataSegs.length > 0 && dataSegs.every((s) => s.write);
      const readBack: { gpa: number; len: number }[] = [];
      const segs: RingSeg[] = [];
      let statusGpa: number | undefined;

      if (layout === '2desc' && dataSegs.length === 1 && (allRead || allWrite)) {
        const d = dataSegs[0]!; // length checked
        if (allRead) {
          // header+data in one driver-readable buffer, then the status.
          const g = alloc(headerLen + d.len, 16, d.straddle);
          mem.write(g, header.subarray(0, headerLen));
          if (d.data) mem.write(g + headerLen, d.data.subarray(0, d.len));
          else mem.fill(g + headerLen, d.len, 0);
          segs.push({ gpa: g, len: headerLen + d.len, write: false });
          if (statusLen > 0) {
            statusGpa = alloc(statusLen, 1);
            segs.push({ gpa: statusGpa, len: statusLen, write: true });
          }
        } else {
          // header, then data+status in one device-writable buffer.
          const h = alloc(headerLen, 16);
          mem.write(h, header.subarray(0, headerLen));
          segs.push({ gpa: h, len: headerLen, write: false });
          const g = alloc(d.len + statusLen, d.align ?? align, d.straddle);
          mem.fill(g, d.len + statusLen, 0xff);
          segs.push({ gpa: g, len: d.len + statusLen, write: true });
          readBack.push({ gpa: g, len: d.len });
          if (statusLen > 0) statusGpa = g + d.len;
        }
        return { segs, indirect: false, allocs, readBack, statusGpa };
      }

      if (layout === 'split-header' && headerLen >= 2) {
        const cut = Math.min(8, headerLen - 1);
        const h1 = alloc(cut, 8);
        alloc(64, 8); // keep the two halves apart in memory
        const h2 = alloc(headerLen - cut, 8);
        mem.write(h1, header.subarray(0, cut));
        mem.write(h2, header.subarray(cut, headerLen));
        segs.push({ gpa: h1, len: cut, write: false }, { gpa: h2, len: headerLen - cut, write: false });
      } else if (headerLen > 0) {
        const h = alloc(headerLen, 16);
        mem.write(h, header.subarray(0, headerLen));
        segs.push({ gpa: h, len: headerLen, write: false });
      }
      for (const d of dataSegs) {
        const g = alloc(d.len, d.align ?? align, d.len >= 2 ? (d.straddle ?? false) : false);
        if (d.write) {
          mem.fill(g, d.len, 0xff);
          readBack.push({ gpa: g, len: d.len });
        } else if (d.data) {
          mem.write(g, d.data.subarray(0, d.len));
        } else {
          mem.fill(g, d.len, 0);
        }
        segs.push({ gpa: g, len: d.len, write: d.write });
      }
      if (statusLen > 0) {
        statusGpa = alloc(statusLen, 1);
        mem.fill(statusGpa, statusLen, 0xff);
        segs.push({ gpa: statusGpa, len: statusLen, write: true });
      }
      return { segs, indirect: layout === 'indirect', allocs, readBack, statusGpa };
    } catch (err) {
      for (const g of allocs) mem.release(g);
      throw err;
    }
  }

  private finish(p: Prepared, usedLen: number): BlkResult {
    const mem = this.mem;
    const status = p.statusGpa === undefined ? 0xff : mem.read(p.statusGpa, 1)[0]!;
    const data = p.readBack.length === 0 ? Buffer.alloc(0) : Buffer.concat(p.readBack.map((b) => mem.read(b.gpa, b.len)));
    this.release(p);
    return { status, usedLen, data };
  }

  private release(p: Prepared): void {
    const mem = this.fe.mem;
    if (!mem) return;
    for (const g of p.allocs.splice(0)) mem.release(g);
  }
}

/**
 * Splits each data segment into FRAGMENT_SIZES-sized pieces with varied
 * alignment; every third piece of 2+ bytes straddles a region boundary when
 * the memory has one.
 */
function fragment(segs: DataSeg[], canStraddle: boolean): DataSeg[] {
  const out: DataSeg[] = [];
  let k = 0;
  for (const s of segs) {
    let done = 0;
    while (done < s.len) {
      const size = Math.min(FRAGMENT_SIZES[k % FRAGMENT_SIZES.length]!, s.len - done);
      const piece: DataSeg = {
        len: size,
        write: s.write,
        align: FRAGMENT_ALIGNS[k % FRAGMENT_ALIGNS.length]!,
        straddle: canStraddle && size >= 2 && k % 3 === 1 ? 'try' : false,
      };
      if (s.data) piece.data = s.data.subarray(done, done + size);
      out.push(piece);
      done += size;
      k++;
    }
  }
  return out;
}
