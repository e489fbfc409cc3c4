// vhost-user message payload decoders (the messages a front-end sends).
//
// Decoders are strict and pure: each checks the exact payload size of its
// type and the number of fds the message may carry (its row in protocol.ts,
// refined where the payload decides: NOFD, nregions), checks every 64-bit
// address range for wrap-around, and throws a ProtocolViolation naming the
// rule that broke. They never close fds: the fds stay owned by whoever holds
// the Message (on a violation, close every fd in msg.fds; on success, the
// decoded value says which fds the handler takes over, and any others must
// still be closed).
//
// The messages the back-end sends are built in encode.ts.

import {
  CONFIG_FLAG_MIGRATION,
  CONFIG_HDR_SIZE,
  Flags,
  MAX_CONFIG_SIZE,
  MEMORY_BASELINE_NREGIONS,
  PayloadSize,
  VRING_F_LOG,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  requestName,
  requestRow,
} from './protocol';
import { violation } from './violation';

/** One message as read off the socket. `payload.length === size`. */
export interface Message {
  request: number;
  flags: number;
  size: number;
  payload: Buffer;
  /** fds received with the header, in order. Owned by the holder of the Message. */
  fds: number[];
}

export interface VringState {
  index: number;
  num: number;
}

/**
 * SET_VRING_ADDR. desc/used/avail are user addresses (front-end virtual
 * addresses, translated through the memory table's uva), exact as numbers.
 * log is a guest-physical address only meaningful with VRING_F_LOG, kept as
 * bigint because a front-end may leave any value there.
 */
export interface VringAddr {
  index: number;
  flags: number;
  desc: number;
  used: number;
  avail: number;
  log: bigint;
}

/** A memory region; every address in [start, start + size) is exact as a number. */
export interface MemRegion {
  gpa: number;
  size: number;
  uva: number;
  mmapOffset: number;
}

/** A region with the fd it is mapped from (an entry of msg.fds). */
export interface MemRegionWithFd extends MemRegion {
  fd: number;
}

/** REM_MEM_REG identifies a region by gpa, size and uva; its mmap offset is ignored. */
export interface MemRegionKey {
  gpa: number;
  size: number;
  uva: number;
}

export interface MemTable {
  regions: MemRegionWithFd[];
}

/** SET_VRING_KICK/CALL/ERR: fd is -1 when the NOFD bit was set. */
export interface VringFile {
  index: number;
  fd: number;
}

/**
 * GET_INFLIGHT_FD / SET_INFLIGHT_FD (VhostUserInflight). GET_INFLIGHT_FD
 * carries only numQueues and queueSize; fd is -1 there.
 */
export interface Inflight {
  mmapSize: number;
  mmapOffset: number;
  numQueues: number;
  queueSize: number;
  fd: number;
}

/** GET_CONFIG / SET_CONFIG. data is a view of the message payload (size bytes). */
export interface ConfigAccess {
  offset: number;
  size: number;
  flags: number;
  data: Buffer;
}

const TWO_POW_64 = 1n << 64n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function name(msg: Message): string {
  return requestName(msg.request);
}

function expectSize(msg: Message, expected: number): void {
  if (msg.payload.length !== msg.size) {
    // A Message built by MessageReader always has payload.length === size.
    throw violation(`${name(msg)} header says ${msg.size} payload bytes but ${msg.payload.length} were read`);
  }
  if (msg.size !== expected) {
    throw violation(`${name(msg)} payload is ${msg.size} bytes, expected ${expected}`);
  }
}

function expectFds(msg: Message, min: number, max: number, what: string): void {
  const n = msg.fds.length;
  if (n < min || n > max) {
    const want = min === max ? `${min}` : `${min}..${max}`;
    throw violation(`${name(msg)} carries ${n} fds, expected ${want} (${what})`);
  }
}

/** The fd count the request's row in protocol.ts allows (none for a code outside it); `what`: what they are. */
function expectRowFds(msg: Message, what: string): void {
  const [min, max] = requestRow(msg.request)?.fds ?? [0, 0];
  expectFds(msg, min, max, what);
}

