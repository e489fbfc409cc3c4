// Helpers for the alignment-layer and fixed-buffer integration tests
// (align-4kn.test.ts, fixed-buffers.test.ts):
//
// - reading a file or device back with O_DIRECT (dd), e.g. a 4Kn loop
//   device (test/helpers/loop-device.ts) over a pre-filled backing file;
// - the daemon's counters lines (test/helpers/counters.ts) of a connection,
//   when it closes or on SIGUSR1;
// - a process's capabilities and locked-memory limit (for vublk started
//   through setpriv / prlimit: startVublk's `wrapper`);
// - raw chains of many descriptors whose buffers are placed by hand, so a
//   test knows how many memory segments (iovecs) the daemon will see.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import type { VublkProcess } from '../helpers/vublk-process';
import { countersOf, type Counters } from '../helpers/counters';
import type { Test } from 'tap';
import { Frontend } from '../../src/frontend/frontend';
import { type SetupOptions } from '../../src/frontend/setup-options';
import type { GuestMemory } from '../../src/frontend/guest-memory';
import type { RingSeg } from '../../src/frontend/split-ring';
import { BLK_HEADER_SIZE, BlkDriver } from '../../src/frontend/blk-driver';

// ------------------------------------------------------------ environment

/** Whether `cmd` is on PATH. */
export function haveCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * A skip reason (or false): the test needs root and these commands. Under CI
 * a missing prerequisite is an error, not a skip.
 */
export function requirements(opts: { root?: boolean; commands?: string[] }): string | false {
  const missing: string[] = [];
  if (opts.root && process.getuid?.() !== 0) missing.push('root');
  for (const c of opts.commands ?? []) if (!haveCommand(c)) missing.push(c);
  if (missing.length === 0) return false;
  const reason = `needs ${missing.join(', ')}`;
  if (process.env.CI) throw new Error(`${reason} (CI is set: prerequisites must be present)`);
  return reason;
}

// ------------------------------------------------------------ O_DIRECT reads

/**
 * Reads [off, off+len) of a file or device with O_DIRECT (dd iflag=direct,
 * whole 4 KiB blocks), so neither our page cache nor the loop device's can
 * hide what really reached the device.
 */
export function readDirect(target: string, off: number, len: number): Buffer {
  const B = 4096;
  const first = Math.floor(off / B);
  const last = Math.ceil((off + len) / B);
  const out = execFileSync('dd', [`if=${target}`, 'iflag=direct', `bs=${B}`, `skip=${first}`, `count=${last - first}`, 'status=none'], {
    maxBuffer: (last - first) * B + 1024,
  });
  if (out.length !== (last - first) * B) throw new Error(`dd read ${out.length} bytes of ${target}, wanted ${(last - first) * B}`);
  return out.subarray(off - first * B, off - first * B + len);
}

