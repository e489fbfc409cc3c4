// Encoders of the messages the back-end sends: replies (header + payload) and
// the bare header of a back-end request. A front-end's payloads are in src/frontend/encode.ts.

import { CONFIG_HDR_SIZE, Flags, HEADER_SIZE, PayloadSize, Request } from './protocol';

const TWO_POW_64 = 1n << 64n;
const EMPTY = Buffer.alloc(0);

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

/** GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (and the GET_INFLIGHT_FD reply's). */
export function encodeInflightPayload(i: {
  mmapSize: number | bigint;
  mmapOffset: number | bigint;
  numQueues: number;
  queueSize: number;
}): Buffer {
  const p = Buffer.alloc(PayloadSize.INFLIGHT);
  p.writeBigUInt64LE(BigInt(i.mmapSize), 0);
  p.writeBigUInt64LE(BigInt(i.mmapOffset), 8);
  p.writeUInt16LE(i.numQueues & 0xffff, 16);
  p.writeUInt16LE(i.queueSize & 0xffff, 18);
  return p;
}
