// How one guest read or write becomes I/O the host disk accepts (O_DIRECT:
// file offset and length aligned to A = offsetAlign, every iovec's address
// and length aligned to M = memAlign).
//
//   guest request      |<------------- pos .. pos+len ------------->|
//   host blocks    |head block |  ...  middle (zero-copy)  ...  |tail block |
//                  ^aStart     ^midStart                  midEnd^      aEnd^
//
// - The range is widened to whole host blocks [aStart, aEnd).
// - A partial first/last block goes through a bounce block of A bytes (the
//   head/tail): reads copy the guest's part out; writes read the block first
//   and patch the guest's part in (read-modify-write).
// - The middle goes straight to guest memory when every piece is M-aligned
//   (zero copy), else through one middle bounce buffer.
// - Padding can push the vector past IOV_MAX: then the first middle pieces
//   (never the head or tail block, whose bounce blocks have scratch space the
//   guest's vector must not see) are collapsed into one bounce buffer.
// - A middle with more pieces than IOV_MAX (a guest ignoring seg_max) is
//   split into several ops at host-aligned element boundaries.
// File offsets come from the request's sector alone, never from memory
// addresses (seed: discontiguous-iovec-pwritev).

import { IOV_MAX } from '../virtio/constants';
import { BOUNCE_GRANULE } from '../blk/bounce-pool';
import { IOV_STRIDE } from '../blk/shared-arrays';

export interface HostRules {
  /** File offset and length alignment for O_DIRECT (bytes). */
  offsetAlign: number;
  /** Memory address alignment for O_DIRECT (bytes). */
  memAlign: number;
  /**
   * Length alignment of each iovec (bytes): memAlign where the kernel allows
   * it, offsetAlign where it checks segments against the logical block
   * (statx documents dio_offset_align as applying to segment lengths).
   */
  lenAlign: number;
}

/** Element triple stride in vectors: bufId, offset, len (the request's iovec layout). */
export const ELEM = IOV_STRIDE;

export class RwPlan {
  pos = 0;
  len = 0;
  write = false;
  aStart = 0;
  aEnd = 0;
  /** A partial first (last) host block needs a bounce block. */
  head = false;
  tail = false;
  /** Guest bytes [0, headGuestEnd) live in the head block; [tailGuestStart, len) in the tail block. */
  headGuestEnd = 0;
  tailGuestStart = 0;
  /** File range written/read straight from/to guest pieces (or the middle bounce). */
  midStart = 0;
  midEnd = 0;
  /** Middle pieces: (bufId, offset, len), in file order. */
  readonly pieces: Float64Array;
  nPieces = 0;
  /** The middle goes through one bounce buffer (some piece is not M-aligned). */
  midBounce = false;
  /** The first `collapse` pieces are replaced by one bounce buffer (IOV_MAX). */
  collapse = 0;
  collapseLen = 0;
  /** The middle is split into several ops (more pieces than IOV_MAX). */
  split = false;
  /** Offsets inside this request's bounce allocation, -1 when unused. */
  headOff = -1;
  tailOff = -1;
  midOff = -1;
  bounceLen = 0;

  constructor(capacity: number) {
    this.pieces = new Float64Array(capacity * ELEM);
  }

  /** Read-modify-write: a write with a partial head or tail block. */
  get rmw(): boolean {
    return this.write && (this.head || this.tail);
  }

  /** Anything bounced: the request's iovecs are no longer all guest memory. */
  get bounced(): boolean {
    return this.bounceLen > 0;
  }
}

/**
 * Cuts guest bytes [from, to) of the request's iovec list into pieces,
 * appended to out at index n; returns the new count. The iovecs are the
 * request's data in order, so byte k of the request is found by walking them.
 */
