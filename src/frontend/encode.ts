// Encoders of what a front-end sends (payloads of SET_VRING_ADDR, SET_MEM_TABLE,
// ADD/REM_MEM_REG, SET_VRING_KICK/CALL/ERR) and the REPLY_ACK reply, for the in-repo front-end (src/frontend/).

import { PayloadSize, VRING_IDX_MASK, VRING_NOFD_MASK } from '../vhost-user/protocol';
import { encodeU64Payload, encodeU64Reply } from '../vhost-user/encode';

/** The REPLY_ACK reply: u64 0 on success, 1 on failure. */
export function encodeAck(request: number, ok: boolean): Buffer {
  return encodeU64Reply(request, ok ? 0n : 1n);
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

/** SET_VRING_KICK/CALL/ERR payload: index, plus NOFD when no fd is attached. */
export function encodeVringFilePayload(index: number, noFd: boolean): Buffer {
  return encodeU64Payload((index & VRING_IDX_MASK) | (noFd ? VRING_NOFD_MASK : 0));
}