/**
 * A 64-bit [start, start + size) range (size > 0, checked by the caller):
 * rejects wrap past 2^64 and any end beyond 2^53-1, so every address inside,
 * and the end, are exact numbers. Returns start as a number.
 */
function checkRange(msg: Message, label: string, field: string, start: bigint, size: bigint): number {
  const values = `(${field} 0x${start.toString(16)}, size 0x${size.toString(16)})`;
  if (start + size > TWO_POW_64) {
    throw violation(`${name(msg)} ${label} ${field}+size wraps past 2^64 ${values}`);
  }
  if (start + size > MAX_SAFE) {
    throw violation(`${name(msg)} ${label} ${field}+size ends beyond 2^53-1 ${values}`);
  }
  return Number(start);
}

function safeNumber(msg: Message, what: string, value: bigint): number {
  if (value > MAX_SAFE) {
    throw violation(`${name(msg)} ${what} 0x${value.toString(16)} exceeds 2^53-1`);
  }
  return Number(value);
}

// ---------------------------------------------------------------- decoders

/** A message without payload (GET_FEATURES, SET_OWNER, GET_QUEUE_NUM, ...): size 0, no fds. */
export function decodeEmpty(msg: Message): void {
  expectSize(msg, 0);
  expectRowFds(msg, 'this message takes no fd');
}

/** A u64 payload (SET_FEATURES, SET_PROTOCOL_FEATURES, SET_STATUS): 8 bytes, no fds. */
export function decodeU64(msg: Message): bigint {
  expectSize(msg, PayloadSize.U64);
  expectRowFds(msg, 'this message takes no fd');
  return msg.payload.readBigUInt64LE(0);
}

/** A vring state {index, num} (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE): 8 bytes, no fds. */
export function decodeVringState(msg: Message): VringState {
  expectSize(msg, PayloadSize.VRING_STATE);
  expectRowFds(msg, 'this message takes no fd');
  return { index: msg.payload.readUInt32LE(0), num: msg.payload.readUInt32LE(4) };
}

/**
 * SET_VRING_ADDR: 40 bytes, no fds. Flags may only hold VRING_F_LOG. The ring
 * parts must have the split-ring alignment the VIRTIO spec requires (desc 16,
 * avail 2, used 4) and lie below 2^53.
 */
export function decodeVringAddr(msg: Message): VringAddr {
  expectSize(msg, PayloadSize.VRING_ADDR);
  expectRowFds(msg, 'this message takes no fd');
  const p = msg.payload;
  const index = p.readUInt32LE(0);
  const flags = p.readUInt32LE(4);
  if ((flags & ~VRING_F_LOG) !== 0) {
    throw violation(`${name(msg)} flags 0x${flags.toString(16)} has bits other than VHOST_VRING_F_LOG`);
  }
  const desc = safeNumber(msg, 'descriptor table address', p.readBigUInt64LE(8));
  const used = safeNumber(msg, 'used ring address', p.readBigUInt64LE(16));
  const avail = safeNumber(msg, 'available ring address', p.readBigUInt64LE(24));
  const log = p.readBigUInt64LE(32);
  // Spec (2.7 Split Virtqueues): descriptor table 16-byte, available ring
  // 2-byte, used ring 4-byte aligned. `% n` is exact on numbers < 2^53.
  if (desc % 16 !== 0) throw violation(`${name(msg)} descriptor table address 0x${desc.toString(16)} is not 16-byte aligned`);
  if (avail % 2 !== 0) throw violation(`${name(msg)} available ring address 0x${avail.toString(16)} is not 2-byte aligned`);
  if (used % 4 !== 0) throw violation(`${name(msg)} used ring address 0x${used.toString(16)} is not 4-byte aligned`);
  return { index, flags, desc, used, avail, log };
}