/** First index where a and b differ, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

// ------------------------------------------------------------ daemon log

/** Polls until cond() holds or timeoutMs passes. */
export async function waitFor(cond: () => boolean, timeoutMs = 10000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/** The conn id of the first "frontend connected" line after stderr offset mark. */
export async function connIdAfter(v: VublkProcess, mark: number): Promise<number> {
  const re = /^vublk: info: frontend connected conn=(\d+)/m;
  await waitFor(() => re.test(v.stderr().slice(mark)), 10000);
  const m = re.exec(v.stderr().slice(mark));
  if (!m) throw new Error(`vublk logged no "frontend connected" line; stderr:\n${v.stderr()}`);
  return Number(m[1]);
}

/**
 * Connects a frontend to the daemon's socket (teardown closes it) and sets
 * it up; returns it, a driver, its conn id and the stderr offset before it.
 */
export async function openSession(t: Test, v: VublkProcess, socket: string, setup: SetupOptions, opts: { timeoutMs?: number } = {}) {
  const mark = v.stderr().length;
  const fe = await Frontend.connect(socket, opts);
  t.teardown(() => fe.close());
  const conn = await connIdAfter(v, mark);
  await fe.setup(setup);
  return { fe, drv: new BlkDriver(fe), conn, mark };
}

/** Closes fe and returns connection conn's per-queue counters from its close (reason=closed). */
export async function closeAndCount(v: VublkProcess, fe: Frontend, conn: number, queues: number): Promise<Counters[]> {
  fe.close();
  const ok = await waitFor(() => new RegExp(`^vublk: info: frontend connection closed conn=${conn}( |$)`, 'm').test(v.stderr()), 15000);
  if (!ok) throw new Error(`vublk did not log that conn ${conn} closed; stderr:\n${v.stderr()}`);
  const cs = countersOf(v.stderr(), conn, 'closed');
  if (cs.length !== queues) throw new Error(`expected ${queues} counters lines for conn ${conn}, got ${cs.length}; stderr:\n${v.stderr()}`);
  return cs;
}

/** Sends SIGUSR1 and returns the counters lines it produced for conn (one per queue). */
export async function countersNow(v: VublkProcess, conn: number, queues: number): Promise<Counters[]> {
  const before = countersOf(v.stderr(), conn, 'SIGUSR1').length;
  v.child.kill('SIGUSR1');
  const ok = await waitFor(() => countersOf(v.stderr(), conn, 'SIGUSR1').length >= before + queues, 10000);
  if (!ok) throw new Error(`no SIGUSR1 counters lines for conn ${conn}; stderr:\n${v.stderr()}`);
  return countersOf(v.stderr(), conn, 'SIGUSR1').slice(before, before + queues);
}

// ------------------------------------------------------------ capabilities

/** Effective capability mask and the locked-memory limit of a running process. */
export function procCapsAndMemlock(pid: number): { capEff: bigint; memlockSoft: string; memlockHard: string } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const cap = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  const limits = fs.readFileSync(`/proc/${pid}/limits`, 'utf8');
  const ml = /^Max locked memory\s+(\S+)\s+(\S+)/m.exec(limits);
  return { capEff: BigInt(`0x${cap?.[1] ?? '0'}`), memlockSoft: ml?.[1] ?? '?', memlockHard: ml?.[2] ?? '?' };
}

export const CAP_IPC_LOCK = 14;

// ------------------------------------------------------------ raw chains

/** One guest buffer of a raw request's data, in chain order. */
export interface Piece {
  gpa: number;
  len: number;
}

export interface RawRequest {
  /** Ring segments of the whole chain (header .. status). */
  segs: RingSeg[];
  /** Data pieces in order (for reads: where the data lands). */
  data: Piece[];
  statusGpa: number;
  /** Guest allocations to release afterwards (not the pieces' own arenas). */
  allocs: number[];
}

/**
 * Builds a virtio-blk read (type 0) or write (type 1) whose data are
 * `pieces`, one descriptor each. mergeHeader (writes) replaces the first
 * piece by a fresh buffer holding the header and then that piece's data in
 * one readable descriptor; mergeStatus (reads) replaces the last piece by a
 * fresh buffer holding its data and then the status byte in one writable
 * descriptor. Either way every descriptor but one carries data.
 */
export function buildRawRequest(
  mem: GuestMemory,
  type: 0 | 1,
  sector: number,
  pieces: readonly Piece[],
  opts: { payload?: Buffer; mergeHeader?: boolean; mergeStatus?: boolean } = {},
): RawRequest {
  const write = type === 1;
  if (write && opts.payload === undefined) throw new Error('a write needs a payload');
  if (pieces.length === 0) throw new Error('no data pieces');
  const header = Buffer.alloc(BLK_HEADER_SIZE);
  header.writeUInt32LE(type, 0);
  header.writeBigUInt64LE(BigInt(sector), 8);
  const allocs: number[] = [];
  const segs: RingSeg[] = [];
  const data: Piece[] = [];
  let statusGpa = -1;
  if (!(write && opts.mergeHeader)) {
    const h = mem.alloc(BLK_HEADER_SIZE, 16);
    allocs.push(h);
    mem.write(h, header);
    segs.push({ gpa: h, len: BLK_HEADER_SIZE, write: false });
  }
  pieces.forEach((p, i) => {
    if (write && opts.mergeHeader && i === 0) {
      const g = mem.alloc(BLK_HEADER_SIZE + p.len, 512);
      allocs.push(g);
      mem.write(g, header);
      segs.push({ gpa: g, len: BLK_HEADER_SIZE + p.len, write: false });
      data.push({ gpa: g + BLK_HEADER_SIZE, len: p.len });
    } else if (!write && opts.mergeStatus && i === pieces.length - 1) {
      const g = mem.alloc(p.len + 1, 512);
      allocs.push(g);
      segs.push({ gpa: g, len: p.len + 1, write: true });
      data.push({ gpa: g, len: p.len });
      statusGpa = g + p.len;
    } else {
      segs.push({ gpa: p.gpa, len: p.len, write: !write });
      data.push(p);
    }
  });
  if (statusGpa < 0) {
    statusGpa = mem.alloc(1, 1);
    allocs.push(statusGpa);
    segs.push({ gpa: statusGpa, len: 1, write: true });
  }
  // Fill the data (writes: the payload, in order; reads: a poison pattern).
  let at = 0;
  for (const p of data) {
    if (write)
      mem.write(p.gpa, opts.payload!.subarray(at, at + p.len)); // checked above
    else mem.fill(p.gpa, p.len, 0xee);
    at += p.len;
  }
  if (write && at !== opts.payload!.length) throw new Error(`payload is ${opts.payload!.length} bytes, pieces hold ${at}`);
  mem.fill(statusGpa, 1, 0xff);
  return { segs, data, statusGpa, allocs };
}

