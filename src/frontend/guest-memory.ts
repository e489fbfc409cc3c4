// Guest RAM for the in-repo front-end: one or more memfd regions, each mapped
// into JS, placed in guest-physical space (back to back by default, so a
// buffer can straddle a region boundary), with an allocator for rings,
// descriptor tables and data buffers.
//
//   gpa:  base                  base+size0             base+size0+size1
//         |------ region 0 ------|------ region 1 ------|
//   uva:  0x7f0000000000+...      0x7f0100000000+...      (fake, distinct)
//
// The uva of a region is a made-up value: the back-end only uses it to
// translate ring addresses (SET_VRING_ADDR) into its own mapping.

import fs from 'node:fs';
import path from 'node:path';
import { native } from '../native/binding';

export interface GuestMemoryOptions {
  /** Region sizes in bytes (multiples of 4096). Default two 16 MiB regions. */
  regions?: number[];
  /** Guest-physical address of region 0. Default 0. */
  base?: number;
  /** Gap left in guest-physical space between regions (bytes). Default 0: back to back. */
  gap?: number;
  /**
   * 'separate' (default): one memfd per region, mmap offset 0.
   * 'shared-fd': one memfd holding every region at increasing offsets, as
   * QEMU does when it splits RAM around a hole (mmap offsets are non-zero).
   */
  fdLayout?: 'separate' | 'shared-fd';
  /** Extra bytes skipped at the start of each region's memfd (non-zero mmap offset). Default 0. */
  leadIn?: number;
  /**
   * Back the regions with regular files made (and at once unlinked) in this
   * directory instead of memfds, as QEMU's memory-backend-file does (e.g.
   * /dev/shm, or a hugetlbfs mount). Default: memfds.
   */
  fileDir?: string;
}

export interface GuestRegion {
  index: number;
  gpa: number;
  size: number;
  uva: number;
  /** The memfd this region is mapped from (shared by all regions with 'shared-fd'). */
  fd: number;
  mmapOffset: number;
  bytes: Uint8Array;
  view: DataView;
  /** The region's ArrayBuffer, for Atomics views. */
  buffer: ArrayBuffer;
}

const PAGE = 4096;
const UVA_BASE = 0x7f00_0000_0000;

function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

function alignDown(v: number, a: number): number {
  return Math.floor(v / a) * a;
}