function readRegion(msg: Message, at: number, label: string, checkMmapOffset: boolean): MemRegion & MemRegionKey {
  const p = msg.payload;
  const gpa = p.readBigUInt64LE(at);
  const size = p.readBigUInt64LE(at + 8);
  const uva = p.readBigUInt64LE(at + 16);
  const mmapOffset = p.readBigUInt64LE(at + 24);
  if (size === 0n) throw violation(`${name(msg)} ${label} has size 0`);
  return {
    gpa: checkRange(msg, label, 'gpa', gpa, size),
    size: Number(size), // exact: checkRange bounded gpa + size by 2^53-1
    uva: checkRange(msg, label, 'uva', uva, size),
    mmapOffset: checkMmapOffset ? checkRange(msg, label, 'mmapOffset', mmapOffset, size) : 0,
  };
}

/** True when [a, a + aSize) and [b, b + bSize) intersect (all exact numbers). */
export function rangesOverlap(a: number, aSize: number, b: number, bSize: number): boolean {
  return a < b + bSize && b < a + aSize;
}

/**
 * SET_MEM_TABLE: nregions 1..8, payload exactly 8 + 32 * nregions bytes,
 * exactly nregions fds (in region order). Regions must not overlap in
 * guest-physical or in user address space.
 */
export function decodeMemTable(msg: Message): MemTable {
  if (msg.size < PayloadSize.MEMORY_HEADER) {
    throw violation(`${name(msg)} payload is ${msg.size} bytes, shorter than the 8-byte header`);
  }
  const n = msg.payload.readUInt32LE(0);
  if (n < 1 || n > MEMORY_BASELINE_NREGIONS) {
    throw violation(`${name(msg)} has ${n} regions, expected 1..${MEMORY_BASELINE_NREGIONS}`);
  }
  expectSize(msg, PayloadSize.MEMORY_HEADER + n * PayloadSize.MEM_REGION);
  if (msg.fds.length !== n) {
    throw violation(`${name(msg)} carries ${msg.fds.length} fds for ${n} regions`);
  }
  const regions: MemRegionWithFd[] = [];
  for (let i = 0; i < n; i++) {
    const r = readRegion(msg, PayloadSize.MEMORY_HEADER + i * PayloadSize.MEM_REGION, `region ${i}`, true);
    for (let j = 0; j < regions.length; j++) {
      const o = regions[j]!; // j < regions.length
      if (rangesOverlap(o.gpa, o.size, r.gpa, r.size)) {
        throw violation(`${name(msg)} regions ${j} and ${i} overlap in guest-physical space`);
      }
      if (rangesOverlap(o.uva, o.size, r.uva, r.size)) {
        throw violation(`${name(msg)} regions ${j} and ${i} overlap in user address space`);
      }
    }
    regions.push({ ...r, fd: msg.fds[i]! }); // fds.length === n was checked above
  }
  return { regions };
}

/** ADD_MEM_REG: 8 bytes padding + one 32-byte region, exactly one fd. */
export function decodeAddMemReg(msg: Message): MemRegionWithFd {
  expectSize(msg, PayloadSize.SINGLE_MEM_REGION);
  expectRowFds(msg, 'the region to map');
  const r = readRegion(msg, 8, 'region', true);
  return { ...r, fd: msg.fds[0]! }; // exactly one fd was checked above
}

/**
 * REM_MEM_REG: 8 bytes padding + one 32-byte region; 0 fds, or 1 for old
 * front-ends (the spec says to close it unused; the holder of msg does).
 * The mmap offset is ignored.
 */
export function decodeRemMemReg(msg: Message): MemRegionKey {
  expectSize(msg, PayloadSize.SINGLE_MEM_REGION);
  expectRowFds(msg, 'none, or one to be closed unused');
  const { gpa, size, uva } = readRegion(msg, 8, 'region', false);
  return { gpa, size, uva };
}

/**
 * SET_VRING_KICK/CALL/ERR: u64 with the ring index in bits 0-7 and NOFD in
 * bit 8; any other bit is a violation. With NOFD no fd may come, otherwise
 * exactly one.
 */