/** Submits a raw request on queue q and resolves with its status, used length and (reads) data. */
export async function runRaw(
  fe: Frontend,
  q: number,
  req: RawRequest,
  opts: { indirect?: boolean } = {},
): Promise<{ status: number; usedLen: number; data: Buffer }> {
  const mem = fe.mem!; // set up
  const usedLen = await fe.submit(q, req.segs, { indirect: opts.indirect ?? false });
  const status = mem.read(req.statusGpa, 1)[0]!;
  const data = Buffer.concat(req.data.map((p) => mem.read(p.gpa, p.len)));
  for (const g of req.allocs.splice(0)) mem.release(g);
  return { status, usedLen, data };
}

/**
 * Places data pieces by hand. `plain(len)` takes len bytes of a private
 * arena in region 0, never touching the previous piece (so the daemon cannot
 * merge them into one iovec); `pages(n)` takes n
 * consecutive one-page regions (each page its own memory region, so the
 * piece is n memory segments). `pages` wraps around (for writes, pieces may
 * alias: the same guest bytes written twice is legal).
 */
export class PiecePlacer {
  private readonly arena: number;
  private readonly arenaLen: number;
  private next = 0;
  private nextPage = 0;
  constructor(
    private readonly mem: GuestMemory,
    /** gpa of the first one-page region, and how many there are. */
    private readonly pagesBase: number,
    private readonly pageCount: number,
    arenaBytes: number,
  ) {
    this.arenaLen = arenaBytes;
    this.arena = mem.alloc(arenaBytes, 4096, { region: 0 });
  }

  plain(len: number): Piece {
    // Small pieces get 1024-byte slots; larger ones whole pages and a free page after.
    const small = len < 1024;
    const start = small ? this.next : Math.ceil(this.next / 4096) * 4096;
    const stride = small ? 1024 : Math.ceil(len / 4096) * 4096 + 4096;
    if (start + stride > this.arenaLen) throw new Error('piece arena exhausted');
    this.next = start + stride;
    return { gpa: this.arena + start, len };
  }

  pages(n: number, wrap = false): Piece {
    if (n > this.pageCount) throw new Error(`only ${this.pageCount} one-page regions`);
    if (this.nextPage + n > this.pageCount) {
      if (!wrap) throw new Error('one-page regions exhausted');
      this.nextPage = 0;
    }
    const p = { gpa: this.pagesBase + this.nextPage * 4096, len: n * 4096 };
    this.nextPage += n;
    return p;
  }

  /** Starts placing from the beginning again (the pieces handed out so far are done with). */
  rewind(): void {
    this.next = 0;
    this.nextPage = 0;
  }

  release(): void {
    this.mem.release(this.arena);
  }
}

/**
 * Reserves every one-page region of a memory made by manyRegions() so the
 * drivers' allocator never puts anything there; returns the first page's gpa.
 */
export function reservePages(mem: GuestMemory, first: number, count: number): number {
  for (let i = 0; i < count; i++) mem.alloc(4096, 4096, { region: first + i });
  return mem.regions[first]!.gpa;
}
