// vhost-user message payload codec.
//
// Decoders are strict and pure: each checks the exact payload size of its
// type and the number of fds the message may carry, checks every 64-bit
// address range for wrap-around, and throws a ProtocolViolation naming the
// rule that broke. They never close fds: the fds stay owned by whoever holds
// the Message (on a violation, close every fd in msg.fds; on success, the
// decoded value says which fds the handler takes over, and any others must
// still be closed).
//
// Encoders build complete messages (header + payload) for replies, and the
// payloads a front-end sends (used by the in-repo test front-end).

import {
  CONFIG_FLAG_MIGRATION,
  CONFIG_HDR_SIZE,
  Flags,
  HEADER_SIZE,
  MAX_CONFIG_SIZE,
  MEMORY_BASELINE_NREGIONS,
  PayloadSize,
  Request,
  VRING_F_LOG,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  requestName,
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
const EMPTY = Buffer.alloc(0);

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
  expectFds(msg, 0, 0, 'this message takes no fd');
}

/** A u64 payload (SET_FEATURES, SET_PROTOCOL_FEATURES, SET_STATUS): 8 bytes, no fds. */
export function decodeU64(msg: Message): bigint {
  expectSize(msg, PayloadSize.U64);
  expectFds(msg, 0, 0, 'this message takes no fd');
  return msg.payload.readBigUInt64LE(0);
}

/** A vring state {index, num} (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE): 8 bytes, no fds. */
export function decodeVringState(msg: Message): VringState {
  expectSize(msg, PayloadSize.VRING_STATE);
  expectFds(msg, 0, 0, 'this message takes no fd');
  return { index: msg.payload.readUInt32LE(0), num: msg.payload.readUInt32LE(4) };
}

/**
 * SET_VRING_ADDR: 40 bytes, no fds. Flags may only hold VRING_F_LOG. The ring
 * parts must have the split-ring alignment the VIRTIO spec requires (desc 16,
 * avail 2, used 4) and lie below 2^53.
 */
export function decodeVringAddr(msg: Message): VringAddr {
  expectSize(msg, PayloadSize.VRING_ADDR);
  expectFds(msg, 0, 0, 'this message takes no fd');
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
  expectFds(msg, 1, 1, 'the region to map');
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
  expectFds(msg, 0, 1, 'none, or one to be closed unused');
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
  expectFds(msg, 0, 0, 'this message takes no fd');
  if (flags > CONFIG_FLAG_MIGRATION) {
    throw violation(`${name(msg)} flags ${flags} is neither 0 (writable) nor 1 (migration)`);
  }
  return { offset, size, flags, data: p.subarray(CONFIG_HDR_SIZE, CONFIG_HDR_SIZE + size) };
}

/** SET_BACKEND_REQ_FD: no payload, exactly one fd (the back-end channel socket). */
export function decodeBackendReqFd(msg: Message): number {
  expectSize(msg, 0);
  expectFds(msg, 1, 1, 'the back-end channel socket');
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
  expectFds(msg, 0, 0, 'the back-end creates the region');
  return { ...r, fd: -1 };
}

/**
 * SET_INFLIGHT_FD: 24 bytes, exactly one fd (the region). mmap_offset +
 * mmap_size must not pass 2^53-1; whether they fit the file and the queue
 * layout is checked when the region is mapped.
 */