export function decodeVringFile(msg: Message): VringFile {
  expectSize(msg, PayloadSize.U64);
  const v = msg.payload.readBigUInt64LE(0);
  if ((v & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0n) {
    throw violation(`${name(msg)} payload 0x${v.toString(16)} has bits beyond index and NOFD (0x1ff)`);
  }
  const bits = Number(v);
  const index = bits & VRING_IDX_MASK;
  if ((bits & VRING_NOFD_MASK) !== 0) {
    expectFds(msg, 0, 0, 'the NOFD flag is set');
    return { index, fd: -1 };
  }
  expectFds(msg, 1, 1, 'the NOFD flag is clear');
  return { index, fd: msg.fds[0]! }; // exactly one fd was checked above
}

/**
 * GET_CONFIG / SET_CONFIG: offset, size, flags then size data bytes; payload
 * exactly 12 + size, offset + size <= 256, flags 0 (writable field) or 1
 * (migration). No fds. For GET_CONFIG the data bytes carry nothing.
 */
export function decodeConfig(msg: Message): ConfigAccess {
  if (msg.size < CONFIG_HDR_SIZE) {
    throw violation(`${name(msg)} payload is ${msg.size} bytes, shorter than the 12-byte config header`);
  }
  const p = msg.payload;
  const offset = p.readUInt32LE(0);
  const size = p.readUInt32LE(4);
  const flags = p.readUInt32LE(8);
  if (offset > MAX_CONFIG_SIZE || size > MAX_CONFIG_SIZE - offset) {
    throw violation(`${name(msg)} offset ${offset} + size ${size} exceeds the ${MAX_CONFIG_SIZE}-byte config space`);
  }
  expectSize(msg, CONFIG_HDR_SIZE + size);
  expectRowFds(msg, 'this message takes no fd');
  if (flags > CONFIG_FLAG_MIGRATION) {
    throw violation(`${name(msg)} flags ${flags} is neither 0 (writable) nor 1 (migration)`);
  }
  return { offset, size, flags, data: p.subarray(CONFIG_HDR_SIZE, CONFIG_HDR_SIZE + size) };
}

/** SET_BACKEND_REQ_FD: no payload, exactly one fd (the back-end channel socket). */
export function decodeBackendReqFd(msg: Message): number {
  expectSize(msg, 0);
  expectRowFds(msg, 'the back-end channel socket');
  return msg.fds[0]!; // exactly one fd was checked above
}

function readInflight(msg: Message): Omit<Inflight, 'fd'> {
  expectSize(msg, PayloadSize.INFLIGHT);
  const p = msg.payload;
  return {
    mmapSize: safeNumber(msg, 'mmap_size', p.readBigUInt64LE(0)),
    mmapOffset: safeNumber(msg, 'mmap_offset', p.readBigUInt64LE(8)),
    numQueues: p.readUInt16LE(16),
    queueSize: p.readUInt16LE(18),
  };
}

/**
 * GET_INFLIGHT_FD: 24 bytes, no fd. Only num_queues and queue_size mean
 * something (QEMU sends zero mmap fields); the handler checks their range.
 */
export function decodeGetInflight(msg: Message): Inflight {
  const r = readInflight(msg);
  expectRowFds(msg, 'the back-end creates the region');
  return { ...r, fd: -1 };
}

/**
 * SET_INFLIGHT_FD: 24 bytes, exactly one fd (the region). mmap_offset +
 * mmap_size must not pass 2^53-1; whether they fit the file and the queue
 * layout is checked when the region is mapped.
 */
export function decodeSetInflight(msg: Message): Inflight {
  const r = readInflight(msg);
  expectRowFds(msg, 'the inflight region');
  if (r.mmapSize === 0) throw violation(`${name(msg)} mmap_size is 0`);
  checkRange(msg, 'region', 'mmap_offset', BigInt(r.mmapOffset), BigInt(r.mmapSize));
  return { ...r, fd: msg.fds[0]! }; // exactly one fd was checked above
}

/** SET_STATUS: a u64 holding the virtio device status byte; higher bits are a violation. */
export function decodeStatus(msg: Message): number {
  const v = decodeU64(msg);
  if (v > 0xffn) throw violation(`${name(msg)} 0x${v.toString(16)} does not fit the 8-bit device status`);
  return Number(v);
}

/** Whether the front-end asked for a REPLY_ACK reply to this message. */
export function needsReply(msg: Message): boolean {
  return (msg.flags & Flags.NEED_REPLY) !== 0;
}