export function cutPieces(iovs: Float64Array, iovCount: number, from: number, to: number, out: Float64Array, n: number): number {
  let pos = 0;
  for (let i = 0; i < iovCount && pos < to; i++) {
    const k = i * ELEM;
    const len = iovs[k + 2] as number;
    const s = Math.max(from, pos);
    const e = Math.min(to, pos + len);
    if (s < e) {
      const o = n * ELEM;
      out[o] = iovs[k] as number;
      out[o + 1] = (iovs[k + 1] as number) + (s - pos);
      out[o + 2] = e - s;
      n++;
    }
    pos += len;
  }
  return n;
}

/** Rounds up to the bounce granule so every sub-buffer stays page aligned. */
function granule(n: number): number {
  return Math.ceil(n / BOUNCE_GRANULE) * BOUNCE_GRANULE;
}

/**
 * Fills `plan` for a read or write of `len` bytes at byte `pos` whose data is
 * the request's iovecs. `phase(bufId)` is where that buffer's first byte sits
 * modulo M in host memory.
 */
export function planRw(
  plan: RwPlan,
  pos: number,
  len: number,
  write: boolean,
  iovs: Float64Array,
  iovCount: number,
  rules: HostRules,
  phase: (bufId: number) => number,
): void {
  const A = rules.offsetAlign;
  const M = rules.memAlign;
  const L = rules.lenAlign;
  const end = pos + len;
  plan.pos = pos;
  plan.len = len;
  plan.write = write;
  plan.aStart = Math.floor(pos / A) * A;
  plan.aEnd = Math.ceil(end / A) * A;
  plan.head = pos !== plan.aStart;
  plan.tail = end !== plan.aEnd;
  if (plan.head && plan.aEnd - plan.aStart === A) {
    // One host block holds the whole request: the head block serves both ends.
    plan.tail = false;
  }
  plan.headGuestEnd = plan.head ? Math.min(len, plan.aStart + A - pos) : 0;
  plan.tailGuestStart = plan.tail ? Math.max(0, plan.aEnd - A - pos) : len;
  plan.midStart = plan.head ? plan.aStart + A : pos;
  plan.midEnd = plan.tail ? plan.aEnd - A : end;
  if (plan.midEnd < plan.midStart) plan.midEnd = plan.midStart;

  plan.nPieces = cutPieces(iovs, iovCount, plan.midStart - pos, plan.midEnd - pos, plan.pieces, 0);
  plan.midBounce = false;
  for (let i = 0; i < plan.nPieces; i++) {
    const k = i * ELEM;
    const addr = phase(plan.pieces[k] as number) + (plan.pieces[k + 1] as number);
    if (addr % M !== 0 || (plan.pieces[k + 2] as number) % L !== 0) {
      plan.midBounce = true;
      break;
    }
  }
  const mid = plan.midBounce ? (plan.midEnd > plan.midStart ? 1 : 0) : plan.nPieces;
  const total = mid + (plan.head ? 1 : 0) + (plan.tail ? 1 : 0);
  plan.collapse = 0;
  plan.collapseLen = 0;
  plan.split = false;
  if (total > IOV_MAX) {
    if (mid <= IOV_MAX) {
      // Padding pushed it over: collapse the first pieces after the head.
      plan.collapse = total - IOV_MAX + 1;
      for (let i = 0; i < plan.collapse; i++) plan.collapseLen += plan.pieces[i * ELEM + 2] as number;
    } else {
      plan.split = true;
    }
  }

  planBounceLayout(plan, A);
}

/**
 * Plans requests under one host's rules: the whole decision of how a request
 * (or one DISCARD / WRITE_ZEROES segment) becomes host I/O, in one call.
 * Owns the scratch vector the split check needs; callers may reuse it
 * (vec, cuts) to build their ops once plan() returned.
 */
export class RwPlanner {
  readonly vec: Float64Array;
  readonly cuts: number[] = [];

  constructor(
    readonly rules: HostRules,
    private readonly phase: (bufId: number) => number,
    /** Most ops one request may be split into. */
    private readonly maxOps: number,
    /** Most elements a vector can have (request iovecs + head and tail blocks). */
    maxElems: number,
  ) {
    this.vec = new Float64Array(maxElems * ELEM);
  }