/** A memfd, or an unlinked regular file in dir, of `size` bytes. */
function backingFd(name: string, size: number, dir: string | undefined): number {
  if (dir === undefined) return native.memfdCreate(name, size);
  const file = path.join(dir, `${name}-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  fs.unlinkSync(file);
  try {
    fs.ftruncateSync(fd, size);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return fd;
}

export class GuestMemory {
  readonly regions: GuestRegion[];
  /** Free ranges [start, end) in guest-physical space, sorted, coalesced. */
  private free: [number, number][] = [];
  private readonly live = new Map<number, number>();
  private readonly fds: number[];
  private closed = false;

  private constructor(regions: GuestRegion[], fds: number[]) {
    this.regions = regions;
    this.fds = fds;
    for (const r of regions) this.free.push([r.gpa, r.gpa + r.size]);
    this.coalesce();
  }

  static create(options: GuestMemoryOptions = {}): GuestMemory {
    const sizes = options.regions ?? [16 << 20, 16 << 20];
    const base = options.base ?? 0;
    const gap = options.gap ?? 0;
    const leadIn = options.leadIn ?? 0;
    if (sizes.length === 0) throw new RangeError('Expected at least one region');
    for (const s of sizes) {
      if (!Number.isSafeInteger(s) || s <= 0 || s % PAGE !== 0)
        throw new RangeError(`Expected region size a positive multiple of ${PAGE} but received ${s}`);
    }
    if (leadIn % PAGE !== 0 || gap % PAGE !== 0 || base % PAGE !== 0)
      throw new RangeError('base, gap and leadIn must be multiples of 4096');
    const shared = options.fdLayout === 'shared-fd';
    const fds: number[] = [];
    const regions: GuestRegion[] = [];
    let sharedFd = -1;
    if (shared) {
      const total = sizes.reduce((a, s) => a + leadIn + s, 0);
      sharedFd = backingFd('vublk-test-ram', total, options.fileDir);
      fds.push(sharedFd);
    }
    let gpa = base;
    let fileOffset = 0;
    sizes.forEach((size, index) => {
      let fd: number;
      let mmapOffset: number;
      if (shared) {
        fd = sharedFd;
        mmapOffset = fileOffset + leadIn;
        fileOffset = mmapOffset + size;
      } else {
        fd = backingFd(`vublk-test-ram${index}`, leadIn + size, options.fileDir);
        fds.push(fd);
        mmapOffset = leadIn;
      }
      const buffer = native.mapShared(fd, size, mmapOffset);
      regions.push({
        index,
        gpa,
        size,
        uva: UVA_BASE + index * 2 ** 32,
        fd,
        mmapOffset,
        bytes: new Uint8Array(buffer),
        view: new DataView(buffer),
        buffer,
      });
      gpa += size + gap;
    });
    return new GuestMemory(regions, fds);
  }

  /** Total bytes of guest RAM. */
  get totalSize(): number {
    return this.regions.reduce((a, r) => a + r.size, 0);
  }

  /** The region holding gpa and the offset of gpa in it. Throws if unmapped. */
  locate(gpa: number): { region: GuestRegion; offset: number } {
    for (const region of this.regions) {
      if (gpa >= region.gpa && gpa < region.gpa + region.size) return { region, offset: gpa - region.gpa };
    }
    throw new RangeError(`gpa 0x${gpa.toString(16)} is not in guest memory`);
  }

  /** Region and offset for [gpa, gpa + len) that must not cross a region boundary (ring fields). */
  locateWithin(gpa: number, len: number): { region: GuestRegion; offset: number } {
    const l = this.locate(gpa);
    if (l.offset + len > l.region.size)
      throw new RangeError(`[0x${gpa.toString(16)}, +${len}) crosses the end of region ${l.region.index}`);
    return l;
  }

  /** Front-end user address of gpa (what SET_VRING_ADDR carries). */
  gpaToUva(gpa: number): number {
    const { region, offset } = this.locate(gpa);
    return region.uva + offset;
  }

  /** Copies len bytes at gpa out of guest memory (may span regions). */
  read(gpa: number, len: number): Buffer {
    const out = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const { region, offset } = this.locate(gpa + done);
      const n = Math.min(len - done, region.size - offset);
      out.set(region.bytes.subarray(offset, offset + n), done);
      done += n;
    }
    return out;
  }

  /** Copies data into guest memory at gpa (may span regions). */
  write(gpa: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const { region, offset } = this.locate(gpa + done);
      const n = Math.min(data.length - done, region.size - offset);
      region.bytes.set(data.subarray(done, done + n), offset);
      done += n;
    }
  }

  /** Fills [gpa, gpa + len) with value. */
  fill(gpa: number, len: number, value: number): void {
    let done = 0;
    while (done < len) {
      const { region, offset } = this.locate(gpa + done);
      const n = Math.min(len - done, region.size - offset);
      region.bytes.fill(value, offset, offset + n);
      done += n;
    }
  }

  /** First byte after the end of region i and the start of region i+1 when they touch (else undefined). */
  boundaries(): number[] {
    const out: number[] = [];
    for (let i = 0; i + 1 < this.regions.length; i++) {
      const a = this.regions[i]!;
      const b = this.regions[i + 1]!;
      if (a.gpa + a.size === b.gpa) out.push(b.gpa);
    }
    return out;
  }

  /**
   * Allocates size bytes aligned to align (first fit) and returns the gpa.
   * With `straddle`, the range is placed across a region boundary (some of
   * it at the end of one region, the rest at the start of the next; the
   * alignment is lowered if it would forbid that); throws if no free range
   * straddles one.
   */
  alloc(size: number, align = 8, opts: { straddle?: boolean; region?: number } = {}): number {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`Expected a positive allocation size but received ${size}`);
    if (align <= 0 || (align & (align - 1)) !== 0) throw new RangeError(`Expected a power-of-two alignment but received ${align}`);
    for (let i = 0; i < this.free.length; i++) {
      const [s, e] = this.free[i]!;
      let start: number | undefined;
      if (opts.straddle) {
        for (const b of this.boundaries()) {
          if (size < 2) break;
          // Put roughly half on each side, keeping as much of the alignment
          // as still lets the range cross b.
          const half = Math.max(1, Math.floor(size / 2));
          let a = align;
          while (a > 1 && b - alignDown(b - half, a) >= size) a /= 2;
          const cand = Math.max(alignUp(s, a), alignDown(b - half, a));
          if (cand < b && cand + size > b && cand + size <= e && cand >= s) {
            start = cand;
            break;
          }
        }
      } else if (opts.region !== undefined) {
        const r = this.regions[opts.region];
        if (!r) throw new RangeError(`No region ${opts.region}`);
        const cand = alignUp(Math.max(s, r.gpa), align);
        if (cand + size <= Math.min(e, r.gpa + r.size)) start = cand;
      } else {
        const cand = alignUp(s, align);
        // Never hand out a plain allocation that crosses a boundary by accident.
        if (cand + size <= e && !this.crossesBoundary(cand, size)) start = cand;
        else {
          for (const b of this.boundaries()) {
            const c2 = alignUp(b, align);
            if (c2 >= s && c2 + size <= e && !this.crossesBoundary(c2, size)) {
              start = c2;
              break;
            }
          }
        }
      }
      if (start === undefined) continue;
      this.take(i, start, start + size);
      this.live.set(start, size);
      return start;
    }
    throw new RangeError(
      `guest memory exhausted: no free ${size} bytes (align ${align}${opts.straddle ? ', straddling a region boundary' : ''})`,
    );
  }

  /** Frees an allocation returned by alloc(). */
  release(gpa: number): void {
    const size = this.live.get(gpa);
    if (size === undefined) throw new Error(`release of 0x${gpa.toString(16)}, which is not allocated`);
    this.live.delete(gpa);
    this.free.push([gpa, gpa + size]);
    this.coalesce();
  }

  /** Bytes currently allocated. */
  get allocated(): number {
    let n = 0;
    for (const s of this.live.values()) n += s;
    return n;
  }

  /** Closes the memfds. The JS mappings go away when garbage-collected. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) native.closeFd(fd);
  }

  private crossesBoundary(start: number, size: number): boolean {
    return this.boundaries().some((b) => start < b && start + size > b);
  }

  private take(i: number, start: number, end: number): void {
    const [s, e] = this.free[i]!;
    const pieces: [number, number][] = [];
    if (s < start) pieces.push([s, start]);
    if (end < e) pieces.push([end, e]);
    this.free.splice(i, 1, ...pieces);
  }

  private coalesce(): void {
    this.free.sort((a, b) => a[0] - b[0]);
    const out: [number, number][] = [];
    for (const r of this.free) {
      const last = out[out.length - 1];
      if (last && last[1] === r[0]) last[1] = r[1];
      else out.push([r[0], r[1]]);
    }
    this.free = out;
  }
}