export function decodeSetInflight(msg: Message): Inflight {
  const r = readInflight(msg);
  expectFds(msg, 1, 1, 'the inflight region');
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

/** Whether a request has a reply of its own (so REPLY_ACK adds none). */
export function hasReply(request: number): boolean {
  switch (request) {
    case Request.GET_FEATURES:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_VRING_BASE:
    case Request.GET_QUEUE_NUM:
    case Request.GET_CONFIG:
    case Request.GET_MAX_MEM_SLOTS:
    case Request.GET_INFLIGHT_FD:
    case Request.GET_STATUS:
      return true;
    default:
      return false;
  }
}

// ------------------------------------------------------ per-request decoding

/** Payload types; 'unsupported' covers requests a vhost-user-blk back-end does not serve. */
export type PayloadKind =
  | 'none'
  | 'u64'
  | 'vring-state'
  | 'vring-addr'
  | 'mem-table'
  | 'add-mem-reg'
  | 'rem-mem-reg'
  | 'vring-file'
  | 'config'
  | 'backend-fd'
  | 'inflight'
  | 'unsupported';

const KIND_ENTRIES: ReadonlyArray<readonly [number, PayloadKind]> = [
  // What QEMU sends: vhost_user_get_u64 / set_owner / reset_device set no size.
  [Request.GET_FEATURES, 'none'],
  [Request.SET_OWNER, 'none'],
  [Request.RESET_OWNER, 'none'],
  [Request.GET_PROTOCOL_FEATURES, 'none'],
  [Request.GET_QUEUE_NUM, 'none'],
  [Request.RESET_DEVICE, 'none'],
  [Request.GET_MAX_MEM_SLOTS, 'none'],
  [Request.GET_STATUS, 'none'],
  [Request.SET_FEATURES, 'u64'],
  [Request.SET_PROTOCOL_FEATURES, 'u64'],
  [Request.SET_STATUS, 'u64'],
  [Request.GET_INFLIGHT_FD, 'inflight'],
  [Request.SET_INFLIGHT_FD, 'inflight'],
  [Request.SET_VRING_NUM, 'vring-state'],
  [Request.SET_VRING_BASE, 'vring-state'],
  // GET_VRING_BASE carries the state {index, 0}; GET_CONFIG a config header + zeroes.
  [Request.GET_VRING_BASE, 'vring-state'],
  [Request.SET_VRING_ENABLE, 'vring-state'],
  [Request.VRING_KICK, 'vring-state'],
  [Request.SET_VRING_ADDR, 'vring-addr'],
  [Request.SET_MEM_TABLE, 'mem-table'],
  [Request.ADD_MEM_REG, 'add-mem-reg'],
  [Request.REM_MEM_REG, 'rem-mem-reg'],
  [Request.SET_VRING_KICK, 'vring-file'],
  [Request.SET_VRING_CALL, 'vring-file'],
  [Request.SET_VRING_ERR, 'vring-file'],
  [Request.GET_CONFIG, 'config'],
  [Request.SET_CONFIG, 'config'],
  [Request.SET_BACKEND_REQ_FD, 'backend-fd'],
];
const KINDS: ReadonlyMap<number, PayloadKind> = new Map(KIND_ENTRIES);

/** The payload type of a request code ('unsupported' for anything else). */
export function payloadKind(request: number): PayloadKind {
  return KINDS.get(request) ?? 'unsupported';
}

export type DecodedRequest =
  | { kind: 'none' }
  | { kind: 'u64'; value: bigint }
  | { kind: 'vring-state'; state: VringState }
  | { kind: 'vring-addr'; addr: VringAddr }
  | { kind: 'mem-table'; table: MemTable }
  | { kind: 'add-mem-reg'; region: MemRegionWithFd }
  | { kind: 'rem-mem-reg'; region: MemRegionKey }
  | { kind: 'vring-file'; file: VringFile }
  | { kind: 'config'; config: ConfigAccess }
  | { kind: 'backend-fd'; fd: number }
  | { kind: 'inflight'; inflight: Inflight }
  | { kind: 'unsupported' };

/**
 * Decodes msg's payload according to its request code. 'unsupported'
 * requests are returned undecoded (their size was already capped by the
 * reader); the handler decides whether to refuse them or break the session.
 */
export function decodeRequest(msg: Message): DecodedRequest {
  switch (payloadKind(msg.request)) {
    case 'none':
      decodeEmpty(msg);
      return { kind: 'none' };
    case 'u64':
      return { kind: 'u64', value: decodeU64(msg) };
    case 'vring-state':
      return { kind: 'vring-state', state: decodeVringState(msg) };
    case 'vring-addr':
      return { kind: 'vring-addr', addr: decodeVringAddr(msg) };
    case 'mem-table':
      return { kind: 'mem-table', table: decodeMemTable(msg) };
    case 'add-mem-reg':
      return { kind: 'add-mem-reg', region: decodeAddMemReg(msg) };
    case 'rem-mem-reg':
      return { kind: 'rem-mem-reg', region: decodeRemMemReg(msg) };
    case 'vring-file':
      return { kind: 'vring-file', file: decodeVringFile(msg) };
    case 'config':
      return { kind: 'config', config: decodeConfig(msg) };
    case 'backend-fd':
      return { kind: 'backend-fd', fd: decodeBackendReqFd(msg) };
    case 'inflight':
      return { kind: 'inflight', inflight: msg.request === Request.GET_INFLIGHT_FD ? decodeGetInflight(msg) : decodeSetInflight(msg) };
    case 'unsupported':
      return { kind: 'unsupported' };
  }
}

// ---------------------------------------------------------------- encoders

/** A complete message: 12-byte header then payload. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = EMPTY): Buffer {
  const out = Buffer.alloc(HEADER_SIZE + payload.length);
  out.writeUInt32LE(request >>> 0, 0);
  out.writeUInt32LE(flags >>> 0, 4);
  out.writeUInt32LE(payload.length, 8);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** A reply (flags VERSION | REPLY) to `request` with `payload`. */
export function encodeReply(request: number, payload: Uint8Array = EMPTY): Buffer {
  return encodeMessage(request, Flags.VERSION | Flags.REPLY, payload);
}

/** A u64 payload; value must be an integer in 0..2^64-1. */
export function encodeU64Payload(value: bigint | number): Buffer {
  const v = typeof value === 'bigint' ? value : BigInt(value);
  if (v < 0n || v >= TWO_POW_64) throw new RangeError(`Expected u64 but received ${v}`);
  const p = Buffer.alloc(PayloadSize.U64);
  p.writeBigUInt64LE(v, 0);
  return p;
}

/** A u64 reply (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, ...). */
export function encodeU64Reply(request: number, value: bigint | number): Buffer {
  return encodeReply(request, encodeU64Payload(value));
}

/** The REPLY_ACK reply: u64 0 on success, 1 on failure. */
export function encodeAck(request: number, ok: boolean): Buffer {
  return encodeU64Reply(request, ok ? 0n : 1n);
}

export function encodeVringStatePayload(index: number, num: number): Buffer {
  const p = Buffer.alloc(PayloadSize.VRING_STATE);
  p.writeUInt32LE(index >>> 0, 0);
  p.writeUInt32LE(num >>> 0, 4);
  return p;
}

/** A vring state reply (GET_VRING_BASE). */
export function encodeVringStateReply(request: number, index: number, num: number): Buffer {
  return encodeReply(request, encodeVringStatePayload(index, num));
}

export function encodeConfigPayload(offset: number, flags: number, data: Uint8Array, size: number = data.length): Buffer {
  const p = Buffer.alloc(CONFIG_HDR_SIZE + data.length);
  p.writeUInt32LE(offset >>> 0, 0);
  p.writeUInt32LE(size >>> 0, 4);
  p.writeUInt32LE(flags >>> 0, 8);
  p.set(data, CONFIG_HDR_SIZE);
  return p;
}

/**
 * The GET_CONFIG reply: the request's offset/flags and `data` (exactly the
 * size asked for). An empty `data` signals failure to the front-end.
 */
export function encodeConfigReply(offset: number, flags: number, data: Uint8Array): Buffer {
  if (data.length === 0) return encodeReply(Request.GET_CONFIG);
  return encodeReply(Request.GET_CONFIG, encodeConfigPayload(offset, flags, data));
}

export function encodeVringAddrPayload(a: {
  index: number;
  flags?: number;
  desc: number | bigint;
  used: number | bigint;
  avail: number | bigint;
  log?: number | bigint;
}): Buffer {
  const p = Buffer.alloc(PayloadSize.VRING_ADDR);
  p.writeUInt32LE(a.index >>> 0, 0);
  p.writeUInt32LE((a.flags ?? 0) >>> 0, 4);
  p.writeBigUInt64LE(BigInt(a.desc), 8);
  p.writeBigUInt64LE(BigInt(a.used), 16);
  p.writeBigUInt64LE(BigInt(a.avail), 24);
  p.writeBigUInt64LE(BigInt(a.log ?? 0), 32);
  return p;
}

/** Region fields as the wire carries them (any u64 value, for malformed-message tests too). */
export interface WireRegion {
  gpa: number | bigint;
  size: number | bigint;
  uva: number | bigint;
  mmapOffset: number | bigint;
}

function writeRegion(p: Buffer, at: number, r: WireRegion): void {
  p.writeBigUInt64LE(BigInt(r.gpa), at);
  p.writeBigUInt64LE(BigInt(r.size), at + 8);
  p.writeBigUInt64LE(BigInt(r.uva), at + 16);
  p.writeBigUInt64LE(BigInt(r.mmapOffset), at + 24);
}

/** SET_MEM_TABLE payload; `nregions` overrides the count field (for malformed tests). */
export function encodeMemTablePayload(regions: readonly WireRegion[], nregions: number = regions.length): Buffer {
  const p = Buffer.alloc(PayloadSize.MEMORY_HEADER + regions.length * PayloadSize.MEM_REGION);
  p.writeUInt32LE(nregions >>> 0, 0);
  regions.forEach((r, i) => writeRegion(p, PayloadSize.MEMORY_HEADER + i * PayloadSize.MEM_REGION, r));
  return p;
}

/** ADD_MEM_REG / REM_MEM_REG payload. */
export function encodeMemRegPayload(r: WireRegion): Buffer {
  const p = Buffer.alloc(PayloadSize.SINGLE_MEM_REGION);
  writeRegion(p, 8, r);
  return p;
}

/** GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (and the GET_INFLIGHT_FD reply's). */
export function encodeInflightPayload(i: { mmapSize: number | bigint; mmapOffset: number | bigint; numQueues: number; queueSize: number }): Buffer {
  const p = Buffer.alloc(PayloadSize.INFLIGHT);
  p.writeBigUInt64LE(BigInt(i.mmapSize), 0);
  p.writeBigUInt64LE(BigInt(i.mmapOffset), 8);
  p.writeUInt16LE(i.numQueues & 0xffff, 16);
  p.writeUInt16LE(i.queueSize & 0xffff, 18);
  return p;
}

/** SET_VRING_KICK/CALL/ERR payload: index, plus NOFD when no fd is attached. */
export function encodeVringFilePayload(index: number, noFd: boolean): Buffer {
  return encodeU64Payload((index & VRING_IDX_MASK) | (noFd ? VRING_NOFD_MASK : 0));
}