  /**
   * planRw, then the fallback for a split middle: split only where every op
   * can start host-aligned, in at most maxOps ops; else bounce the whole
   * middle. Decided here, before any bounce space is reserved.
   */
  plan(plan: RwPlan, pos: number, len: number, write: boolean, iovs: Float64Array, iovCount: number): void {
    planRw(plan, pos, len, write, iovs, iovCount, this.rules, this.phase);
    if (!plan.split) return;
    const A = this.rules.offsetAlign;
    // Only the lengths matter to splitPoints: the bounce buffer id and base are placeholders.
    const n = buildVector(plan, 0, 0, A, this.vec);
    const ops = splitPoints(this.vec, n, plan.aStart, A, this.cuts);
    if (ops === 0 || ops > this.maxOps) {
      plan.split = false;
      plan.midBounce = true;
      plan.collapse = 0;
      planBounceLayout(plan, A);
    }
  }
}

/** Lays out the request's bounce allocation: head block, tail block, middle/collapse buffer. */
export function planBounceLayout(plan: RwPlan, A: number): void {
  let off = 0;
  plan.headOff = plan.tailOff = plan.midOff = -1;
  if (plan.head) {
    plan.headOff = off;
    off += granule(A);
  }
  if (plan.tail) {
    plan.tailOff = off;
    off += granule(A);
  }
  if (plan.midBounce && plan.midEnd > plan.midStart) {
    plan.midOff = off;
    off += granule(plan.midEnd - plan.midStart);
  } else if (plan.collapse > 0) {
    plan.midOff = off;
    off += granule(plan.collapseLen);
  }
  plan.bounceLen = off;
}

/**
 * The vector for the main op(s), in file order from aStart: head block,
 * middle (pieces, collapse buffer or middle bounce), tail block. Returns the
 * element count written to out.
 */
export function buildVector(plan: RwPlan, bounceBuf: number, bounceBase: number, A: number, out: Float64Array): number {
  let o = 0;
  if (plan.head) {
    out[o++] = bounceBuf;
    out[o++] = bounceBase + plan.headOff;
    out[o++] = A;
  }
  if (plan.midBounce) {
    if (plan.midEnd > plan.midStart) {
      out[o++] = bounceBuf;
      out[o++] = bounceBase + plan.midOff;
      out[o++] = plan.midEnd - plan.midStart;
    }
  } else {
    let i = 0;
    if (plan.collapse > 0) {
      out[o++] = bounceBuf;
      out[o++] = bounceBase + plan.midOff;
      out[o++] = plan.collapseLen;
      i = plan.collapse;
    }
    const p = plan.pieces;
    for (let k = i * ELEM, end = plan.nPieces * ELEM; k < end; k++) out[o++] = p[k] as number;
  }
  if (plan.tail) {
    out[o++] = bounceBuf;
    out[o++] = bounceBase + plan.tailOff;
    out[o++] = A;
  }
  return o / ELEM;
}

/**
 * Where to cut a vector of n elements (starting at file offset start) into
 * ops of at most IOV_MAX elements, each starting at an A-aligned offset.
 * Writes element indices where each op starts into cuts; returns the op count,
 * or 0 if no aligned cut exists (RwPlanner.plan then bounces the middle).
 */
export function splitPoints(vec: Float64Array, n: number, start: number, A: number, cuts: number[]): number {
  cuts.length = 0;
  let first = 0;
  while (first < n) {
    cuts.push(first);
    if (n - first <= IOV_MAX) return cuts.length;
    // Last aligned boundary within the next IOV_MAX elements.
    let pos = start;
    let best = -1;
    for (let i = first; i < first + IOV_MAX; i++) {
      pos += vec[i * ELEM + 2] as number;
      if (pos % A === 0) best = i + 1;
    }
    if (best <= first) return 0;
    for (let i = first; i < best; i++) start += vec[i * ELEM + 2] as number;
    first = best;
  }
  return cuts.length;
}
